"""The error responses of the spec: which errors each operation can answer, and an example
of each, as the service sends it.

Routes declare :data:`ERROR_RESPONSES` (the errors of a route that reads a body). When
the spec is built, :func:`document_errors` replaces them: it settles what each operation
whose errors are ``application/problem+json`` (every one outside the Open Inference
Protocol's ``/v2``) can really answer, from what it takes:

- any path: 405, for a method the path does not take (``Allow`` names the methods of the
  path's first route, as Starlette answers);
- ``/v1`` (API keys): 401 and 403;
- a request body: 400, 408, 413, 415, 422 and 503 (the intake of ``service.api.body``
  and the memory budget);
- path or query parameters: 422; path parameters: 404 (no such evaluation or chart);
- loss and metric names in the body (evaluate, a streaming evaluation's settings): 404;
- a streaming evaluation's batch: 409 (its id reused with other content, or the
  evaluation closed).

Each carries an example: the problem document of :func:`service.errors.problem`, for a
request to the operation's path (its path parameters those of the spec's examples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from service import registry
from service.api.openapi_examples import PATH_PARAMETERS
from service.errors import (
    PROBLEM_CONTENT_TYPE,
    Conflict,
    FieldError,
    Forbidden,
    InvalidInput,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    problem,
)
from service.infra.auth import CHALLENGE, is_protected
from service.infra.middleware import with_head
from service.problems import under_protocol

_CONTENT = {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": _CONTENT}
    for status, text in {
        400: "Malformed body (invalid JSON, a broken binary header).",
        404: "Unknown loss or metric; the detail lists the known ones.",
        413: "Body or array over the configured limits.",
        415: "Unsupported content type.",
        422: "Invalid values: shapes, labels, predictions, parameters.",
    }.items()
}

#: What the intake of a request body may answer (``service.api.body``, the memory budget).
_BODY_STATUSES: Final = frozenset({400, 408, 413, 415, 422, 503})
#: A method no path of the service takes: the 405 examples' request.
_OTHER_METHOD: Final = "PATCH"


@dataclass(frozen=True)
class _Case:
    """A documented error: what it means for the operation, and the error of its example
    (sent for the path with ``params`` instead of the examples' path parameters)."""

    description: str
    error: ServiceError
    params: dict[str, str] = field(default_factory=dict)


_MISSING_EVALUATION = (
    f"No evaluation {PATH_PARAMETERS['evaluation_id']!r}: expected the id of an evaluation of "
    "yours (POST /v1/evaluations creates one; evaluations not updated for the time to live "
    "are deleted)."
)
_LONG_ID = "f" * 65


def _validation(loc: tuple[str, str], msg: str) -> ServiceError:
    """An error of the framework's parameter checks, as the service renders it."""
    return InvalidInput(f"Invalid request: {'.'.join(loc)}: {msg}.", [FieldError(loc, msg)])


#: The case of each status, unless the operation has its own (:data:`_OWN_CASES`).
_CASES: Final[dict[int, _Case]] = {
    400: _Case(
        "Malformed body: invalid JSON, or a binary body whose header is missing or broken.",
        MalformedRequest.at(
            ("body",),
            "The request body is not valid JSON: unexpected end of data: line 1 column 15 "
            "(char 14). Expected a JSON object (NaN and Infinity are not JSON numbers).",
        ),
    ),
    401: _Case(
        "No valid `Authorization: Bearer <key>` header (when API keys are configured).",
        Unauthorized.at(
            ("header", "authorization"),
            "This endpoint needs an API key: send `Authorization: Bearer <key>` with one of "
            "the service's API keys; received no Authorization.",
        ),
    ),
    403: _Case(
        "A key that is none of the service's API keys.",
        Forbidden.at(
            ("header", "authorization"),
            "The API key is not valid: it is none of the service's API keys.",
        ),
    ),
    404: _Case(
        "No such evaluation (or not one of the caller's key).",
        NotFound.at(("path", "id"), _MISSING_EVALUATION),
    ),
    408: _Case(
        "The body stalled, or arrived too slowly; the connection is closed.",
        RequestTimeout.at(
            ("body",),
            "the request body stalled: no byte arrived for 10 s (setting "
            "LOSS_SERVICE_BODY_TIMEOUT) after 65536 bytes; expected the rest of the body",
        ),
    ),
    413: _Case(
        "Body, array, heads or entries over the configured limits.",
        PayloadTooLarge.at(
            ("body",),
            "the request body is over the limit of 67108864 bytes (64 MiB, setting "
            "LOSS_SERVICE_MAX_BODY_BYTES): received a declared Content-Length of 100000000 "
            "bytes; send smaller batches, or a streaming evaluation's batches one by one",
        ),
    ),
    415: _Case(
        "Unsupported content type.",
        UnsupportedMediaType.at(
            ("header", "content-type"),
            "Content-Type 'text/plain' is not supported; expected application/json or "
            "application/octet-stream",
        ),
    ),
    422: _Case(
        "Invalid values: shapes, labels, predictions, parameters.",
        InvalidInput.at(
            ("y_true",),
            "`y_true` does not match `y_pred`: expected shape (2, 3) (one-hot, multi-hot, soft "
            "or binary targets) or (2,) (integer class indices) for `y_pred` of shape (2, 3) "
            "with classes on axis 1, received (2, 2).",
        ),
    ),
    503: _Case(
        "The worker is at its memory budget for requests in flight: send the request again "
        "after `Retry-After` seconds.",
        ServiceUnavailable.at(
            ("body",),
            "The service is at its memory budget for requests in flight: this request needs "
            "96 MiB and other requests hold 448 MiB of 512 MiB (setting "
            "LOSS_SERVICE_MAX_INFLIGHT_BYTES). Expected: retry after the time in Retry-After, "
            "or send smaller batches.",
        ),
    ),
}

_UNKNOWN_METRIC = _Case(
    "A loss, metric or report name that the service does not know.",
    NotFound.at(
        ("metrics", 0, "name"),
        f"Unknown metric 'f1' in `metrics`: expected metrics among {sorted(registry.METRICS)}.",
    ),
)
_LIMIT = _Case(
    "Invalid parameters: `limit` out of range, a `cursor` this list did not hand out.",
    _validation(("query", "limit"), "Input should be greater than or equal to 1"),
)
_LONG_EVALUATION_ID = _Case(
    "Invalid path parameters.",
    _validation(("path", "evaluation_id"), "String should have at most 64 characters"),
    {"evaluation_id": _LONG_ID},
)

#: The cases particular to one operation; an operation answers each error it has a case of
#: its own for, besides those that its parameters and body bring.
_OWN_CASES: Final[dict[tuple[str, int], _Case]] = {
    ("evaluate", 404): _UNKNOWN_METRIC,
    ("create_evaluation", 404): _UNKNOWN_METRIC,
    ("create_evaluation", 400): _Case(
        "Malformed body: invalid JSON, or not JSON (an evaluation's settings are JSON only).",
        _CASES[400].error,
    ),
    ("create_evaluation", 422): _Case(
        "Invalid settings: unknown fields, parameters a loss or metric does not take.",
        InvalidInput.at(
            ("bogus",),
            "An evaluation takes ['class_names', 'dtype', 'from_logits', 'label_encoding', "
            "'losses', 'metadata', 'metrics', 'reports'] (or `outputs` for several heads), "
            "received ['bogus'].",
        ),
    ),
    ("put_batch", 409): _Case(
        "The batch id was accepted before with other content, or the evaluation is closed.",
        Conflict.at(
            ("path", "batch_id"),
            f"Batch {PATH_PARAMETERS['batch_id']!r} was accepted before with other content: a "
            "batch id names one batch; expected the same content again (a retry) or a new "
            "batch id.",
        ),
    ),
    ("put_batch", 422): _Case(
        "Invalid batch: its values, or labels whose classes, encoding or heads differ from "
        "the evaluation's.",
        InvalidInput.at(
            ("y_true",),
            "The batch does not fit the evaluation: the batch has 4 classes, the evaluation 3 "
            "(fixed by its first batch).",
        ),
    ),
    ("list_evaluations", 422): _LIMIT,
    ("list_batches", 422): _LIMIT,
    ("get_evaluation", 422): _LONG_EVALUATION_ID,
    ("close_evaluation", 422): _LONG_EVALUATION_ID,
    ("delete_evaluation", 422): _LONG_EVALUATION_ID,
    ("evaluation_report", 422): _LONG_EVALUATION_ID,
    ("evaluation_chart", 404): _Case(
        "No such evaluation, or no such chart for it.", _CASES[404].error
    ),
    ("evaluation_chart", 422): _Case(
        "A chart format other than `svg` or `png`.",
        InvalidInput.at(("path", "fmt"), "Charts are `.svg` or `.png`; received 'gif'."),
        {"fmt": "gif"},
    ),
}


def _statuses(path: str, operation: dict[str, Any]) -> set[int]:
    """The errors the operation can answer (see the module's docstring)."""
    statuses = {405}
    if is_protected(path):
        statuses |= {401, 403}
    if "requestBody" in operation:
        statuses |= _BODY_STATUSES
    places = {p.get("in") for p in operation.get("parameters", [])}
    if places & {"path", "query"}:
        statuses.add(422)
    if "path" in places:
        statuses.add(404)
    return statuses | {s for (op, s) in _OWN_CASES if op == operation["operationId"]}


def _instance(path: str, params: dict[str, str]) -> str:
    return path.format_map({**PATH_PARAMETERS, **params})


def _not_allowed(path: str, allowed: str) -> _Case:
    return _Case(
        "The path does not take this method (`Allow` names one it takes).",
        MethodNotAllowed.at(
            ("method",),
            f"{_OTHER_METHOD} is not allowed on {_instance(path, {})}: expected {allowed}.",
        ),
    )


def _header(description: str, example: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}, "example": example}


#: The headers the service sends with an error.
_HEADERS: Final[dict[int, dict[str, Any]]] = {
    401: {"WWW-Authenticate": _header("The authentication scheme to use.", CHALLENGE)},
    503: {
        "Retry-After": _header(
            "Seconds to wait before sending the request again.",
            str(ServiceUnavailable.RETRY_AFTER),
        )
    },
}


def _response(case: _Case, path: str, headers: dict[str, Any]) -> dict[str, Any]:
    example = problem(case.error, _instance(path, case.params))
    response: dict[str, Any] = {
        "description": case.description,
        "content": {PROBLEM_CONTENT_TYPE: {**_CONTENT[PROBLEM_CONTENT_TYPE], "example": example}},
    }
    if headers:
        response["headers"] = headers
    return response


def document_errors(spec: dict[str, Any]) -> None:
    """Set the error responses of every operation outside ``/v2``: those it can answer,
    each described for it, with the headers sent along and an example."""
    for path, item in spec["paths"].items():
        if under_protocol(path):
            continue  # the protocol's own error shape (service.api.routes.oip)
        methods = [m for m, op in item.items() if isinstance(op, dict) and "operationId" in op]
        # What the service says: every method the path takes, HEAD wherever GET is
        # (service.main).
        allowed = ", ".join(sorted(with_head(m.upper() for m in methods)))
        for method in methods:
            operation = item[method]
            responses = operation.setdefault("responses", {})
            for status in [s for s in responses if s[:1] in ("4", "5")]:
                del responses[status]
            for status in sorted(_statuses(path, operation)):
                if status == 405:
                    case = _not_allowed(path, allowed)
                    headers = {"Allow": _header("A method the path takes.", allowed)}
                else:
                    own = _OWN_CASES.get((operation["operationId"], status))
                    case = _CASES[status] if own is None else own
                    headers = _HEADERS.get(status, {})
                responses[str(status)] = _response(case, path, headers)
