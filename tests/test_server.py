"""The guarded HTTP protocol under real sockets: header timeout, header limits,
connection cap; ordinary and pipelined requests unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from service.main import create_app
from service.server import GuardedHttpToolsProtocol, Limits, _HeadWithBody
from service.settings import Settings
from tests.servers import serve_in_thread

LIMITS = Limits(header_timeout=0.5, max_header_count=20, max_header_bytes=2048, max_connections=8)


class Guarded(GuardedHttpToolsProtocol):
    limits = LIMITS


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    with serve_in_thread(create_app(Settings()), http=Guarded, timeout_keep_alive=2) as base:
        host, port = base.removeprefix("http://").split(":")
        yield host, int(port)


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=5)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (or 5 s pass)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def status_and_body(response: bytes) -> tuple[int, dict[str, object], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.startswith(b"{") else {}, head.lower()


def test_an_ordinary_request_is_answered(address: tuple[str, int]) -> None:
    with connect(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, body, _ = status_and_body(read_all(sock))
    assert (status, body) == (200, {"status": "ok"})


def test_pipelined_requests_are_answered_in_order(address: tuple[str, int]) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(address) as sock:
        sock.sendall(request * 3 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_all(sock)
    assert data.count(b"HTTP/1.1 200 OK") == 4


def test_headers_that_do_not_arrive_in_time_get_a_408(address: tuple[str, int]) -> None:
    with connect(address) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        response = read_all(sock)
        elapsed = time.monotonic() - start
    status, body, head = status_and_body(response)
    assert status == 408
    assert b"connection: close" in head
    assert "LOSS_SERVICE_HEADER_TIMEOUT" in str(body["detail"])
    assert 0.4 < elapsed < 3


def test_slowloris_is_cut_off_at_the_header_timeout(address: tuple[str, int]) -> None:
    """A byte every 0.1 s keeps the connection busy, but the deadline counts from the
    first byte: the headers are refused after header_timeout, not kept open."""
    with connect(address) as sock:
        start = time.monotonic()
        sent = 0
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_all(sock)
    assert time.monotonic() - start < 3
    assert sent < 30
    assert response == b"" or status_and_body(response)[0] == 408


def test_a_connection_that_sends_nothing_is_closed(address: tuple[str, int]) -> None:
    with connect(address) as sock:
        start = time.monotonic()
        assert read_all(sock) == b""
        assert time.monotonic() - start < 3


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/evaluate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/evaluate HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    ],
    ids=["chunk-size", "content-length", "nul-in-header"],
)
def test_a_request_that_is_not_http_gets_a_problem_json_400(
    address: tuple[str, int], request_bytes: bytes
) -> None:
    with connect(address) as sock:
        sock.sendall(request_bytes)
        status, body, head = status_and_body(read_all(sock))
    assert status == 400
    assert b"content-type: application/problem+json" in head
    assert "not valid HTTP/1.1" in str(body["detail"])
    assert body["errors"] == [{"loc": ["request"], "msg": body["detail"]}]


def test_too_many_headers_get_a_431(address: tuple[str, int]) -> None:
    headers = b"".join(b"X-%d: y\r\n" % i for i in range(LIMITS.max_header_count + 1))
    with connect(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        status, body, _ = status_and_body(read_all(sock))
    assert status == 431
    assert "LOSS_SERVICE_MAX_HEADER_COUNT" in str(body["detail"])


def test_headers_over_the_byte_limit_get_a_431(address: tuple[str, int]) -> None:
    with connect(address) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000)
        status, body, _ = status_and_body(read_all(sock))
    assert status == 431
    assert "LOSS_SERVICE_MAX_HEADER_BYTES" in str(body["detail"])


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n",
        b"GET /healthz?q=" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["header", "url"],
)
def test_a_whole_head_over_the_byte_limit_in_one_read_gets_a_431(
    address: tuple[str, int], head: bytes
) -> None:
    """Complete in one read, it is parsed before the bytes read are counted: counted as
    the parser reads the request line and each header."""
    with connect(address) as sock:
        sock.sendall(head)
        status, body, _ = status_and_body(read_all(sock))
    assert status == 431
    assert "LOSS_SERVICE_MAX_HEADER_BYTES" in str(body["detail"])


def test_headers_just_under_the_limits_are_accepted(address: tuple[str, int]) -> None:
    headers = b"".join(b"X-%d: y\r\n" % i for i in range(LIMITS.max_header_count - 2))
    with connect(address) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"
        )
        assert status_and_body(read_all(sock))[0] == 200


def test_connections_past_the_cap_get_a_503_with_retry_after(address: tuple[str, int]) -> None:
    with ExitStack() as stack:
        held = [stack.enter_context(connect(address)) for _ in range(LIMITS.max_connections)]
        time.sleep(0.1)
        with connect(address) as extra:
            status, body, head = status_and_body(read_all(extra))
        assert status == 503
        assert b"retry-after: 1" in head
        assert "LOSS_SERVICE_MAX_CONNECTIONS" in str(body["detail"])
        del held
    time.sleep(0.2)  # the held connections are closed: room again
    with connect(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_and_body(read_all(sock))[0] == 200


def test_an_idle_keep_alive_connection_is_closed(address: tuple[str, int]) -> None:
    with connect(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        data = read_all(sock)  # the answer, then the close after timeout_keep_alive
        assert data.count(b"HTTP/1.1 200") == 1
        assert 1.5 < time.monotonic() - start < 4.5


# ---- a response's head goes out with its body ----------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _Cycle:
    response_started = False


def _head_with_body() -> tuple[_HeadWithBody, _Transport, _Cycle, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    transport, cycle = _Transport(), _Cycle()
    return _HeadWithBody(transport, cycle, loop), transport, cycle, loop  # type: ignore[arg-type]


def test_a_response_head_is_written_with_its_first_body_bytes() -> None:
    wrapped, transport, cycle, loop = _head_with_body()
    try:
        wrapped.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response: as it comes
        cycle.response_started = True
        wrapped.write(b"HEAD\r\n\r\n")
        assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        wrapped.write(b"body")
        wrapped.write(memoryview(b"more"))
        loop.call_soon(loop.stop)
        loop.run_forever()  # the held head's flush, due now, has nothing left to write
        assert transport.writes[1:] == [b"HEAD\r\n\r\nbody", b"more"]
    finally:
        loop.close()


def test_a_head_whose_body_waits_goes_out_at_the_next_turn_or_at_close() -> None:
    wrapped, transport, cycle, loop = _head_with_body()
    try:
        cycle.response_started = True
        wrapped.write(b"HEAD\r\n\r\n")
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert transport.writes == [b"HEAD\r\n\r\n"]
        wrapped.write(b"chunk")
        assert transport.writes == [b"HEAD\r\n\r\n", b"chunk"]
    finally:
        loop.close()
    wrapped, transport, cycle, loop = _head_with_body()
    try:
        cycle.response_started = True
        wrapped.write(b"HEAD\r\n\r\n")
        wrapped.close()
        assert transport.writes == [b"HEAD\r\n\r\n"] and transport.closed
        assert wrapped.is_closing()
    finally:
        loop.close()


async def _slow_stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with its head at once and its body a moment later."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-slow", b"1")]})
    await asyncio.sleep(0.5)
    await send({"type": "http.response.body", "body": b"late", "more_body": False})


def test_a_streaming_response_head_is_not_held_for_its_body() -> None:
    with serve_in_thread(_slow_stream, http=Guarded) as base:
        host, port = base.removeprefix("http://").split(":")
        with connect((host, int(port))) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sock.settimeout(0.4)
            head = sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 OK") and b"x-slow: 1" in head
            sock.settimeout(5)
            rest = read_all(sock)
    assert (head + rest).endswith(b"late\r\n0\r\n\r\n")
