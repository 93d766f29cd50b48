"""The request-body intake (``service.api.body``) and early answers a client still
sending can read (``service.api.drain``), in-process and through a real uvicorn."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors
from service.api.body import RawBody, read_body
from service.api.drain import RETRY_DRAIN_BYTES, DrainRequestBody
from service.settings import Settings
from tests.servers import serve_in_thread

LIMIT = 1024
MiB = 1024 * 1024
SOCKET_TIMEOUT = 5.0
JSON = {"content-type": "application/json"}


def make_app(limit: int = LIMIT, *, drain: bool = True) -> FastAPI:
    app = FastAPI()
    app.state.settings = Settings(max_body_bytes=limit)

    @app.exception_handler(errors.ServiceError)
    async def service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        return JSONResponse(
            errors.problem(exc), status_code=exc.status, media_type=errors.PROBLEM_CONTENT_TYPE
        )

    @app.post("/compute")
    def compute(raw: Annotated[RawBody, Depends(read_body)]) -> dict[str, Any]:
        return {
            "size": len(raw.data),
            "content_type": raw.content_type,
            "header_length": raw.header_length,
        }

    if drain:
        app.add_middleware(DrainRequestBody, max_drain_bytes=32 * MiB, max_drain_seconds=5.0)
    return app


class Client:
    """A synchronous in-process client of an ASGI app (httpx's ``ASGITransport``, which
    streams a request body chunk by chunk, as a server does)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def post(
        self,
        url: str,
        *,
        content: bytes | AsyncIterator[bytes],
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        async def post() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as aclient:
                return await aclient.post(url, content=content, headers=headers)

        return anyio.run(post)


async def chunks(count: int, size: int = 100) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"x" * size


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(make_app())


def problem_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == errors.PROBLEM_CONTENT_TYPE
    document: dict[str, Any] = response.json()
    assert document["status"] == status
    assert set(document) == {"type", "title", "status", "detail", "errors"}
    assert document["errors"] and document["errors"][0]["msg"] == document["detail"]
    return document


# -- accepted bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_body_just_under_the_limit_is_accepted(client: Client, content_type: str) -> None:
    response = client.post(
        "/compute", content=b" " * (LIMIT - 1), headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"size": LIMIT - 1, "content_type": "json", "header_length": None}
    assert "close" not in response.headers.get("connection", "")


def test_body_exactly_at_the_limit_is_accepted(client: Client) -> None:
    response = client.post("/compute", content=b"1" * LIMIT, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["size"] == LIMIT


def test_chunked_body_under_the_limit_is_accepted(client: Client) -> None:
    response = client.post("/compute", content=chunks(10), headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["size"] == 1000


@pytest.mark.parametrize("header_length", ["0", "12", " 5 ", "300"])
def test_binary_body_is_accepted(client: Client, header_length: str) -> None:
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": header_length,
    }
    response = client.post("/compute", content=b"\0" * 300, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "size": 300,
        "content_type": "binary",
        "header_length": int(header_length),
    }


# -- 415 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", "multipart/form-data"],
)
def test_other_content_types_are_415(client: Client, content_type: str) -> None:
    response = client.post("/compute", content=b"{}", headers={"content-type": content_type})
    document = problem_of(response, 415)
    assert "application/json" in document["detail"]
    assert "application/octet-stream" in document["detail"]
    assert repr(content_type) in document["detail"]
    assert document["errors"][0]["loc"] == ["header", "content-type"]


def test_missing_content_type_is_415(client: Client) -> None:
    response = client.post("/compute", content=b"{}")
    assert "content-type" not in response.request.headers
    document = problem_of(response, 415)
    assert "no Content-Type" in document["detail"]
    assert "application/json or application/octet-stream" in document["detail"]


def test_json_in_another_charset_is_415(client: Client) -> None:
    headers = {"content-type": "application/json; charset=latin-1"}
    document = problem_of(client.post("/compute", content=b"{}", headers=headers), 415)
    assert "charset" in document["detail"] and "UTF-8" in document["detail"]


def test_an_encoded_body_is_415_naming_its_content_encoding(client: Client) -> None:
    """A gzip body was read as JSON text ("not valid UTF-8"): the encoding is what is
    wrong (RFC 9110: 415 for a content coding the server does not take)."""
    body = gzip.compress(b'{"y_true": [1], "y_pred": [0.5]}')
    headers = {**JSON, "content-encoding": "gzip"}
    document = problem_of(client.post("/compute", content=body, headers=headers), 415)
    assert document["detail"].startswith(
        "the request body is sent with Content-Encoding 'gzip', which the service does not "
        "decode; expected the body as it is"
    )
    assert document["errors"][0]["loc"] == ["header", "content-encoding"]
    for same in ("identity", "Identity", ""):
        response = client.post(
            "/compute", content=b"{}", headers={**JSON, "content-encoding": same}
        )
        assert response.status_code == 200, response.text


# -- 400 -----------------------------------------------------------------------------------


def test_empty_body_is_400(client: Client) -> None:
    document = problem_of(client.post("/compute", content=b"", headers=JSON), 400)
    assert "empty" in document["detail"] and "received 0 bytes" in document["detail"]
    assert document["errors"][0]["loc"] == ["body"]


def test_binary_without_header_length_is_400(client: Client) -> None:
    headers = {"content-type": "application/octet-stream"}
    document = problem_of(client.post("/compute", content=b"{}", headers=headers), 400)
    assert "Inference-Header-Content-Length is missing" in document["detail"]
    assert document["errors"][0]["loc"] == ["header", "inference-header-content-length"]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("abc", ["not an integer", "'abc'"]),
        ("1.5", ["not an integer", "'1.5'"]),
        ("", ["not an integer"]),
        ("+3", ["not an integer"]),
        ("-1", ["negative", "'-1'"]),
        ("11", ["greater than the body", "10 bytes", "received 11"]),
        ("9" * 5000, ["greater than the body"]),
    ],
)
def test_binary_with_bad_header_length_is_400(client: Client, value: str, words: list[str]) -> None:
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": value,
    }
    document = problem_of(client.post("/compute", content=b"0123456789", headers=headers), 400)
    for word in words:
        assert word in document["detail"]
    assert "non-negative integer" in document["detail"] or "greater" in document["detail"]


def test_binary_with_two_different_header_lengths_is_400(client: Client) -> None:
    """Which one splits the body is anybody's guess; identical copies are one value."""
    headers = [
        ("content-type", "application/octet-stream"),
        ("inference-header-content-length", "5"),
        ("inference-header-content-length", "7"),
    ]
    document = problem_of(client.post("/compute", content=b"0123456789", headers=headers), 400)
    assert "sent 2 times with different values" in document["detail"]
    assert "'5, 7'" in document["detail"]
    assert document["errors"][0]["loc"] == ["header", "inference-header-content-length"]
    same = [*headers[:2], ("inference-header-content-length", " 5")]
    response = client.post("/compute", content=b"0123456789", headers=same)
    assert response.status_code == 200 and response.json()["header_length"] == 5, response.text


# -- 413 -----------------------------------------------------------------------------------


def assert_too_large(document: dict[str, Any], limit: int = LIMIT) -> None:
    detail = document["detail"]
    assert f"limit of {limit} bytes" in detail
    assert "LOSS_SERVICE_MAX_BODY_BYTES" in detail
    assert "received" in detail
    assert document["type"] == "urn:loss-service:problem:payload-too-large"


def test_declared_content_length_over_the_limit_is_413(client: Client) -> None:
    response = client.post("/compute", content=b"x" * (LIMIT + 1), headers=JSON)
    document = problem_of(response, 413)
    assert_too_large(document)
    assert f"declared Content-Length of {LIMIT + 1} bytes" in document["detail"]
    assert response.headers["connection"] == "close"


def test_the_413_says_the_limit_once_in_bytes_and_mib() -> None:
    response = Client(make_app(limit=64 * MiB)).post(
        "/compute", content=b"x" * 10, headers={**JSON, "content-length": str(64 * MiB + 1)}
    )
    detail = problem_of(response, 413)["detail"]
    assert detail.count(str(64 * MiB)) == 1
    assert "(64 MiB" in detail
    assert "expected at most" not in detail


def test_chunked_body_over_the_limit_is_413(client: Client) -> None:
    response = client.post("/compute", content=chunks(30), headers=JSON)
    assert "content-length" not in response.request.headers
    document = problem_of(response, 413)
    assert_too_large(document)
    assert "so far" in document["detail"]
    assert response.headers["connection"] == "close"


def test_unread_body_of_an_unsupported_type_closes_the_connection(client: Client) -> None:
    headers = {"content-type": "text/plain"}
    response = client.post("/compute", content=b"x" * (LIMIT * 4), headers=headers)
    problem_of(response, 415)
    assert response.headers["connection"] == "close"


class CountingReceive:
    """ASGI middleware that counts the request body the app below it reads."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.body_messages = 0
        self.body_bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.body_messages += 1
                self.body_bytes += len(message.get("body", b""))
            return message

        await self.app(scope, counting, send)


def test_declared_content_length_over_the_limit_is_refused_before_reading() -> None:
    counter = CountingReceive(make_app(drain=False))
    response = Client(counter).post("/compute", content=b"x" * (LIMIT * 10), headers=JSON)
    problem_of(response, 413)
    assert counter.body_messages == 0


def test_streamed_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    chunk, sent = 100, 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b"x" * chunk

    counter = CountingReceive(make_app(drain=False))
    response = Client(counter).post("/compute", content=body(), headers=JSON)
    document = problem_of(response, 413)
    assert f"received {LIMIT // chunk * chunk + chunk} bytes so far" in document["detail"]
    assert counter.body_bytes == LIMIT // chunk * chunk + chunk
    assert sent < 1000


def test_client_disconnecting_in_the_middle_of_the_body_is_400() -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": b"[1, 2", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/compute",
        "raw_path": b"/compute",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "server": ("test", 80),
        "client": ("test", 1234),
    }

    async def main() -> None:
        await make_app()(scope, receive, send)

    anyio.run(main)
    assert sent[0]["status"] == 400
    document = json.loads(sent[1]["body"])
    assert "disconnected" in document["detail"] and "received 5 bytes" in document["detail"]


def test_settings_default_when_the_app_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOSS_SERVICE_MAX_BODY_BYTES", raising=False)
    app = make_app()
    del app.state.settings
    response = Client(app).post("/compute", content=b"x" * (LIMIT * 4), headers=JSON)
    assert response.status_code == 200
    assert Settings().max_body_bytes > LIMIT * 4


# -- the drain's bounds, at the ASGI level --------------------------------------------------


async def refuse_at_once(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse({"refused": True}, status_code=413)
    await response(scope, receive, send)


def run_drain(
    receive: Receive,
    headers: list[tuple[bytes, bytes]],
    app: ASGIApp = refuse_at_once,
    **limits: Any,
) -> tuple[list[Message], float]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/",
        "headers": headers,
    }

    async def main() -> None:
        await DrainRequestBody(app, **limits)(scope, receive, send)

    start = time.monotonic()
    anyio.run(main)
    return sent, time.monotonic() - start


def test_drain_stops_at_its_byte_bound() -> None:
    received = 0

    async def endless() -> Message:
        nonlocal received
        received += 1000
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    headers = [(b"transfer-encoding", b"chunked")]
    sent, _ = run_drain(endless, headers, max_drain_bytes=10_000, max_drain_seconds=5.0)
    assert received == 11_000
    start, whole, end = sent
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(whole["body"]) == {"refused": True} and whole["more_body"] is True
    assert end == {"type": "http.response.body", "body": b"", "more_body": False}


def test_a_503_drains_only_a_little_of_the_body() -> None:
    """A "retry later" answer reads at most RETRY_DRAIN_BYTES of what the client still
    sends (enough for the answer to reach it), not the whole body."""
    received = 0

    async def endless() -> Message:
        nonlocal received
        received += 64 * 1024
        return {"type": "http.request", "body": b"x" * (64 * 1024), "more_body": True}

    async def busy(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"retry": True}, status_code=503)(scope, receive, send)

    headers = [(b"content-length", b"67108864")]
    sent, _ = run_drain(endless, headers, busy, max_drain_bytes=32 * MiB)
    assert received <= RETRY_DRAIN_BYTES + 2 * 64 * 1024
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_drain_stops_at_its_time_bound() -> None:
    async def stalled() -> Message:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    headers = [(b"content-length", b"100")]
    sent, elapsed = run_drain(stalled, headers, max_drain_bytes=10_000, max_drain_seconds=0.2)
    assert 0.15 < elapsed < 3
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_drain_stops_when_the_client_disconnects() -> None:
    async def gone() -> Message:
        return {"type": "http.disconnect"}

    headers = [(b"content-length", b"100")]
    sent, elapsed = run_drain(gone, headers, max_drain_seconds=5.0)
    assert elapsed < 3 and len(sent) == 3


def test_no_drain_without_a_request_body_or_when_100_continue_was_not_sent() -> None:
    async def never() -> Message:
        raise AssertionError("the drain must not read")

    for headers in (
        [],
        [(b"content-length", b"0")],
        [(b"content-length", b"100"), (b"expect", b"100-continue")],
    ):
        sent, _ = run_drain(never, headers)
        assert len(sent) == 2 and json.loads(sent[-1]["body"]) == {"refused": True}
        assert not sent[-1].get("more_body", False)
        assert (b"connection", b"close") in sent[0]["headers"]  # a 413 always closes


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], (True, False)),
        ([(b"content-length", b"0")], (True, False)),
        ([(b"Content-Length", b" 000 ")], (True, False)),
        ([(b"content-length", b"12")], (False, False)),
        ([(b"content-length", b"0"), (b"content-length", b"5")], (False, False)),
        ([(b"transfer-encoding", b"chunked")], (False, False)),
        ([(b"content-length", b"3"), (b"Expect", b" 100-Continue ")], (False, True)),
        ([(b"expect", b"something-else")], (True, False)),
    ],
)
def test_drain_reads_the_request_headers_once(
    headers: list[tuple[bytes, bytes]], expected: tuple[bool, bool]
) -> None:
    """(no body to read, expects 100 Continue), from one pass over the headers."""
    from service.api import drain

    assert drain._request_headers(headers) == expected


def test_drain_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="max_drain_bytes"):
        DrainRequestBody(refuse_at_once, max_drain_bytes=-1)
    with pytest.raises(ValueError, match="max_drain_seconds"):
        DrainRequestBody(refuse_at_once, max_drain_seconds=float("inf"))


# -- through a real uvicorn, with a raw socket client ------------------------------------------


@contextmanager
def serving(app: ASGIApp, http: str) -> Iterator[int]:
    """Runs ``app`` under uvicorn on a free loopback port in a thread; yields the port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port: int = listener.getsockname()[1]
    config = uvicorn.Config(
        app,
        http=http,
        lifespan="off",
        log_config=None,
        log_level="error",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        listener.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def read_response(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, read from ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before the response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        body += chunk
    return int(status), headers, body[:length]


def exchange(port: int, head: bytes, body: Iterable[bytes]) -> tuple[int, dict[str, str], bytes]:
    """Sends ``head`` then all of ``body`` (any send error fails the test), then reads
    the response, and checks the server then ends the connection with a clean close."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as conn:
        conn.sendall(head)
        for chunk in body:
            conn.sendall(chunk)
        status, headers, content = read_response(conn)
        if headers.get("connection") == "close":
            assert conn.recv(1) == b"", "expected the server to close after Connection: close"
        return status, headers, content


def fixed_body(total: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    block = b"x" * chunk
    for start in range(0, total, chunk):
        yield block[: min(chunk, total - start)]


def chunked_body(total: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    for piece in fixed_body(total, chunk):
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


HTTP_IMPLEMENTATIONS = ["h11", "httptools"]


@pytest.fixture(scope="module", params=HTTP_IMPLEMENTATIONS)
def server_port(request: pytest.FixtureRequest) -> Iterator[int]:
    with serving(make_app(limit=MiB), request.param) as port:
        yield port


@pytest.mark.timeout(10)
def test_real_server_413_is_readable_while_the_client_is_still_sending(server_port: int) -> None:
    total = 8 * MiB
    head = (
        b"POST /compute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % total
    )
    status, headers, content = exchange(server_port, head, fixed_body(total))
    assert status == 413
    assert headers["content-type"] == errors.PROBLEM_CONTENT_TYPE
    assert headers["connection"] == "close"
    document = json.loads(content)
    assert document["status"] == 413
    assert_too_large(document, MiB)
    assert f"declared Content-Length of {total} bytes" in document["detail"]


@pytest.mark.timeout(10)
def test_real_server_chunked_413_is_readable_while_the_client_is_still_sending(
    server_port: int,
) -> None:
    head = (
        b"POST /compute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    status, headers, content = exchange(server_port, head, chunked_body(4 * MiB))
    assert status == 413
    assert headers["connection"] == "close"
    document = json.loads(content)
    assert_too_large(document, MiB)
    assert "so far" in document["detail"]


@pytest.mark.timeout(10)
def test_real_server_415_for_a_large_body_is_readable(server_port: int) -> None:
    total = 4 * MiB
    head = (
        b"POST /compute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: text/csv\r\nContent-Length: %d\r\n\r\n" % total
    )
    status, headers, content = exchange(server_port, head, fixed_body(total))
    assert status == 415
    assert headers["connection"] == "close"
    assert json.loads(content)["status"] == 415


@pytest.mark.timeout(10)
def test_real_server_413_without_100_continue(server_port: int) -> None:
    head = (
        b"POST /compute HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (8 * MiB)
    )
    status, headers, content = exchange(server_port, head, [])  # never sends the body
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(content)["status"] == 413


@pytest.mark.timeout(10)
def test_real_server_accepts_a_body_just_under_the_limit_and_keeps_the_connection(
    server_port: int,
) -> None:
    total = MiB - 1
    head = (
        b"POST /compute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % total
    )
    with socket.create_connection(("127.0.0.1", server_port), timeout=SOCKET_TIMEOUT) as conn:
        for _ in range(2):  # the same connection, twice
            conn.sendall(head)
            for chunk in fixed_body(total):
                conn.sendall(chunk)
            status, headers, content = read_response(conn)
            assert status == 200, content
            assert "connection" not in headers
            assert json.loads(content)["size"] == total


class OutermostDrainApp(FastAPI):
    """The wiring that covers every answer, unhandled errors' 500s included: the drain
    outside Starlette's ``ServerErrorMiddleware`` (which ``add_middleware`` cannot reach)."""

    def build_middleware_stack(self) -> ASGIApp:
        return DrainRequestBody(
            super().build_middleware_stack(), max_drain_bytes=32 * MiB, max_drain_seconds=5.0
        )


@pytest.mark.timeout(10)
@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
def test_real_server_500_before_reading_is_readable_with_the_drain_outermost(http: str) -> None:
    app = OutermostDrainApp()

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"status": 500}, status_code=500)

    @app.post("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug, before the body was read")

    app.add_exception_handler(Exception, unexpected)
    total = 4 * MiB
    head = b"POST /bug HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % total
    with serving(app, http) as port:
        status, headers, content = exchange(port, head, fixed_body(total))
    assert status == 500
    assert headers["connection"] == "close"
    assert json.loads(content) == {"status": 500}


# -- a body that stalls -----------------------------------------------------------------------


def test_a_body_that_stalls_gets_a_408_and_is_not_drained() -> None:
    app = make_app(limit=MiB)
    app.state.settings = Settings(max_body_bytes=MiB, body_timeout=0.5)
    with serve_in_thread(app) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            start = time.monotonic()
            sock.sendall(
                b"POST /compute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + b"x" * 10
            )
            answer = b""
            while chunk := sock.recv(65536):  # the server closes: no drain
                answer += chunk
            elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"connection: close" in answer.lower()
    assert b"LOSS_SERVICE_BODY_TIMEOUT" in answer and b"after 10 bytes" in answer
    assert 0.4 < elapsed < 3


def test_a_body_that_trickles_too_slowly_gets_a_408() -> None:
    app = make_app(limit=MiB)
    app.state.settings = Settings(max_body_bytes=MiB, body_timeout=0.5, min_body_rate=1000)
    with serve_in_thread(app) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            start = time.monotonic()
            sock.sendall(
                b"POST /compute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n"
            )
            answer = b""
            try:
                for _ in range(40):  # a byte every 0.1 s never stalls, but is too slow
                    sock.sendall(b" ")
                    time.sleep(0.1)
                    sock.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        answer += sock.recv(65536)
                    sock.setblocking(True)
                    if answer:
                        break
            except (BrokenPipeError, ConnectionResetError):
                pass
            sock.settimeout(5)
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except (ConnectionResetError, TimeoutError):
                pass
            elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"LOSS_SERVICE_MIN_BODY_RATE" in answer
    assert elapsed < 3
