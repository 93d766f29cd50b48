"""The guarded HTTP protocol under real sockets: header timeout, header limits,
connection cap; ordinary and pipelined requests unchanged."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from service.main import create_app
from service.server import GuardedHttpToolsProtocol, Limits
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
