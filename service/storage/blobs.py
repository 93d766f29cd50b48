"""Named arrays and exact totals as bytes for the database (no pickle).

One small binary format, little-endian throughout::

    b"LSX\\x01"                      magic and format version
    u32 entries
    per entry:
        u16 name length, name (UTF-8)
        u8  kind                     1 counts (int64), 2 floats (float64), 3 exact sum
        u8  ndim, ndim × u64 dims
        kind 1, 2: the elements, 8 bytes each, in C order
        kind 3:    i32 lo, u32 limbs, then limbs × elements u32: limb j of every
                   element, then limb j + 1; the top limb is read as signed (int32)

A batch's own statistics are stored as kinds 1 and 2 (its arrays as they were
sent, floats widened to float64), an evaluation's running totals as kinds 1 and
3 (see :mod:`service.storage.exact`). Exact sums cost 4 bytes per limb and
element; a total of losses near 1 needs 3 or 4 limbs.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from service.storage.exact import ExactTotals, FixedSum

MAGIC = b"LSX\x01"
COUNTS, FLOATS, EXACT = 1, 2, 3
_COUNT = struct.Struct("<I")
_FLOAT = struct.Struct("<d")
_NAME = struct.Struct("<H")
_KIND = struct.Struct("<BB")
_DIM = struct.Struct("<Q")
_WINDOW = struct.Struct("<iI")
_SIGN = 1 << 31


class CorruptBlob(ValueError):
    """Stored bytes that are not in this format (truncated, or from elsewhere)."""


@functools.lru_cache(maxsize=4096)
def _entry_header(name: str, kind: int, shape: tuple[int, ...]) -> bytes:
    # Cached: every batch of an evaluation writes the same few headers.
    encoded = name.encode("utf-8")
    if len(encoded) > 0xFFFF or len(shape) > 0xFF:
        raise ValueError(f"statistic {name[:40]!r}: name or number of dimensions too large")
    return b"".join(
        [
            _NAME.pack(len(encoded)),
            encoded,
            _KIND.pack(kind, len(shape)),
            *(_DIM.pack(n) for n in shape),
        ]
    )


def encode_arrays(stats: Mapping[str, ArrayLike]) -> bytes:
    """One batch's statistics: float arrays as float64, integer and boolean ones as int64."""
    parts = [MAGIC, _COUNT.pack(len(stats))]
    for name, value in stats.items():
        array = np.asarray(value)
        if array.ndim == 0 and array.dtype.kind == "f":
            # Most statistics of a batch: a float scalar.
            parts += [_entry_header(name, FLOATS, ()), _FLOAT.pack(float(array))]
            continue
        if array.dtype.kind == "f":
            kind, data = FLOATS, np.ascontiguousarray(array, dtype="<f8")
        elif array.dtype.kind in "iub":
            kind, data = COUNTS, np.ascontiguousarray(array, dtype="<i8")
        else:
            raise TypeError(
                f"statistic {name!r} must be a float, integer or boolean array; "
                f"received {array.dtype}"
            )
        parts += [_entry_header(name, kind, array.shape), data.tobytes()]
    return b"".join(parts)


def encode_totals(totals: ExactTotals) -> bytes:
    """Running totals: counts as int64, exact sums as their 32-bit limbs."""
    parts = [MAGIC, _COUNT.pack(len(totals.sums) + len(totals.counts))]
    for name, total in totals.sums.items():
        lo, count, limbs = total.window()
        parts += [_entry_header(name, EXACT, total.shape), _WINDOW.pack(lo, count), limbs]
    for name, counts in totals.counts.items():
        parts += [
            _entry_header(name, COUNTS, counts.shape),
            np.ascontiguousarray(counts, dtype="<i8").tobytes(),
        ]
    return b"".join(parts)


class _Reader:
    def __init__(self, blob: bytes) -> None:
        self.view = memoryview(blob)
        self.offset = 0

    def take(self, size: int) -> memoryview:
        if size < 0 or self.offset + size > len(self.view):
            raise CorruptBlob("stored statistics are truncated")
        chunk = self.view[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))


def _entries(blob: bytes) -> Iterator[tuple[str, int, tuple[int, ...], _Reader]]:
    reader = _Reader(blob)
    if bytes(reader.take(len(MAGIC))) != MAGIC:
        raise CorruptBlob("stored statistics do not start with this format's magic bytes")
    (count,) = reader.unpack(_COUNT)
    seen: set[str] = set()
    for _ in range(count):
        (length,) = reader.unpack(_NAME)
        try:
            name = bytes(reader.take(length)).decode("utf-8")
        except UnicodeDecodeError as error:
            raise CorruptBlob("a stored statistic's name is not UTF-8") from error
        if name in seen:
            raise CorruptBlob(f"statistic {name!r} is stored twice")
        seen.add(name)
        kind, ndim = reader.unpack(_KIND)
        shape = tuple(int(reader.unpack(_DIM)[0]) for _ in range(ndim))
        yield name, kind, shape, reader
    if reader.offset != len(reader.view):
        raise CorruptBlob("stored statistics have trailing bytes")


def _elements(reader: _Reader, shape: tuple[int, ...], dtype: str) -> NDArray[Any]:
    size = 1
    for n in shape:
        size *= n
    data = reader.take(size * 8)
    return np.frombuffer(data, dtype=dtype).astype(dtype[1:]).reshape(shape)


def decode_arrays(blob: bytes) -> dict[str, NDArray[Any]]:
    """A batch's statistics as :func:`encode_arrays` stored them (float64 and int64)."""
    result: dict[str, NDArray[Any]] = {}
    for name, kind, shape, reader in _entries(blob):
        if kind == FLOATS:
            result[name] = _elements(reader, shape, "<f8")
        elif kind == COUNTS:
            result[name] = _elements(reader, shape, "<i8")
        else:
            raise CorruptBlob(f"statistic {name!r} has kind {kind}, not a batch's array")
    return result


def decode_totals(blob: bytes) -> ExactTotals:
    """Running totals as :func:`encode_totals` stored them."""
    totals = ExactTotals()
    for name, kind, shape, reader in _entries(blob):
        if kind == COUNTS:
            totals.counts[name] = _elements(reader, shape, "<i8")
        elif kind == EXACT:
            lo, count = reader.unpack(_WINDOW)
            size = 1
            for n in shape:
                size *= n
            raw = np.frombuffer(reader.take(count * size * 4), dtype="<u4")
            limbs = raw.astype(np.int64).reshape(count, size)
            if count:
                limbs[-1] = (limbs[-1] ^ _SIGN) - _SIGN
            totals.sums[name] = FixedSum(shape, int(lo), limbs)
        else:
            raise CorruptBlob(f"statistic {name!r} has kind {kind}, not a running total's")
    return totals
