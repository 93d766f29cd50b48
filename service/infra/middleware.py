"""One pure ASGI middleware for what operations do to every request: ``Operations``.

For each HTTP request it

- takes the request id (``service.infra.requestid``), makes it current for the logs,
  stores it as ``request.state.request_id`` and adds ``X-Request-ID`` to the response;
- with ``cors_origins``, answers CORS (Starlette's ``CORSMiddleware``, preflights
  included, refusals below included);
- with ``api_keys``, refuses a ``/v1/*`` request without a valid
  ``Authorization: Bearer <key>`` (``service.infra.auth``) before its body is read;
- counts the request body bytes the app receives and the response body bytes it sends,
  without holding either;
- answers ``HEAD`` wherever ``GET`` is answered: the request goes on as a ``GET`` and
  its response is sent without its body (the same status and headers, ``Content-Length``
  included), as HTTP says; where there is no ``GET`` either it is the same 405 (the
  metrics and the access log keep ``HEAD``);
- when the response is over, records the metrics (``service.infra.prometheus.observe``)
  and logs the access line (``service.infra.logs.access``; nothing of it is computed
  when the ``service.access`` logger is not enabled for INFO).

The messages are passed on as they come: streaming and early answers are untouched.
One layer instead of three (request id, logs and metrics; CORS; auth): every layer is
a coroutine call on each request, whichever of them has work to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Final

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors
from service.infra import auth, logs, prometheus, requestid
from service.infra.templates import RouteTemplates, route_path
from service.problems import problem_response

_HEADER: Final = requestid.HEADER.lower().encode("latin-1")

#: Methods a browser may use cross-origin: the streaming evaluations take batches by PUT
#: and are deleted by DELETE; HEAD goes wherever GET does.
CORS_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE")
#: Headers a browser may send cross-origin.
CORS_HEADERS: Final = (
    "Authorization",
    "Content-Type",
    "Inference-Header-Content-Length",
    "X-Request-ID",
)

log = logging.getLogger(__name__)


def _logged_path(scope: Scope) -> str:
    """The path as sent (still percent-encoded: no control characters), no query."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes | bytearray):
        return bytes(raw).split(b"?", 1)[0].decode("ascii", "backslashreplace")
    path: str = scope.get("path", "")
    return path.encode("ascii", "backslashreplace").decode("ascii")


def _wants_html(scope: Scope) -> bool:
    """Whether the request asks for HTML: the direct path answers JSON only, so such a
    request goes through the application's routes (evaluate's report page)."""
    for name, value in scope.get("headers", ()):
        if name == b"accept" and b"text/html" in value.lower():  # media types: any case
            return True
    return False


def with_head(methods: Iterable[str]) -> set[str]:
    """The methods a path answers, given those its routes take: ``HEAD`` too wherever
    ``GET`` is (this middleware serves it as a ``GET``)."""
    answered = set(methods)
    return answered | {"HEAD"} if "GET" in answered else answered


async def _headless(send: Send, message: Message) -> None:
    """``send`` for a ``HEAD`` served as a ``GET``: the response's start as it is, its body
    left out (a message with none, so that the end of the response still ends it)."""
    if message["type"] == "http.response.body" and message.get("body"):
        message = {**message, "body": b""}
    await send(message)


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


#: A route answered straight by the middleware: ``handler(scope, receive, send, params)``,
#: ``params`` being the request's path parameters. It answers and gives ``True``, or gives
#: ``False`` having received and sent nothing: the application answers instead.
DirectHandler = Callable[[Scope, Receive, Send, Mapping[str, str]], Awaitable[bool]]

#: Where the route of the request being served is kept in its scope (template, params).
_ROUTE_KEY: Final = "loss_service.route"


#: The request header behind each of Starlette's preflight refusals.
_PREFLIGHT_FIELDS: Final = {
    "origin": "origin",
    "method": "access-control-request-method",
    "headers": "access-control-request-headers",
    "private-network": "access-control-request-private-network",
}


class _CORS(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered as problem+json (Starlette's
    own is text/plain), its CORS headers kept."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = bytes(response.body).decode()  # "Disallowed CORS origin, method"
        failures = refused.removeprefix("Disallowed CORS ")
        origin = request_headers.get("origin", "")
        method = request_headers.get("access-control-request-method", "")
        first = failures.split(",")[0].strip()
        field = _PREFLIGHT_FIELDS.get(first, "origin")
        private = (
            "; a private-network request is not allowed" if "private-network" in failures else ""
        )
        error = errors.MalformedRequest.at(
            ("header", field),
            f"The CORS preflight is refused ({failures}): received Origin {origin!r} asking "
            f"for {method!r}; expected an origin of the setting LOSS_SERVICE_CORS_ORIGINS, "
            f"one of the methods {', '.join(CORS_METHODS)} and headers among "
            f"{', '.join(CORS_HEADERS)}{private}.",
        )
        answer = problem_response(error)
        for name, value in response.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                answer.headers[name] = value
        return answer


class Operations:
    """Pure ASGI middleware: request id, CORS, API keys, metrics and access log; and the
    direct path of the routes named in ``direct``, by method and path template."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: Sequence[str] = (),
        cors_origins: Sequence[str] = (),
        direct: Mapping[tuple[str, str], DirectHandler] | None = None,
    ) -> None:
        self.app = app
        self.routes = RouteTemplates()
        self._direct = dict(direct or {})
        self._keys = auth.Keys(api_keys) if api_keys else None
        inner: ASGIApp = self._dispatch if self._direct else app
        if self._keys is not None:
            inner = partial(self._guarded, inner)
        if cors_origins:
            inner = _CORS(
                inner,
                allow_origins=cors_origins,
                allow_methods=list(CORS_METHODS),
                allow_headers=list(CORS_HEADERS),
                # Location: where a created evaluation is; Retry-After: when to retry a 503.
                expose_headers=[requestid.HEADER, "Location", "Retry-After"],
                max_age=600,
            )
        self._inner = inner

    async def _guarded(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """``app`` behind the API keys (inside CORS: refusals carry its headers, and
        preflights are answered before they get here)."""
        assert self._keys is not None
        if scope["type"] == "http" and auth.is_protected(route_path(scope)):
            refusal = self._keys.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await app(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The direct path of a request to one of the ``direct`` routes, else the app."""
        if scope["type"] == "http" and not _wants_html(scope):
            template, params = scope.get(_ROUTE_KEY) or self.routes.resolve(
                scope.get("app"), route_path(scope)
            )
            handler = self._direct.get((scope.get("method", ""), template))
            if handler is not None and await handler(scope, receive, send, params):
                return
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._inner(scope, receive, send)
            return

        start = time.perf_counter()
        # Resolved now: a mount below changes the scope's root_path.
        route = scope[_ROUTE_KEY] = self.routes.resolve(scope.get("app"), route_path(scope))
        request_id = requestid.from_headers(scope.get("headers", ()))
        state = scope.get("state")
        if state is None:
            scope["state"] = state = {}
        state["request_id"] = request_id
        token = requestid.set_current(request_id)
        header = (_HEADER, request_id.encode("ascii"))
        received = 0
        sent = 0
        status = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal sent, status
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != _HEADER
                ]
                headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        inner_scope, inner_send = scope, tagging_send
        if scope.get("method") == "HEAD":
            inner_scope, inner_send = {**scope, "method": "GET"}, partial(_headless, tagging_send)

        prometheus.request_started()
        failed = False
        try:
            await self._inner(inner_scope, counting_receive, inner_send)
        except BaseException:
            # The server's error middleware answers (a 500 unless a response had begun)
            # and logs the error; the request id stays current for that log.
            failed = True
            raise
        finally:
            prometheus.request_finished()
            duration = time.perf_counter() - start
            if failed and not status:
                status = 500
            try:
                self._record(scope, route, request_id, status, duration, received, sent)
            except Exception:
                # Bookkeeping never fails a request.
                log.exception("recording the request failed")
            if not failed:
                requestid.reset_current(token)

    def _record(
        self,
        scope: Scope,
        route: tuple[str, Mapping[str, str]],
        request_id: str,
        status: int,
        duration: float,
        received: int,
        sent: int,
    ) -> None:
        method: str = scope.get("method", "")
        template, params = route
        prometheus.observe(
            method=method,
            route=template,
            path_params=params,
            status=status,
            duration_s=duration,
            request_bytes=received,
        )
        if logs.access_enabled():
            logs.access(
                request_id=request_id,
                method=method,
                path=_logged_path(scope),
                route=template,
                status=status,
                duration_s=duration,
                request_bytes=received,
                response_bytes=sent,
                client=_client(scope),
            )
