"""JSON request bodies with large arrays, read without building a Python float per number.

:func:`parse_json_body` finds the body's large numeric arrays and typed arrays' base64
text from the positions of its brackets, braces and quotes, reads the arrays a block of
rows at a time with simdjson straight into float64 buffers, and leaves the rest of the
body to orjson (:func:`service.arrays.parse_json`). Anything it cannot vouch for goes
to the general parser whole, or is refused when that would cost too much memory.
A large body's strings are found while it arrives (:class:`BodyScan`, fed by
``service.api.body``), so that the parse starts from them.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import simdjson
from numpy.typing import NDArray

from service.arrays import BodyText, parse_json
from service.errors import PayloadTooLarge
from service.wire import MAX_DIMS

#: Fields whose nested lists are read straight into a float64 buffer by the fast path.
NUMERIC_FIELDS = frozenset({"y_true", "y_pred", "sample_weight"})
#: Arrays whose text is shorter than this are left to the general parser.
REGION_MIN_BYTES = 1 << 14
#: Bytes of array text parsed at a time: the parser's working memory is a few times this.
BLOCK_BYTES = 1 << 20
_SCAN_BYTES = 1 << 22
#: Bodies with fewer strings than one per this many bytes (and at least the minimum) have
#: their strings found one by one; others are scanned byte by byte, vectorised.
_WALK_BYTES_PER_STRING = 2048
_WALK_MIN_STRINGS = 256
_WHITESPACE = b" \t\n\r"
_OPEN, _CLOSE, _QUOTE = ord("["), ord("]"), ord('"')
_TOKEN_BYTES = np.frombuffer(b'[]{}"', np.uint8)
#: The general parser holds about this many times a body's bytes (Python floats in lists).
GENERAL_PARSE_FACTOR = 16
_GENERAL_ENV = "LOSS_SERVICE_MAX_GENERAL_JSON_BYTES"
_BACKSLASH = ord("\\")


class _Fallback(Exception):
    """The fast path cannot vouch for this body: the general parser takes it (the
    message says why, for a body too large for the general parser)."""


def parse_json_body(
    data: bytes | bytearray,
    *,
    region_min: int = REGION_MIN_BYTES,
    text_min: int = REGION_MIN_BYTES,
    block_bytes: int = BLOCK_BYTES,
    general_max_bytes: int | None = None,
    before_general: Callable[[int], None] | None = None,
) -> Any:
    """A JSON request body, with its big numeric arrays already as float64 NumPy arrays
    and the base64 text of its big typed arrays as bytes or in place in the body.

    The general parser (:func:`parse_json`, orjson) holds every number of a nested
    list as a Python float, several times the text's size, and peaks at twice a long
    string's size while it builds it. Here, "regions" are found from the positions of
    the body's brackets, braces and quotes (a quote preceded by an odd run of
    backslashes is escaped, inside a string): arrays of at least ``region_min`` bytes
    that hold no object or string, parsed ``block_bytes`` of rows at a time by
    simdjson straight into one float64 array, and strings of at least ``text_min``
    bytes, which must be the ASCII ``data`` of typed arrays, left where they are in an
    ASCII body (views; in a bytearray, which the caller gives up, :class:`BodyText`,
    which :func:`from_typed` decodes in place, over the text) or else copied once as
    bytes (which :func:`from_typed` decodes as it would the string). The rest of the body,
    each region replaced by a placeholder that no body can forge (it holds a random
    nonce), is parsed by orjson. Working memory beyond the body and its arrays is a
    few blocks.

    Anything the fast path cannot vouch for (a parse error, a ragged or empty region,
    a non-number, a region anywhere but ``y_true``, ``y_pred`` or ``sample_weight`` (or
    their ``data``) at the top level or in a head of ``outputs``) sends the whole body to
    :func:`parse_json`, so validation and errors are those of the general path; but a
    body over ``general_max_bytes`` is refused instead (413, naming the encodings to
    use), and ``before_general(nbytes)`` is called with the general parser's memory
    before it starts (it may refuse by raising).
    """
    if len(data) < min(region_min, text_min):
        # No region fits in a body that short.
        return parse_json(data)
    scan = data.scan if isinstance(data, ScannedBody) else None
    if scan is not None and not scan.covers(data):
        scan = None
    try:
        regions = _regions(data, region_min, text_min, scan)
        if not regions:
            raise _Fallback("it holds no array large enough for the streaming reader")
        return _assemble(data, regions, block_bytes, general_max_bytes, before_general, scan)
    except _Fallback as reason:
        why = str(reason)
    except (ValueError, TypeError, RuntimeError, KeyError, IndexError):
        why = ""
    if general_max_bytes is not None and len(data) > general_max_bytes:
        raise PayloadTooLarge.at(
            ("body",),
            f"The JSON body is {len(data)} bytes, over the limit of {general_max_bytes} "
            f"bytes (setting {_GENERAL_ENV}) for JSON the streaming reader cannot take "
            f"({why or 'malformed JSON, or arrays that are not rectangular lists of numbers'})."
            " Expected: `y_true`, `y_pred` and `sample_weight` as rectangular lists of plain "
            "numbers, or (better for large batches) as typed arrays {dtype, shape, data} or "
            "with the binary encoding (Content-Type: application/octet-stream).",
        )
    if before_general is not None:
        before_general(len(data) * GENERAL_PARSE_FACTOR)
    return parse_json(data)


class _Region:
    """One array of numbers and brackets: its bracket positions and depths after each."""

    __slots__ = ("depth", "opening", "pos")

    def __init__(self, pos: NDArray[np.int64], opening: NDArray[np.bool_]) -> None:
        self.pos = pos
        self.opening = opening
        self.depth = np.cumsum(np.where(opening, 1, -1))

    @property
    def start(self) -> int:
        return int(self.pos[0])

    @property
    def end(self) -> int:
        """The position of the closing bracket."""
        return int(self.pos[-1])


class _Text:
    """One string: the positions of its opening and closing quotes."""

    __slots__ = ("end", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end


def _walk_strings(data: bytes | bytearray, most: int) -> NDArray[np.int64] | None:
    """The positions of the quotes that open and close the body's strings, found string
    by string: ``bytes.find`` goes from an opening quote to the closing one at memory
    speed, over a long string's text (a typed array's base64) without looking at each
    byte in Python or NumPy. None past ``most`` strings: the vectorised scan of every
    byte is cheaper for bodies of many strings. (:class:`BodyScan`'s walk, over the
    whole body at once.)"""
    scan = BodyScan(most)
    scan.walk(data, len(data))
    return scan.quotes()


def _escaped_at(data: bytes | bytearray, quote: int) -> bool:
    """Whether the quote at ``quote`` follows an odd run of backslashes."""
    start = quote - 1
    while start > 0 and data[start - 1] == _BACKSLASH:
        start -= 1
    return (quote - start) % 2 == 1


class BodyScan:
    """What :func:`parse_json_body` first looks for in a body, found while it arrives:
    ``service.api.body`` feeds it each chunk as it stores it, on bytes still in the cache
    and while the next chunk is on its way, not after the whole body is there.

    It finds the quotes that open and close the body's strings (:meth:`walk`, which
    :func:`_walk_strings` runs over a whole body at once; while they are at most
    ``most_strings``), and whether the body is all ASCII and holds a backslash.
    """

    __slots__ = ("_at", "_found", "_most", "_open", "ascii", "backslash", "fed")

    def __init__(self, most_strings: int = _WALK_MIN_STRINGS) -> None:
        self.fed = 0
        self.ascii = True
        self.backslash = False
        self._most = most_strings
        self._found: list[int] | None = []
        self._at = 0
        self._open = -1

    def feed(self, data: bytearray, chunk: bytes) -> None:
        """``chunk`` has just been stored at the end of ``data``'s first ``fed + len(chunk)``
        bytes (all bytes before it were fed)."""
        self.fed += len(chunk)
        self.ascii = self.ascii and chunk.isascii()
        self.backslash = self.backslash or b"\\" in chunk
        self.walk(data, self.fed)

    def walk(self, data: bytes | bytearray, stop: int) -> None:
        """Find the strings' quotes in ``data`` up to ``stop``, on from where the last
        walk stopped (a string may open in one walk and close in a later one)."""
        found = self._found
        if found is None:
            return
        find, at = data.find, self._at
        while True:
            if self._open == -1:
                opening = find(b'"', at, stop)
                if opening == -1:
                    break
                if len(found) >= 2 * self._most:
                    self._found = None
                    return
                self._open, at = opening, opening + 1
            end = find(b'"', at, stop)
            if end == -1:
                break
            at = end + 1
            # The bytes before an escaped quote arrived with it or before it.
            if data[end - 1] != _BACKSLASH or not _escaped_at(data, end):
                found += (self._open, end)
                self._open = -1
        self._at = stop

    def covers(self, data: bytes | bytearray) -> bool:
        """Whether every byte of ``data`` was fed."""
        return self.fed == len(data)

    def quotes(self) -> NDArray[np.int64] | None:
        """The positions of the quotes that open and close the body's strings, as
        :func:`_walk_strings` gives them; None past ``most_strings`` strings."""
        if self._found is None:
            return None
        if self._open != -1:
            raise _Fallback("a string is not terminated")
        return np.array(self._found, np.int64)


class ScannedBody(bytearray):
    """A body and its :class:`BodyScan` (when the scan was fed every byte of it)."""

    __slots__ = ("scan",)

    def __init__(self) -> None:
        super().__init__()
        self.scan: BodyScan | None = None


def _tokens(
    data: bytes | bytearray, text_min: int = 0, scan: BodyScan | None = None
) -> tuple[NDArray[np.int64], NDArray[np.uint8], NDArray[np.int64]]:
    """Positions and bytes of the brackets and braces outside strings and of the quotes
    that open strings; and the positions of every quote.

    When the body has few strings (fewer than one per ``_WALK_BYTES_PER_STRING`` bytes),
    they are found by :func:`_walk_strings` and only the bytes outside strings of at least
    ``text_min`` bytes are scanned for brackets: a typed array's text is never scanned.
    A ``scan`` that found the strings as the body arrived spares finding them again.
    """
    quotes = scan.quotes() if scan is not None else None
    if quotes is None:
        quotes = _walk_strings(data, max(_WALK_MIN_STRINGS, len(data) // _WALK_BYTES_PER_STRING))
    if quotes is None:
        return _scanned_tokens(data)
    view = np.frombuffer(data, np.uint8)
    opening, closing = quotes[::2], quotes[1::2]
    skipped = closing - opening - 1 >= max(text_min, 1)
    # The stretches between long strings (their quotes included), scanned for brackets.
    starts = np.concatenate(([0], closing[skipped]))
    stops = np.concatenate((opening[skipped] + 1, [view.size]))
    parts = [quotes[::2]]
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        for at in range(start, stop, _SCAN_BYTES):
            chunk = view[at : min(stop, at + _SCAN_BYTES)]
            # x & 0xD9 == 0x59 holds for [ ] { } (and for Y _ y DEL, dropped below).
            parts.append(np.flatnonzero((chunk & 0xD9) == 0x59) + at)
    pos = np.concatenate(parts)
    kind = view[pos]
    # Brackets inside strings (an odd number of quotes before them) are text.
    keep = (kind == _QUOTE) | (
        np.isin(kind, _TOKEN_BYTES) & (np.searchsorted(quotes, pos) % 2 == 0)
    )
    pos, kind = pos[keep], kind[keep]
    order = np.argsort(pos, kind="stable")
    del view
    return pos[order], kind[order], quotes


def _scanned_tokens(
    data: bytes | bytearray,
) -> tuple[NDArray[np.int64], NDArray[np.uint8], NDArray[np.int64]]:
    """:func:`_tokens`, every byte of the body scanned (vectorised)."""
    view = np.frombuffer(data, np.uint8)
    parts = []
    for start in range(0, view.size, _SCAN_BYTES):
        chunk = view[start : start + _SCAN_BYTES]
        # x & 0xD9 == 0x59 holds for [ ] { } (and for Y _ y DEL, dropped below).
        parts.append(np.flatnonzero(((chunk & 0xD9) == 0x59) | (chunk == _QUOTE)) + start)
    pos = np.concatenate(parts)
    kind = view[pos]
    keep = np.isin(kind, _TOKEN_BYTES)
    pos, kind = pos[keep], kind[keep]
    if _BACKSLASH in data:
        keep = ~_escaped(view, pos[kind == _QUOTE], pos, kind)
        pos, kind = pos[keep], kind[keep]
    del view
    quote = kind == _QUOTE
    if int(quote.sum()) % 2:
        raise _Fallback("a string is not terminated")
    # Unescaped quotes alternate: an even number of them before a token means it is
    # outside every string (or is the quote that opens one).
    keep = (np.cumsum(quote) - quote) % 2 == 0
    return pos[keep], kind[keep], pos[quote]


def _escaped(
    view: NDArray[np.uint8],
    quotes: NDArray[np.int64],
    pos: NDArray[np.int64],
    kind: NDArray[np.uint8],
) -> NDArray[np.bool_]:
    """Which tokens are escaped quotes: quotes right after an odd run of backslashes
    (``\\"`` closes a string, ``\"`` does not)."""
    marks = [
        np.flatnonzero(view[start : start + _SCAN_BYTES] == _BACKSLASH) + start
        for start in range(0, view.size, _SCAN_BYTES)
    ]
    slashes = np.concatenate(marks)
    first = np.ones(slashes.size, dtype=bool)
    first[1:] = np.diff(slashes) != 1
    run_start = slashes[first]
    run_end = slashes[np.append(first[1:], True)]
    # The run of backslashes (if any) that ends right before each quote.
    k = np.minimum(np.searchsorted(run_end, quotes - 1), run_end.size - 1)
    odd = (run_end[k] == quotes - 1) & ((run_end[k] - run_start[k]) % 2 == 0)
    escaped = np.zeros(pos.size, dtype=bool)
    escaped[np.flatnonzero(kind == _QUOTE)[odd]] = True
    return escaped


def _regions(
    data: bytes | bytearray, region_min: int, text_min: int, scan: BodyScan | None = None
) -> list[_Region | _Text]:
    """In body order, the strings of at least ``text_min`` bytes and the arrays of at
    least ``region_min`` bytes; such an array holds only numbers and arrays: a maximal
    run of bracket tokens that forms one balanced array."""
    pos, kind, quotes = _tokens(data, text_min, scan)
    # Lengths are filtered vectorised first: a body of many small strings and arrays (a
    # hundred thousand heads) makes no Python object per string or array.
    opening, closing = quotes[::2], quotes[1::2]
    long_text = closing - opening - 1 >= text_min
    regions: list[_Region | _Text] = [
        _Text(start, end)
        for start, end in zip(opening[long_text].tolist(), closing[long_text].tolist(), strict=True)
    ]
    bracket = (kind == _OPEN) | (kind == _CLOSE)
    edges = np.flatnonzero(np.diff(np.concatenate(([False], bracket, [False])).astype(np.int8)))
    firsts, stops = edges[::2], edges[1::2]
    wide = (pos[stops - 1] - pos[firsts] + 1 >= region_min) & (kind[firsts] == _OPEN)
    for first, stop in zip(firsts[wide].tolist(), stops[wide].tolist(), strict=True):
        region = _Region(pos[first:stop], kind[first:stop] == _OPEN)
        if region.depth[-1] == 0 and bool((region.depth[:-1] > 0).all()):
            regions.append(region)
    return sorted(regions, key=lambda region: region.start)


def _assemble(
    data: bytes | bytearray,
    regions: list[_Region | _Text],
    block_bytes: int,
    rest_max_bytes: int | None = None,
    before_general: Callable[[int], None] | None = None,
    scan: BodyScan | None = None,
) -> Any:
    """The body with each region parsed to an array (or copied), the rest by orjson
    (at most ``rest_max_bytes`` of it: the general parser's limit holds for it too, and
    ``before_general`` hears of its memory first)."""
    rest = len(data) - sum(region.end + 1 - region.start for region in regions)
    if rest_max_bytes is not None and rest > rest_max_bytes:
        raise _Fallback(f"{rest} bytes of it are not in large arrays of plain numbers")
    if before_general is not None and rest >= REGION_MIN_BYTES:
        before_general(rest * GENERAL_PARSE_FACTOR)
    pieces: list[bytes] = []
    at = 0
    # A placeholder is a string no body holds: a random nonce, fresh for every body.
    nonce = secrets.token_hex(8)
    for k, region in enumerate(regions):
        pieces += [_copy(data, at, region.start), f'"\\u0000{nonce}:{k}"'.encode()]
        at = region.end + 1
    pieces.append(_copy(data, at, len(data)))
    try:
        body = orjson.loads(b"".join(pieces))
    except orjson.JSONDecodeError:
        raise _Fallback("malformed JSON") from None
    if not isinstance(body, dict):
        raise _Fallback("the body is not a JSON object")
    parser = simdjson.Parser()
    objects = [body]
    if isinstance(body.get("outputs"), dict):
        objects += [head for head in body["outputs"].values() if isinstance(head, dict)]
    prefix = f"\0{nonce}:"
    # One pass over an ASCII body (or the scan's, made as it arrived) makes every typed
    # array's text a view of it; a body without a backslash needs no look for escapes.
    texts = any(isinstance(r, _Text) for r in regions)
    ascii_body = texts and (scan.ascii if scan is not None else data.isascii())
    escapes = scan is None or scan.backslash
    placed = sum(
        _place(obj, data, regions, prefix, parser, block_bytes, ascii_body, escapes)
        for obj in objects
    )
    if placed != len(regions):
        # A region somewhere else: rare enough for the general parser.
        raise _Fallback("a large array or string outside `y_true`, `y_pred`, `sample_weight`")
    return body


def _placed(value: Any, regions: list[_Region | _Text], prefix: str) -> _Region | _Text | None:
    """The region a placeholder stands for, if ``value`` is one."""
    if isinstance(value, str) and value.startswith(prefix):
        return regions[int(value[len(prefix) :])]
    return None


def _place(
    obj: dict[str, Any],
    data: bytes | bytearray,
    regions: list[_Region | _Text],
    prefix: str,
    parser: Any,
    block_bytes: int,
    ascii_body: bool,
    escapes: bool = True,
) -> int:
    """Fills the placeholders of ``obj``'s array fields; returns how many it filled."""
    placed = 0
    for key in NUMERIC_FIELDS:
        value = obj.get(key)
        region = _placed(value, regions, prefix)
        if isinstance(region, _Region):
            obj[key] = _parse_region(data, region, parser, block_bytes)
            placed += 1
        elif isinstance(value, dict) and isinstance(
            text := _placed(value.get("data"), regions, prefix), _Text
        ):
            value["data"] = _base64_text(data, text, ascii_body, escapes)
            placed += 1
    return placed


def _base64_text(
    data: bytes | bytearray, text: _Text, ascii_body: bool, escapes: bool = True
) -> bytes | memoryview | BodyText:
    """A typed array's ``data`` text, as it is in the body when the body is ASCII (a
    view: nothing copied; in a bytearray, the request's own, a :class:`BodyText`, which
    :func:`from_typed` decodes in place), or copied once."""
    start, stop = text.start + 1, text.end
    if escapes and data.find(b"\\", start, stop) != -1:
        # Escapes need unescaping: the general parser's job.
        raise _Fallback("a typed array's `data` is not plain base64 text")
    if ascii_body:
        view = memoryview(data)[start:stop]
        return view if view.readonly else BodyText(view)
    chars = _copy(data, start, stop)
    if not chars.isascii():
        # Lengths in characters and bytes would differ, and the text may not be UTF-8.
        raise _Fallback("a typed array's `data` is not plain base64 text")
    return chars


def _copy(data: bytes | bytearray, start: int, stop: int) -> bytes:
    """``data[start:stop]`` as bytes, copied once (slicing a bytearray copies it too)."""
    with memoryview(data) as view:
        return bytes(view[start:stop])


def _bracketed(data: bytes | bytearray, start: int, stop: int) -> bytes:
    """``data[start:stop]`` between brackets, copied once."""
    with memoryview(data) as view:
        return b"".join((b"[", view[start:stop], b"]"))


def _blank(text: bytes | bytearray) -> bool:
    return not text.strip(_WHITESPACE)


def _parse_region(
    data: bytes | bytearray, region: _Region, parser: Any, block_bytes: int
) -> NDArray[np.float64]:
    """A region's numbers, ``block_bytes`` of text at a time, checked rectangular."""
    if int(region.depth.max()) == 1:
        return _parse_flat(data, region, parser, block_bytes)
    # The children of the outer array, each parsed whole, grouped into blocks.
    starts = region.pos[region.opening & (region.depth == 2)]
    ends = region.pos[~region.opening & (region.depth == 1)]
    if starts.size != ends.size or not _blank(data[region.start + 1 : int(starts[0])]):
        raise _Fallback
    if not _blank(data[int(ends[-1]) + 1 : region.end]):
        raise _Fallback
    n = int(starts.size)
    out: NDArray[np.float64] | None = None
    i = 0
    while i < n:
        j = int(np.searchsorted(ends, starts[i] + block_bytes, side="left")) + 1
        j = min(max(j, i + 1), n)
        if j < n and data[int(ends[j - 1]) + 1 : int(starts[j])].strip(_WHITESPACE) != b",":
            raise _Fallback
        doc = parser.parse(_bracketed(data, int(starts[i]), int(ends[j - 1]) + 1))
        block = _fast_numeric(doc)
        del doc
        if block.shape[0] != j - i or (out is not None and block.shape[1:] != out.shape[1:]):
            raise _Fallback
        if out is None:
            out = np.empty((n, *block.shape[1:]), np.float64)
        out[i:j] = block
        i = j
    if out is None or _arrays(out.shape) != int(region.opening.sum()):
        # A nested array among the numbers, flattened by the buffer export.
        raise _Fallback("an array is not a rectangular array of plain numbers")
    return out


def _parse_flat(
    data: bytes | bytearray, region: _Region, parser: Any, block_bytes: int
) -> NDArray[np.float64]:
    """A one-dimensional region, cut into blocks at commas."""
    parts = []
    at, end = region.start + 1, region.end
    while at <= end:
        cut = data.find(b",", at + block_bytes, end) if at + block_bytes < end else -1
        stop = end if cut == -1 else cut
        doc = parser.parse(_bracketed(data, at, stop))
        parts.append(_fast_numeric(doc))
        del doc
        at = stop + 1
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _arrays(shape: tuple[int, ...]) -> int:
    """How many JSON arrays nested lists of this shape are written with."""
    return sum(math.prod(shape[:k]) for k in range(len(shape)))


def _fast_numeric(arr: Any) -> NDArray[np.float64]:
    """A simdjson array of numbers, rectangular, as float64 (its buffer export flattens
    nested arrays: a nested array among the numbers is for the caller to rule out)."""
    shape: list[int] = []
    node = arr
    while isinstance(node, simdjson.Array):
        if len(node) == 0 or len(shape) == MAX_DIMS:
            raise _Fallback
        shape.append(len(node))
        node = node[0]
    # Every array above the last level must have the length its level says.
    level = [arr]
    for depth in range(len(shape) - 1):
        children = []
        for parent in level:
            for child in parent:
                if not isinstance(child, simdjson.Array) or len(child) != shape[depth + 1]:
                    raise _Fallback
                children.append(child)
        level = children
    n = math.prod(shape)
    buf = np.frombuffer(arr.as_buffer(of_type="d"), dtype=np.float64)
    if buf.size != n:
        raise _Fallback
    return buf.reshape(shape)
