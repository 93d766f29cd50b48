"""``/v2``: the Open Inference Protocol (KServe v2, Triton) over the losses and metrics.

Every loss and metric is a model (:mod:`service.oip`): ``POST /v2/models/{name}/infer``
computes it with the numbers of ``POST /v1/losses/{name}`` and ``/v1/metrics/{name}``;
``GET /v2/health/live``, ``/v2/health/ready`` and ``/v2/models/{name}/ready`` answer 200
with an empty body (404 for an unknown model); ``GET /v2`` and ``/v2/models/{name}`` are
the server's and the model's metadata. The ``/versions/1`` forms of the model paths are
the same (any other version is a 404).

The body of an inference request goes through the service's intake (size limit, stall
timeout, memory budget), but its format is not read from ``Content-Type``: the
protocol's clients (``tritonclient``) send none. A request with
``Inference-Header-Content-Length`` is binary (a JSON header of that many bytes, then the
tensors); one without is JSON. A ``Content-Type`` other than ``application/json`` or
``application/octet-stream`` is still a 415 (and ``application/octet-stream`` without the
header is JSON, as Triton reads it).

Errors on these paths are the protocol's ``{"error": "<message>"}`` (``application/json``),
with the status codes of ``/v1`` (400, 404, 408, 413, 415, 422, 503...): the protocol's
clients read that shape (``tritonclient`` raises an ``InferenceServerException`` with its
message and status). The ``application/problem+json`` format of the API contract is that
of ``/v1``; under ``/v2``, a path or method the service does not serve gets its 404 or 405
in the protocol's shape too (the service's error handler answers it). With API keys
configured, ``/v2/models/*`` needs ``Authorization: Bearer <key>``, as ``/v1`` does (401,
403); the health paths and ``GET /v2`` are open, as ``/healthz`` is.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Annotated, Any, Literal

import anyio.to_thread
import numpy as np
import orjson
from fastapi import APIRouter, Path, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from service import evaluation, oip
from service.admission import give_back_memory
from service.api.body import (
    RawBody,
    declared_content_type,
    read_body_as,
)
from service.api.compute import admit
from service.api.openapi_body import request_body
from service.errors import (
    Forbidden,
    InternalError,
    ServiceError,
    ServiceUnavailable,
    Unauthorized,
    clip,
)
from service.infra.auth import CHALLENGE, Keys
from service.infra.prometheus import record_warnings
from service.problems import PROTOCOL_PREFIX
from service.settings import Settings
from service.wire import HEADER_LENGTH_HEADER

log = logging.getLogger("service")

BINARY_MEDIA_TYPE = "application/octet-stream"
JSON_MEDIA_TYPE = "application/json"
#: Answers after which the connection is closed, as on /v1: the rest of the request may
#: never come.
_CLOSING = frozenset({408, 413, 431})


def error_response(error: ServiceError) -> Response:
    """The protocol's error answer: ``{"error": detail}``, with /v1's status and headers."""
    headers: dict[str, str] = {}
    if error.status in _CLOSING:
        headers["Connection"] = "close"
    if isinstance(error, ServiceUnavailable):
        headers["Retry-After"] = str(error.RETRY_AFTER)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = CHALLENGE
    return Response(
        orjson.dumps({"error": clip(error.detail)}),
        error.status,
        headers=headers,
        media_type=JSON_MEDIA_TYPE,
    )


class ProtocolRoute(APIRoute):
    """A route whose errors are answered in the protocol's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                return error_response(exc)
            except Exception:
                # A bug, not the caller's fault: log it, answer without internals.
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return error_response(
                    InternalError("The service failed on this request; the failure was logged.")
                )

        return answer


router = APIRouter(prefix=PROTOCOL_PREFIX, tags=["oip"], route_class=ProtocolRoute)


# ---- the spec's models ------------------------------------------------------------------

Parameter = str | int | float | bool | None


class InferenceError(BaseModel):
    """An error of the protocol's paths."""

    error: str = Field(description="What was wrong, what was expected, what was received.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal[oip.INPUTS]  # type: ignore[valid-type]
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Literal[tuple(oip.DATATYPES)]  # type: ignore[valid-type]
    parameters: dict[str, Parameter] | None = Field(
        None,
        description="`binary_data_size`: the tensor's bytes follow the JSON header "
        "(binary tensor data extension).",
    )
    data: list[Any] | None = Field(
        None, description="The values, flat or nested, row-major (without binary_data_size)."
    )


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["loss", "value"] = Field(description="`loss` for a loss, `value` for a metric.")
    parameters: dict[str, Parameter] | None = Field(
        None, description="`binary_data: true`: the value in binary after the JSON."
    )


class InferenceRequest(BaseModel):
    """An inference request of the Open Inference Protocol."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, description="Echoed in the response.")
    parameters: dict[str, Parameter] | None = Field(
        None,
        description="The loss's or metric's parameters (`from_logits`, `reduction`, `k`...), "
        "and `binary_data_output`.",
    )
    inputs: list[RequestInput] = Field(description="`y_true`, `y_pred`, `sample_weight`?")
    outputs: list[RequestOutput] | None = None
    model_name: str | None = Field(None, description="Ignored: the path names the model.")
    model_version: str | None = Field(None, description="Ignored: the path names the model.")


class ResponseOutput(BaseModel):
    name: Literal["loss", "value"]
    datatype: Literal["FP32", "FP64"]
    shape: list[int]
    parameters: dict[str, Parameter] | None = Field(
        None, description="`binary_data_size` when the value is in binary after the JSON."
    )
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Parameter] = Field(
        description="The /v1 response's other fields: `reduction` or `resolved_as`, "
        "`label_encoding`, `n_samples`, `n_classes`, and `warnings` (their list as JSON text)."
    )
    outputs: list[ResponseOutput]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed body (invalid JSON, binary sizes that do not add up).",
        404: "Unknown model or version; the detail lists the models.",
        413: "Body or tensor over the configured limits.",
        415: "Unsupported content type.",
        422: "Invalid request: tensors, datatypes, shapes, values, parameters.",
    }
    documented: dict[int | str, dict[str, Any]] = {
        status: {"description": text[status], "model": InferenceError} for status in statuses
    }
    documented["4XX"] = {
        "description": "Any other refusal: 401 or 403 with API keys configured, 408 for a "
        "body that stalled.",
        "model": InferenceError,
    }
    return documented


_EMPTY_OK: dict[int | str, dict[str, Any]] = {
    200: {"description": "Yes (empty body).", "content": {}}
}

_INFER_BODY = request_body(InferenceRequest)
_INFER_BODY["requestBody"]["content"][BINARY_MEDIA_TYPE]["schema"]["description"] = (
    "The binary tensor data extension: the inference request's JSON, of "
    "`Inference-Header-Content-Length` bytes, in which each binary input has "
    "`parameters.binary_data_size`, followed by those inputs' raw little-endian row-major "
    "bytes, back to back, in input order. The body's format is decided by that header, "
    "not by Content-Type, which tritonclient does not send."
)

ModelName = Annotated[
    str,
    Path(
        description="A loss or a metric.",
        json_schema_extra={"enum": [m.name for m in oip.models()]},
    ),
]
Version = Annotated[
    str,
    Path(description="The models' one version.", json_schema_extra={"enum": [oip.MODEL_VERSION]}),
]


# ---- health and metadata ------------------------------------------------------------------


def _authorized(request: Request) -> None:
    """With API keys configured, the key of the request (401, 403), as on /v1."""
    settings: Settings = request.app.state.settings
    if not settings.api_keys:
        return
    keys = Keys([key.get_secret_value() for key in settings.api_keys])
    refusal = keys.refusal(request.scope)
    if refusal is not None:
        detail = str(orjson.loads(bytes(refusal.body)).get("detail", ""))
        raise (Unauthorized if refusal.status_code == 401 else Forbidden)(detail)


@router.get(
    "/health/live",
    operation_id="oip_server_live",
    response_class=Response,
    responses=_EMPTY_OK,
)
async def server_live() -> Response:
    """200 while the service runs."""
    return Response()


@router.get(
    "/health/ready",
    operation_id="oip_server_ready",
    response_class=Response,
    responses=_EMPTY_OK,
)
async def server_ready() -> Response:
    """200 while the service runs: every model is ready as soon as it is."""
    return Response()


@router.get("", operation_id="oip_server_metadata", response_model=ServerMetadata)
async def server_metadata() -> dict[str, Any]:
    """The server's name, version and protocol extensions (`binary_tensor_data`)."""
    return oip.server_metadata()


def _model(request: Request, name: str, version: str | None) -> oip.Model:
    _authorized(request)
    found = oip.model(name)
    if version is not None:
        oip.check_version(found, version)
    return found


@router.get(
    "/models/{name}",
    operation_id="oip_model_metadata",
    response_model=ModelMetadata,
    responses=_errors(404),
)
async def model_metadata(name: ModelName, request: Request) -> dict[str, Any]:
    """The model's inputs and output (`loss` or `value`)."""
    return oip.model_metadata(_model(request, name, None))


@router.get(
    "/models/{name}/versions/{version}",
    operation_id="oip_model_version_metadata",
    response_model=ModelMetadata,
    responses=_errors(404),
)
async def model_version_metadata(
    name: ModelName, version: Version, request: Request
) -> dict[str, Any]:
    """The model's metadata, at its one version."""
    return oip.model_metadata(_model(request, name, version))


@router.get(
    "/models/{name}/ready",
    operation_id="oip_model_ready",
    response_class=Response,
    responses={**_EMPTY_OK, **_errors(404)},
)
async def model_ready(name: ModelName, request: Request) -> Response:
    """200 for every loss and metric, 404 for any other name."""
    _model(request, name, None)
    return Response()


@router.get(
    "/models/{name}/versions/{version}/ready",
    operation_id="oip_model_version_ready",
    response_class=Response,
    responses={**_EMPTY_OK, **_errors(404)},
)
async def model_version_ready(name: ModelName, version: Version, request: Request) -> Response:
    """200 for every loss and metric at version 1, 404 otherwise."""
    _model(request, name, version)
    return Response()


# ---- inference ----------------------------------------------------------------------------


def _body_format(request: Request) -> Literal["json", "binary"]:
    """Binary when the request has ``Inference-Header-Content-Length``, else JSON (a
    ``Content-Type``, if any, must be one the service takes)."""
    # Checked whatever the answer: a Content-Type the service does not take is a 415.
    declared_content_type(request)
    # As Triton reads a request: without the header the body is all JSON, whatever its
    # Content-Type says (one holding tensors after its JSON gets a 400 naming the header).
    return "binary" if HEADER_LENGTH_HEADER in request.headers else "json"


def _run(found: oip.Model, raw: RawBody, settings: Settings) -> tuple[bytes, int | None, list[str]]:
    """Decode, admit and compute (in the thread pool); the answer and its warning codes."""
    reservation = raw.reservation
    infer = oip.decode_request(
        raw.data,
        raw.header_length,
        found,
        max_elements=settings.max_elements,
        max_json_bytes=settings.max_general_json_bytes,
        before_json=None if reservation is None else reservation.grow,
    )
    if raw.header_length is None and isinstance(raw.data, bytearray):
        # The arrays are copies of the JSON's numbers: the text's memory goes now.
        with suppress(BufferError):
            raw.data.clear()
    admit(raw, infer.document, settings)
    compute = evaluation.loss if found.kind == "loss" else evaluation.metric
    # A sum that overflows is refused by the computation's check of its results.
    with np.errstate(over="ignore", invalid="ignore"):
        result = compute(found.name, infer.document, settings.max_elements)
    content, header_length = oip.encode_response(found, result, infer)
    return content, header_length, [w["code"] for w in result["warnings"]]


async def _infer(request: Request, name: str, version: str | None) -> Response:
    found = _model(request, name, version)  # before the body is read
    settings: Settings = request.app.state.settings
    raw = await read_body_as(request, _body_format(request))
    try:
        content, header_length, codes = await anyio.to_thread.run_sync(_run, found, raw, settings)
    finally:
        peak = raw.reservation.peak if raw.reservation is not None else 0
        raw.release()
        del raw
        if settings.trim_after_bytes and peak >= settings.trim_after_bytes:
            # A large request's buffers are freed: the pages go back to the system now.
            await anyio.to_thread.run_sync(give_back_memory)
    record_warnings(codes)
    if header_length is None:
        return Response(content, media_type=JSON_MEDIA_TYPE)
    return Response(
        content,
        media_type=BINARY_MEDIA_TYPE,
        headers={HEADER_LENGTH_HEADER: str(header_length)},
    )


_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferenceResponse,
        "description": "The value as the output `loss` or `value`; in binary "
        "(`Inference-Header-Content-Length` bytes of JSON, then the value's bytes) when "
        "asked with `binary_data` or `binary_data_output`.",
        "content": {BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    },
    **_errors(400, 404, 413, 415, 422),
}


@router.post(
    "/models/{name}/infer",
    operation_id="oip_model_infer",
    response_class=Response,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer(name: ModelName, request: Request) -> Response:
    """Compute a loss or a metric: inputs `y_true`, `y_pred`, `sample_weight`?; the
    loss's or metric's parameters in `parameters`."""
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    operation_id="oip_model_version_infer",
    response_class=Response,
    responses=_INFER_RESPONSES,
    openapi_extra=copy.deepcopy(_INFER_BODY),
)
async def version_infer(name: ModelName, version: Version, request: Request) -> Response:
    """Inference at the model's one version."""
    return await _infer(request, name, version)
