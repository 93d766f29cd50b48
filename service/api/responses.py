"""JSON responses serialized by orjson: NumPy arrays are written natively, with no Python loop.

``problem_response`` (:mod:`service.problems`) is re-exported for the routes."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

from service.infra.prometheus import record_warnings
from service.problems import problem_response

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

__all__ = ["computed_response", "json_response", "problem_response"]


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(
        orjson.dumps(content, option=_OPTIONS), status_code, media_type="application/json"
    )


def computed_response(result: dict[str, Any]) -> Response:
    """A compute endpoint's answer; its warnings (every head's) are counted for /metrics."""
    bodies = result["outputs"].values() if "outputs" in result else [result]
    record_warnings(w["code"] for body in bodies for w in body["warnings"])
    return json_response(result)
