"""Categorical cross-entropy kernels: hand values, a float64 reference, and properties.

Every expected number here is computed in the test, from the formulas Keras 3
documents (renormalize, clip to [1e-7, 1 - 1e-7], log; log-softmax for logits;
``y (1 - s) + s / C`` for label smoothing), never copied from the service.
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
#: ε as float32 holds it, and -log(1 - ε) of a float32 probability of exactly 1.
EPS32 = float(np.float32(1e-7))
CONFIDENT32 = -np.log(float(np.float32(1) - np.float32(1e-7)))

# ---- an independent float64 reference ---------------------------------------------------


def ref_log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def ref_softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(ref_log_softmax(z))


def ref_smooth(y: np.ndarray, s: float) -> np.ndarray:
    return np.asarray(y, dtype=np.float64) * (1 - s) + s / y.shape[-1]


def ref_cce(y: np.ndarray, p: np.ndarray, from_logits: bool = False, s: float = 0.0) -> np.ndarray:
    y = ref_smooth(np.asarray(y, dtype=np.float64), s)
    if from_logits:
        logq = ref_log_softmax(p)
    else:
        p = np.asarray(p, dtype=np.float64)
        logq = np.log(np.clip(p / p.sum(axis=-1, keepdims=True), EPS, 1 - EPS))
    return -(y * logq).sum(axis=-1)


def ref_scce(labels: np.ndarray, p: np.ndarray, from_logits: bool = False) -> np.ndarray:
    rows = np.arange(len(labels))
    if from_logits:
        return -ref_log_softmax(p)[rows, labels]
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return -np.log(q[rows, labels]) + np.log(q.sum(axis=-1))


def ref_focal(
    y: np.ndarray,
    p: np.ndarray,
    alpha: float = 0.25,
    gamma: float = 2.0,
    from_logits: bool = False,
    s: float = 0.0,
) -> np.ndarray:
    y = ref_smooth(np.asarray(y, dtype=np.float64), s)
    p = ref_softmax(p) if from_logits else np.asarray(p, dtype=np.float64)
    q = np.clip(p / p.sum(axis=-1, keepdims=True), EPS, 1 - EPS)
    return (-y * alpha * (1 - q) ** gamma * np.log(q)).sum(axis=-1)


def one_hot(labels: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c, dtype=np.float64)[labels]


# ---- strategies ------------------------------------------------------------------------


@st.composite
def batches(
    draw: st.DrawFn, *, max_rows: int = 6, max_classes: int = 8, logit_bound: float = 20.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, logits)``: integer labels of shape (n,) and float64 logits (n, C)."""
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(2, max_classes))
    labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
    logits = draw(
        hnp.arrays(
            np.float64,
            (n, c),
            elements=st.floats(-logit_bound, logit_bound, allow_nan=False, width=32),
        )
    )
    return labels, logits


smoothing = st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(0.0, 1.0)
alphas = st.floats(0.0, 1.0)
gammas = st.floats(0.0, 5.0)


# ---- hand-checkable values --------------------------------------------------------------


def test_cce_keras_documented_example() -> None:
    y_true = np.float32([[0, 1, 0], [0, 0, 1]])
    y_pred = np.float32([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    got = kernels.categorical_crossentropy(y_true, y_pred)
    np.testing.assert_allclose(got, [-np.log(0.95), -np.log(0.1)], rtol=1e-6)
    assert got.dtype == np.float32
    # The mean is Keras' documented 1.177.
    assert float(got.mean()) == pytest.approx(1.177, abs=5e-4)


def test_cce_renormalizes_rows() -> None:
    # [1, 3] is renormalized to [0.25, 0.75] before the log.
    got = kernels.categorical_crossentropy(np.float32([[0, 1]]), np.float32([[1.0, 3.0]]))
    np.testing.assert_allclose(got, [-np.log(0.75)], rtol=1e-6)


def test_cce_clips_zero_probability_to_epsilon() -> None:
    got = kernels.categorical_crossentropy(np.float32([[1, 0]]), np.float32([[0.0, 1.0]]))
    np.testing.assert_allclose(got, [-np.log(1e-7)], rtol=1e-6)
    # and a certain right answer costs -log(1 - 1e-7), not 0
    got = kernels.categorical_crossentropy(np.float64([[0, 1]]), np.float64([[0.0, 1.0]]))
    np.testing.assert_allclose(got, [-np.log1p(-1e-7)], rtol=1e-9)


def test_cce_from_logits_hand_value() -> None:
    # -log softmax([1, 2, 3])[2] = log(e + e^2 + e^3) - 3
    got = kernels.categorical_crossentropy(
        np.float32([[0, 0, 1]]), np.float32([[1.0, 2.0, 3.0]]), from_logits=True
    )
    expected = np.log(np.e + np.e**2 + np.e**3) - 3
    np.testing.assert_allclose(got, [expected], rtol=1e-6)
    assert expected == pytest.approx(0.40760596, abs=1e-8)


def test_cce_label_smoothing_hand_value() -> None:
    # s = 0.3, C = 3: targets [0, 1, 0] become [0.1, 0.8, 0.1].
    y_pred = np.float64([[0.2, 0.5, 0.3]])
    got = kernels.categorical_crossentropy(np.float64([[0, 1, 0]]), y_pred, label_smoothing=0.3)
    expected = -(0.1 * np.log(0.2) + 0.8 * np.log(0.5) + 0.1 * np.log(0.3))
    np.testing.assert_allclose(got, [expected], rtol=1e-12)
    from_indices = kernels.categorical_crossentropy_from_indices(
        np.array([1]), y_pred, label_smoothing=0.3
    )
    np.testing.assert_allclose(from_indices, [expected], rtol=1e-12)


def test_cce_soft_labels_hand_value() -> None:
    got = kernels.categorical_crossentropy(np.float64([[0.25, 0.75]]), np.float64([[0.5, 0.5]]))
    np.testing.assert_allclose(got, [np.log(2)], rtol=1e-12)


def test_cce_from_indices_hand_value() -> None:
    y_pred = np.float32([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    got = kernels.categorical_crossentropy_from_indices(np.array([1, 2]), y_pred)
    np.testing.assert_allclose(got, [-np.log(0.95), -np.log(0.1)], rtol=1e-6)


def test_scce_from_probabilities_clips_before_summing() -> None:
    # Keras' sparse loss does not renormalize: -log(clip(p_t)) + log(Σ clip(p_j)).
    y_pred = np.float64([[0.5, 0.5, 0.0]])
    got = kernels.sparse_categorical_crossentropy(np.array([0]), y_pred)
    expected = -np.log(0.5) + np.log(0.5 + 0.5 + 1e-7)
    np.testing.assert_allclose(got, [expected], rtol=1e-12)
    assert got[0] != pytest.approx(-np.log(0.5), rel=1e-9, abs=0)


def test_scce_unnormalized_rows() -> None:
    # [2, 6]: -log 6 + log 8 = -log 0.75 (clipping 2 and 6 to 1 - 1e-7 first).
    got = kernels.sparse_categorical_crossentropy(np.array([1]), np.float64([[0.2, 0.6]]))
    np.testing.assert_allclose(got, [-np.log(0.6) + np.log(0.8)], rtol=1e-12)


def test_scce_clips_unnormalized_rows_without_renormalizing() -> None:
    # [3, 1]: both clip to 1 - ε, so the sparse loss is log 2, as Keras' TF backend computes
    # it (clip, log, softmax cross-entropy); the categorical loss renormalizes to [0.75, 0.25].
    y_pred = np.float64([[3.0, 1.0]])
    got = kernels.sparse_categorical_crossentropy(np.array([0]), y_pred)
    np.testing.assert_allclose(got, [np.log(2)], rtol=1e-12)
    got = kernels.categorical_crossentropy_from_indices(np.array([0]), y_pred)
    np.testing.assert_allclose(got, [-np.log(0.75)], rtol=1e-12)


def test_scce_from_logits_hand_value() -> None:
    got = kernels.sparse_categorical_crossentropy(
        np.array([0, 2]), np.float32([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), from_logits=True
    )
    expected = [np.log(3), np.log(np.e + np.e**2 + np.e**3) - 3]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_focal_hand_value() -> None:
    # p_t = 0.8, α = 0.25, γ = 2: 0.25 · 0.2² · (-log 0.8)
    y_pred = np.float64([[0.8, 0.2]])
    expected = 0.25 * 0.2**2 * -np.log(0.8)
    got = kernels.categorical_focal_crossentropy(np.float64([[1, 0]]), y_pred)
    np.testing.assert_allclose(got, [expected], rtol=1e-12)
    got = kernels.categorical_focal_crossentropy_from_indices(np.array([0]), y_pred)
    np.testing.assert_allclose(got, [expected], rtol=1e-12)


def test_focal_gamma_zero_alpha_one_is_cross_entropy() -> None:
    y_pred = np.float64([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    labels = np.array([1, 0])
    focal = kernels.categorical_focal_crossentropy_from_indices(
        labels, y_pred, alpha=1.0, gamma=0.0
    )
    np.testing.assert_allclose(focal, [-np.log(0.6), -np.log(0.2)], rtol=1e-12)


def test_focal_label_smoothing_hand_value() -> None:
    # s = 0.5, C = 2: [1, 0] becomes [0.75, 0.25]
    y_pred = np.float64([[0.8, 0.2]])
    expected = 0.25 * (0.75 * 0.2**2 * -np.log(0.8) + 0.25 * 0.8**2 * -np.log(0.2))
    for got in (
        kernels.categorical_focal_crossentropy(np.float64([[1, 0]]), y_pred, label_smoothing=0.5),
        kernels.categorical_focal_crossentropy_from_indices(
            np.array([0]), y_pred, label_smoothing=0.5
        ),
    ):
        np.testing.assert_allclose(got, [expected], rtol=1e-12)


def test_kernels_keep_the_compute_dtype() -> None:
    for dtype in (np.float32, np.float64):
        y_pred = np.asarray([[0.3, 0.7]], dtype=dtype)
        assert kernels.categorical_crossentropy(np.eye(2)[[1]], y_pred).dtype == dtype
        assert kernels.sparse_categorical_crossentropy(np.array([1]), y_pred).dtype == dtype
        assert kernels.categorical_focal_crossentropy_from_indices(
            np.array([1]), y_pred
        ).dtype == np.dtype(dtype)


# ---- against the float64 reference ------------------------------------------------------


@PROPERTY
@given(batches(), st.booleans(), smoothing)
def test_cce_matches_reference(batch: Any, from_logits: bool, s: float) -> None:
    labels, logits = batch
    y_pred = logits if from_logits else ref_softmax(logits)
    y = one_hot(labels, logits.shape[1])
    expected = ref_cce(y, y_pred, from_logits, s)
    got64 = kernels.categorical_crossentropy(y, y_pred, from_logits=from_logits, label_smoothing=s)
    np.testing.assert_allclose(got64, expected, rtol=1e-9, atol=1e-12)
    got32 = kernels.categorical_crossentropy(
        y.astype(np.float32),
        y_pred.astype(np.float32),
        from_logits=from_logits,
        label_smoothing=s,
    )
    np.testing.assert_allclose(got32, expected, rtol=1e-4, atol=1e-4)


@PROPERTY
@given(batches(), st.booleans())
def test_scce_matches_reference(batch: Any, from_logits: bool) -> None:
    labels, logits = batch
    y_pred = logits if from_logits else ref_softmax(logits)
    expected = ref_scce(labels, y_pred, from_logits)
    got = kernels.sparse_categorical_crossentropy(labels, y_pred, from_logits=from_logits)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@PROPERTY
@given(batches(), st.booleans(), smoothing, alphas, gammas)
def test_focal_matches_reference(
    batch: Any, from_logits: bool, s: float, alpha: float, gamma: float
) -> None:
    labels, logits = batch
    y_pred = logits if from_logits else ref_softmax(logits)
    y = one_hot(labels, logits.shape[1])
    expected = ref_focal(y, y_pred, alpha, gamma, from_logits, s)
    got = kernels.categorical_focal_crossentropy(
        y, y_pred, alpha=alpha, gamma=gamma, from_logits=from_logits, label_smoothing=s
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@PROPERTY
@given(batches(), st.booleans())
def test_soft_labels_match_reference(batch: Any, from_logits: bool) -> None:
    _, logits = batch
    soft = ref_softmax(logits[::-1] / 3)  # any distribution per row
    y_pred = logits if from_logits else ref_softmax(logits)
    got = kernels.categorical_crossentropy(soft, y_pred, from_logits=from_logits)
    np.testing.assert_allclose(got, ref_cce(soft, y_pred, from_logits), rtol=1e-9, atol=1e-12)


@PROPERTY
@given(batches(), st.booleans(), smoothing, st.data())
def test_any_targets_in_unit_interval_match_reference(
    batch: Any, from_logits: bool, s: float, data: st.DataObject
) -> None:
    # rows need not sum to 1 (multi-hot, or soft rows sent as they are): -Σ y log p all the same
    _, logits = batch
    y = data.draw(hnp.arrays(np.float64, logits.shape, elements=st.floats(0, 1)))
    y_pred = logits if from_logits else ref_softmax(logits)
    for fn, ref in (
        (kernels.categorical_crossentropy, ref_cce),
        (kernels.categorical_focal_crossentropy, ref_focal),
    ):
        got = fn(y, y_pred, from_logits=from_logits, label_smoothing=s)
        expected = ref(y, y_pred, from_logits=from_logits, s=s)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_multi_hot_targets_from_logits_hand_value() -> None:
    # -(log softmax(z)_0 + log softmax(z)_1) = 2 lse - z_0 - z_1
    z = np.float64([[1.0, 2.0, 3.0]])
    lse = np.log(np.e + np.e**2 + np.e**3)
    got = kernels.categorical_crossentropy(np.float64([[1, 1, 0]]), z, from_logits=True)
    np.testing.assert_allclose(got, [2 * lse - 3.0], rtol=1e-12)


# ---- integer labels and their one-hot form ----------------------------------------------


@PROPERTY
@given(batches(), st.booleans(), smoothing, st.sampled_from([np.float32, np.float64]))
def test_cce_indices_equal_one_hot(batch: Any, from_logits: bool, s: float, dtype: Any) -> None:
    labels, logits = batch
    y_pred = (logits if from_logits else ref_softmax(logits)).astype(dtype)
    dense = kernels.categorical_crossentropy(
        one_hot(labels, logits.shape[1]).astype(dtype),
        y_pred,
        from_logits=from_logits,
        label_smoothing=s,
    )
    sparse = kernels.categorical_crossentropy_from_indices(
        labels, y_pred, from_logits=from_logits, label_smoothing=s
    )
    rtol = 1e-5 if dtype is np.float32 else 1e-12
    np.testing.assert_allclose(sparse, dense, rtol=rtol, atol=rtol)


@PROPERTY
@given(batches(), st.booleans(), smoothing, alphas, gammas)
def test_focal_indices_equal_one_hot(
    batch: Any, from_logits: bool, s: float, alpha: float, gamma: float
) -> None:
    labels, logits = batch
    y_pred = logits if from_logits else ref_softmax(logits)
    kw = {"alpha": alpha, "gamma": gamma, "from_logits": from_logits, "label_smoothing": s}
    dense = kernels.categorical_focal_crossentropy(one_hot(labels, logits.shape[1]), y_pred, **kw)
    sparse = kernels.categorical_focal_crossentropy_from_indices(labels, y_pred, **kw)
    np.testing.assert_allclose(sparse, dense, rtol=1e-12, atol=1e-15)


@PROPERTY
@given(
    batches(),
    st.sampled_from(["categorical_crossentropy", "categorical_focal_crossentropy"]),
    st.booleans(),
    smoothing,
    alphas,
    gammas,
)
def test_integer_labels_equal_one_hot_through_registry(
    batch: Any, name: str, from_logits: bool, s: float, alpha: float, gamma: float
) -> None:
    labels, logits = batch
    y_pred = (logits if from_logits else ref_softmax(logits)).astype(np.float32)
    raw: dict[str, Any] = {"from_logits": from_logits, "label_smoothing": s, "reduction": "none"}
    if name == "categorical_focal_crossentropy":
        raw |= {"alpha": alpha, "gamma": gamma}
    from_ints = through_registry(name, labels, y_pred, **raw)
    from_one_hot = through_registry(name, one_hot(labels, logits.shape[1]), y_pred, **raw)
    assert from_ints.shape == from_one_hot.shape == labels.shape
    np.testing.assert_allclose(from_ints, from_one_hot, rtol=1e-5, atol=1e-6)
    # ... and the reference agrees on both.
    if name == "categorical_crossentropy":
        expected = ref_cce(one_hot(labels, logits.shape[1]), y_pred, from_logits, s)
    else:
        expected = ref_focal(one_hot(labels, logits.shape[1]), y_pred, alpha, gamma, from_logits, s)
    np.testing.assert_allclose(from_ints, expected, rtol=1e-4, atol=1e-5)


@PROPERTY
@given(batches(), st.booleans())
def test_sparse_loss_with_one_hot_labels_uses_their_indices(batch: Any, from_logits: bool) -> None:
    labels, logits = batch
    y_pred = (logits if from_logits else ref_softmax(logits)).astype(np.float32)
    name = "sparse_categorical_crossentropy"
    kw = {"from_logits": from_logits, "reduction": "none"}
    from_ints = through_registry(name, labels, y_pred, **kw)
    from_one_hot = through_registry(name, one_hot(labels, logits.shape[1]), y_pred, **kw)
    np.testing.assert_array_equal(from_ints, from_one_hot)
    np.testing.assert_allclose(
        from_ints, ref_scce(labels, y_pred, from_logits), rtol=1e-4, atol=1e-5
    )


# ---- the class axis ----------------------------------------------------------------------


@st.composite
def sequence_batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (n, t), logits (n, t, C))``."""
    n, t, c = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(2, 5))
    labels = draw(hnp.arrays(np.int64, (n, t), elements=st.integers(0, c - 1)))
    logits = draw(hnp.arrays(np.float64, (n, t, c), elements=st.floats(-10, 10, width=32)))
    return labels, logits


@PROPERTY
@given(
    sequence_batches(),
    st.sampled_from(
        [
            "categorical_crossentropy",
            "sparse_categorical_crossentropy",
            "categorical_focal_crossentropy",
        ]
    ),
    st.booleans(),
    st.sampled_from([0, 1, -3, -2]),
    st.sampled_from([0.0, 0.2]),
    st.sampled_from(["none", "sum_over_batch_size", "sum"]),
    st.booleans(),
)
def test_moving_the_class_axis_gives_the_same_loss(
    batch: Any,
    name: str,
    from_logits: bool,
    axis: int,
    s: float,
    reduction: str,
    sparse: bool,
) -> None:
    labels, logits = batch
    c = logits.shape[-1]
    y_pred = logits if from_logits else ref_softmax(logits)
    y_true = labels if sparse or name.startswith("sparse") else one_hot(labels, c)
    raw: dict[str, Any] = {"from_logits": from_logits, "reduction": reduction}
    if not name.startswith("sparse"):
        raw["label_smoothing"] = s
    last = through_registry(name, y_true, y_pred, **raw)
    moved_pred = np.moveaxis(y_pred, -1, axis)
    moved_true = y_true if y_true.ndim == 2 else np.moveaxis(y_true, -1, axis)
    moved = through_registry(name, moved_true, moved_pred, axis=axis, **raw)
    assert moved.shape == last.shape
    np.testing.assert_allclose(moved, last, rtol=1e-6, atol=1e-6)
    if reduction == "none":
        assert last.shape == labels.shape
        if name == "categorical_crossentropy":
            # label smoothing counts the classes along `axis`, as the contract says
            expected = ref_cce(one_hot(labels, c), y_pred, from_logits, s)
            np.testing.assert_allclose(moved, expected, rtol=1e-4, atol=1e-5)


def test_label_smoothing_counts_classes_along_axis() -> None:
    # classes on axis 0: 2 classes, 3 samples. Smoothing 0.5 gives targets 0.75 / 0.25.
    y_pred = np.float64([[0.8, 0.8, 0.8], [0.2, 0.2, 0.2]])
    y_true = np.float64([[1, 1, 1], [0, 0, 0]])
    got = through_registry(
        "categorical_crossentropy", y_true, y_pred, axis=0, label_smoothing=0.5, reduction="none"
    )
    expected = -(0.75 * np.log(0.8) + 0.25 * np.log(0.2))
    np.testing.assert_allclose(got, [expected] * 3, rtol=1e-6)


# ---- logits against their softmax -------------------------------------------------------


@PROPERTY
@given(batches(logit_bound=5.0), smoothing)
def test_logits_and_their_softmax_agree(batch: Any, s: float) -> None:
    labels, logits = batch
    logits = logits.astype(np.float32)
    probs = ref_softmax(logits).astype(np.float32)  # every p ≥ e^-10 / C: far from 0
    y = one_hot(labels, logits.shape[1]).astype(np.float32)
    np.testing.assert_allclose(
        kernels.categorical_crossentropy(y, logits, from_logits=True, label_smoothing=s),
        kernels.categorical_crossentropy(y, probs, from_logits=False, label_smoothing=s),
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        kernels.sparse_categorical_crossentropy(labels, logits, from_logits=True),
        kernels.sparse_categorical_crossentropy(labels, probs, from_logits=False),
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        kernels.categorical_focal_crossentropy_from_indices(labels, logits, from_logits=True),
        kernels.categorical_focal_crossentropy_from_indices(labels, probs, from_logits=False),
        rtol=1e-4,
        atol=1e-6,
    )


# ---- extreme values ---------------------------------------------------------------------

ALL_CATEGORICAL = [
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "categorical_focal_crossentropy",
]


@pytest.mark.parametrize("name", ALL_CATEGORICAL)
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_logits_are_finite(name: str, sparse: bool, dtype: str) -> None:
    labels = np.array([1, 0, 2])
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [-1e4, -1e4, 1e4]])
    y_true = labels if sparse else one_hot(labels, 3)
    extra = {} if name.startswith("sparse") else {"label_smoothing": 0.1}
    got = through_registry(
        name, y_true, logits, from_logits=True, reduction="none", dtype=dtype, **extra
    )
    assert np.all(np.isfinite(got))
    if name == "sparse_categorical_crossentropy":
        # -log softmax: the wrong answers cost 2e4, the right one 0
        np.testing.assert_allclose(got, [2e4, 2e4, 0.0], rtol=1e-6, atol=1e-6)


def test_huge_logits_hand_values() -> None:
    logits = np.float32([[1e4, -1e4], [-1e4, 1e4]])
    got = kernels.categorical_crossentropy(np.float32([[0, 1], [0, 1]]), logits, from_logits=True)
    np.testing.assert_allclose(got, [2e4, 0.0], atol=1e-6)
    got = kernels.categorical_crossentropy_from_indices(np.array([1, 1]), logits, from_logits=True)
    np.testing.assert_allclose(got, [2e4, 0.0], atol=1e-6)
    # with smoothing 0.2 over 2 classes, the targets are [0.1, 0.9] and [0.1, 0.9]
    got = kernels.categorical_crossentropy_from_indices(
        np.array([1, 1]), logits, from_logits=True, label_smoothing=0.2
    )
    np.testing.assert_allclose(got, [0.9 * 2e4, 0.1 * 2e4], rtol=1e-6)
    # focal clips the softmax to [ε, 1 - ε]: the wrong answer costs α (1 - ε)^γ (-log ε)
    got = kernels.categorical_focal_crossentropy_from_indices(
        np.array([1]), np.float64([[1e4, -1e4]]), from_logits=True
    )
    np.testing.assert_allclose(got, [0.25 * (1 - 1e-7) ** 2 * -np.log(1e-7)], rtol=1e-9)


@pytest.mark.parametrize("name", ALL_CATEGORICAL)
@pytest.mark.parametrize("sparse", [True, False])
def test_probabilities_of_exactly_zero_and_one(name: str, sparse: bool) -> None:
    labels = np.array([0, 1, 2])
    y_pred = np.float32([[1, 0, 0], [1, 0, 0], [0, 0, 1]])
    y_true = labels if sparse else one_hot(labels, 3)
    extra = {} if name.startswith("sparse") else {"label_smoothing": 0.1}
    for kw in ({}, extra):
        got = through_registry(name, y_true, y_pred, reduction="none", **kw)
        assert np.all(np.isfinite(got))
        assert got[1] > got[0] and got[1] > got[2]
    if name == "categorical_crossentropy":
        got = through_registry(name, y_true, y_pred, reduction="none")
        np.testing.assert_allclose(got, [CONFIDENT32, -np.log(EPS32), CONFIDENT32], rtol=1e-5)


@pytest.mark.parametrize("name", ALL_CATEGORICAL)
@pytest.mark.parametrize("from_logits", [True, False])
def test_100k_classes(name: str, from_logits: bool) -> None:
    c = 100_000
    labels = np.array([0, 7, c - 1])
    y_pred = np.full((3, c), 1.0 / c, dtype=np.float32)
    if from_logits:
        y_pred = np.zeros((3, c), dtype=np.float32)
    got = through_registry(name, labels, y_pred, from_logits=from_logits, reduction="none")
    assert np.all(np.isfinite(got))
    expected = np.log(c)  # uniform predictions: -log(1 / C)
    if name == "categorical_focal_crossentropy":
        expected = 0.25 * (1 - 1 / c) ** 2 * np.log(c)
    np.testing.assert_allclose(got, [expected] * 3, rtol=1e-4)


def test_100k_classes_sparse_is_not_categorical_on_confident_rows() -> None:
    # The documented difference: the sparse loss adds ε for every clipped zero.
    c = 100_000
    y_pred = np.zeros((3, c), dtype=np.float32)
    y_pred[:, 0] = 1
    labels = np.array([0, 0, 1])
    cce = kernels.categorical_crossentropy_from_indices(labels, y_pred)
    scce = kernels.sparse_categorical_crossentropy(labels, y_pred)
    np.testing.assert_allclose(cce, [CONFIDENT32, CONFIDENT32, -np.log(EPS32)], rtol=1e-5)
    total = (1 - 1e-7) + (c - 1) * 1e-7
    expected = [np.log(total) + CONFIDENT32, np.log(total) + CONFIDENT32, np.log(total / 1e-7)]
    np.testing.assert_allclose(scce, expected, rtol=1e-4)


# ---- float64 ----------------------------------------------------------------------------


@PROPERTY
@given(
    batches(logit_bound=5.0),
    st.sampled_from(ALL_CATEGORICAL),
    st.booleans(),
    st.booleans(),
)
def test_float64_close_to_float32(batch: Any, name: str, from_logits: bool, sparse: bool) -> None:
    labels, logits = batch
    y_pred = logits if from_logits else ref_softmax(logits)
    y_true = labels if sparse else one_hot(labels, logits.shape[1])
    kw = {"from_logits": from_logits, "reduction": "none"}
    f32 = through_registry(name, y_true, y_pred, dtype="float32", **kw)
    f64 = through_registry(name, y_true, y_pred, dtype="float64", **kw)
    assert f32.dtype == np.float32 and f64.dtype == np.float64
    np.testing.assert_allclose(f64, f32, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ALL_CATEGORICAL[:2])
def test_float64_clips_in_its_own_dtype(name: str) -> None:
    y_pred = np.array([[0.5, 0.0, 0.5]])
    f32 = through_registry(name, np.array([1]), y_pred, dtype="float32")
    f64 = through_registry(name, np.array([1]), y_pred, dtype="float64")
    assert np.isfinite(f32) and np.isfinite(f64)
    assert float(f32) == pytest.approx(16.118, abs=0.02)
    assert float(f64) == pytest.approx(16.118, abs=0.02)
    if name == "categorical_crossentropy":
        # -log(1e-7) in each dtype: float32's 1e-7 is not float64's
        assert float(f64) == pytest.approx(-np.log(1e-7), rel=1e-12)
        assert float(f32) == pytest.approx(-np.log(np.float32(1e-7)), rel=1e-6)
        assert float(f32) != float(f64)
