"""JSON responses serialized by orjson: NumPy arrays are written natively, with no Python loop."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

from service.errors import PROBLEM_CONTENT_TYPE, ServiceError, ServiceUnavailable, problem
from service.ops.prometheus import record_warnings

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(
        orjson.dumps(content, option=_OPTIONS), status_code, media_type="application/json"
    )


#: Answers after which the connection is closed: the rest of the request may never come.
_CLOSING = frozenset({408, 413, 431})


def problem_response(error: ServiceError, instance: str | None = None) -> Response:
    headers: dict[str, str] = {}
    if error.status in _CLOSING:
        headers["Connection"] = "close"
    if isinstance(error, ServiceUnavailable):
        headers["Retry-After"] = str(error.RETRY_AFTER)
    return Response(
        orjson.dumps(problem(error, instance)),
        error.status,
        headers=headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def computed_response(result: dict[str, Any]) -> Response:
    """A compute endpoint's answer; its warnings (every head's) are counted for /metrics."""
    bodies = result["outputs"].values() if "outputs" in result else [result]
    record_warnings(w["code"] for body in bodies for w in body["warnings"])
    return json_response(result)
