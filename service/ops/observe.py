"""One pure ASGI middleware for what is seen of every request: its id, its access
line, its metrics.

For each HTTP request it

- takes the request id (``service.ops.requestid``), makes it current for the logs,
  stores it as ``request.state.request_id`` and adds ``X-Request-ID`` to the response;
- counts the request body bytes the app receives and the response body bytes it sends,
  without holding either;
- when the response is over, logs the access line (``service.ops.logs.access``) and
  records the metrics (``service.ops.prometheus.observe``).

The messages are passed on as they come: streaming and early answers are untouched.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.ops import logs, prometheus, requestid
from service.ops.routes import RouteTemplates, route_path

_HEADER: Final = requestid.HEADER.lower().encode("latin-1")

log = logging.getLogger(__name__)


def _logged_path(scope: Scope) -> str:
    """The path as sent (still percent-encoded: no control characters), no query."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes | bytearray):
        return bytes(raw).split(b"?", 1)[0].decode("ascii", "backslashreplace")
    path: str = scope.get("path", "")
    return path.encode("ascii", "backslashreplace").decode("ascii")


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


class Observe:
    """Pure ASGI middleware: request id, access log and metrics of every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.routes = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        start = time.perf_counter()
        app, path = scope.get("app"), route_path(scope)
        request_id = requestid.from_headers(scope.get("headers", ()))
        scope.setdefault("state", {})["request_id"] = request_id
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
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != _HEADER
                ]
                headers.append(header)
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        prometheus.IN_PROGRESS.inc()
        failed = False
        try:
            await self.app(scope, counting_receive, tagging_send)
        except BaseException:
            # The server's error middleware answers (a 500 unless a response had begun)
            # and logs the error; the request id stays current for that log.
            failed = True
            raise
        finally:
            prometheus.IN_PROGRESS.dec()
            duration = time.perf_counter() - start
            if failed and not status:
                status = 500
            try:
                method: str = scope.get("method", "")
                route, params = self.routes.resolve(app, path)
                prometheus.observe(
                    method=method,
                    route=route,
                    path_params=params,
                    status=status,
                    duration_s=duration,
                    request_bytes=received,
                )
                logs.access(
                    request_id=request_id,
                    method=method,
                    path=_logged_path(scope),
                    route=route,
                    status=status,
                    duration_s=duration,
                    request_bytes=received,
                    response_bytes=sent,
                    client=_client(scope),
                )
            except Exception:
                # Bookkeeping never fails a request.
                log.exception("recording the request failed")
            if not failed:
                requestid.reset_current(token)
