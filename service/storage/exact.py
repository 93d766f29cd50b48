"""Exact, order-independent sums of float64 and integer arrays.

A streaming evaluation adds each batch's statistics (weighted loss sums, weight
sums, per-class and per-threshold count vectors) elementwise into a running
total. Float addition is not associative, so a plain ``np.add`` would make the
final numbers depend on the order in which batches arrived. Here every sum is
kept exactly, and rounded to float64 only when it is read, so any order of the
same batches gives the same bits.

Representation
--------------
Every finite float64 is an integer multiple of ``2**-1074``; the sum of such
numbers is too. :class:`FixedSum` holds one such integer per element as a
vector of 32-bit *limbs* on a fixed grid: limb ``k`` weighs ``2**(32 k + BASE)``
with ``BASE = -1152`` (a multiple of 32 below the lowest mantissa bit that
``np.frexp`` can give, ``2**-1126``). The limbs live in an ``int64`` array of
shape ``(limbs, elements)``, limb-major so that each limb is one contiguous
vector, over the *window* of limbs that some element uses; a sum of losses
near 1 needs three or four limbs, not the seventy that would span every
float64. Normalized, every limb but the top one is in ``[0, 2**32)`` and the
top one, signed, in ``[-2**31, 2**31)``; the window is then trimmed to the
smallest one, so equal sums have equal limbs whatever their history.

Why this and not the alternatives (``python -m service.storage.benchmark``
measures this one; figures for 10**6 elements on the 2-core CI machine):

* Python integers (``x.as_integer_ratio()`` per element, scaled to 2**-1074)
  are exact and simple, but every operation is a Python loop: about 360 ms
  to convert a batch, 230 ms to add it, 1.6 s to read the total back.
  For a handful of elements (a batch's scalar statistics, up to ``SMALL``) the
  opposite holds: a dozen NumPy calls cost more than the loop, so such sums are
  converted and added with Python integers into the very same canonical limbs.
* Shewchuk expansions (``math.fsum``'s method) have a variable number of
  terms per element, which does not vectorize.
* Limbs in int64 vectors take a handful of NumPy passes per limb: 17 ms to
  convert a batch, 3 ms to add it, 45 ms to read the total back correctly
  rounded, 4 ms to encode it (16 bytes an element for 4 limbs). The int64
  headroom above each 32-bit limb absorbs the carries of an addition until
  the one normalization pass that follows it.

Reading rounds correctly (to nearest, ties to even, as ``math.fsum`` does):
the leading 61 bits of the magnitude, with a sticky bit for everything under
them, are rounded once to the 53 bits of a float64, or to the multiple of
``2**-1074`` for results in the subnormal range. A zero sum reads as ``+0.0``.
A sum beyond the float64 range reads as ``±inf``.

Integer statistics (counts) are added as int64, with a check that refuses to
wrap around.

Limits: :class:`Headroom` says whether batches may join running totals, each
float statistic's total keeping its size (``Σ |x|`` over its elements) below a
limit, checked on a bound of the exact sums (:meth:`FixedSum.magnitude_bound`)
and read exactly only near the limit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from service.kernels.stats import statistic_size

LIMB_BITS = 32
#: Weight of limb 0 is ``2**BASE``: a multiple of 32 below ``2**-1126``, the lowest
#: mantissa bit of the smallest subnormal as ``np.frexp`` splits it (0.5 × 2**-1073).
BASE = -1152
_MASK = (1 << LIMB_BITS) - 1
_TOP = 1 << (LIMB_BITS - 1)
#: Bit index, in units of ``2**BASE``, of ``2**-1074``: no float64 has a lower bit.
_SUBNORMAL_BIT = -1074 - BASE
#: Extra bits kept below a float64's 53 while rounding (the last one is sticky).
_EXTRA = 8

_NOT_FINITE = "an exact float sum takes finite values; received NaN or infinity"
#: Sums of at most this many elements are converted and added with Python integers.
SMALL = 16

FloatArray = NDArray[np.float64]


def _units(x: float) -> int:
    """A finite float64 as the exact integer number of ``2**BASE`` it is."""
    numerator, denominator = x.as_integer_ratio()  # the denominator is a power of two
    return numerator << (-BASE - denominator.bit_length() + 1)


IntArray = NDArray[np.int64]


def _window(nonzero: list[int]) -> tuple[int, int]:
    """The canonical window of nonzero exact integers (units of ``2**BASE``): the lowest
    limb any of them uses, and the fewest limbs from there that hold each of them, the
    top one signed."""
    lo = min(((v & -v).bit_length() - 1) >> 5 for v in nonzero)
    shift = LIMB_BITS * lo
    # A value fits in t limbs (t - 1 unsigned, the top one signed) when its magnitude
    # needs at most 32 t - 1 bits besides the sign.
    count = max(
        ((v >> shift if v > 0 else ~(v >> shift)).bit_length() + LIMB_BITS) // LIMB_BITS
        for v in nonzero
    )
    return lo, count


class FixedSum:
    """The exact sum of float64 arrays of one shape, as 32-bit limbs on a fixed grid.

    ``limbs[j]`` holds limb ``lo + j`` of every element (flattened); an empty
    window (no limbs) is a sum of zeros. Use :meth:`from_floats` and :meth:`add`;
    :meth:`to_floats` reads the correctly rounded float64 values.
    """

    __slots__ = ("_exact", "_limbs", "_lo", "shape")

    def __init__(self, shape: tuple[int, ...], lo: int, limbs: IntArray) -> None:
        size = math.prod(shape)
        if limbs.ndim != 2 or limbs.shape[1] != size or limbs.dtype != np.int64:
            raise ValueError(
                f"limbs of a sum of shape {shape} are an int64 array of shape (k, {size}); "
                f"received {limbs.dtype} {limbs.shape}"
            )
        self.shape = shape
        self._lo = lo
        self._limbs: IntArray | None = limbs
        # A small sum's elements as exact Python integers (units of 2**BASE), when known:
        # added with integers, its limbs are only made when read (see _of_ints).
        self._exact: list[int] | None = None

    @classmethod
    def _of_ints(cls, shape: tuple[int, ...], values: list[int]) -> FixedSum:
        """A small sum given by its elements' exact values, its limbs made when read (a
        batch's scalar statistics are added to a total, never read themselves)."""
        total = cls.__new__(cls)
        total.shape = shape
        total._lo = 0
        total._limbs = None
        total._exact = values
        return total

    @property
    def limbs(self) -> IntArray:
        if self._limbs is None:
            self._materialize()
            assert self._limbs is not None
        return self._limbs

    @limbs.setter
    def limbs(self, limbs: IntArray) -> None:
        self._limbs = limbs
        self._exact = None

    @property
    def lo(self) -> int:
        if self._limbs is None:
            self._materialize()
        return self._lo

    @lo.setter
    def lo(self, lo: int) -> None:
        self._lo = lo
        self._exact = None

    def window(self) -> tuple[int, int, bytes]:
        """The canonical window as stored: its lowest limb, its number of limbs, and the
        limbs as 32-bit little-endian words, limb after limb (the top one in two's
        complement). A scalar sum held as an integer gives them without making limbs."""
        if self._limbs is None and self._exact is not None and len(self._exact) == 1:
            value = self._exact[0]
            if not value:
                return 0, 0, b""
            lo, count = _window([value])
            shifted = value >> (LIMB_BITS * lo)
            bits = LIMB_BITS * count
            return lo, count, (shifted & ((1 << bits) - 1)).to_bytes(bits // 8, "little")
        limbs = self.limbs
        # Lower limbs are in [0, 2**32); the top one's two's complement fits 32 bits.
        return self.lo, limbs.shape[0], (limbs & 0xFFFFFFFF).astype("<u4").tobytes()

    def _materialize(self) -> None:
        assert self._exact is not None
        total = FixedSum._from_ints(self.shape, self._exact)
        self._lo, self._limbs = total._lo, total._limbs

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> FixedSum:
        """The sum of nothing: zero everywhere, no limbs."""
        size = math.prod(shape)
        return cls(shape, 0, np.zeros((0, size), dtype=np.int64))

    @classmethod
    def from_floats(cls, values: ArrayLike) -> FixedSum:
        """The exact value of a finite float array (float16/32/64 widen exactly)."""
        array = np.asarray(values)
        if array.dtype.kind != "f":
            raise TypeError(f"an exact float sum takes a float array; received {array.dtype}")
        if array.ndim == 0:
            # A batch's scalar statistic (most are): the fewest steps, each a few µs.
            scalar = float(array)
            if not math.isfinite(scalar):
                raise ValueError(_NOT_FINITE)
            return cls._of_ints((), [_units(scalar)])
        shape = tuple(int(n) for n in array.shape)
        if array.size <= SMALL:
            # A batch's scalar statistics: exact Python integers cost microseconds where
            # a dozen NumPy passes over a handful of elements cost hundreds.
            values = array.astype(np.float64).reshape(-1).tolist()
            if not all(map(math.isfinite, values)):
                raise ValueError(_NOT_FINITE)
            return cls._of_ints(shape, [_units(v) for v in values])
        x = np.ascontiguousarray(array, dtype=np.float64).reshape(-1)
        if not np.isfinite(x).all():
            raise ValueError(_NOT_FINITE)
        nonzero = x != 0
        if not nonzero.any():
            return cls.zeros(shape)
        fraction, exponent = np.frexp(x)
        # |fraction| in [0.5, 1) with at most 53 significant bits: times 2**53 it is an
        # integer m with |m| < 2**53, and x = m × 2**(exponent - 53), exactly.
        m = (fraction * 2.0**53).astype(np.int64)
        bit = exponent.astype(np.int64) - 53 - BASE
        k = bit >> 5
        r = bit & 31
        lo = int(k[nonzero].min())
        hi = int(k[nonzero].max()) + 2
        k = np.where(nonzero, k, lo)
        # m = m_hi × 2**32 + m_lo with m_lo in [0, 2**32), m_hi signed (|m_hi| < 2**21):
        # m × 2**r spreads over limbs k, k + 1, k + 2 with no int64 product overflowing.
        low = (m & _MASK) << r  # < 2**63
        high = (m >> 32) << r  # |high| < 2**52
        c0 = low & _MASK
        c1 = (low >> 32) + (high & _MASK)
        c2 = high >> 32
        size = x.size
        limbs = np.zeros((hi - lo + 1, size), dtype=np.int64)
        flat = limbs.reshape(-1)
        index = (k - lo) * size + np.arange(size, dtype=np.int64)
        flat[index] = c0
        flat[index + size] = c1
        flat[index + 2 * size] = c2
        total = cls(shape, lo, limbs)
        total._normalize()
        return total

    def copy(self) -> FixedSum:
        return FixedSum(self.shape, self.lo, self.limbs.copy())

    def magnitude_bound(self) -> int:
        """An upper bound of ``Σ |x|`` over the elements, in units of ``2**BASE`` (exact
        for a small sum held as integers): every element's magnitude is at most the
        weight of its window's top bit, ``2**(32 (lo + limbs) - 1)``."""
        if self._limbs is None and self._exact is not None:
            return sum(map(abs, self._exact))
        count, size = self.limbs.shape
        return 0 if count == 0 else size << (LIMB_BITS * (self.lo + count) - 1)

    def add(self, other: FixedSum) -> None:
        """Add another sum of the same shape into this one, exactly."""
        if other.shape != self.shape:
            raise ValueError(f"cannot add a sum of shape {other.shape} to one of {self.shape}")
        if other.limbs.shape[0] == 0:
            return
        if self.limbs.shape[0] == 0:
            self.lo, self.limbs = other.lo, other.limbs.copy()
            return
        if self.limbs.shape[1] <= SMALL:
            self.add_all([other])
            return
        lo = min(self.lo, other.lo)
        # One limb more than either top: room for the carry out of the top limbs.
        hi = max(self.lo + self.limbs.shape[0], other.lo + other.limbs.shape[0]) + 1
        if lo < self.lo or hi > self.lo + self.limbs.shape[0]:
            grown = np.zeros((hi - lo, self.limbs.shape[1]), dtype=np.int64)
            start = self.lo - lo
            grown[start : start + self.limbs.shape[0]] = self.limbs
            self.lo, self.limbs = lo, grown
        start = other.lo - self.lo
        self._exact = None  # the limbs change in place
        self.limbs[start : start + other.limbs.shape[0]] += other.limbs
        self._normalize()

    @classmethod
    def _from_ints(cls, shape: tuple[int, ...], values: list[int]) -> FixedSum:
        """The canonical limbs of exact integers in units of ``2**BASE``: the window from
        the lowest limb any element uses to the fewest limbs that hold every element with
        the top one signed, as :meth:`_normalize` leaves them."""
        nonzero = [v for v in values if v]
        if not nonzero:
            return cls.zeros(shape)
        lo, count = _window(nonzero)
        shift = LIMB_BITS * lo
        rows = []
        for j in range(count):
            at = shift + LIMB_BITS * j
            if j < count - 1:
                rows.append([(v >> at) & _MASK for v in values])
            else:
                rows.append([v >> at for v in values])
        return cls(shape, lo, np.array(rows, dtype=np.int64).reshape(count, len(values)))

    def _ints(self) -> list[int]:
        """Each element's exact value as a Python integer in units of ``2**BASE`` (do not
        change the list: it may be the sum's own)."""
        if self._exact is not None:
            return self._exact
        values = [0] * self.limbs.shape[1]
        for j, row in enumerate(self.limbs.tolist()):
            at = LIMB_BITS * (self.lo + j)
            values = [v + (limb << at) for v, limb in zip(values, row, strict=True)]
        return values

    def add_all(self, others: Sequence[FixedSum]) -> None:
        """Add several sums of the same shape, exactly: as :meth:`add` one by one, with
        one conversion of a small sum to and from Python integers for all of them."""
        if others and math.prod(self.shape) <= SMALL:
            for other in others:
                if other.shape != self.shape:
                    raise ValueError(
                        f"cannot add a sum of shape {other.shape} to one of {self.shape}"
                    )
            values = self._ints()
            for other in others:
                values = [a + b for a, b in zip(values, other._ints(), strict=True)]
            # Its limbs are made when read (or stored: see window).
            self._lo, self._limbs, self._exact = 0, None, values
            return
        for other in others:
            self.add(other)

    def _normalize(self) -> None:
        """Carry every limb into ``[0, 2**32)``, the top one into ``[-2**31, 2**31)``; trim."""
        limbs = self.limbs
        for j in range(limbs.shape[0] - 1):
            carry = limbs[j] >> LIMB_BITS  # floor division: negative limbs borrow
            limbs[j] &= _MASK
            limbs[j + 1] += carry
        while limbs.shape[0] and ((limbs[-1] < -_TOP) | (limbs[-1] >= _TOP)).any():
            top = limbs[-1]
            carry = (top + _TOP) >> LIMB_BITS  # the top limb keeps [-2**31, 2**31)
            top -= carry << LIMB_BITS
            limbs = np.concatenate([limbs, carry[np.newaxis]])
        self.limbs = limbs
        self._trim()

    def _trim(self) -> None:
        """Drop all-zero bottom limbs and top limbs that only repeat the sign."""
        limbs = self.limbs
        bottom = 0
        while bottom < limbs.shape[0] and not limbs[bottom].any():
            bottom += 1
        top = limbs.shape[0]
        while top - bottom >= 2:
            last, below = limbs[top - 1], limbs[top - 2]
            # A top limb of 0 over a limb < 2**31, or of -1 over a limb ≥ 2**31 (which then
            # reads as itself minus 2**32), says nothing the limb below cannot say signed.
            minus = last == -1
            if not (((last == 0) & (below < _TOP)) | (minus & (below >= _TOP))).all():
                break
            below -= minus.astype(np.int64) << LIMB_BITS
            top -= 1
        if top == bottom:
            self.lo, self.limbs = 0, limbs[:0].copy()
        elif bottom or top < limbs.shape[0]:
            self.lo, self.limbs = self.lo + bottom, limbs[bottom:top].copy()

    def to_floats(self) -> FloatArray:
        """The sums rounded to float64, to nearest with ties to even (as ``math.fsum``)."""
        size = self.limbs.shape[1]
        if self.limbs.shape[0] == 0:
            return np.zeros(self.shape, dtype=np.float64)
        # Three zero limbs below (the rounding window of a value may start up to two
        # limbs under the lowest one, and its sticky bit reads the limb under that) and
        # two on top (room to negate, and to read three limbs from any index).
        pad = 3
        limbs = np.zeros((pad + self.limbs.shape[0] + 2, size), dtype=np.int64)
        limbs[pad : pad + self.limbs.shape[0]] = self.limbs
        lo = self.lo - pad
        negative = self.limbs[-1] < 0
        limbs[:, negative] *= -1
        for j in range(limbs.shape[0] - 1):
            carry = limbs[j] >> LIMB_BITS
            limbs[j] &= _MASK
            limbs[j + 1] += carry
        # Now every element is |sum| in canonical limbs, all in [0, 2**32).
        nonzero = limbs != 0
        present = nonzero.any(axis=0)
        count = limbs.shape[0]
        top = count - 1 - np.argmax(nonzero[::-1], axis=0)
        lowest = np.argmax(nonzero, axis=0)
        del nonzero
        columns = np.arange(size, dtype=np.int64)
        flat = limbs.reshape(-1)
        leading = flat[top * size + columns]
        # The top limb is < 2**32, exact as a float64: frexp gives its bit length.
        length = 32 * (lo + top) + np.frexp(leading.astype(np.float64))[1].astype(np.int64)
        # Drop the bits below the 53 a float64 keeps, or below 2**-1074 (subnormals).
        drop = np.maximum(length - 53, _SUBNORMAL_BIT)
        shift = drop - _EXTRA
        index = np.where(present, (shift >> 5) - lo, 1)
        r = shift & 31
        l0 = flat[index * size + columns]
        l1 = flat[(index + 1) * size + columns]
        l2 = flat[(index + 2) * size + columns]
        # The 61 bits from `shift` up; the bits of l1 and l2 above them are zeros, so no
        # shifted term reaches 2**61. For r = 0, l2 is zero and its shift count is moot.
        window = (l0 >> r) | (l1 << (32 - r)) | (l2 << np.minimum(64 - r, 63))
        sticky = ((l0 & ((np.int64(1) << r) - 1)) != 0) | (lowest < index)
        window |= sticky.astype(np.int64)
        kept = window >> _EXTRA
        rest = window & ((1 << _EXTRA) - 1)
        half = 1 << (_EXTRA - 1)
        kept += (rest > half) | ((rest == half) & ((kept & 1) == 1))
        with np.errstate(over="ignore"):
            # kept ≤ 2**53 is exact; only a sum past float64's range overflows, to inf.
            result = np.ldexp(kept.astype(np.float64), (drop + BASE).astype(np.int32))
        result[negative] *= -1.0
        result[~present] = 0.0
        floats: FloatArray = result.reshape(self.shape)
        return floats


def units(x: float) -> int:
    """A finite float64 as the exact integer number of ``2**BASE`` it is."""
    if not math.isfinite(x):
        raise ValueError(_NOT_FINITE)
    return _units(x)


def add_counts(total: IntArray, counts: IntArray) -> IntArray:
    """``total + counts`` as int64, refusing to wrap around."""
    result = total + counts
    # Overflow iff both operands have the same sign and the result the other one.
    if (((total ^ result) & (counts ^ result)) < 0).any():
        raise OverflowError("an int64 count overflowed")
    return result


class ExactTotals:
    """Named running totals: exact float sums (:class:`FixedSum`) and int64 counts.

    The statistics of a batch are a mapping of names to arrays: float arrays
    become exact sums, integer and boolean arrays counts. Adding is elementwise
    per name; a name missing from a batch adds zero; a name must keep its
    shape and its kind (float or count) from batch to batch.
    """

    __slots__ = ("counts", "sums")

    def __init__(
        self,
        sums: dict[str, FixedSum] | None = None,
        counts: dict[str, IntArray] | None = None,
    ) -> None:
        self.sums: dict[str, FixedSum] = sums if sums is not None else {}
        self.counts: dict[str, IntArray] = counts if counts is not None else {}
        both = self.sums.keys() & self.counts.keys()
        if both:
            raise ValueError(f"statistics both float and count: {sorted(both)}")

    @classmethod
    def from_stats(cls, stats: Mapping[str, ArrayLike]) -> ExactTotals:
        """The exact totals of one batch's statistics."""
        totals = cls()
        for name, value in stats.items():
            array = np.asarray(value)
            if array.dtype.kind == "f":
                totals.sums[name] = FixedSum.from_floats(array)
            elif array.dtype.kind in "iub":
                if array.dtype.kind == "u" and array.size and int(array.max()) > 2**63 - 1:
                    raise OverflowError(f"statistic {name!r} holds counts beyond int64")
                totals.counts[name] = np.array(array, dtype=np.int64)
            else:
                raise TypeError(
                    f"statistic {name!r} must be a float, integer or boolean array; "
                    f"received {array.dtype}"
                )
        return totals

    def names(self) -> Iterator[str]:
        yield from self.sums
        yield from self.counts

    def add(self, other: ExactTotals) -> None:
        """Add another batch's (or aggregate's) totals into these, exactly."""
        for name, total in other.sums.items():
            if name in self.counts:
                raise ValueError(f"statistic {name!r} was counts and is now a float sum")
            mine = self.sums.get(name)
            if mine is None:
                self.sums[name] = total.copy()
            else:
                mine.add(total)
        for name, counts in other.counts.items():
            if name in self.sums:
                raise ValueError(f"statistic {name!r} was a float sum and is now counts")
            existing = self.counts.get(name)
            if existing is None:
                self.counts[name] = counts.copy()
            elif existing.shape != counts.shape:
                raise ValueError(
                    f"statistic {name!r} had shape {existing.shape} and now {counts.shape}"
                )
            else:
                self.counts[name] = add_counts(existing, counts)

    def add_all(self, others: Sequence[ExactTotals]) -> None:
        """Add several batches' totals, exactly (as :meth:`add` one by one)."""
        sums: dict[str, list[FixedSum]] = {}
        for other in others:
            for name, total in other.sums.items():
                sums.setdefault(name, []).append(total)
            if other.counts:
                self.add(ExactTotals({}, other.counts))
        for name, parts in sums.items():
            if name in self.counts:
                raise ValueError(f"statistic {name!r} was counts and is now a float sum")
            mine = self.sums.get(name)
            if mine is None:
                mine = self.sums[name] = FixedSum.zeros(parts[0].shape)
            mine.add_all(parts)

    def values(self) -> dict[str, NDArray[Any]]:
        """Every total: float sums correctly rounded to float64, counts as int64."""
        result: dict[str, NDArray[Any]] = {}
        for name, total in self.sums.items():
            result[name] = total.to_floats()
        for name, counts in self.counts.items():
            result[name] = counts.copy()
        return result

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExactTotals):
            return NotImplemented
        if self.sums.keys() != other.sums.keys() or self.counts.keys() != other.counts.keys():
            return False
        return all(
            a.shape == b.shape and a.lo == b.lo and np.array_equal(a.limbs, b.limbs)
            for a, b in ((self.sums[n], other.sums[n]) for n in self.sums)
        ) and all(np.array_equal(self.counts[n], other.counts[n]) for n in self.counts)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Overflow:
    """A batch refused by :class:`Headroom`: the statistic it would take past the limit,
    the size that total would have, the size of the total without the batch, and the
    size of the batch's own part (sizes: ``Σ |x|`` over the elements, read as float64;
    ``inf`` past its range)."""

    name: str
    size: float
    before: float
    added: float


_FLOAT_MAX = float(np.finfo(np.float64).max)


@functools.lru_cache(maxsize=8)
def _limit_units(limit: float) -> int:
    """A limit on sizes in units of ``2**BASE``, computed once per limit (an infinite
    limit asks for sizes within float64's range)."""
    return units(min(limit, _FLOAT_MAX))


class Headroom:
    """Which batches' totals may be added to running totals: every float statistic's
    total must keep its size (``Σ |x|`` over its elements, the elements read as float64)
    below ``limit``, so that what is computed from the totals stays within float64.

    ``totals`` (the running totals, or a function that reads them once, when first
    needed) is never changed. :meth:`admit` takes batches one after the other, each
    against the totals plus the batches admitted before it. Most batches are admitted on
    a bound (``FixedSum.magnitude_bound``, a few integer operations per statistic);
    only when the bound reaches the limit are the exact sums read as floats.
    Counts (integer statistics) are not limited here: :func:`add_counts` refuses to
    wrap around.
    """

    def __init__(self, totals: ExactTotals | Callable[[], ExactTotals], limit: float) -> None:
        self._totals = totals
        self.limit = limit
        self._limit_units = _limit_units(limit)
        self._bounds: dict[str, int] = {}
        self._admitted: dict[str, list[FixedSum]] = {}

    def totals(self) -> ExactTotals:
        """The running totals (read once, if given as a function)."""
        if not isinstance(self._totals, ExactTotals):
            self._totals = self._totals()
        return self._totals

    def _bound(self, name: str) -> int:
        bound = self._bounds.get(name)
        if bound is None:
            total = self.totals().sums.get(name)
            bound = self._bounds[name] = 0 if total is None else total.magnitude_bound()
        return bound

    def _merged(self, name: str, part: FixedSum | None, shape: tuple[int, ...]) -> FloatArray:
        """The statistic's total with the batches admitted so far (and ``part``), read
        correctly rounded from the exact sums."""
        total = self.totals().sums.get(name)
        merged = FixedSum.zeros(shape) if total is None else total.copy()
        merged.add_all([*self._admitted.get(name, []), *([] if part is None else [part])])
        return merged.to_floats()

    def _size(self, name: str, part: FixedSum | None, shape: tuple[int, ...]) -> float:
        """The size of the statistic's total with the batches admitted so far (and
        ``part``), from the exact sums."""
        return statistic_size(self._merged(name, part, shape))

    def read(self, name: str, batch: ExactTotals) -> FloatArray:
        """A float statistic's total with the batches admitted so far and ``batch`` (not
        admitted by this), as it would then be read."""
        part = batch.sums.get(name)
        total = self.totals().sums.get(name)
        shape = part.shape if part is not None else total.shape if total is not None else ()
        return self._merged(name, part, shape)

    def admit(self, batch: ExactTotals) -> Overflow | None:
        """``None``, and the batch counted in, when the totals with every batch admitted
        so far and this one keep each statistic's size below the limit; else what the
        first statistic past it would be (the batch is then not counted)."""
        bounds = {name: part.magnitude_bound() for name, part in batch.sums.items()}
        for name, part in batch.sums.items():
            if self._bound(name) + bounds[name] < self._limit_units:
                continue
            size = self._size(name, part, part.shape)
            if not size < self.limit:
                before = self._size(name, None, part.shape)
                return Overflow(name, size, before, statistic_size(part.to_floats()))
        for name, part in batch.sums.items():
            self._bounds[name] = self._bound(name) + bounds[name]
            self._admitted.setdefault(name, []).append(part)
        return None
