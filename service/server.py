"""The HTTP/1.1 protocol the service runs under uvicorn: httptools, with a guard.

uvicorn's httptools protocol has no limit on the size or number of request headers,
no timeout for a request's headers to arrive, and no cap on open connections: a few
hundred idle or slow connections hold a worker's memory and file descriptors.
:class:`GuardedHttpToolsProtocol` adds, per connection, what a production proxy in
front would do (every number a setting, see :class:`Limits`):

- headers must be complete within ``header_timeout`` seconds of their first byte (or of
  the connection's opening): else ``408`` and the connection is closed (a connection
  that sent nothing is closed without an answer);
- at most ``max_header_count`` headers and ``max_header_bytes`` bytes of request line
  and headers: else ``431`` and close;
- at most ``max_connections`` open connections per worker: a connection past it is
  answered ``503`` with ``Retry-After`` and closed at once.

Idle keep-alive connections close after uvicorn's ``timeout_keep_alive``; a body that
stalls is the intake's to answer (``408``, see :mod:`service.api.body`). Refusals are
problem+json documents, like every other error of the service, and are counted in
``loss_service_connections_refused_total``.

A response's status line and headers go out with its first body bytes, in one write
(:class:`_HeadWithBody`): uvicorn writes them apart, two system calls (and two TCP
segments) for every small answer.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from service.errors import (
    PROBLEM_CONTENT_TYPE,
    HeadersTooLarge,
    MalformedRequest,
    RequestTimeout,
    ServiceError,
    ServiceUnavailable,
    problem,
)
from service.infra.prometheus import CONNECTIONS_REFUSED
from service.settings import Settings

log = logging.getLogger("service.server")

#: After a 431, what the client still sends is read and dropped for this long (or up to
#: this many bytes) before the connection closes, so that the answer reaches it.
_DISCARD_SECONDS = 1.0
_DISCARD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float
    max_header_count: int
    max_header_bytes: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            header_timeout=settings.header_timeout,
            max_header_count=settings.max_header_count,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
        )


@cache
def _settings_limits() -> Limits:
    return Limits.from_settings(Settings())


class _HeadWithBody:
    """The transport as one request's response cycle sees it: the response's head (the
    cycle's first write once the response has started) is held back and written with the
    first body write that follows, in one system call instead of two. A head whose body
    does not follow at once (a streaming response that waits for its first chunk) goes out
    on its own at the event loop's next turn; a close writes it first. Writes before the
    response starts (``100 Continue``) go out as they come."""

    __slots__ = ("_cycle", "_head", "_loop", "_state", "_transport")

    #: Before the response's head, holding it, past it.
    _BEFORE, _HOLDING, _PAST = 0, 1, 2

    def __init__(
        self,
        transport: asyncio.Transport,
        cycle: RequestResponseCycle,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._transport = transport
        self._cycle = cycle
        self._loop = loop
        self._state = self._BEFORE
        self._head = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        state = self._state
        if state == self._HOLDING:
            self._state = self._PAST
            head, self._head = self._head, b""
            self._transport.write(head + data)
        elif state == self._BEFORE and self._cycle.response_started:
            self._state = self._HOLDING
            self._head = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Write a head still held (unless the connection is closing)."""
        if self._state == self._HOLDING:
            self._state = self._PAST
            head, self._head = self._head, b""
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is refused."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits, a header timeout and a
    connection cap (see the module's docstring)."""

    #: Set on a subclass to use other limits than the settings' (tests do).
    limits: ClassVar[Limits | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = self.limits or _settings_limits()
        self._in_head = True
        self._head_bytes = 0
        self._head_parsed = 0
        self._header_count = 0
        self._header_timer: TimerHandle | None = None
        self._refusal: ServiceError | None = None
        self._discarding = False
        self._discarded = 0

    # ---- the connection ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            self._refuse(
                ServiceUnavailable.at(
                    ("connection",),
                    f"This worker has {len(self.connections) - 1} open connections, its limit "
                    f"(setting LOSS_SERVICE_MAX_CONNECTIONS); expected: retry after the time "
                    "in Retry-After, or reuse fewer connections.",
                ),
                "connections",
            )
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._discarding:
            # After a refusal: read and drop what the client still sends, so that it can
            # read the answer instead of having its connection reset.
            self._discarded += len(data)
            if self._discarded > _DISCARD_BYTES:
                self.transport.close()
            return
        if self._in_head:
            self._head_bytes += len(data)
            self._arm_header_timer()
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if self._refusal is not None:
                self._refuse(self._refusal, "headers", linger=True)
                return
            self._invalid(error)
            return
        except httptools.HttpParserError as error:
            self._invalid(error)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._head_bytes > self._limits.max_header_bytes:
            self._refuse(self._too_large("bytes"), "headers", linger=True)

    def _invalid(self, error: Exception) -> None:
        """A request that is not HTTP/1.1 as the parser reads it (a bad chunk size or
        Content-Length, a control character in a header...): a problem+json 400, as
        every other error, and the connection closed (where the next request would
        start is unknown)."""
        self.logger.warning("Invalid HTTP request received: %s", error)
        self._refuse(
            MalformedRequest.at(
                ("request",),
                f"The request is not valid HTTP/1.1 ({error}); expected a request line, "
                "headers and a body as RFC 9112 frames them.",
            ),
            "invalid",
        )

    # ---- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_count = 0
        self._head_parsed = 0

    def _parsed(self, size: int) -> None:
        """Count ``size`` bytes of the head as parsed (a head that arrived in one read is
        never counted by ``data_received`` before it is complete)."""
        self._head_parsed += size
        if self._head_parsed > self._limits.max_header_bytes:
            self._head_bytes = max(self._head_bytes, self._head_parsed)
            self._refusal = self._too_large("bytes")
            raise _Refused

    def on_url(self, url: bytes) -> None:
        self._parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._limits.max_header_count:
            self._refusal = self._too_large("count")
            raise _Refused
        self._parsed(len(name) + len(value) + 4)  # "name: value\r\n"
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm_header_timer()
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not previous:
            # Its task has not run yet: every write of its response goes through this.
            cycle.transport = _HeadWithBody(self.transport, cycle, self.loop)  # type: ignore[assignment]

    # ---- refusals ----------------------------------------------------------------------

    def _too_large(self, what: str) -> ServiceError:
        limits = self._limits
        if what == "count":
            detail = (
                f"The request has more than {limits.max_header_count} headers, the limit "
                "(setting LOSS_SERVICE_MAX_HEADER_COUNT); expected fewer headers."
            )
        else:
            detail = (
                f"The request line and headers are over {limits.max_header_bytes} bytes, the "
                f"limit (setting LOSS_SERVICE_MAX_HEADER_BYTES); received {self._head_bytes} "
                "bytes so far; expected shorter headers."
            )
        return HeadersTooLarge.at(("header",), detail)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self._limits.header_timeout, self._header_timeout
            )

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes == 0:
            # Nothing of a request arrived: close quietly, as for an idle keep-alive.
            self.transport.close()
            CONNECTIONS_REFUSED.labels(reason="idle").inc()
            return
        self._refuse(
            RequestTimeout.at(
                ("header",),
                f"The request's headers did not arrive within {self._limits.header_timeout:g} "
                f"s (setting LOSS_SERVICE_HEADER_TIMEOUT); received {self._head_bytes} bytes; "
                "expected the whole request line and headers.",
            ),
            "header_timeout",
        )

    def _refuse(self, error: ServiceError, reason: str, *, linger: bool = False) -> None:
        """Answer ``error`` as problem+json and close the connection (with ``linger``,
        after reading and dropping what the client still sends for a moment)."""
        CONNECTIONS_REFUSED.labels(reason=reason).inc()
        self._disarm_header_timer()
        body = orjson.dumps(problem(error))
        head = [
            STATUS_LINE[error.status],
            b"content-type: ",
            PROBLEM_CONTENT_TYPE.encode(),
            b"\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n",
        ]
        if isinstance(error, ServiceUnavailable):
            head.append(f"retry-after: {error.RETRY_AFTER}\r\n".encode())
        self.transport.write(b"".join([*head, b"\r\n", body]))
        if linger:
            self._discarding = True
            self.loop.call_later(_DISCARD_SECONDS, self.transport.close)
        else:
            self.transport.close()
