"""Early answers that a client still sending its body can read.

The service answers some requests before reading their body: a 413 for a
declared ``Content-Length`` over the limit, a 413 in the middle of a chunked
upload, a 415 or a 400 decided from the headers. Such an answer must close the
connection (the rest of the body would otherwise be read as the next request,
or read for nothing), and uvicorn (``h11`` and ``httptools`` alike) closes the
transport the moment the last body message of a ``Connection: close`` response
is sent. Unread request bytes still in the kernel's receive buffer then make the
kernel answer with a TCP RST instead of a FIN: the client, still sending, gets
ECONNRESET or EPIPE from ``send`` and most clients give up without reading the
response that was already written.

Draining *after* the response does not work either: once the response is
complete, uvicorn's ``receive()`` returns ``http.disconnect`` at once. So this
middleware drains *before* the response completes:

- at ``http.response.start``, if the request body has not been read to its end
  (or the status is 413), it adds ``Connection: close``;
- at the last ``http.response.body`` message, if the request body is still not
  read to its end, it sends the body as a non-final message (so the whole
  response is already on the wire and a client reading while it sends has it),
  then reads and discards the request body, never storing it, until the client
  has sent it all, disconnects, or a bound is reached (``max_drain_bytes``,
  ``max_drain_seconds``), and only then sends the final, empty body message,
  after which uvicorn closes the connection with a clean FIN.

A request that waits for ``100 Continue`` that it never got is not drained: its
client has not sent the body; nor is one answered ``408`` (its body stalled). Past
a bound the connection is closed as uvicorn would close it; a client sending that
much more after a refusal may get a reset.
HTTP/2 (where there is no such problem, and no ``Connection`` header) and
non-HTTP scopes pass through untouched.

Wrap the whole application with it, outside every other middleware::

    app.add_middleware(DrainRequestBody, max_drain_bytes=..., max_drain_seconds=...)

as the last ``add_middleware`` call.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Final

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_DRAIN_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_DRAIN_SECONDS: Final = 10.0
#: What is read of the body of a request answered 503 before the connection closes.
RETRY_DRAIN_BYTES: Final = 1024 * 1024

_CLOSE: Final = (b"connection", b"close")
_HTTP1: Final = frozenset({"1.0", "1.1"})


class DrainRequestBody:
    """Pure ASGI middleware: makes answers given before the request body was read
    readable by a client that is still sending it (see the module's docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_drain_bytes: int = DEFAULT_MAX_DRAIN_BYTES,
        max_drain_seconds: float = DEFAULT_MAX_DRAIN_SECONDS,
    ) -> None:
        if max_drain_bytes < 0:
            raise ValueError(f"max_drain_bytes must be >= 0, got {max_drain_bytes}")
        if not (math.isfinite(max_drain_seconds) and max_drain_seconds >= 0):
            raise ValueError(f"max_drain_seconds must be finite and >= 0, got {max_drain_seconds}")
        self.app = app
        self.max_drain_bytes = max_drain_bytes
        self.max_drain_seconds = max_drain_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("http_version", "1.1") not in _HTTP1:
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(self, scope, receive, send)
        await self.app(scope, exchange.receive, exchange.send)


class _Exchange:
    """One request/response cycle seen by ``DrainRequestBody``."""

    __slots__ = (
        "_limits",
        "_receive",
        "_send",
        "drain_bytes",
        "expects_continue",
        "receive_called",
        "request_done",
    )

    def __init__(self, limits: DrainRequestBody, scope: Scope, receive: Receive, send: Send):
        self._limits = limits
        self._receive = receive
        self._send = send
        self.request_done, self.expects_continue = _request_headers(scope.get("headers", ()))
        self.receive_called = False
        self.drain_bytes = limits.max_drain_bytes

    async def receive(self) -> Message:
        self.receive_called = True
        message = await self._receive()
        self._note(message)
        return message

    def _note(self, message: Message) -> None:
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.request_done = True

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            status = message.get("status")
            if not self.request_done or status == 413:
                message = {**message, "headers": _with_close(message.get("headers", ()))}
            if status == 408:
                # The body stalled: waiting for the rest of it is what timed out.
                self.request_done = True
            elif status == 503:
                # "Retry later": a client still sending has the answer in a moment; reading
                # a whole large body for nothing would cost the event loop more than the
                # refusal saves.
                self.drain_bytes = min(self.drain_bytes, RETRY_DRAIN_BYTES)
        elif (
            kind == "http.response.body"
            and not message.get("more_body", False)
            and not self.request_done
            and (self.receive_called or not self.expects_continue)
        ):
            if message.get("body"):
                await self._send({**message, "more_body": True})
            await self._drain()
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await self._send(message)

    async def _drain(self) -> None:
        """Read and discard the rest of the request body, within the bounds."""
        drained = 0
        try:
            with anyio.move_on_after(self._limits.max_drain_seconds):
                while not self.request_done and drained <= self.drain_bytes:
                    message = await self._receive()
                    self._note(message)
                    if message["type"] == "http.request":
                        drained += len(message.get("body", b""))
        except asyncio.CancelledError:
            # The server is shutting down: the answer is already on the wire; stop here.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()


def _request_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bool, bool]:
    """Whether an HTTP/1 request with these headers has no body to read, and whether it
    expects ``100 Continue``: one pass over the headers."""
    has_body = False
    expects_continue = False
    for name, value in headers:
        key = name.lower()
        if key == b"transfer-encoding":
            has_body = True
        elif key == b"content-length":
            has_body = has_body or bool(value.strip().lstrip(b"0"))
        elif key == b"expect":
            expects_continue = expects_continue or value.strip().lower() == b"100-continue"
    return not has_body, expects_continue


def _with_close(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``Connection: close`` instead of any other ``Connection``."""
    kept = [(name, value) for name, value in headers if name.lower() != b"connection"]
    kept.append(_CLOSE)
    return kept
