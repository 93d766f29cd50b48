"""API keys: with ``LOSS_SERVICE_API_KEYS`` set, ``/v1/*`` needs ``Authorization: Bearer <key>``.

- no ``Authorization`` header, or one that is not ``Bearer <token>``: 401, with
  ``WWW-Authenticate: Bearer``;
- a token that is none of the keys: 403.

Both are ``application/problem+json``. The token is compared with every key with
``hmac.compare_digest`` (so the time taken does not tell which key, or how much of
one, matched) and is never logged or quoted back. Every other path (``/healthz``,
``/metrics``, ``/docs``, ``/redoc``, ``/openapi.json``, ``/static/*``) is open.

Pure ASGI middleware: a refused request is answered before its body is read, and a
request let through is passed on untouched (streaming and the body limit's early 413
keep working).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from typing import Final

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import errors
from service.infra.templates import route_path
from service.problems import problem_response

PROTECTED_PREFIX: Final = "/v1"
CHALLENGE: Final = 'Bearer realm="loss-service"'

_LOC: Final[errors.Loc] = ("header", "authorization")
_EXPECTED: Final = "send `Authorization: Bearer <key>` with one of the service's API keys"


def is_protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def _authorization(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    return [value for name, value in headers if name.lower() == b"authorization"]


def _token(values: list[bytes]) -> bytes | None:
    """The Bearer token of a single, well-formed ``Authorization`` header, if so."""
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or b" " in token or b"\t" in token:
        return None
    return token


class Keys:
    """The API keys, and the check of one request against them."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("BearerAuth needs at least one key")
        self._keys = tuple(key.encode("utf-8") for key in keys)

    def _known(self, token: bytes) -> bool:
        # Every key is compared, whichever matches: no early exit.
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(token, key)
        return found

    def refusal(self, scope: Scope) -> Response | None:
        """The 401 or 403 answer to a request whose credentials do not pass, or None
        when they do."""
        values = _authorization(scope.get("headers", ()))
        token = _token(values)
        if token is not None and self._known(token):
            return None
        error: errors.ServiceError
        if not values:
            error = errors.Unauthorized.at(
                _LOC, f"This endpoint needs an API key: {_EXPECTED}; received no Authorization."
            )
        elif token is None:
            error = errors.Unauthorized.at(
                _LOC,
                f"The Authorization header is malformed: {_EXPECTED}; received "
                + (
                    f"{len(values)} Authorization headers."
                    if len(values) > 1
                    else "a header that is not `Bearer <token>`."
                ),
            )
        else:
            error = errors.Forbidden.at(
                _LOC, "The API key is not valid: it is none of the service's API keys."
            )
        response = problem_response(error, scope.get("path"))
        if error.status == 401:
            response.headers["WWW-Authenticate"] = CHALLENGE
        return response


class BearerAuth:
    """Pure ASGI middleware: ``Authorization: Bearer <key>`` on ``/v1/*`` (the service
    itself checks keys in ``service.infra.middleware.Operations``, with ``Keys``)."""

    def __init__(self, app: ASGIApp, *, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = Keys(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_protected(route_path(scope)):
            refusal = self.keys.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
