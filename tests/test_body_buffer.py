"""read_body holds a body once, in one buffer that grows only with the bytes that arrived."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from service.api.body import read_body
from service.settings import Settings


def _request(chunks: list[bytes], declared: int | None) -> Request:
    app = FastAPI()
    app.state.settings = Settings(max_body_bytes=1 << 20)
    headers = [(b"content-type", b"application/json")]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "app": app}
    return Request(scope, receive)


def test_declared_length_fills_one_buffer() -> None:
    chunks = [b'{"y_true": ', b"[1, 2], ", b'"y_pred": [[0.5, 0.5], [0.2, 0.8]]}']
    raw = asyncio.run(read_body(_request(chunks, sum(map(len, chunks)))))
    assert isinstance(raw.data, bytearray)
    assert raw.data == b"".join(chunks)


def test_more_or_fewer_bytes_than_declared_keep_what_came() -> None:
    chunks = [b'{"a": ', b"[1, 2]}"]
    for declared in (5, 20):
        raw = asyncio.run(read_body(_request(chunks, declared)))
        assert bytes(raw.data) == b"".join(chunks)


def test_without_a_declared_length_the_chunks_are_joined() -> None:
    chunks = [b'{"a": ', b"1}"]
    raw = asyncio.run(read_body(_request(chunks, None)))
    assert raw.data == b'{"a": 1}'


def test_a_declared_length_allocates_nothing_before_bytes_arrive() -> None:
    """A request that declares 64 MiB and sends 9 bytes holds 9 bytes, not 64 MiB."""
    import tracemalloc

    app_request = _request([b'{"a": 1}', b" "], 64 << 20)
    app_request.app.state.settings = Settings(max_body_bytes=128 << 20)
    tracemalloc.start()
    try:
        raw = asyncio.run(read_body(app_request))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bytes(raw.data) == b'{"a": 1} '
    assert peak < 1 << 20
