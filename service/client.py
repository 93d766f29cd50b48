"""A typed Python client of the loss service, on httpx: ``LossClient`` and ``AsyncLossClient``.

::

    import numpy as np
    from service.client import LossClient

    with LossClient("http://127.0.0.1:8000") as client:
        r = client.loss("categorical_crossentropy", [1, 2], [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
        r["loss"]  # 1.1769392490386963

Arrays are NumPy arrays, nested lists or numbers. A request whose arrays hold
more than ``binary_threshold`` elements in all (4096 by default) is sent in the
binary encoding (``application/octet-stream``: a JSON header, padded with spaces
to a multiple of 64 bytes so that the tensors start aligned, then the raw
little-endian C-order tensors in the order of their descriptors); smaller ones
as JSON lists. ``encoding`` forces one form: ``"json"`` (nested lists),
``"typed"`` (``{dtype, shape, data: <base64>}``) or ``"binary"``.

JSON lists carry a float32 array's values in their shortest decimal form, which the
service reads back to the same float32 values; with ``dtype="float64"`` the service
computes on those decimals, so send ``encoding="binary"`` (or ``"typed"``) to have it
compute on the exact float32 values.

Results are the response bodies as dicts; a ``loss`` with ``reduction="none"``
is a NumPy array. An error response raises :class:`LossServiceError`, which
carries the service's ``application/problem+json`` document.

Both clients build their requests with the same functions (:func:`build_request`
and :func:`parse_response`); they differ only in how they send them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import quote

import httpx
import numpy as np
import orjson
import pybase64
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_BINARY_THRESHOLD",
    "AsyncLossClient",
    "Encoding",
    "LossClient",
    "LossServiceError",
    "PreparedRequest",
    "build_request",
    "encode_body",
    "parse_response",
]

Encoding = Literal["auto", "json", "typed", "binary"]

#: Arrays holding more elements than this, in all, go in the binary encoding.
DEFAULT_BINARY_THRESHOLD: Final = 4096
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_BASE_URL: Final = "http://127.0.0.1:8000"

BINARY_MEDIA_TYPE: Final = "application/octet-stream"
JSON_MEDIA_TYPE: Final = "application/json"
HEADER_LENGTH_HEADER: Final = "Inference-Header-Content-Length"

#: The fields of a request body (or of one head) that hold arrays.
ARRAY_FIELDS: Final = ("y_true", "y_pred", "sample_weight")
#: The dtypes the service takes in typed arrays and binary tensors.
WIRE_DTYPES: Final = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
)
_ENCODINGS: Final = frozenset({"auto", "json", "typed", "binary"})
#: The binary encoding's JSON header is padded with spaces to a multiple of this.
TENSOR_ALIGNMENT: Final = 64


class LossServiceError(Exception):
    """An error response of the service, with its RFC 9457 problem document.

    ``errors`` is the problem's list of ``{"loc": [...], "msg": ...}``; ``problem``
    the whole document (for a response that was not problem+json, one made from
    the status line and the body's text).
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: list[dict[str, Any]],
        problem: dict[str, Any],
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.problem = problem

    @classmethod
    def from_response(cls, response: httpx.Response) -> LossServiceError:
        """The error a non-2xx response stands for."""
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            document = {
                "title": response.reason_phrase,
                "status": response.status_code,
                "detail": response.text,
            }
        errors = document.get("errors")
        return cls(
            status=response.status_code,
            title=str(document.get("title") or response.reason_phrase),
            detail=str(document.get("detail") or response.text),
            errors=[e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else [],
            problem=document,
        )


# ---- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedRequest:
    """One request, ready to send: what both clients pass to httpx."""

    method: Literal["GET", "POST"]
    path: str
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Turns the decoded JSON response into the result.
    result: Callable[[Any], dict[str, Any]] = dict
    #: How the arrays were sent: "json", "typed", "binary", or "" without a body.
    encoding: str = ""


def _wire_array(value: Any) -> NDArray[Any] | None:
    """``value`` as a C-contiguous little-endian array of a dtype the service takes, or
    None when it is not an array (a ragged list, strings, an already typed dict): such
    values go as they are, for the service to judge."""
    if isinstance(value, dict | str | bytes):
        return None
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        return None
    kind = arr.dtype.kind
    if kind not in "biuf":
        return None
    if arr.dtype.name not in WIRE_DTYPES:
        arr = arr.astype(np.int64 if kind in "iu" else np.float64)
    target = arr.dtype.newbyteorder("<")
    return arr.astype(target, order="C", copy=False)


def _arrays_of(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The parts of a request body that hold array fields: the body, or its heads."""
    outputs = body.get("outputs")
    if isinstance(outputs, Mapping):
        return [head for head in outputs.values() if isinstance(head, Mapping)]
    return [body]


def _replace_arrays(body: dict[str, Any], encode: Callable[[NDArray[Any]], Any]) -> dict[str, Any]:
    """A copy of ``body`` with each array field (top-level or of a head) encoded, in
    document order."""

    def part(fields: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in fields.items():
            arr = _wire_array(value) if key in ARRAY_FIELDS and value is not None else None
            out[key] = value if arr is None else encode(arr)
        return out

    outputs = body.get("outputs")
    if isinstance(outputs, Mapping):
        heads = {
            name: part(head) if isinstance(head, Mapping) else head
            for name, head in outputs.items()
        }
        return {k: (heads if k == "outputs" else v) for k, v in body.items()}
    return part(body)


def _count_elements(body: Mapping[str, Any]) -> int:
    """Elements in the (already normalized) array fields of ``body``."""
    return sum(
        value.size
        for fields in _arrays_of(body)
        for key in ARRAY_FIELDS
        if isinstance(value := fields.get(key), np.ndarray)
    )


def _as_json(a: NDArray[Any]) -> Any:
    # orjson writes arrays as nested lists natively, but not 0-d ones.
    return a.item() if a.ndim == 0 else a


def _raw_bytes(a: NDArray[Any]) -> memoryview:
    return a.reshape(-1).view(np.uint8).data


def _dumps(document: Any) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_body(
    body: dict[str, Any],
    encoding: Encoding = "auto",
    binary_threshold: int = DEFAULT_BINARY_THRESHOLD,
) -> tuple[bytes, dict[str, str], str]:
    """The bytes, headers and encoding name of a request body holding NumPy arrays.

    ``auto`` sends JSON lists, or the binary encoding when the arrays hold more than
    ``binary_threshold`` elements in all.
    """
    if encoding not in _ENCODINGS:
        raise ValueError(f"encoding must be one of {sorted(_ENCODINGS)}, received {encoding!r}")
    body = _replace_arrays(body, lambda a: a)  # lists to arrays, once
    if encoding == "auto":
        encoding = "binary" if _count_elements(body) > binary_threshold else "json"
    if encoding == "json":
        return _dumps(_replace_arrays(body, _as_json)), _json_headers(), "json"
    if encoding == "typed":

        def typed(a: NDArray[Any]) -> dict[str, Any]:
            data = pybase64.b64encode(_raw_bytes(a)).decode("ascii")
            return {"dtype": a.dtype.name, "shape": list(a.shape), "data": data}

        return _dumps(_replace_arrays(body, typed)), _json_headers(), "typed"

    tensors: list[memoryview] = []

    def descriptor(a: NDArray[Any]) -> dict[str, Any]:
        # Descriptors are made in document order, which is the order orjson writes them in.
        tensors.append(_raw_bytes(a))
        return {"dtype": a.dtype.name, "shape": list(a.shape), "binary_data_size": a.nbytes}

    header = _dumps(_replace_arrays(body, descriptor))
    # JSON may end in whitespace: padded, the header ends on a 64-byte boundary, so the
    # service's zero-copy views start aligned (unaligned views take NumPy's slow,
    # buffered loops: twice the compute time on a 512x32000 float32 batch).
    header += b" " * (-len(header) % TENSOR_ALIGNMENT)
    headers = {"Content-Type": BINARY_MEDIA_TYPE, HEADER_LENGTH_HEADER: str(len(header))}
    return b"".join([header, *tensors]), headers, "binary"


def _json_headers() -> dict[str, str]:
    return {"Content-Type": JSON_MEDIA_TYPE}


def build_request(
    path: str,
    body: dict[str, Any],
    *,
    encoding: Encoding = "auto",
    binary_threshold: int = DEFAULT_BINARY_THRESHOLD,
    result: Callable[[Any], dict[str, Any]] = dict,
) -> PreparedRequest:
    """A POST of ``body`` (arrays as NumPy arrays or lists) to ``path``."""
    content, headers, used = encode_body(body, encoding, binary_threshold)
    return PreparedRequest("POST", path, content, headers, result, used)


def parse_response(response: httpx.Response, request: PreparedRequest) -> dict[str, Any]:
    """The result of a response: ``request.result`` of its JSON, or a raised error."""
    if not response.is_success:
        raise LossServiceError.from_response(response)
    return request.result(orjson.loads(response.content))


def _body(
    y_true: Any, y_pred: Any, sample_weight: Any, params: Mapping[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"y_true": y_true, "y_pred": y_pred}
    if sample_weight is not None:
        body["sample_weight"] = sample_weight
    body.update(params)
    return body


def _loss_result(dtype: Any) -> Callable[[Any], dict[str, Any]]:
    """Per-sample losses (``reduction="none"``) as an array of the compute dtype."""
    np_dtype = np.float64 if dtype == "float64" else np.float32

    def result(document: Any) -> dict[str, Any]:
        out = dict(document)
        if isinstance(out.get("loss"), list):
            out["loss"] = np.asarray(out["loss"], dtype=np_dtype)
        return out

    return result


def _name(name: str) -> str:
    return quote(name, safe="")


@dataclass(frozen=True)
class _Requests:
    """The requests of every operation, built the same way for both clients."""

    encoding: Encoding
    binary_threshold: int

    def _post(
        self, path: str, body: dict[str, Any], result: Callable[[Any], dict[str, Any]] = dict
    ) -> PreparedRequest:
        return build_request(
            path,
            body,
            encoding=self.encoding,
            binary_threshold=self.binary_threshold,
            result=result,
        )

    def loss(
        self, name: str, y_true: Any, y_pred: Any, sample_weight: Any, params: Mapping[str, Any]
    ) -> PreparedRequest:
        return self._post(
            f"/v1/losses/{_name(name)}",
            _body(y_true, y_pred, sample_weight, params),
            _loss_result(params.get("dtype")),
        )

    def metric(
        self, name: str, y_true: Any, y_pred: Any, sample_weight: Any, params: Mapping[str, Any]
    ) -> PreparedRequest:
        return self._post(
            f"/v1/metrics/{_name(name)}", _body(y_true, y_pred, sample_weight, params)
        )

    def evaluate(
        self,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any,
        losses: list[str | dict[str, Any]] | None,
        metrics: list[str | dict[str, Any]] | None,
        params: Mapping[str, Any],
    ) -> PreparedRequest:
        body = _body(y_true, y_pred, sample_weight, params)
        if losses is not None:
            body["losses"] = losses
        if metrics is not None:
            body["metrics"] = metrics
        return self._post("/v1/evaluate", body)

    def evaluate_heads(
        self, outputs: Mapping[str, Mapping[str, Any]], loss_weights: Mapping[str, float] | None
    ) -> PreparedRequest:
        body: dict[str, Any] = {"outputs": {head: dict(b) for head, b in outputs.items()}}
        if loss_weights is not None:
            body["loss_weights"] = dict(loss_weights)
        return self._post("/v1/evaluate", body)

    @staticmethod
    def get(path: str) -> PreparedRequest:
        return PreparedRequest("GET", path)


def _client_options(
    base_url: str, api_key: str | None, timeout: float | httpx.Timeout | None
) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return {"base_url": base_url, "headers": headers, "timeout": timeout}


def _check_options(encoding: str, binary_threshold: int) -> None:
    if encoding not in _ENCODINGS:
        raise ValueError(f"encoding must be one of {sorted(_ENCODINGS)}, received {encoding!r}")
    if binary_threshold < 0:
        raise ValueError(f"binary_threshold must be >= 0, received {binary_threshold}")


# ---- the clients ---------------------------------------------------------------------------


class LossClient:
    """A blocking client of the loss service.

    ``transport`` replaces httpx's network transport (``httpx.MockTransport`` in tests);
    ``api_key`` is sent as ``Authorization: Bearer <key>``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        binary_threshold: int = DEFAULT_BINARY_THRESHOLD,
        encoding: Encoding = "auto",
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
    ) -> None:
        _check_options(encoding, binary_threshold)
        self._requests = _Requests(encoding, binary_threshold)
        self._http = httpx.Client(
            **_client_options(base_url, api_key, timeout),
            transport=transport,
            event_hooks=event_hooks,
        )

    def _send(self, request: PreparedRequest) -> dict[str, Any]:
        response = self._http.request(
            request.method, request.path, content=request.content, headers=request.headers
        )
        return parse_response(response, request)

    def loss(
        self,
        name: str,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        **params: Any,
    ) -> dict[str, Any]:
        """``POST /v1/losses/{name}``: ``loss`` is a float, or an array for ``reduction="none"``."""
        return self._send(self._requests.loss(name, y_true, y_pred, sample_weight, params))

    def metric(
        self,
        name: str,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        **params: Any,
    ) -> dict[str, Any]:
        """``POST /v1/metrics/{name}``: ``value``, and ``resolved_as`` for ``accuracy``."""
        return self._send(self._requests.metric(name, y_true, y_pred, sample_weight, params))

    def evaluate(
        self,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        *,
        losses: list[str | dict[str, Any]] | None = None,
        metrics: list[str | dict[str, Any]] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """``POST /v1/evaluate`` on one batch (``losses``/``metrics`` omitted: those that fit)."""
        return self._send(
            self._requests.evaluate(y_true, y_pred, sample_weight, losses, metrics, params)
        )

    def evaluate_heads(
        self,
        outputs: Mapping[str, Mapping[str, Any]],
        loss_weights: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/evaluate`` with several heads: each of ``outputs`` is an evaluate body."""
        return self._send(self._requests.evaluate_heads(outputs, loss_weights))

    def losses(self) -> dict[str, Any]:
        """``GET /v1/losses``: the loss catalogue."""
        return self._send(self._requests.get("/v1/losses"))

    def metrics(self) -> dict[str, Any]:
        """``GET /v1/metrics``: the metric catalogue."""
        return self._send(self._requests.get("/v1/metrics"))

    def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        return self._send(self._requests.get("/healthz"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncLossClient:
    """The asyncio client: :class:`LossClient`'s methods, awaited."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        binary_threshold: int = DEFAULT_BINARY_THRESHOLD,
        encoding: Encoding = "auto",
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
    ) -> None:
        _check_options(encoding, binary_threshold)
        self._requests = _Requests(encoding, binary_threshold)
        self._http = httpx.AsyncClient(
            **_client_options(base_url, api_key, timeout),
            transport=transport,
            event_hooks=event_hooks,
        )

    async def _send(self, request: PreparedRequest) -> dict[str, Any]:
        response = await self._http.request(
            request.method, request.path, content=request.content, headers=request.headers
        )
        return parse_response(response, request)

    async def loss(
        self,
        name: str,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        **params: Any,
    ) -> dict[str, Any]:
        """``POST /v1/losses/{name}``: ``loss`` is a float, or an array for ``reduction="none"``."""
        return await self._send(self._requests.loss(name, y_true, y_pred, sample_weight, params))

    async def metric(
        self,
        name: str,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        **params: Any,
    ) -> dict[str, Any]:
        """``POST /v1/metrics/{name}``: ``value``, and ``resolved_as`` for ``accuracy``."""
        return await self._send(self._requests.metric(name, y_true, y_pred, sample_weight, params))

    async def evaluate(
        self,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        *,
        losses: list[str | dict[str, Any]] | None = None,
        metrics: list[str | dict[str, Any]] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """``POST /v1/evaluate`` on one batch (``losses``/``metrics`` omitted: those that fit)."""
        return await self._send(
            self._requests.evaluate(y_true, y_pred, sample_weight, losses, metrics, params)
        )

    async def evaluate_heads(
        self,
        outputs: Mapping[str, Mapping[str, Any]],
        loss_weights: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/evaluate`` with several heads: each of ``outputs`` is an evaluate body."""
        return await self._send(self._requests.evaluate_heads(outputs, loss_weights))

    async def losses(self) -> dict[str, Any]:
        """``GET /v1/losses``: the loss catalogue."""
        return await self._send(self._requests.get("/v1/losses"))

    async def metrics(self) -> dict[str, Any]:
        """``GET /v1/metrics``: the metric catalogue."""
        return await self._send(self._requests.get("/v1/metrics"))

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        return await self._send(self._requests.get("/healthz"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
