"""One path for every compute endpoint: read the body, decode it, admit it, compute.

A route resolves its loss or metric first (an unknown name is a 404 before any body
byte is read), then calls :func:`respond` with the operation to run on the decoded
body. The body is read on the event loop (:func:`service.api.body.read_body`: content
type, size, stall timeout, memory reservation); decoding and computing run in the
thread pool, where :func:`admit` first checks the request's counts (heads, entries)
and reserves its estimated working memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import anyio.to_thread
import numpy as np
from fastapi import Request, Response

from service.admission import ArrayInfo, give_back_memory, working_bytes
from service.api.body import RawBody, read_body
from service.api.responses import computed_response
from service.arrays import DTYPES, parse_binary, parse_json_body
from service.errors import PayloadTooLarge
from service.evaluation import ARRAY_FIELDS
from service.settings import Settings

Operation = Callable[[Any, int], dict[str, Any]]

_HEADS_ENV = "LOSS_SERVICE_MAX_HEADS"
_ENTRIES_ENV = "LOSS_SERVICE_MAX_ENTRIES"


def decode(raw: RawBody, settings: Settings) -> Any:
    """The request body as JSON values, with binary tensors already as NumPy views."""
    if raw.content_type == "binary":
        assert raw.header_length is not None
        return parse_binary(raw.data, raw.header_length, settings.max_elements)
    reservation = raw.reservation
    body = parse_json_body(
        raw.data,
        general_max_bytes=settings.max_general_json_bytes,
        before_general=None if reservation is None else reservation.grow,
    )
    if isinstance(raw.data, bytearray):
        # Nothing refers to the JSON text any more (the arrays are parsed copies): its memory
        # goes now, before the computation, not when the request ends.
        with suppress(BufferError):
            raw.data.clear()
    return body


def _heads(body: Any) -> list[Any]:
    if isinstance(body, dict) and isinstance(body.get("outputs"), dict):
        return list(body["outputs"].values())
    return [body]


def _array_info(value: Any, max_elements: int) -> Iterator[ArrayInfo]:
    """What a field will decode to (element count and dtype, nothing allocated): decoded
    arrays as they are, typed arrays from their header. Anything else is small (the
    general parser's limit) or invalid (refused when decoded)."""
    if isinstance(value, np.ndarray):
        yield ArrayInfo.of(value)
    elif isinstance(value, dict):
        dtype, shape = value.get("dtype"), value.get("shape")
        if dtype in DTYPES and isinstance(shape, list) and all(type(d) is int for d in shape):
            n = math.prod(shape)
            if 0 <= n <= max_elements:
                rows = shape[0] if shape else 1
                yield ArrayInfo(n, rows, np.dtype(dtype))


def admit(raw: RawBody, body: Any, settings: Settings) -> None:
    """Refuse a decoded body whose counts are over the limits (413), and reserve its
    working memory (413 over the per-request limit, 503 over the worker's budget)."""
    heads = _heads(body)
    if len(heads) > settings.max_heads:
        raise PayloadTooLarge.at(
            ("outputs",),
            f"`outputs` has {len(heads)} heads, over the limit of {settings.max_heads} "
            f"(setting {_HEADS_ENV}); expected fewer heads per request.",
        )
    arrays: list[ArrayInfo] = []
    for head in heads:
        if not isinstance(head, dict):
            continue
        for key in ("losses", "metrics", "reports"):
            entries = head.get(key)
            if isinstance(entries, list) and len(entries) > settings.max_entries:
                loc = ("outputs", "...", key) if len(heads) > 1 else (key,)
                raise PayloadTooLarge.at(
                    loc,
                    f"`{key}` has {len(entries)} entries, over the limit of "
                    f"{settings.max_entries} (setting {_ENTRIES_ENV}); expected fewer "
                    "entries per request.",
                )
        for name in ARRAY_FIELDS:
            arrays.extend(_array_info(head.get(name), settings.max_elements))
    if raw.reservation is None:
        return
    itemsize = 8 if any(isinstance(h, dict) and h.get("dtype") == "float64" for h in heads) else 4
    # A binary body's arrays are views of it: the body stays in memory to the end.
    held = len(raw.data) if raw.content_type == "binary" else 0
    decoded = sum(a.size * a.dtype.itemsize for a in arrays)
    raw.reservation.require(working_bytes(arrays, itemsize) + decoded, held)


def _run(raw: RawBody, settings: Settings, operation: Operation) -> dict[str, Any]:
    body = decode(raw, settings)
    admit(raw, body, settings)
    # A sum that overflows is refused by the operation's check of its results, not
    # reported as a warning of the process.
    with np.errstate(over="ignore", invalid="ignore"):
        return operation(body, settings.max_elements)


async def respond(request: Request, operation: Operation) -> Response:
    """Read the body, then decode, admit and compute it in the thread pool."""
    settings: Settings = request.app.state.settings
    raw = await read_body(request)
    peak = raw.reservation.peak if raw.reservation is not None else 0
    try:
        result = await anyio.to_thread.run_sync(_run, raw, settings, operation)
    finally:
        if raw.reservation is not None:
            peak = raw.reservation.peak
        raw.release()
        del raw
        if settings.trim_after_bytes and peak >= settings.trim_after_bytes:
            # A large request's buffers are freed: hand the pages back to the system now,
            # rather than keep the worker at its burst size.
            await anyio.to_thread.run_sync(give_back_memory)
    return computed_response(result)
