"""Request payloads to NumPy, once: JSON bodies, typed arrays and the binary encoding.

An array field (``y_true``, ``y_pred``, ``sample_weight``) arrives as one of:

* nested JSON lists of numbers, rectangular: ``[[0, 1, 0], [0, 0, 1]]``;
* a typed array ``{"dtype": "float32", "shape": [4096, 1000], "data": "<base64>"}``,
  ``data`` being the C-order little-endian bytes;
* in a binary request (``Content-Type: application/octet-stream``), a typed
  array whose ``data`` is replaced by ``"binary_data_size": <bytes>``: the
  body is a JSON header of ``Inference-Header-Content-Length`` bytes followed
  by the raw tensors, back to back, in the order their descriptors appear in
  the header (the Open Inference Protocol's binary tensor extension). Those
  arrays are views of the request body: decoding copies nothing.

Sizes are checked before anything is allocated: a typed array's ``shape`` is
multiplied out and compared with the element limit (413) and with its byte
count (422) first.
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Callable, Iterator
from typing import Any, Final

import numpy as np
import orjson
import pybase64
from numpy.typing import NDArray

from service.errors import InvalidInput, Loc, MalformedRequest, PayloadTooLarge, invalid
from service.wire import DTYPES, MAX_DIMS

_TYPED_KEYS = frozenset({"dtype", "shape", "data", "binary_data_size"})
_ORJSON_INPUTS: Final = (bytes, bytearray, memoryview)
#: Typed arrays of at least this many bytes are decoded a block at a time into their array.
BLOCKWISE_MIN_BYTES: Final = 1 << 20
#: Bytes decoded at a time: a block the allocator hands out again, warm in the cache.
DECODE_BLOCK_BYTES: Final = 96 * 1024


#: A JSON number's text.
_NUMBER: Final = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def _where(loc: Loc) -> str:
    return "`" + ".".join(str(p) for p in loc) + "`"


def parse_json(data: bytes | bytearray | memoryview) -> Any:
    """The JSON document in ``data``; malformed JSON (NaN and Infinity tokens included) is a 400."""
    try:
        if type(data) in _ORJSON_INPUTS:
            return orjson.loads(data)
        # orjson takes no subclass (a body scanned as it arrived is a bytearray's).
        with memoryview(data) as view:
            return orjson.loads(view)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("number is infinity"):
            # Valid JSON (a number has no range there), but no float64: a value error.
            number = _NUMBER.match(bytes(data[exc.pos : exc.pos + 40]))
            shown = f"{number.group().decode()}, " if number else ""
            raise InvalidInput.at(
                ("body",),
                f"The request body holds a number beyond float64's range ({shown}at "
                f"character {exc.pos}): expected finite numbers, at most "
                f"{np.finfo(np.float64).max:.4g} in magnitude.",
            ) from None
        raise MalformedRequest.at(
            ("body",),
            f"The request body is not valid JSON: {exc}. Expected a JSON object (NaN and "
            "Infinity are not JSON numbers).",
        ) from None


def _check_elements(n: int, loc: Loc, max_elements: int) -> None:
    if n > max_elements:
        raise PayloadTooLarge.at(
            loc,
            f"{_where(loc)} has {n} elements, over the limit of {max_elements} per array "
            "(setting LOSS_SERVICE_MAX_ELEMENTS).",
        )


def check_empty_shape(shape: list[int], name: str, loc: Loc, max_elements: int) -> None:
    """Refuse (422) the shape of an empty array whose other dimensions multiply past
    ``max_elements``: it holds nothing, but NumPy refuses to build a shape past its index
    range whatever its zeros (``[0, 2**62]``). ``name``: the shape's field, as shown."""
    extent = math.prod(d for d in shape if d)
    if 0 in shape and extent > max_elements:
        raise invalid(
            loc,
            f"{name} is {shape}: an empty array whose other dimensions multiply to {extent}, "
            f"past the limit of {max_elements} elements per array (setting "
            "LOSS_SERVICE_MAX_ELEMENTS); expected a shape whose dimensions other than 0 "
            f"multiply to at most {max_elements} (an array with no element is refused as "
            "empty in any case).",
        )


def nesting_depth(value: Any) -> int:
    """How many lists deep ``value`` is, along its first elements (``[[0]]``: 2)."""
    depth = 0
    while isinstance(value, list) and value:
        depth, value = depth + 1, value[0]
    return depth


def from_lists(value: Any, loc: Loc, max_elements: int) -> NDArray[Any]:
    """Nested JSON lists (or a single number) to an array of numbers."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        depth = nesting_depth(value)
        if depth > MAX_DIMS:
            # Deeper than NumPy's own limit, which it refuses before the service's.
            raise invalid(
                loc, f"{_where(loc)} has {depth} dimensions: expected at most {MAX_DIMS}."
            ) from None
        raise invalid(
            loc,
            f"{_where(loc)} is not a rectangular array: expected nested lists of numbers whose "
            "rows all have the same length, received rows of different lengths.",
        ) from None
    if arr.dtype.kind not in "biuf":
        raise invalid(
            loc,
            f"{_where(loc)} must hold numbers only: expected nested lists of numbers, received "
            f"{_describe_bad_items(arr)}.",
        )
    if arr.ndim > MAX_DIMS:
        raise invalid(loc, f"{_where(loc)} has {arr.ndim} dimensions: expected at most {MAX_DIMS}.")
    _check_elements(arr.size, loc, max_elements)
    return arr


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _describe_bad_items(arr: NDArray[Any]) -> str:
    if arr.dtype.kind in "US":
        return "strings"
    kinds = {type(x).__name__ for x in arr.reshape(-1)[:1000]} - {"int", "float", "bool"}
    names = {"NoneType": "null", "str": "strings", "dict": "objects", "list": "lists"}
    return ", ".join(sorted(names.get(k, k) for k in kinds)) or "values that are not numbers"


def _typed_header(
    value: dict[str, Any], loc: Loc, max_elements: int
) -> tuple[np.dtype[Any], list[int], int]:
    unknown = sorted(set(value) - _TYPED_KEYS)
    if unknown:
        raise invalid(
            (*loc, unknown[0]),
            f"{_where(loc)} is a typed array with unknown field(s) {unknown}: expected `dtype`, "
            "`shape` and `data` (or `binary_data_size` in a binary request).",
        )
    dtype = value.get("dtype")
    if dtype not in DTYPES:
        raise invalid(
            (*loc, "dtype"),
            f"{_where(loc)}.dtype is not supported: expected one of {list(DTYPES)}, "
            f"received {dtype!r}.",
        )
    shape = value.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise invalid(
            (*loc, "shape"),
            f"{_where(loc)}.shape must be a list of at most {MAX_DIMS} non-negative integers, "
            f"received {shape!r}.",
        )
    n = math.prod(shape)
    _check_elements(n, loc, max_elements)
    check_empty_shape(shape, f"{_where(loc)}.shape", (*loc, "shape"), max_elements)
    return np.dtype(dtype).newbyteorder("<"), shape, n


def _from_bytes(
    buf: bytes | memoryview, dtype: np.dtype[Any], shape: list[int], n: int, loc: Loc
) -> NDArray[Any]:
    expected = n * dtype.itemsize
    if len(buf) != expected:
        raise invalid(
            loc,
            f"{_where(loc)} holds {len(buf)} bytes, but dtype {dtype.name} and shape {shape} need "
            f"{expected} ({n} elements × {dtype.itemsize} bytes).",
        )
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    if not arr.flags.aligned:
        # A tensor at an odd offset of the body: one copy now spares the kernels NumPy's
        # slow unaligned loops (senders can avoid it by padding the JSON header).
        arr = arr.copy()
    if dtype.kind == "b" and arr.view(np.uint8).max(initial=0) > 1:
        raise invalid(loc, f"{_where(loc)} is bool, so its bytes must be 0 or 1.")
    return arr


class BodyText:
    """A typed array's base64 text where it lies in the request's own body (a bytearray
    read for this request alone, by the fast JSON path), to be decoded in place: its
    bytes are written over the text they come from, which is gone afterwards.

    It is decoded once: a later decoding returns the same bytes, or refuses the text
    again if it was found invalid.
    """

    __slots__ = ("_decoded", "_spent", "text")

    def __init__(self, text: memoryview) -> None:
        if text.readonly:
            raise ValueError("a typed array's text is decoded in place only in a writable body")
        self.text = text
        self._decoded: memoryview | None = None
        self._spent = False

    def __len__(self) -> int:
        return len(self.text)

    def decode(self, nbytes: int, loc: Loc) -> bytes | memoryview:
        """The text's bytes: decoded in place when it is large and decodes to ``nbytes``
        bytes (the array's size), else decoded whole into a new buffer."""
        if self._spent:
            if self._decoded is None:
                raise _not_base64(loc)
            return self._decoded
        if nbytes < BLOCKWISE_MIN_BYTES or _decoded_length(self.text) != nbytes:
            return _decode_whole(self.text, loc)
        self._spent = True
        self._decoded = _decode_in_place(self.text, nbytes, loc)
        return self._decoded


def from_typed(value: dict[str, Any], loc: Loc, max_elements: int) -> NDArray[Any]:
    """A base64 typed array to an array (sizes checked before decoding)."""
    dtype, shape, n = _typed_header(value, loc, max_elements)
    data = value.get("data")  # bytes, a view of the body or its text from the fast JSON path
    if not isinstance(data, str | bytes | memoryview | BodyText):
        raise invalid(
            (*loc, "data"),
            f"{_where(loc)}.data must be a base64 string of the array's bytes, received "
            f"{type(data).__name__}.",
        )
    expected = n * dtype.itemsize
    if len(data) > 4 * (expected // 3 + 1) + 4:  # cheaper than decoding what is too long anyway
        raise invalid(
            (*loc, "data"),
            f"{_where(loc)}.data is {len(data)} base64 characters, too many for dtype "
            f"{dtype.name} and shape {shape} ({expected} bytes).",
        )
    if isinstance(data, BodyText):
        buf = data.decode(expected, loc)
    elif expected >= BLOCKWISE_MIN_BYTES and _decoded_length(data) == expected:
        buf = _decode_blockwise(data, expected, loc)
    else:
        buf = _decode_whole(data, loc)
    return _from_bytes(buf, dtype, shape, n, loc)


def _decode_whole(text: str | bytes | memoryview, loc: Loc) -> bytes:
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _not_base64(loc) from None


def _not_base64(loc: Loc) -> InvalidInput:
    return invalid(
        (*loc, "data"), f"{_where(loc)}.data is not valid base64 (RFC 4648, with padding)."
    )


def _decoded_length(text: str | bytes | memoryview) -> int | None:
    """The bytes that base64 ``text`` decodes to, if it is valid; None when its length
    is not a multiple of 4 (which no valid text has)."""
    if len(text) % 4:
        return None
    tail = text[-2:]
    padding = tail.count("=") if isinstance(tail, str) else bytes(tail).count(b"=")
    return len(text) // 4 * 3 - padding


def _decode_blockwise(text: str | bytes | memoryview, nbytes: int, loc: Loc) -> memoryview:
    """Base64 ``text`` of ``nbytes`` decoded bytes (as :func:`_decoded_length` says), decoded
    a block at a time into one new buffer.

    Decoded whole, its bytes would be a buffer that the allocator maps afresh for each
    request and whose pages the system provides one by one as the decoder writes them:
    measured, 16 MB took 13 ms to decode whole, 8 ms a block at a time into an array of
    NumPy's (which asks for huge pages). Blocks of whole quanta (4 characters, 3 bytes)
    decode as the text does, but for padding before the end, valid in a block: such a
    block decodes short, and so does the text, which is then refused as whole decoding
    refuses it.
    """
    target = np.empty(nbytes, np.uint8).data
    if _decode_blocks(text, target, 0, loc) != nbytes:
        # Padding before the end: a block decoded short.
        raise _not_base64(loc)
    return target


def _decode_blocks(text: str | bytes | memoryview, target: memoryview, at: int, loc: Loc) -> int:
    """Base64 ``text`` decoded ``DECODE_BLOCK_BYTES`` at a time into ``target`` from byte
    ``at`` on; where its bytes end."""
    step = DECODE_BLOCK_BYTES // 3 * 4
    try:
        for start in range(0, len(text), step):
            block = pybase64.b64decode(text[start : start + step], validate=True)
            target[at : at + len(block)] = block
            at += len(block)
    except (binascii.Error, ValueError):
        raise _not_base64(loc) from None
    return at


def _decode_in_place(text: memoryview, nbytes: int, loc: Loc) -> memoryview:
    """Writable base64 ``text`` of ``nbytes`` decoded bytes (as :func:`_decoded_length`
    says), decoded a block at a time over itself; the bytes start at the text's first
    64-byte boundary.

    The text's pages are already there, warm: nothing is allocated for the bytes but a
    block (measured on 16 MB: 3 ms, against 5 ms into a new array). Each block's bytes
    end before the next block's text begins: after ``k`` blocks of ``s`` characters they
    end at most 63 + 3ks/4 bytes in, and the next text starts at ks.
    """
    first = -np.frombuffer(text, np.uint8).ctypes.data % 64
    at = _decode_blocks(text, text, first, loc)
    if at - first != nbytes:
        # Padding before the end: a block decoded short.
        raise _not_base64(loc)
    return text[first:at]


def to_array(value: Any, loc: Loc, max_elements: int) -> NDArray[Any]:
    """An array field of a JSON body: nested lists or a typed array."""
    if isinstance(value, np.ndarray):  # decoded from a binary request, or by the fast JSON path
        _check_elements(value.size, loc, max_elements)
        return value
    if isinstance(value, dict):
        if "binary_data_size" in value:
            raise invalid(
                loc,
                f"{_where(loc)} uses `binary_data_size`, which belongs in binary requests "
                "(Content-Type application/octet-stream): expected `data` here.",
            )
        return from_typed(value, loc, max_elements)
    if isinstance(value, list | int | float) and not isinstance(value, bool):
        return from_lists(value, loc, max_elements)
    raise invalid(
        loc,
        f"{_where(loc)} must be an array: expected nested lists of numbers or a typed array "
        f"{{dtype, shape, data}}, received {_kind(value)}.",
    )


def _descriptors(
    node: Any, loc: Loc, found: Callable[[dict[str, Any]], bool] = lambda node: False
) -> Iterator[tuple[dict[str, Any], Loc]]:
    """Typed-array descriptors with ``binary_data_size`` in document order (or, with
    ``found``, the objects it accepts, among those that have no ``binary_data_size``).

    Only objects, and lists whose first item is an object, are walked (lists of
    numbers are never visited item by item), with a stack rather than recursion: a
    header nested a thousand levels deep is walked like any other.
    """
    stack: list[tuple[Any, Loc]] = [(node, loc)]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, dict):
            if "binary_data_size" in node or found(node):
                yield node, loc
                continue
            children = [(child, (*loc, key)) for key, child in node.items()]
        elif isinstance(node, list) and node and isinstance(node[0], dict):
            children = [(child, (*loc, i)) for i, child in enumerate(node)]
        else:
            continue
        stack.extend(reversed(children))


def _unsized(node: dict[str, Any]) -> bool:
    """A typed array described without its bytes: ``dtype`` and ``shape``, no ``data``."""
    return "dtype" in node and "shape" in node and "data" not in node


def parse_binary(data: bytes | bytearray, header_length: int, max_elements: int) -> Any:
    """A binary request: its JSON header with every ``binary_data_size`` descriptor
    replaced by a zero-copy view of its bytes."""
    header = parse_json(memoryview(data)[:header_length])
    if not isinstance(header, dict) or "binary_data_size" in header:
        raise MalformedRequest.at(
            ("body",),
            "The JSON header of a binary request must be an object of request fields "
            "(`y_true`, `y_pred`, ...), each tensor described by {dtype, shape, binary_data_size}.",
        )
    tensors = memoryview(data)[header_length:]
    offset = 0
    for desc, loc in _descriptors(header, ()):
        size = desc.get("binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid(
                (*loc, "binary_data_size"),
                f"{_where(loc)}.binary_data_size must be a non-negative integer, "
                f"received {size!r}.",
            )
        if "data" in desc:
            raise invalid(
                loc, f"{_where(loc)} has both `data` and `binary_data_size`: expected one."
            )
        dtype, shape, n = _typed_header(desc, loc, max_elements)
        if offset + size > len(tensors):
            raise MalformedRequest.at(
                (*loc, "binary_data_size"),
                f"{_where(loc)}.binary_data_size is {size}, but only {len(tensors) - offset} "
                "bytes of tensor data are left in the body.",
            )
        arr = _from_bytes(tensors[offset : offset + size], dtype, shape, n, loc)
        offset += size
        _replace(header, loc, arr)
    if offset != len(tensors):
        # A tensor described without its size is the likeliest cause: name it.
        unsized = [
            loc
            for _, loc in _descriptors(header, (), _unsized)
            if loc  # not the header
        ]
        if unsized:
            where = _where(unsized[0])
            raise MalformedRequest.at(
                unsized[0],
                f"{where} has no `binary_data_size` (nor `data`): in a binary request each "
                "tensor is described by {dtype, shape, binary_data_size}, its bytes after "
                f"the JSON header; the body has {len(tensors) - offset} bytes of tensor data "
                "that no descriptor claims.",
            )
        raise MalformedRequest.at(
            ("body",),
            f"The binary body has {len(tensors) - offset} bytes after the last tensor: the "
            f"header's binary_data_size values add up to {offset}, the tensor data is "
            f"{len(tensors)} bytes.",
        )
    return header


def _replace(root: Any, loc: Loc, value: Any) -> None:
    node = root
    for key in loc[:-1]:
        node = node[key]
    node[loc[-1]] = value
