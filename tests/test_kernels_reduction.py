"""Reductions, sample weights and ``ignore_class``, as Keras 3 reduces a loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from as_requested import loss
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service import kernels, registry

PROPERTY = settings(derandomize=True, max_examples=50, deadline=None, database=None)

LOSSES = sorted(registry.LOSSES)
CATEGORICAL = [
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "categorical_focal_crossentropy",
]


# ---- reduce_loss by hand ----------------------------------------------------------------

VALUES = np.float32([1.0, 2.0, 3.0, 6.0])
WEIGHTS = np.float64([1.0, 0.0, 0.5, 2.0])


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        ("sum_over_batch_size", 12.0 / 4),
        ("mean", 12.0 / 4),
        ("sum", 12.0),
        ("mean_with_sample_weight", 12.0 / 4),  # no weights: the plain mean
        ("none", [1.0, 2.0, 3.0, 6.0]),
    ],
)
def test_reduce_without_weights(reduction: Any, expected: Any) -> None:
    got = kernels.reduce_loss(VALUES, reduction=reduction)
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    assert got.dtype == np.float32


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        # Σ w l = 1 + 0 + 1.5 + 12 = 14.5; Σ w = 3.5
        ("sum_over_batch_size", 14.5 / 4),
        ("mean", 14.5 / 4),
        ("sum", 14.5),
        ("mean_with_sample_weight", 14.5 / 3.5),
        ("none", [1.0, 0.0, 1.5, 12.0]),
    ],
)
def test_reduce_with_weights(reduction: Any, expected: Any) -> None:
    got = kernels.reduce_loss(VALUES, sample_weight=WEIGHTS, reduction=reduction)
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    assert got.dtype == np.float32  # the weights do not promote the loss


def test_reduce_with_a_mask_divides_by_the_kept_count() -> None:
    mask = np.array([True, False, True, True])
    # kept: 1 + 3 + 6 = 10 over 3 positions
    got = kernels.reduce_loss(VALUES, mask=mask)
    np.testing.assert_allclose(got, 10 / 3, rtol=1e-6)
    np.testing.assert_allclose(kernels.reduce_loss(VALUES, mask=mask, reduction="sum"), 10.0)
    np.testing.assert_allclose(
        kernels.reduce_loss(VALUES, mask=mask, reduction="none"), [1.0, 0.0, 3.0, 6.0]
    )
    # with weights: (1·1 + 3·0.5 + 6·2) / 3 kept positions
    got = kernels.reduce_loss(VALUES, sample_weight=WEIGHTS, mask=mask)
    np.testing.assert_allclose(got, 14.5 / 3, rtol=1e-6)
    got = kernels.reduce_loss(
        VALUES, sample_weight=WEIGHTS, mask=mask, reduction="mean_with_sample_weight"
    )
    np.testing.assert_allclose(got, 14.5 / 3.5, rtol=1e-6)


def test_reduce_with_everything_masked_or_zero_weight_is_zero() -> None:
    nothing = np.zeros(4, dtype=bool)
    assert float(kernels.reduce_loss(VALUES, mask=nothing)) == 0.0
    zero = np.zeros(4)
    assert float(kernels.reduce_loss(VALUES, sample_weight=zero)) == 0.0
    got = kernels.reduce_loss(VALUES, sample_weight=zero, reduction="mean_with_sample_weight")
    assert float(got) == 0.0


def test_per_value_weights_on_a_sequence_batch() -> None:
    values = np.float32([[1.0, 2.0], [3.0, 4.0]])
    per_sample = np.float64([[2.0], [0.0]])  # broadcasts over the time axis
    np.testing.assert_allclose(kernels.reduce_loss(values, sample_weight=per_sample), 6.0 / 4)
    per_value = np.float64([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(kernels.reduce_loss(values, sample_weight=per_value), 5.0 / 4)


# ---- properties through the registry ----------------------------------------------------


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """``(loss name, y_true, y_pred (probabilities), sample_weight (n,))``."""
    name = draw(st.sampled_from(LOSSES))
    n = draw(st.integers(1, 8))
    c = 1 if name.startswith("binary") else draw(st.integers(2, 5))
    y_pred = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(0.01, 1.0)))
    if c == 1:
        y_true = draw(hnp.arrays(np.float64, (n, 1), elements=st.sampled_from([0.0, 1.0])))
    else:
        y_true = draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
    # weights are cast to the float32 compute dtype (as Keras does): keep them representable
    weights = draw(hnp.arrays(np.float64, n, elements=st.just(0.0) | st.floats(1e-3, 5.0)))
    return name, y_true, y_pred, weights


@PROPERTY
@given(cases(), st.booleans())
def test_none_then_mean_equals_sum_over_batch_size(case: Any, weighted: bool) -> None:
    name, y_true, y_pred, weights = case
    w = weights if weighted else None
    none = loss(name, y_true, y_pred, w, reduction="none").astype(np.float64)
    assert none.shape == (len(y_pred),)
    for reduction, expected in (
        ("sum_over_batch_size", none.mean()),
        ("mean", none.mean()),
        ("sum", none.sum()),
    ):
        got = loss(name, y_true, y_pred, w, reduction=reduction)
        assert got.shape == ()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@PROPERTY
@given(cases())
def test_weights_multiply_the_per_sample_losses(case: Any) -> None:
    name, y_true, y_pred, weights = case
    plain = loss(name, y_true, y_pred, reduction="none").astype(np.float64)
    weighted = loss(name, y_true, y_pred, weights, reduction="none")
    np.testing.assert_allclose(weighted, plain * weights, rtol=1e-5, atol=1e-6)
    expected = np.dot(plain, weights) / weights.sum() if weights.sum() else 0.0
    got = loss(name, y_true, y_pred, weights, reduction="mean_with_sample_weight")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@PROPERTY
@given(cases(), st.floats(1e-3, 1e3))
def test_scaling_weights(case: Any, scale: float) -> None:
    name, y_true, y_pred, weights = case
    assume(weights.sum() > 0)
    base = loss(name, y_true, y_pred, weights, reduction="mean_with_sample_weight")
    scaled = loss(name, y_true, y_pred, weights * scale, reduction="mean_with_sample_weight")
    np.testing.assert_allclose(scaled, base, rtol=1e-5, atol=1e-7)
    # ... while the other reductions scale with the weights
    for reduction in ("sum_over_batch_size", "sum"):
        base = loss(name, y_true, y_pred, weights, reduction=reduction).astype(np.float64)
        scaled = loss(name, y_true, y_pred, weights * scale, reduction=reduction)
        np.testing.assert_allclose(scaled, base * scale, rtol=1e-5, atol=1e-6 * scale)


@PROPERTY
@given(st.data(), st.booleans(), st.sampled_from([-1, 255, 3]))
def test_ignore_class_equals_dropping_rows(
    data: st.DataObject, from_logits: bool, ignore_class: int
) -> None:
    n, c = data.draw(st.integers(1, 8)), 3
    elements = st.floats(-5, 5) if from_logits else st.floats(0.01, 1.0)
    y_pred = data.draw(hnp.arrays(np.float64, (n, c), elements=elements))
    labels = data.draw(hnp.arrays(np.int64, n, elements=st.sampled_from([0, 1, 2, ignore_class])))
    kept = labels != ignore_class
    name = "sparse_categorical_crossentropy"
    kw = {"from_logits": from_logits, "ignore_class": ignore_class}
    got = loss(name, labels, y_pred, reduction="sum_over_batch_size", **kw)
    none = loss(name, labels, y_pred, reduction="none", **kw)
    assert np.all(none[~kept] == 0.0)
    if kept.any():
        dropped = loss(name, labels[kept], y_pred[kept], from_logits=from_logits)
        np.testing.assert_allclose(got, dropped, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(
            none[kept], loss(name, labels[kept], y_pred[kept], reduction="none", **kw), rtol=1e-7
        )
        total = loss(name, labels, y_pred, reduction="sum", **kw)
        dropped_total = loss(name, labels[kept], y_pred[kept], reduction="sum", **kw)
        np.testing.assert_allclose(total, dropped_total, rtol=1e-6)
    else:
        assert float(got) == 0.0


def test_ignore_class_hand_value() -> None:
    y_pred = np.float64([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])
    got = loss("sparse_categorical_crossentropy", [1, -1, 0], y_pred, ignore_class=-1)
    # -log(0.8) and -log(0.9) (Σ clip(p) is 1 in both rows) over 2 kept rows
    np.testing.assert_allclose(got, (-np.log(0.8) - np.log(0.9)) / 2, rtol=1e-6)


def test_ignore_class_on_a_sequence_batch() -> None:
    y_pred = np.full((2, 3, 4), 0.25)
    labels = np.array([[0, 9, 1], [9, 9, 3]])
    got = loss("sparse_categorical_crossentropy", labels, y_pred, ignore_class=9, reduction="none")
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, [[np.log(4), 0, np.log(4)], [0, 0, np.log(4)]], rtol=1e-6)
    got = loss("sparse_categorical_crossentropy", labels, y_pred, ignore_class=9)
    np.testing.assert_allclose(got, np.log(4), rtol=1e-6)


@pytest.mark.parametrize("name", CATEGORICAL)
def test_sequence_weights_per_sample_and_per_step(name: str) -> None:
    labels = np.array([[0, 1], [1, 1]])
    y_pred = np.float64([[[0.5, 0.5], [0.2, 0.8]], [[0.6, 0.4], [0.3, 0.7]]])
    none = loss(name, labels, y_pred, reduction="none").astype(np.float64)
    per_sample = np.array([2.0, 1.0])
    got = loss(name, labels, y_pred, per_sample)
    np.testing.assert_allclose(got, (none * per_sample[:, None]).mean(), rtol=1e-6)
    per_step = np.array([[1.0, 0.0], [0.0, 3.0]])
    got = loss(name, labels, y_pred, per_step, reduction="mean_with_sample_weight")
    np.testing.assert_allclose(got, (none[0, 0] + 3 * none[1, 1]) / 4, rtol=1e-6)


def test_a_weighted_mean_whose_weights_sum_past_the_dtype_is_nan_for_the_caller_to_refuse() -> None:
    values = np.array([0.5, 0.25], np.float32)
    weights = np.array([3e38, 3e38], np.float32)  # each finite in float32, not their sum
    with np.errstate(over="ignore"):  # as the service computes
        got = kernels.reduce_loss(
            values, sample_weight=weights, reduction="mean_with_sample_weight"
        )
    assert np.isnan(got) and got.dtype == np.float32
    halves = kernels.reduce_loss(
        values, sample_weight=weights / 2, reduction="mean_with_sample_weight"
    )
    assert halves == pytest.approx(0.375, rel=1e-6)
