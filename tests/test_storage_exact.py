"""Exact running totals: any order of the same batches gives the same bits, equal to fsum."""

from __future__ import annotations

import math
import random
import struct
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.storage import exact
from service.storage.blobs import (
    CorruptBlob,
    decode_arrays,
    decode_totals,
    encode_arrays,
    encode_totals,
)
from service.storage.exact import ExactTotals, FixedSum

TINY = 5e-324  # 2**-1074, the smallest subnormal
BIG = 1.7976931348623157e308  # the largest float64

# Every finite float64 up to 1e300 in magnitude (20 of them cannot overflow), subnormals
# included, plus values that make exact cancellation and ties likely.
finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False)
awkward = st.sampled_from([0.0, -0.0, TINY, -TINY, 1.0, -1.0, 2.0**-53, 2.0**-1022, 1e300, 0.1])
element = st.one_of(finite, awkward)


@st.composite
def batches(draw: st.DrawFn) -> list[np.ndarray]:
    """2–12 float64 arrays of one shape (up to 2-D, possibly empty)."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5))
    count = draw(st.integers(2, 12))
    return [draw(hnp.arrays(np.float64, shape, elements=element)) for _ in range(count)]


def total(parts: list[np.ndarray]) -> FixedSum:
    result = FixedSum.zeros(parts[0].shape)
    for part in parts:
        result.add(FixedSum.from_floats(part))
    return result


def bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64).view(np.int64)


@settings(max_examples=300, deadline=None)
@given(parts=batches(), seed=st.integers(0, 2**32 - 1))
def test_any_order_gives_the_same_bits_and_bytes(parts: list[np.ndarray], seed: int) -> None:
    shuffled = parts[:]
    random.Random(seed).shuffle(shuffled)
    forward, backward = total(parts), total(shuffled)
    np.testing.assert_array_equal(bits(forward.to_floats()), bits(backward.to_floats()))
    # The stored form is canonical too: the same bytes whatever the order.
    assert encode_totals(ExactTotals({"x": forward})) == encode_totals(ExactTotals({"x": backward}))


@settings(max_examples=300, deadline=None)
@given(parts=batches())
def test_the_total_is_fsum_of_the_parts_per_element(parts: list[np.ndarray]) -> None:
    result = total(parts).to_floats()
    assert result.shape == parts[0].shape
    for index in np.ndindex(result.shape):
        assert result[index] == math.fsum(float(part[index]) for part in parts)


@settings(max_examples=100, deadline=None)
@given(parts=batches(), seed=st.integers(0, 2**32 - 1))
def test_merging_partial_totals_in_a_tree_equals_adding_one_by_one(
    parts: list[np.ndarray], seed: int
) -> None:
    # As replicas would: each keeps a partial total, and the partials are merged.
    rng = random.Random(seed)
    groups: list[list[np.ndarray]] = [[] for _ in range(rng.randint(1, 4))]
    for part in parts:
        rng.choice(groups).append(part)
    merged = FixedSum.zeros(parts[0].shape)
    for group in groups:
        if group:
            merged.add(total(group))
    np.testing.assert_array_equal(bits(merged.to_floats()), bits(total(parts).to_floats()))


@settings(max_examples=300, deadline=None)
@given(parts=batches())
def test_small_sums_take_python_integers_to_the_same_limbs(parts: list[np.ndarray]) -> None:
    # Sums of a few elements (a batch's scalar statistics) are converted and added with
    # Python integers; the vectorised path must give the very same canonical limbs.
    small = [FixedSum.from_floats(part) for part in parts]
    with mock.patch.object(exact, "SMALL", -1):
        vector = [FixedSum.from_floats(part) for part in parts]
        vector_total = total(parts)
    small_total = total(parts)
    for a, b in [*zip(small, vector, strict=True), (small_total, vector_total)]:
        assert (a.lo, a.limbs.tolist()) == (b.lo, b.limbs.tolist())
    # Mixed: a running total built one way, added to the other way.
    mixed = vector[0].copy()
    for part in small[1:]:
        mixed.add(part)
    assert (mixed.lo, mixed.limbs.tolist()) == (vector_total.lo, vector_total.limbs.tolist())


@settings(max_examples=200, deadline=None)
@given(parts=batches())
def test_adding_several_at_once_gives_the_limbs_of_adding_one_by_one(
    parts: list[np.ndarray],
) -> None:
    sums = [FixedSum.from_floats(part) for part in parts]
    at_once = sums[0].copy()
    at_once.add_all(sums[1:])
    one_by_one = total(parts)
    assert (at_once.lo, at_once.limbs.tolist()) == (one_by_one.lo, one_by_one.limbs.tolist())
    batches_ = [ExactTotals.from_stats({"x": part, "n": np.arange(part.size)}) for part in parts]
    merged = ExactTotals()
    merged.add_all(batches_)
    sequential = ExactTotals()
    for batch in batches_:
        sequential.add(batch)
    assert merged == sequential


def test_exactness_where_float_addition_loses_everything() -> None:
    parts = [
        np.array([1e16, BIG, 1.0]),
        np.array([1.0, BIG, 2.0**-60]),
        np.array([-1e16, -BIG, -1.0]),
    ]
    result = total(parts).to_floats()
    assert result.tolist() == [1.0, BIG, 2.0**-60]
    # Left to right in float64: 1e16 + 1 == 1e16, BIG + BIG == inf, 1 + 2**-60 == 1.
    with np.errstate(over="ignore"):
        naive = (parts[0] + parts[1]) + parts[2]
    assert naive.tolist() == [0.0, math.inf, 0.0]


def test_rounding_is_to_nearest_with_ties_to_even() -> None:
    one_up = math.nextafter(1.0, 2.0)
    cases = {
        (1.0, 2.0**-53): 1.0,  # a tie: to the even neighbour, 1.0
        (one_up, 2.0**-53): math.nextafter(one_up, 2.0),  # a tie: even is above
        (1.0, 2.0**-53, TINY): one_up,  # just above the tie: up
        (1.0, -(2.0**-54), -TINY): math.nextafter(1.0, 0.0),  # just below the tie: down
        (TINY, TINY, TINY): 3 * TINY,  # subnormals are exact
        (2.0**-1022, -TINY): 2.0**-1022 - TINY,  # across the subnormal boundary
        (BIG, BIG): math.inf,  # beyond the range
        (-BIG, -BIG, BIG): -BIG,
        (0.1, -0.1): 0.0,
    }
    for parts, expected in cases.items():
        got = float(total([np.array([p]) for p in parts]).to_floats()[0])
        assert got == expected, (parts, got, expected)


def test_sums_of_zero_hold_no_limbs_and_read_as_positive_zero() -> None:
    result = total([np.array([0.5, -0.0, 3.0]), np.array([-0.5, -0.0, -3.0])])
    assert result.limbs.shape == (0, 3)
    assert bits(result.to_floats()).tolist() == [0, 0, 0]


def test_the_window_holds_only_the_limbs_that_are_used() -> None:
    # Sums of losses near 1 take a few limbs, not the seventy that span float64.
    rng = np.random.default_rng(0)
    result = total([rng.exponential(1.0, 1000) for _ in range(50)])
    assert 3 <= result.limbs.shape[0] <= 5
    assert ((result.limbs[:-1] >= 0) & (result.limbs[:-1] < 2**32)).all()


def test_non_finite_and_non_float_values_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        FixedSum.from_floats(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="finite"):
        FixedSum.from_floats(np.array([np.inf]))
    with pytest.raises(ValueError, match="finite"):
        FixedSum.from_floats(np.array(np.nan))  # a scalar statistic
    with pytest.raises(TypeError, match="float array"):
        FixedSum.from_floats(np.array([1, 2]))
    with pytest.raises(ValueError, match="shape"):
        FixedSum.zeros((2,)).add(FixedSum.from_floats(np.array([1.0, 2.0, 3.0])))


@settings(max_examples=200, deadline=None)
@given(x=element, y=st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_a_scalar_sum_has_the_limbs_of_a_one_element_sum(x: float, y: float) -> None:
    scalar, single = FixedSum.from_floats(np.array(x)), FixedSum.from_floats(np.array([x]))
    assert scalar.shape == ()
    assert (scalar.lo, scalar.limbs.tolist()) == (single.lo, single.limbs.tolist())
    assert scalar.window() == single.window()
    # A float32 scalar widens exactly.
    assert FixedSum.from_floats(np.float32(y)).to_floats()[()] == y


@settings(max_examples=200, deadline=None)
@given(x=element, dtype=st.sampled_from([np.float64, np.float32, np.float16]))
def test_a_scalar_statistic_is_taken_and_stored_as_a_one_element_array_is(
    x: float, dtype: type[np.floating]
) -> None:
    # Scalars (most statistics of a batch) take a shorter path: the same sums, the same
    # bytes as the arrays' path (reshaped to a scalar) gives.
    with np.errstate(over="ignore"):
        value = np.asarray(x, dtype=dtype)
    if not np.isfinite(value):
        with pytest.raises(ValueError, match="finite"):
            ExactTotals.from_stats({"s": value})
        return
    taken = ExactTotals.from_stats({"s": value, "v": np.array([1.5])})
    single = FixedSum.from_floats(value.reshape(1))
    assert taken.sums["s"].shape == ()
    assert taken.sums["s"].window() == single.window()
    assert taken.sums["s"].to_floats()[()] == float(value)
    blob = encode_arrays({"s": value, "v": np.array([1.5])})
    one = encode_arrays({"s": value.reshape(1), "v": np.array([1.5])})
    # The same entries but for the dimensions of "s": none, where the array has one.
    dims = struct.pack("<BQ", 1, 1)
    assert one.replace(dims, b"\x00", 1) == blob
    decoded = decode_arrays(blob)
    assert decoded["s"].shape == () and decoded["s"].dtype == np.float64
    assert decoded["s"].tobytes() == np.float64(value).tobytes()


def test_float32_and_float16_statistics_widen_exactly() -> None:
    value = np.float32(0.1)
    result = total([np.array([value], dtype=np.float32), np.array([np.float16(0.1)])])
    assert result.to_floats()[0] == math.fsum([float(value), float(np.float16(0.1))])


def test_totals_add_floats_exactly_and_counts_as_integers() -> None:
    totals = ExactTotals()
    totals.add(ExactTotals.from_stats({"loss": np.array([0.1, 0.2]), "tp": np.array([1, 2])}))
    totals.add(ExactTotals.from_stats({"loss": np.array([0.2, 0.1]), "seen": np.array(True)}))
    values = totals.values()
    assert values["loss"].tolist() == [math.fsum([0.1, 0.2])] * 2
    assert values["tp"].dtype == np.int64 and values["tp"].tolist() == [1, 2]
    assert values["seen"].dtype == np.int64 and int(values["seen"]) == 1


def test_totals_refuse_a_changed_shape_or_kind_and_overflowing_counts() -> None:
    totals = ExactTotals.from_stats({"loss": np.array([0.1]), "n": np.array([1, 2])})
    with pytest.raises(ValueError, match="shape"):
        totals.add(ExactTotals.from_stats({"loss": np.array([0.1, 0.2])}))
    with pytest.raises(ValueError, match="shape"):
        totals.add(ExactTotals.from_stats({"n": np.array([1])}))
    with pytest.raises(ValueError, match="counts"):
        totals.add(ExactTotals.from_stats({"n": np.array([0.5, 0.5])}))
    with pytest.raises(ValueError, match="float sum"):
        totals.add(ExactTotals.from_stats({"loss": np.array([1])}))
    big = ExactTotals.from_stats({"n": np.array([2**62, 0])})
    big.add(ExactTotals.from_stats({"n": np.array([2**62 - 1, 0])}))
    with pytest.raises(OverflowError, match="overflowed"):
        big.add(ExactTotals.from_stats({"n": np.array([1, 0])}))
    with pytest.raises(TypeError, match="float, integer or boolean"):
        ExactTotals.from_stats({"name": np.array(["a"])})


@settings(max_examples=100, deadline=None)
@given(parts=batches())
def test_totals_survive_encoding(parts: list[np.ndarray]) -> None:
    totals = ExactTotals()
    for number, part in enumerate(parts):
        stats = {"loss": part, "count": np.full(part.shape, number, dtype=np.int64)}
        encoded = decode_arrays(encode_arrays(stats))
        assert encoded.keys() == stats.keys()
        np.testing.assert_array_equal(bits(encoded["loss"]), bits(part))
        assert encoded["count"].dtype == np.int64 and encoded["count"].shape == part.shape
        totals.add(ExactTotals.from_stats(encoded))
    again = decode_totals(encode_totals(totals))
    assert again == totals
    for name, value in totals.values().items():
        np.testing.assert_array_equal(bits(again.values()[name]), bits(value))


def test_negative_totals_keep_their_sign_through_encoding() -> None:
    totals = ExactTotals.from_stats({"x": np.array([-1e-300, -BIG, 3.5, -(2.0**31)])})
    again = decode_totals(encode_totals(totals))
    assert again.values()["x"].tolist() == [-1e-300, -BIG, 3.5, -(2.0**31)]


def test_encoded_totals_are_compact() -> None:
    rng = np.random.default_rng(1)
    totals = ExactTotals()
    for _ in range(20):
        totals.add(ExactTotals.from_stats({"loss": rng.exponential(1.0, 10_000)}))
    # Four 32-bit limbs per element (twice a float64), and a small header.
    assert len(encode_totals(totals)) <= 10_000 * 4 * 4 + 64


def test_corrupt_bytes_are_refused() -> None:
    good = encode_totals(ExactTotals.from_stats({"x": np.array([1.0, 2.0])}))
    with pytest.raises(CorruptBlob, match="magic"):
        decode_totals(b"PK\x03\x04" + good[4:])
    with pytest.raises(CorruptBlob, match="truncated"):
        decode_totals(good[:-1])
    with pytest.raises(CorruptBlob, match="trailing"):
        decode_totals(good + b"\x00")
    with pytest.raises(CorruptBlob, match="not a batch's array"):
        decode_arrays(good)
    twice = good[:4] + struct.pack("<I", 2) + good[8:] + good[8:]
    with pytest.raises(CorruptBlob, match="twice"):
        decode_totals(twice)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(element, min_size=1, max_size=6))
def test_a_scalar_total_held_as_an_integer_is_stored_as_its_limbs(values: list[float]) -> None:
    # Scalar statistics are added as Python integers and stored from them, without
    # limbs: the bytes must be those of the canonical limbs.
    held = FixedSum.from_floats(np.float64(values[0]))
    held.add_all([FixedSum.from_floats(np.float64(v)) for v in values[1:]])
    with mock.patch.object(exact, "SMALL", -1):
        limbs = FixedSum.from_floats(np.array([values[0]]).reshape(()))
        for v in values[1:]:
            limbs.add(FixedSum.from_floats(np.array([v]).reshape(())))
    assert held._limbs is None  # held as an integer: no limbs made
    assert held.window() == limbs.window()
    assert limbs.window()[:2] == (limbs.lo, limbs.limbs.shape[0])
    as_totals = ExactTotals({"x": held})
    assert decode_totals(encode_totals(as_totals)) == ExactTotals({"x": limbs})


def _exact_size(parts: list[np.ndarray]) -> int:
    """``Σ |x|`` over the elements of the parts' exact sum, in units of ``2**BASE``."""
    sums = [sum(exact.units(float(p[i])) for p in parts) for i in np.ndindex(parts[0].shape)]
    return sum(map(abs, sums))


@settings(max_examples=200, deadline=None)
@given(parts=batches())
def test_the_magnitude_bound_bounds_the_exact_size(parts: list[np.ndarray]) -> None:
    summed = total(parts)
    size = _exact_size(parts)
    assert summed.magnitude_bound() >= size
    # At most 2**33 times the number of elements over: tight enough to admit sums far
    # below a limit without reading them.
    assert summed.magnitude_bound() <= (max(1, summed.limbs.shape[1]) * max(size, 1)) << 33
    # A small sum held as integers knows its size exactly.
    assert FixedSum.from_floats(np.array(-3.5)).magnitude_bound() == exact.units(3.5)


def test_headroom_admits_batches_while_each_total_stays_within_its_limit() -> None:
    limit = 2.0**1000
    totals = ExactTotals.from_stats({"w": np.float64(5e300), "n": np.int64(3)})
    room = exact.Headroom(totals, limit)
    # 5e300 + 4e300 fits; a further 4e300 does not (1.3e301 > 1.07e301); 1e300 still does.
    assert room.admit(ExactTotals.from_stats({"w": np.float64(4e300)})) is None
    refused = room.admit(ExactTotals.from_stats({"w": np.float64(4e300), "n": np.int64(1)}))
    before = math.fsum([5e300, 4e300])
    assert refused == exact.Overflow("w", math.fsum([5e300, 4e300, 4e300]), before, 4e300)
    assert room.admit(ExactTotals.from_stats({"w": np.float64(1e300)})) is None
    # The size adds the magnitudes of a statistic's elements: opposite signs do not cancel.
    vector = exact.Headroom(ExactTotals(), limit)
    refused = vector.admit(ExactTotals.from_stats({"v": np.array([6e300, -6e300])}))
    assert refused is not None and refused.name == "v" and refused.size == 1.2e301
    # Finite batches whose sum would overflow float64: refused, the size infinite.
    huge = exact.Headroom(ExactTotals.from_stats({"w": np.float64(1e308)}), math.inf)
    refused = huge.admit(ExactTotals.from_stats({"w": np.float64(1e308)}))
    assert refused is not None and refused.size == math.inf and refused.before == 1e308
    # The totals are never changed; given as a function, they are read once, when needed.
    assert totals.values()["w"] == 5e300
    reads: list[int] = []

    def read() -> ExactTotals:
        reads.append(1)
        return totals

    lazy = exact.Headroom(read, limit)
    assert reads == []
    assert lazy.admit(ExactTotals.from_stats({"w": np.float64(1.0)})) is None
    assert lazy.admit(ExactTotals.from_stats({"w": np.float64(1.0)})) is None
    assert reads == [1] and lazy.totals() is totals
