"""Binary cross-entropy kernels: hand values, a float64 reference, and properties.

Keras 3's formulas, written out here independently: clip probabilities to
[1e-7, 1 - 1e-7]; logits through ``log(1 + e^-x)``; label smoothing
``y (1 - s) + s / 2``; the mean over the last axis; the focal factor
``(1 - p_t)^γ`` and class balancing ``α y + (1 - α)(1 - y)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from as_requested import loss as through_registry
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service import kernels

PROPERTY = settings(derandomize=True, max_examples=50, deadline=None, database=None)
EPS = 1e-7
#: float32 clips to [ε32, 1 - ε32], and 1 - (1 - ε32) is 2^-23 there, not ε32.
EPS32 = float(np.float32(1e-7))
ONE_MINUS_CLIPPED32 = float(np.float32(1) - (np.float32(1) - np.float32(1e-7)))
CONFIDENT32 = -np.log(float(np.float32(1) - np.float32(1e-7)))

# ---- an independent float64 reference ---------------------------------------------------


def ref_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))


def ref_bce_elements(
    y: np.ndarray, p: np.ndarray, from_logits: bool = False, s: float = 0.0
) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64) * (1 - s) + s / 2
    x = np.asarray(p, dtype=np.float64)
    if from_logits:
        # -log σ(x) = log(1 + e^-x); -log(1 - σ(x)) = log(1 + e^x)
        return y * np.logaddexp(0.0, -x) + (1 - y) * np.logaddexp(0.0, x)
    q = np.clip(x, EPS, 1 - EPS)
    return -(y * np.log(q) + (1 - y) * np.log(1 - q))


def ref_bce(y: np.ndarray, p: np.ndarray, from_logits: bool = False, s: float = 0.0) -> np.ndarray:
    return ref_bce_elements(y, p, from_logits, s).mean(axis=-1)


def ref_focal(
    y: np.ndarray,
    p: np.ndarray,
    *,
    balancing: bool = False,
    alpha: float = 0.25,
    gamma: float = 2.0,
    from_logits: bool = False,
    s: float = 0.0,
) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64) * (1 - s) + s / 2
    p = ref_sigmoid(p) if from_logits else np.asarray(p, dtype=np.float64)
    p_t = y * p + (1 - y) * (1 - p)
    out = (1 - p_t) ** gamma * ref_bce_elements(y, p)
    if balancing:
        out = out * (y * alpha + (1 - y) * (1 - alpha))
    return out.mean(axis=-1)


@st.composite
def batches(
    draw: st.DrawFn, *, bound: float = 15.0, soft: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, logits)``, both ``(n, k)`` float64; targets 0/1 unless ``soft``."""
    n, k = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    if soft:
        targets = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(0, 1, width=32)))
    else:
        targets = draw(hnp.arrays(np.float64, (n, k), elements=st.sampled_from([0.0, 1.0])))
    logits = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(-bound, bound, width=32)))
    return targets, logits


smoothing = st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0.0, 1.0)


# ---- hand-checkable values --------------------------------------------------------------


def test_bce_hand_value() -> None:
    # Keras' docstring example: both targets are predicted with 0.6 → -log 0.6
    got = kernels.binary_crossentropy(np.float32([[0, 1]]), np.float32([[0.4, 0.6]]))
    np.testing.assert_allclose(got, [-np.log(0.6)], rtol=1e-6)


def test_bce_averages_the_last_axis() -> None:
    y_true = np.float64([[0, 1], [0, 0]])
    y_pred = np.float64([[0.6, 0.4], [0.4, 0.6]])
    expected = [
        (-np.log(0.4) - np.log(0.4)) / 2,
        (-np.log(0.6) - np.log(0.4)) / 2,
    ]
    np.testing.assert_allclose(kernels.binary_crossentropy(y_true, y_pred), expected, rtol=1e-12)


def test_bce_from_logits_hand_values() -> None:
    got = kernels.binary_crossentropy(
        np.float64([[1], [0], [1], [0]]), np.float64([[0.0], [0.0], [2.0], [2.0]]), from_logits=True
    )
    expected = [np.log(2), np.log(2), np.log1p(np.exp(-2)), 2 + np.log1p(np.exp(-2))]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_bce_label_smoothing_hand_value() -> None:
    # s = 0.2: target 1 becomes 0.9, target 0 becomes 0.1
    got = kernels.binary_crossentropy(
        np.float64([[1, 0]]), np.float64([[0.7, 0.2]]), label_smoothing=0.2
    )
    expected = (
        -(0.9 * np.log(0.7) + 0.1 * np.log(0.3)) - (0.1 * np.log(0.2) + 0.9 * np.log(0.8))
    ) / 2
    np.testing.assert_allclose(got, [expected], rtol=1e-12)


def test_bce_clips_probabilities() -> None:
    got = kernels.binary_crossentropy(
        np.float32([[1], [0], [1]]), np.float32([[0.0], [1.0], [1.0]])
    )
    expected = [-np.log(EPS32), -np.log(ONE_MINUS_CLIPPED32), CONFIDENT32]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert ONE_MINUS_CLIPPED32 == 2.0**-23
    # in float64 both ends clip to 1e-7 exactly
    got = kernels.binary_crossentropy(np.float64([[1], [0]]), np.float64([[0.0], [1.0]]))
    np.testing.assert_allclose(got, [-np.log(1e-7), -np.log(1e-7)], rtol=1e-9)


def test_focal_hand_value() -> None:
    # y = 1, p = 0.8: p_t = 0.8, (1 - 0.8)^2 · (-log 0.8); y = 0, p = 0.3: 0.3^2 · (-log 0.7)
    got = kernels.binary_focal_crossentropy(np.float64([[1], [0]]), np.float64([[0.8], [0.3]]))
    np.testing.assert_allclose(got, [0.04 * -np.log(0.8), 0.09 * -np.log(0.7)], rtol=1e-12)


def test_focal_class_balancing_hand_value() -> None:
    got = kernels.binary_focal_crossentropy(
        np.float64([[1, 0]]),
        np.float64([[0.8, 0.3]]),
        apply_class_balancing=True,
        alpha=0.25,
        gamma=1.0,
    )
    expected = (0.25 * 0.2 * -np.log(0.8) + 0.75 * 0.3 * -np.log(0.7)) / 2
    np.testing.assert_allclose(got, [expected], rtol=1e-12)


def test_focal_gamma_zero_is_bce() -> None:
    y = np.float64([[1, 0, 1]])
    p = np.float64([[0.9, 0.2, 0.4]])
    np.testing.assert_allclose(
        kernels.binary_focal_crossentropy(y, p, gamma=0.0),
        kernels.binary_crossentropy(y, p),
        rtol=1e-12,
    )


def test_focal_from_logits_uses_the_sigmoid() -> None:
    # σ(0) = 0.5: (1 - 0.5)^2 · log 2
    got = kernels.binary_focal_crossentropy(
        np.float64([[1]]), np.float64([[0.0]]), from_logits=True
    )
    np.testing.assert_allclose(got, [0.25 * np.log(2)], rtol=1e-12)


# ---- against the reference --------------------------------------------------------------


@PROPERTY
@given(batches(soft=True), st.booleans(), smoothing)
def test_bce_matches_reference(batch: Any, from_logits: bool, s: float) -> None:
    y, logits = batch
    y_pred = logits if from_logits else ref_sigmoid(logits)
    expected = ref_bce(y, y_pred, from_logits, s)
    got = kernels.binary_crossentropy(y, y_pred, from_logits=from_logits, label_smoothing=s)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    # float32: compare with the reference on the same float32-rounded inputs (σ(13) rounded
    # to float32 is not σ(13), and 1 - p cancels)
    y32, pred32 = y.astype(np.float32), y_pred.astype(np.float32)
    got32 = kernels.binary_crossentropy(y32, pred32, from_logits=from_logits, label_smoothing=s)
    np.testing.assert_allclose(got32, ref_bce(y32, pred32, from_logits, s), rtol=1e-4, atol=1e-5)


@PROPERTY
@given(
    batches(soft=True),
    st.booleans(),
    smoothing,
    st.booleans(),
    st.floats(0.0, 1.0),
    st.floats(0.0, 5.0),
)
def test_focal_matches_reference(
    batch: Any, from_logits: bool, s: float, balancing: bool, alpha: float, gamma: float
) -> None:
    y, logits = batch
    y_pred = logits if from_logits else ref_sigmoid(logits)
    kw = {"alpha": alpha, "gamma": gamma, "from_logits": from_logits}
    expected = ref_focal(y, y_pred, balancing=balancing, s=s, **kw)
    got = kernels.binary_focal_crossentropy(
        y, y_pred, apply_class_balancing=balancing, label_smoothing=s, **kw
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@PROPERTY
@given(batches(bound=5.0), smoothing)
def test_logits_and_their_sigmoid_agree(batch: Any, s: float) -> None:
    y, logits = batch
    logits = logits.astype(np.float32)
    probs = ref_sigmoid(logits).astype(np.float32)  # within [0.0066, 0.9934]: far from 0 and 1
    for fn in (kernels.binary_crossentropy, kernels.binary_focal_crossentropy):
        np.testing.assert_allclose(
            fn(y.astype(np.float32), logits, from_logits=True, label_smoothing=s),
            fn(y.astype(np.float32), probs, from_logits=False, label_smoothing=s),
            rtol=1e-4,
            atol=1e-6,
        )


# ---- shapes: 1-D, (n, 1), multi-label ----------------------------------------------------

BINARY = ["binary_crossentropy", "binary_focal_crossentropy"]


@pytest.mark.parametrize("name", BINARY)
def test_one_d_targets_give_one_value_per_sample(name: str) -> None:
    y_true = np.array([0, 1, 1, 0])
    y_pred = np.array([0.2, 0.7, 0.9, 0.6])
    flat = through_registry(name, y_true, y_pred, reduction="none")
    column = through_registry(name, y_true[:, None], y_pred[:, None], reduction="none")
    assert flat.shape == (4,)
    np.testing.assert_array_equal(flat, column)
    if name == "binary_crossentropy":
        expected = [-np.log(0.8), -np.log(0.7), -np.log(0.9), -np.log(0.4)]
        np.testing.assert_allclose(flat, expected, rtol=1e-6)
    for reduction in ("sum_over_batch_size", "sum", "mean_with_sample_weight"):
        a = through_registry(name, y_true, y_pred, reduction=reduction)
        b = through_registry(name, y_true[:, None], y_pred[:, None], reduction=reduction)
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("name", BINARY)
def test_one_d_targets_take_one_weight_per_sample(name: str) -> None:
    y_true = np.array([0, 1, 1, 0])
    y_pred = np.array([0.2, 0.7, 0.9, 0.6])
    weights = np.array([1.0, 0.0, 2.0, 0.5])
    per_sample = through_registry(name, y_true, y_pred, reduction="none")
    for reduction, expected in (
        ("sum", np.dot(per_sample, weights)),
        ("sum_over_batch_size", np.dot(per_sample, weights) / 4),
        ("mean_with_sample_weight", np.dot(per_sample, weights) / weights.sum()),
    ):
        got = through_registry(name, y_true, y_pred, weights, reduction=reduction)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        column = through_registry(
            name, y_true[:, None], y_pred[:, None], weights, reduction=reduction
        )
        np.testing.assert_allclose(got, column, rtol=1e-6)


@pytest.mark.parametrize("name", BINARY)
def test_column_targets_against_flat_predictions(name: str) -> None:
    y_pred = np.array([[0.2], [0.7], [0.9]])
    a = through_registry(name, np.array([0, 1, 1]), y_pred, reduction="none")
    b = through_registry(name, np.array([[0], [1], [1]]), y_pred, reduction="none")
    assert a.shape == b.shape == (3,)
    np.testing.assert_array_equal(a, b)


def test_multi_label_rows_average_their_targets() -> None:
    y_true = np.array([[1, 0, 1], [0, 0, 0]])
    y_pred = np.array([[0.9, 0.2, 0.6], [0.1, 0.3, 0.5]])
    got = through_registry("binary_crossentropy", y_true, y_pred, reduction="none")
    expected = [
        -(np.log(0.9) + np.log(0.8) + np.log(0.6)) / 3,
        -(np.log(0.9) + np.log(0.7) + np.log(0.5)) / 3,
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# ---- extreme values ---------------------------------------------------------------------


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("s", [0.0, 0.1])
def test_huge_logits_are_finite(name: str, dtype: str, s: float) -> None:
    y_true = np.array([[1, 0], [0, 1], [1, 1]])
    logits = np.array([[1e4, -1e4], [1e4, -1e4], [-1e4, 1e4]])
    got = through_registry(
        name, y_true, logits, from_logits=True, label_smoothing=s, reduction="none", dtype=dtype
    )
    assert np.all(np.isfinite(got))
    if name == "binary_crossentropy" and s == 0.0:
        # right answers cost 0, wrong ones 1e4 (softplus of 1e4 is 1e4)
        np.testing.assert_allclose(got, [0.0, 1e4, 5e3], atol=1e-6)


@pytest.mark.parametrize("name", BINARY)
def test_probabilities_of_exactly_zero_and_one(name: str) -> None:
    y_true = np.array([[1, 0], [0, 1], [1, 1]])
    y_pred = np.float32([[1, 0], [1, 0], [0, 1]])
    for s in (0.0, 0.2):
        got = through_registry(name, y_true, y_pred, label_smoothing=s, reduction="none")
        assert np.all(np.isfinite(got))
        assert got[1] > got[2] > got[0]
    if name == "binary_crossentropy":
        got = through_registry(name, y_true, y_pred, reduction="none")
        # [0, 1] against [1, 0]: both ends clipped (float32: 1 - ε rounds to 1 - 2^-23)
        expected = (-np.log(ONE_MINUS_CLIPPED32) - np.log(EPS32)) / 2
        assert float(got[1]) == pytest.approx(expected, rel=1e-5)


def test_float64_close_to_float32_and_clips_in_its_own_dtype() -> None:
    y_true = np.array([[1], [0], [1]])
    y_pred = np.array([[0.3], [0.45], [0.99]])
    f32 = through_registry("binary_crossentropy", y_true, y_pred, reduction="none")
    f64 = through_registry("binary_crossentropy", y_true, y_pred, reduction="none", dtype="float64")
    assert f64.dtype == np.float64
    np.testing.assert_allclose(f64, f32, rtol=1e-6, atol=1e-6)
    zero = np.array([[0.0]])
    f32 = through_registry("binary_crossentropy", np.array([[1]]), zero)
    f64 = through_registry("binary_crossentropy", np.array([[1]]), zero, dtype="float64")
    assert float(f64) == pytest.approx(-np.log(1e-7), rel=1e-12)
    assert float(f32) == pytest.approx(16.118, abs=0.01)
    assert float(f32) != float(f64)
