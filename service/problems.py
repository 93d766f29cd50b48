"""Problem documents as responses: the one rendering of every error (RFC 9457).

:mod:`service.errors` holds the exception tree and the document's fields; this module
turns one error into the HTTP response every layer sends for it (the routes' error
handler, the API-key check, the guarded protocol's refusals use the same document).
"""

from __future__ import annotations

import orjson
from starlette.responses import Response

from service.errors import PROBLEM_CONTENT_TYPE, ServiceError, ServiceUnavailable, problem

#: Where the Open Inference Protocol's paths start: their errors are its ``{"error"}``.
PROTOCOL_PREFIX = "/v2"


def under_protocol(path: str) -> bool:
    """Whether ``path`` is the protocol's (``/v2`` or below)."""
    return path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/")


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
