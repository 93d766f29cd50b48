"""read_body holds a body once, in one buffer whose memory is taken only as bytes arrive."""

from __future__ import annotations

import asyncio
import itertools
import mmap
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from service.api.body import PRESIZE_MIN_BYTES, read_body
from service.json_body import ScannedBody, _walk_strings
from service.settings import Settings


def _request(
    chunks: list[bytes], declared: int | None, before_each: Callable[[], None] | None = None
) -> Request:
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
        if before_each is not None:
            before_each()
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


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * mmap.PAGESIZE


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_a_declared_length_takes_memory_only_as_bytes_arrive() -> None:
    """A request that declares 64 MiB and sends 9 bytes holds 9 bytes, not 64 MiB, while
    the rest is awaited: its buffer's pages are the system's until they are written."""
    resident: list[int] = []
    request = _request(
        [b'{"a": 1}', b" "], 64 << 20, lambda: resident.append(_resident_bytes() - before)
    )
    request.app.state.settings = Settings(max_body_bytes=128 << 20)
    before = _resident_bytes()
    raw = asyncio.run(read_body(request))
    assert bytes(raw.data) == b'{"a": 1} '
    assert max(resident) < 16 << 20


@pytest.mark.parametrize("declared", [PRESIZE_MIN_BYTES, 6 << 20])
@pytest.mark.parametrize("sent", [PRESIZE_MIN_BYTES - 3, 5 << 20, 6 << 20, (6 << 20) + 7])
def test_a_large_declared_length_keeps_exactly_what_came(declared: int, sent: int) -> None:
    """Read into a buffer of the declared size: fewer bytes than declared leave it
    shorter, more make it grow, and every byte is where it arrived."""
    body = np.random.default_rng(sent).integers(0, 256, sent, np.uint8).tobytes()
    cuts = [0, 1, 65536, 65537, 1 << 20, (3 << 20) + 5, sent]
    chunks = [body[a:b] for a, b in itertools.pairwise(cuts)]
    request = _request(chunks, declared)
    request.app.state.settings = Settings(max_body_bytes=16 << 20)
    raw = asyncio.run(read_body(request))
    assert isinstance(raw.data, bytearray)
    assert len(raw.data) == sent
    assert raw.data == body


def _large_json(nbytes: int) -> bytes:
    text = b"A" * (nbytes - 40)
    return b'{"y_true": [0], "note": "\\"", "y": "' + text + b'"}'


def test_a_large_json_body_is_scanned_as_it_arrives() -> None:
    body = _large_json(PRESIZE_MIN_BYTES + 100)
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    request = _request(chunks, len(body))
    request.app.state.settings = Settings(max_body_bytes=16 << 20)
    raw = asyncio.run(read_body(request))
    assert isinstance(raw.data, ScannedBody) and raw.data == body
    scan = raw.data.scan
    assert scan is not None and scan.covers(raw.data)
    assert scan.ascii and scan.backslash
    quotes = scan.quotes()
    assert quotes is not None
    np.testing.assert_array_equal(quotes, _walk_strings(body, 256))


@pytest.mark.parametrize("declared", [None, PRESIZE_MIN_BYTES - 1])
def test_small_or_chunked_json_bodies_are_not_scanned(declared: int | None) -> None:
    body = _large_json(PRESIZE_MIN_BYTES - 1)
    request = _request([body[:100], body[100:]], declared)
    request.app.state.settings = Settings(max_body_bytes=16 << 20)
    raw = asyncio.run(read_body(request))
    assert type(raw.data) is bytearray and raw.data == body


def test_binary_bodies_are_not_scanned() -> None:
    body = b'{"y": 1}' + bytes(PRESIZE_MIN_BYTES)
    request = _request([body], len(body))
    request.scope["headers"] = [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(len(body)).encode()),
        (b"inference-header-content-length", b"8"),
    ]
    request.app.state.settings = Settings(max_body_bytes=16 << 20)
    raw = asyncio.run(read_body(request))
    assert type(raw.data) is bytearray and raw.data == body
