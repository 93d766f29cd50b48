"""The request-body intake of the compute endpoints: ``read_body``.

It checks the content type, enforces the body limit (``max_body_bytes``, set by
``LOSS_SERVICE_MAX_BODY_BYTES``) before and while reading, answers a body that stalls
(``body_timeout``) with a 408, reserves the body's bytes on the worker's memory budget
(:mod:`service.admission`; a 503 with ``Retry-After`` before a byte is read when the
budget cannot hold the declared length), and hands the route the raw bytes in one
buffer whose memory is taken only as bytes arrive; decoding them is someone else's job::

    raw = await read_body(request)
    try:
        ...
    finally:
        raw.release()

Accepted bodies:

- ``application/json`` (a ``charset`` parameter, if any, must be UTF-8): ``"json"``;
- ``application/octet-stream``: ``"binary"``, the Open Inference Protocol binary
  tensor extension, which needs ``Inference-Header-Content-Length``, the byte
  length of the JSON header that starts the body.

A declared ``Content-Length`` over the limit is answered with a 413 before a byte
of the body is read; a body without one (chunked) is counted while it arrives and
answered with a 413 as soon as it passes the limit. Such early answers reach a
client that is still sending only with ``service.api.drain.DrainRequestBody``
wrapping the app.

A body that declares 4 MiB or more is read into one buffer of that size, in huge pages
where the system has them; a JSON one is scanned for its strings as its chunks arrive
(:class:`service.json_body.BodyScan`), and comes as a ``ScannedBody`` that carries
the scan to the parse.
"""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import re
from dataclasses import dataclass
from functools import cache
from typing import Final, Literal

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from service import errors
from service.admission import JSON_PARSE_FACTOR, MemoryBudget, Reservation, glibc_call, mib
from service.json_body import BodyScan, ScannedBody
from service.settings import Settings
from service.wire import BINARY_MEDIA_TYPE, HEADER_LENGTH_HEADER, JSON_MEDIA_TYPE

MAX_BODY_ENV: Final = "LOSS_SERVICE_MAX_BODY_BYTES"
BODY_TIMEOUT_ENV: Final = "LOSS_SERVICE_BODY_TIMEOUT"
MIN_RATE_ENV: Final = "LOSS_SERVICE_MIN_BODY_RATE"

_ACCEPTED = f"{JSON_MEDIA_TYPE} or {BINARY_MEDIA_TYPE}"
_INTEGER = re.compile(r"-?[0-9]+")
_DIGITS = 40  # longer numbers are not parsed: they are over any limit anyway
_UTF8 = frozenset({"utf-8", "utf8"})
_SHOWN = 64  # longest received value quoted back in a detail

_CONTENT_TYPE_LOC: Final[errors.Loc] = ("header", "content-type")
_CONTENT_LENGTH_LOC: Final[errors.Loc] = ("header", "content-length")
_HEADER_LENGTH_LOC: Final[errors.Loc] = ("header", HEADER_LENGTH_HEADER.lower())
_BODY_LOC: Final[errors.Loc] = ("body",)


@dataclass(frozen=True, slots=True)
class RawBody:
    """A request body that passed the intake: its bytes, what they are, for ``"binary"``
    the length of the JSON header that starts them, and its share of the worker's memory
    budget, given back by :meth:`release`."""

    data: bytes | bytearray
    content_type: Literal["json", "binary"]
    header_length: int | None
    reservation: Reservation | None = None

    def release(self) -> None:
        if self.reservation is not None:
            self.reservation.release()


@cache
def _default_settings() -> Settings:
    return Settings()


def _settings(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    return settings if isinstance(settings, Settings) else _default_settings()


def _clip(value: str) -> str:
    """``value`` cut short for a detail, if long."""
    return value if len(value) <= _SHOWN else value[:_SHOWN] + "..."


def _shown(value: str) -> str:
    """``value`` quoted for a detail, cut short if long."""
    return repr(_clip(value))


def _content_type(request: Request) -> Literal["json", "binary"]:
    raw = request.headers.get("content-type")
    if raw == JSON_MEDIA_TYPE:
        return "json"
    if raw is None or not raw.strip():
        raise errors.UnsupportedMediaType.at(
            _CONTENT_TYPE_LOC,
            f"the request has no Content-Type; expected {_ACCEPTED}",
        )
    media_type, *parameters = (part.strip() for part in raw.split(";"))
    media_type = media_type.lower()
    if media_type == JSON_MEDIA_TYPE:
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            charset = value.strip().strip('"').lower()
            if name.strip().lower() == "charset" and charset not in _UTF8:
                raise errors.UnsupportedMediaType.at(
                    _CONTENT_TYPE_LOC,
                    f"Content-Type {_shown(raw)} has an unsupported charset; "
                    f"expected {JSON_MEDIA_TYPE} in UTF-8 (or {BINARY_MEDIA_TYPE})",
                )
        return "json"
    if media_type == BINARY_MEDIA_TYPE:
        return "binary"
    raise errors.UnsupportedMediaType.at(
        _CONTENT_TYPE_LOC,
        f"Content-Type {_shown(raw)} is not supported; expected {_ACCEPTED}",
    )


def _header_length(request: Request) -> int:
    """The declared JSON-header length of a binary request (checked against the
    body once it has been read)."""
    sent = request.headers.getlist(HEADER_LENGTH_HEADER)
    raw = sent[0] if sent else None
    expected = (
        f"expected {HEADER_LENGTH_HEADER}: <bytes>, the byte length of the JSON header "
        f"that starts an {BINARY_MEDIA_TYPE} body, a non-negative integer"
    )
    if raw is None:
        raise errors.MalformedRequest.at(
            _HEADER_LENGTH_LOC, f"{HEADER_LENGTH_HEADER} is missing; {expected}"
        )
    if len({value.strip() for value in sent}) > 1:
        # Which one splits the body is anybody's guess (as for Content-Length: identical
        # copies are one value).
        raise errors.MalformedRequest.at(
            _HEADER_LENGTH_LOC,
            f"{HEADER_LENGTH_HEADER} is sent {len(sent)} times with different values; "
            f"{expected}, once; received {_shown(', '.join(sent))}",
        )
    text = raw.strip()
    if _INTEGER.fullmatch(text) is None:
        raise errors.MalformedRequest.at(
            _HEADER_LENGTH_LOC,
            f"{HEADER_LENGTH_HEADER} is not an integer; {expected}; received {_shown(raw)}",
        )
    if text.startswith("-"):
        raise errors.MalformedRequest.at(
            _HEADER_LENGTH_LOC,
            f"{HEADER_LENGTH_HEADER} is negative; {expected}; received {_shown(text)}",
        )
    return int(text) if len(text) <= _DIGITS else 10**_DIGITS


def _declared_length(request: Request) -> tuple[int, str] | None:
    """The declared ``Content-Length``, and its text, if there is one."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    text = raw.strip()
    if not text.isascii() or not text.isdigit():
        # The server's HTTP parser rejects these first; this is for other servers.
        raise errors.MalformedRequest.at(
            _CONTENT_LENGTH_LOC,
            f"Content-Length is not a non-negative integer; received {_shown(raw)}",
        )
    return (int(text) if len(text) <= _DIGITS else 10**_DIGITS), text


def _too_large(limit: int, received: str) -> errors.ServiceError:
    return errors.PayloadTooLarge.at(
        _BODY_LOC,
        f"the request body is over the limit of {limit} bytes ({mib(limit)}, setting "
        f"{MAX_BODY_ENV}): received {received}; send smaller batches, or a streaming "
        "evaluation's batches one by one",
    )


#: Bodies that declare at least this many bytes are read into one buffer of that size.
PRESIZE_MIN_BYTES: Final = 4 * 1024 * 1024
_PAGE: Final = mmap.PAGESIZE


def _presized(buffer: bytearray, nbytes: int) -> bool:
    """Make the empty ``buffer`` ``nbytes`` uninitialised bytes long, whose pages the
    system provides only as they are written, in huge pages where it can; whether it could.

    The allocator maps a buffer this large afresh for each request (setting
    ``malloc_mmap_threshold``) and the system faults its pages in one by one as the body
    is copied in: measured, gathering a 21 MB body took 13 ms that way, 4 ms in huge
    pages. Growing the buffer chunk by chunk moves it, and its huge pages, at each step;
    ``bytearray(nbytes)`` would write every page at once, before a byte of the body came.
    """
    resize = getattr(getattr(ctypes, "pythonapi", None), "PyByteArray_Resize", None)
    if resize is None:
        return False
    resize.argtypes = (ctypes.py_object, ctypes.c_ssize_t)
    try:
        resize(buffer, nbytes)
    except MemoryError:
        return False
    madvise = glibc_call("madvise")
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if madvise is not None and advice is not None:
        anchor = ctypes.c_char.from_buffer(buffer)
        address = ctypes.addressof(anchor)
        del anchor  # its hold on the buffer, which could not be resized while it lives
        # Advice is given for whole pages: those that lie inside the buffer.
        start = -(-address // _PAGE) * _PAGE
        stop = (address + nbytes) // _PAGE * _PAGE
        if stop > start:
            madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            madvise(start, stop - start, advice)
    return True


class _StallWatch:
    """One timer for a whole body read: it cancels the reading task once no chunk has
    arrived for ``seconds``. Each chunk only notes its arrival time; the timer, when it
    comes due early (a chunk arrived since it was set), is set again for the rest."""

    __slots__ = ("_handle", "_loop", "_seconds", "_task", "fired", "last")

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._seconds = seconds
        self.fired = False
        self.last = self._loop.time()
        self._handle = self._loop.call_at(self.last + seconds, self._due)

    def _due(self) -> None:
        if self._loop.time() - self.last >= self._seconds:
            self.fired = True
            self._task.cancel()
        else:
            self._handle = self._loop.call_at(self.last + self._seconds, self._due)

    def stop(self) -> None:
        self._handle.cancel()

    def caught(self) -> bool:
        """After a cancellation: whether it was this timer's alone (then taken back)."""
        if not self.fired:
            return False
        self._task.uncancel()
        return not self._task.cancelling()


async def _read(
    receive: Receive,
    limit: int,
    reservation: Reservation,
    stall_seconds: float,
    min_rate: int,
    declared: int | None = None,
    scan: BodyScan | None = None,
) -> bytearray:
    """The body, read once into one buffer that holds only the bytes that arrived: of the
    ``declared`` size from the start for a large body (its pages taken as they are
    written, :func:`_presized`), else grown chunk by chunk. A ``scan`` is fed each chunk
    as it is stored, and comes with the body (a :class:`ScannedBody`).

    Refused as soon as it passes ``limit`` bytes (413), or when no byte arrives for
    ``stall_seconds``, or when it is still arriving ``stall_seconds`` after it started at
    an average under ``min_rate`` bytes a second (408). Bytes beyond what the reservation
    holds (a chunked body, or more than declared) are reserved as they come (503 if the
    budget cannot hold them).
    """
    buffer = bytearray() if scan is None else ScannedBody()
    if declared is not None and PRESIZE_MIN_BYTES <= declared <= limit:
        _presized(buffer, declared)
    # Bytes of the buffer that arrived; past them, a presized buffer is not written yet.
    received = 0
    watch = _StallWatch(stall_seconds)
    started = watch.last
    clock = asyncio.get_running_loop().time
    try:
        while True:
            message = await receive()
            watch.last = now = clock()
            kind = message["type"]
            if kind == "http.disconnect":
                raise ClientDisconnect
            if kind != "http.request":
                continue
            chunk = message.get("body", b"")
            if chunk:
                count = received + len(chunk)
                if count > limit:
                    raise _too_large(
                        limit, f"{count} bytes so far, and the client was still sending"
                    )
                if count > reservation.nbytes:
                    reservation.resize(count)
                if count <= len(buffer):
                    buffer[received:count] = chunk
                else:
                    # More than declared (a server that does not hold the client to its
                    # Content-Length): the buffer grows with what comes.
                    del buffer[received:]
                    buffer += chunk
                received = count
                if scan is not None:
                    scan.feed(buffer, chunk)
            if not message.get("more_body", False):
                # Fewer than declared: the buffer keeps what came.
                del buffer[received:]
                if isinstance(buffer, ScannedBody):
                    buffer.scan = scan
                return buffer
            elapsed = now - started
            if elapsed > stall_seconds and received < min_rate * elapsed:
                raise errors.RequestTimeout.at(
                    _BODY_LOC,
                    f"the request body arrives too slowly: {received} bytes in "
                    f"{elapsed:.0f} s, under the {min_rate} bytes a second expected after the "
                    f"first {stall_seconds:g} s (setting {MIN_RATE_ENV})",
                )
    except ClientDisconnect:
        raise errors.MalformedRequest.at(
            _BODY_LOC,
            "the client disconnected before the request body was complete; received "
            f"{received} bytes",
        ) from None
    except asyncio.CancelledError:
        if watch.caught():
            raise errors.RequestTimeout.at(
                _BODY_LOC,
                f"the request body stalled: no byte arrived for {stall_seconds:g} s "
                f"(setting {BODY_TIMEOUT_ENV}) after {received} bytes; expected the "
                "rest of the body",
            ) from None
        # The server cancels what is still running when its graceful shutdown time is up:
        # an upload cut short then is answered, not failed with a 500 (the cancellation is
        # taken back so that the answer can be sent).
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        raise errors.ServiceUnavailable.at(
            _BODY_LOC,
            f"the service shut down before the request body was complete (received "
            f"{received} bytes); expected: send the request again, after the time in "
            "Retry-After or to another instance",
        ) from None
    finally:
        watch.stop()


async def read_body(request: Request) -> RawBody:
    """The request's body, if its type is accepted, its size within the limit and the
    worker's memory budget can hold it.

    Raises ``UnsupportedMediaType`` (415), ``MalformedRequest`` (400),
    ``PayloadTooLarge`` (413), ``RequestTimeout`` (408) or ``ServiceUnavailable`` (503,
    decided before a byte of the body is read when the length is declared), whose
    ``detail`` says what was expected and received. The body's reservation is the
    caller's to release (:meth:`RawBody.release`) once the answer is computed.
    """
    return await read_body_as(request, _content_type(request))


def declared_content_type(request: Request) -> Literal["json", "binary"] | None:
    """What the request's ``Content-Type`` says the body is (415 for a type or charset
    :func:`read_body` does not accept), or None when it has no ``Content-Type``."""
    raw = request.headers.get("content-type")
    return None if raw is None or not raw.strip() else _content_type(request)


async def read_body_as(request: Request, content_type: Literal["json", "binary"]) -> RawBody:
    """The request's body read as ``content_type``, which the caller decided: for the
    endpoints whose clients say what their body is otherwise than with ``Content-Type``
    (the Open Inference Protocol's). The same intake as :func:`read_body`, which calls it
    once the ``Content-Type`` is checked: a body sent with a ``Content-Encoding`` (gzip,
    say) is a 415; a ``"binary"`` body needs
    ``Inference-Header-Content-Length`` (400), and the size limit, stall timeout and
    memory reservation are the same.
    """
    coding = request.headers.get("content-encoding")
    if coding is not None and coding.strip().lower() not in ("", "identity"):
        raise errors.UnsupportedMediaType.at(
            ("header", "content-encoding"),
            f"the request body is sent with Content-Encoding {_shown(coding)}, which the "
            "service does not decode; expected the body as it is (no Content-Encoding, or "
            "identity)",
        )
    header_length = _header_length(request) if content_type == "binary" else None

    settings = _settings(request)
    limit = settings.max_body_bytes
    declared = _declared_length(request)
    if declared is not None and declared[0] > limit:
        raise _too_large(limit, f"a declared Content-Length of {_clip(declared[1])} bytes")

    # The declared bytes are promised before any is read (503 if the budget cannot hold
    # them); memory itself is committed only as bytes arrive.
    reservation = budget_of(request).reserve(declared[0] if declared else 0)
    try:
        # A large JSON body is scanned as it arrives, for the parse that follows.
        size = None if declared is None else declared[0]
        scanned = content_type == "json" and size is not None and size >= PRESIZE_MIN_BYTES
        data = await _read(
            request.receive,
            limit,
            reservation,
            settings.body_timeout,
            settings.min_body_rate,
            size,
            BodyScan() if scanned else None,
        )
        if not data:
            raise errors.MalformedRequest.at(
                _BODY_LOC,
                f"the request body is empty; expected an "
                f"{JSON_MEDIA_TYPE if content_type == 'json' else BINARY_MEDIA_TYPE} body of "
                f"1 to {limit} bytes; received 0 bytes",
            )
        if header_length is not None and header_length > len(data):
            raise errors.MalformedRequest.at(
                _HEADER_LENGTH_LOC,
                f"{HEADER_LENGTH_HEADER} is greater than the body; expected at most the "
                f"body's {len(data)} bytes; received "
                f"{_clip(request.headers[HEADER_LENGTH_HEADER].strip())}",
            )
        # What the body holds from now on: its bytes, and a JSON body's parse to come.
        reservation.resize(len(data) * (JSON_PARSE_FACTOR if content_type == "json" else 1))
    except BaseException:
        reservation.release()
        raise
    return RawBody(data, content_type, header_length, reservation)


def budget_of(request: Request) -> MemoryBudget:
    """The worker's memory budget (one per application)."""
    budget = getattr(request.app.state, "budget", None)
    if not isinstance(budget, MemoryBudget):
        settings = _settings(request)
        budget = MemoryBudget(settings.max_inflight_bytes, settings.max_request_memory_bytes)
        request.app.state.budget = budget
    return budget
