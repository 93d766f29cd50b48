"""One path for every compute endpoint: read the body, decode it, admit it, compute.

A route resolves its loss or metric first (an unknown name is a 404 before any body
byte is read), then calls :func:`respond` with the operation to run on the decoded
body. The body is read on the event loop (:func:`service.api.body.read_body`: content
type, size, stall timeout, memory reservation); :func:`admit` then checks the request's
counts (heads, entries) and reserves its estimated working memory before anything is
computed.

Where the work runs depends on its size (setting ``inline_max_elements``):

- a body of at most ``INLINE_BYTES_PER_ELEMENT × inline_max_elements`` bytes is decoded
  and admitted on the event loop, and if its arrays hold at most ``inline_max_elements``
  elements (each counted once per loss, metric or report the request names) it is
  computed there too: tens of microseconds, less than the hop to a worker thread and
  back;
- anything bigger is decoded, admitted and computed in the thread pool, so that the
  event loop keeps serving other connections meanwhile.

:data:`ROUTES` names the compute routes and the operation each runs; the routes of
``service.api.routes`` call it, and :func:`serve` answers the same requests straight from
the ASGI scope (``service.infra.middleware.Operations`` calls it for them): the same intake,
limits, budget and answers, without the framework's routing and dependency solving.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import partial
from typing import Any, Final, TypeVar

import anyio.to_thread
import numpy as np
from fastapi import Request, Response
from starlette.types import Receive, Scope, Send

from service import evaluation, registry
from service.admission import ArrayInfo, give_back_memory, working_bytes
from service.api.body import RawBody, read_body
from service.api.responses import computed_response
from service.arrays import parse_binary
from service.errors import PayloadTooLarge
from service.json_body import parse_json_body
from service.settings import Settings
from service.wire import ARRAY_FIELDS, DTYPES

Operation = Callable[[Any, int], dict[str, Any]]
#: What an operation on a decoded document gives back.
T = TypeVar("T")

_HEADS_ENV = "LOSS_SERVICE_MAX_HEADS"
_ENTRIES_ENV = "LOSS_SERVICE_MAX_ENTRIES"
_ENTRY_KEYS: Final = ("losses", "metrics", "reports")

#: Bodies of at most this many bytes per element of ``inline_max_elements`` are decoded on
#: the event loop (a JSON number takes 2 to 20 bytes of text, a binary one 1 to 8).
INLINE_BYTES_PER_ELEMENT: Final = 16


# ---- the compute routes ------------------------------------------------------------------


def loss_operation(name: str) -> Operation:
    """``POST /v1/losses/{name}`` (404 for an unknown loss, before the body is read)."""
    registry.get_loss(name)
    return partial(evaluation.loss, name)


def metric_operation(name: str) -> Operation:
    """``POST /v1/metrics/{name}`` (404 for an unknown metric, before the body is read)."""
    registry.get_metric(name)
    return partial(evaluation.metric, name)


def evaluate_operation() -> Operation:
    """``POST /v1/evaluate``."""
    return evaluation.evaluate


#: The compute routes (``POST``), by path template: the operation that a request's path
#: parameters name.
ROUTES: Final[Mapping[str, Callable[[Mapping[str, str]], Operation]]] = {
    "/v1/losses/{name}": lambda params: loss_operation(params["name"]),
    "/v1/metrics/{name}": lambda params: metric_operation(params["name"]),
    "/v1/evaluate": lambda params: evaluate_operation(),
}


# ---- decoding and admission --------------------------------------------------------------


def decode(raw: RawBody, settings: Settings) -> Any:
    """The request body decoded: its document, JSON values with binary tensors already as
    NumPy views."""
    if raw.content_type == "binary":
        assert raw.header_length is not None
        return parse_binary(raw.data, raw.header_length, settings.max_elements)
    reservation = raw.reservation
    document = parse_json_body(
        raw.data,
        general_max_bytes=settings.max_general_json_bytes,
        before_general=None if reservation is None else reservation.grow,
    )
    if isinstance(raw.data, bytearray):
        # Unless typed arrays' base64 text is read in place (views of it: BufferError, and
        # admit counts it as held), nothing refers to the JSON text any more (the arrays are
        # parsed copies): its memory goes now, before the computation, not at the end.
        with suppress(BufferError):
            raw.data.clear()
    return document


def _heads(document: Any) -> list[Any]:
    if isinstance(document, dict) and isinstance(document.get("outputs"), dict):
        return list(document["outputs"].values())
    return [document]


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
            # An empty array costs nothing (and is refused when decoded); its first
            # dimension, maybe 2**62, is no count of rows.
            if 0 < n <= max_elements:
                rows = shape[0] if shape else 1
                yield ArrayInfo(n, rows, np.dtype(dtype))


def check_counts(document: Any, settings: Settings) -> None:
    """Refuse a document (an evaluate body, or a streaming evaluation's settings) with
    more heads or entries than the limits allow (413)."""
    heads = _heads(document)
    if len(heads) > settings.max_heads:
        raise PayloadTooLarge.at(
            ("outputs",),
            f"`outputs` has {len(heads)} heads, over the limit of {settings.max_heads} "
            f"(setting {_HEADS_ENV}); expected fewer heads per request.",
        )
    several = isinstance(document, dict) and isinstance(document.get("outputs"), dict)
    names = list(document["outputs"]) if several else [None]
    for name, head in zip(names, heads, strict=True):
        if not isinstance(head, dict):
            continue
        for key in _ENTRY_KEYS:
            entries = head.get(key)
            if isinstance(entries, list) and len(entries) > settings.max_entries:
                loc = (key,) if name is None else ("outputs", name, key)
                raise PayloadTooLarge.at(
                    loc,
                    f"`{key}` has {len(entries)} entries, over the limit of "
                    f"{settings.max_entries} (setting {_ENTRIES_ENV}); expected fewer "
                    "entries per request.",
                )


def admit(raw: RawBody, document: Any, settings: Settings) -> None:
    """Refuse a decoded document whose counts are over the limits (413), and reserve its
    working memory (413 over the per-request limit, 503 over the worker's budget)."""
    check_counts(document, settings)
    heads = _heads(document)
    arrays: list[ArrayInfo] = []
    for head in heads:
        if not isinstance(head, dict):
            continue
        for name in ARRAY_FIELDS:
            arrays.extend(_array_info(head.get(name), settings.max_elements))
    if raw.reservation is None:
        return
    itemsize = 8 if any(isinstance(h, dict) and h.get("dtype") == "float64" for h in heads) else 4
    # What is left of the body stays in memory to the end: a binary body (its arrays are
    # views of it), a JSON body whose typed arrays' text is read in place; a JSON body whose
    # arrays are all parsed copies was cleared by decode.
    held = len(raw.data)
    decoded = sum(a.size * a.dtype.itemsize for a in arrays)
    raw.reservation.require(working_bytes(arrays, itemsize) + decoded, held)


# ---- where the work runs -----------------------------------------------------------------


def _elements(value: Any) -> int:
    """How many elements an array field holds: a decoded array's size, a typed array's
    shape multiplied out, nested lists counted along their first items (exact for the
    rectangular ones, the only ones the computation accepts)."""
    if isinstance(value, np.ndarray):
        return int(value.size)
    if isinstance(value, list):
        n = 1
        while isinstance(value, list):
            n *= len(value)
            if not value:
                break
            value = value[0]
        return n
    if isinstance(value, dict):
        shape = value.get("shape")
        if isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape):
            return math.prod(shape)
        return 0
    return 1


def work(document: Any) -> int:
    """The elements a decoded body's computation goes over: each head's array elements,
    once per loss, metric or report that the head names (at least once)."""
    total = 0
    for head in _heads(document):
        if not isinstance(head, dict):
            continue
        elements = sum(_elements(head[name]) for name in ARRAY_FIELDS if name in head)
        named = 0
        for key in _ENTRY_KEYS:
            entries = head.get(key)
            if isinstance(entries, list):
                named += len(entries)
        total += elements * max(1, named)
    return total


def _compute(document: Any, settings: Settings, operation: Callable[[Any, int], T]) -> T:
    # A sum that overflows is refused by the operation's check of its results, not
    # reported as a warning of the process.
    with np.errstate(over="ignore", invalid="ignore"):
        return operation(document, settings.max_elements)


def _run(raw: RawBody, settings: Settings, operation: Callable[[Any, int], T]) -> T:
    """Decode, admit and compute (in the thread pool, for a body too big for the loop)."""
    document = decode(raw, settings)
    admit(raw, document, settings)
    return _compute(document, settings, operation)


async def _place(
    raw: RawBody, settings: Settings, operation: Callable[[Any, int], T], inline: bool
) -> T:
    limit = settings.inline_max_elements
    if inline and len(raw.data) <= limit * INLINE_BYTES_PER_ELEMENT:
        document = decode(raw, settings)
        admit(raw, document, settings)
        if work(document) <= limit:
            return _compute(document, settings, operation)
        return await anyio.to_thread.run_sync(_compute, document, settings, operation)
    return await anyio.to_thread.run_sync(_run, raw, settings, operation)


async def compute(
    raw: RawBody, settings: Settings, operation: Callable[[Any, int], T], *, inline: bool = True
) -> T:
    """Decode, admit and compute a body that passed the intake: on the event loop when it
    is small (setting ``inline_max_elements``) and ``inline`` allows it, else in the
    thread pool (where ``operation`` may block). The body's reservation is released when
    done."""
    peak = raw.reservation.peak if raw.reservation is not None else 0
    try:
        return await _place(raw, settings, operation, inline)
    finally:
        if raw.reservation is not None:
            peak = raw.reservation.peak
        raw.release()
        del raw
        if settings.trim_after_bytes and peak >= settings.trim_after_bytes:
            # A large request's buffers are freed: hand the pages back to the system now,
            # rather than keep the worker at its burst size; in a thread of its own while
            # the answer is sent (it takes a few ms), not before it.
            _give_back_memory_soon()


#: One thread hands memory back, one request's worth after another.
_HAND_BACK = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loss-service-trim")


def _give_back_memory_soon() -> None:
    _HAND_BACK.submit(give_back_memory)


async def respond(request: Request, operation: Operation) -> Response:
    """Read the body, then decode, admit and compute it (see :func:`compute`)."""
    settings: Settings = request.app.state.settings
    return computed_response(await compute(await read_body(request), settings, operation))


# ---- the direct path ---------------------------------------------------------------------


def _handler(app: Any, error: Exception) -> Callable[[Request, Exception], Any] | None:
    """The application's handler of ``error`` (by its class, most specific first; none for
    a class that only ``Exception``'s handler takes: that of a failure of the service)."""
    handlers: Mapping[Any, Any] = getattr(app, "exception_handlers", {})
    for cls in type(error).__mro__:
        if cls is Exception:
            break
        handler = handlers.get(cls)
        if handler is not None:
            return handler  # type: ignore[no-any-return]
    return None


async def answer(
    respond: Callable[[Request], Awaitable[Response]], scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer a request straight from the ASGI scope with ``respond``'s response, its
    errors through the application's own handlers (a direct path: without the
    framework's routing, dependency solving and exception middleware)."""
    request = Request(scope, receive, send)
    try:
        response = await respond(request)
    except Exception as error:
        handler = _handler(scope.get("app"), error)
        if handler is None:
            raise
        response = await handler(request, error)
        # Its traceback holds the request's frames, in a cycle through the thread pool's
        # future: dropped now, the body's memory goes now, not at the next full collection.
        error.__traceback__ = None
    await response(scope, receive, send)


async def serve(
    operation_of: Callable[[Mapping[str, str]], Operation],
    scope: Scope,
    receive: Receive,
    send: Send,
    params: Mapping[str, str],
) -> bool:
    """Answer a compute request (one of :data:`ROUTES`, ``params`` its path parameters)
    as its route does, straight from the ASGI scope (see :func:`answer`): the same
    intake, limits, memory budget and answers. Always answers (``True``)."""

    async def respond_to(request: Request) -> Response:
        return await respond(request, operation_of(params))

    await answer(respond_to, scope, receive, send)
    return True
