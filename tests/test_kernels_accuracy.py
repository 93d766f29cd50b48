"""Accuracy kernels and metrics: ties, thresholds, weights, extremes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from as_requested import metric
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service import kernels

PROPERTY = settings(derandomize=True, max_examples=50, deadline=None, database=None)


# ---- argmax metrics ---------------------------------------------------------------------


def test_categorical_accuracy_hand_values() -> None:
    y_pred = np.float32([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    got = kernels.categorical_accuracy(np.array([1, 1, 2]), y_pred)
    np.testing.assert_array_equal(got, [1.0, 0.0, 1.0])
    assert got.dtype == np.float64


def test_categorical_accuracy_takes_the_first_maximum_on_ties() -> None:
    y_pred = np.float32([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.1, 0.45, 0.45]])
    got = kernels.categorical_accuracy(np.array([0, 1, 2]), y_pred)
    np.testing.assert_array_equal(got, [1.0, 0.0, 0.0])
    # the same through the metric, with one-hot labels
    value = metric("categorical_accuracy", np.eye(3)[[0, 1, 2]], y_pred)
    assert value == pytest.approx(1 / 3)


def test_argmax_metrics_work_on_logits() -> None:
    logits = np.float32([[-3.0, 5.0, 1.0], [2.0, -1.0, 0.0]])
    assert metric("sparse_categorical_accuracy", [1, 2], logits) == 0.5
    assert metric("categorical_accuracy", np.eye(3)[[1, 0]], logits) == 1.0


def test_categorical_accuracy_on_soft_labels_uses_their_argmax() -> None:
    y_true = np.float64([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]])
    y_pred = np.float64([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])
    assert metric("categorical_accuracy", y_true, y_pred) == 0.5


def test_top_k_hand_values() -> None:
    y_pred = np.float32([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    labels = np.array([1, 1])
    np.testing.assert_array_equal(kernels.top_k_accuracy(labels, y_pred, k=1), [0.0, 0.0])
    np.testing.assert_array_equal(kernels.top_k_accuracy(labels, y_pred, k=2), [0.0, 1.0])
    np.testing.assert_array_equal(kernels.top_k_accuracy(labels, y_pred, k=3), [1.0, 1.0])
    # k at least C: always a hit
    np.testing.assert_array_equal(kernels.top_k_accuracy(labels, y_pred, k=10), [1.0, 1.0])


def test_top_k_ties_count_as_hits() -> None:
    # three classes tie for the top: each is "in the top 1" (nobody scores strictly higher)
    y_pred = np.float32([[0.3, 0.3, 0.3, 0.1]] * 4)
    got = kernels.top_k_accuracy(np.array([0, 1, 2, 3]), y_pred, k=1)
    np.testing.assert_array_equal(got, [1.0, 1.0, 1.0, 0.0])
    # the last class has 3 strictly higher: a hit only from k = 4
    np.testing.assert_array_equal(kernels.top_k_accuracy(np.array([3]), y_pred[:1], k=3), [0.0])
    np.testing.assert_array_equal(kernels.top_k_accuracy(np.array([3]), y_pred[:1], k=4), [1.0])
    # and through the metrics
    assert metric("sparse_top_k_categorical_accuracy", [0, 1, 2, 3], y_pred, k=1) == 0.75
    assert metric("top_k_categorical_accuracy", np.eye(4), y_pred, k=1) == 0.75


def test_top_k_with_k_one_differs_from_argmax_only_on_ties() -> None:
    y_pred = np.float32([[0.5, 0.5], [0.9, 0.1]])
    labels = np.array([1, 0])
    np.testing.assert_array_equal(kernels.top_k_accuracy(labels, y_pred, k=1), [1.0, 1.0])
    np.testing.assert_array_equal(kernels.categorical_accuracy(labels, y_pred), [0.0, 1.0])


@PROPERTY
@given(st.data())
def test_top_k_against_a_sort(data: st.DataObject) -> None:
    n, c = data.draw(st.integers(1, 8)), data.draw(st.integers(2, 9))
    # few distinct values, so ties are common
    y_pred = data.draw(hnp.arrays(np.float32, (n, c), elements=st.sampled_from([0.0, 0.25, 1.0])))
    labels = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
    k = data.draw(st.integers(1, c + 1))
    got = kernels.top_k_accuracy(labels, y_pred, k=k)
    for i in range(n):
        strictly_higher = sum(1 for v in y_pred[i] if v > y_pred[i, labels[i]])
        assert got[i] == (1.0 if strictly_higher < k else 0.0)


def test_argmax_metrics_on_100k_classes() -> None:
    c = 100_000
    y_pred = np.zeros((3, c), dtype=np.float32)
    y_pred[0, 5] = 1.0
    y_pred[1, c - 5 :] = 1.0  # five classes above label 0: outside the top 5
    y_pred[2, :] = 0.5  # all tied
    labels = np.array([5, 0, c - 1])
    np.testing.assert_array_equal(kernels.categorical_accuracy(labels, y_pred), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(kernels.top_k_accuracy(labels, y_pred, k=5), [1.0, 0.0, 1.0])
    assert metric("sparse_top_k_categorical_accuracy", labels, y_pred, k=5) == pytest.approx(2 / 3)


# ---- threshold metrics ------------------------------------------------------------------


def test_binary_accuracy_uses_strict_greater_than() -> None:
    y_pred = np.float32([[0.5], [0.5], [0.50001], [0.0], [1.0]])
    y_true = np.float32([[1], [0], [1], [0], [1]])
    got = kernels.binary_accuracy(y_true, y_pred, threshold=0.5)
    np.testing.assert_array_equal(got.ravel(), [0.0, 1.0, 1.0, 1.0, 1.0])
    assert metric("binary_accuracy", y_true, y_pred) == 0.8


def test_binary_accuracy_threshold() -> None:
    y_true = np.float32([1, 1, 0, 0])
    y_pred = np.float32([0.9, 0.6, 0.6, 0.1])
    assert metric("binary_accuracy", y_true, y_pred) == 0.75
    assert metric("binary_accuracy", y_true, y_pred, threshold=0.7) == 0.75
    assert metric("binary_accuracy", y_true, y_pred, threshold=0.95) == 0.5
    assert metric("binary_accuracy", y_true, y_pred, threshold=0.0) == 0.5


def test_binary_accuracy_on_multi_label_counts_every_target() -> None:
    y_true = np.float32([[1, 0, 0, 0], [0, 1, 0, 0]])
    zeros = np.zeros((2, 4), dtype=np.float32)
    # predicting nothing gets 6 of 8 targets right
    assert metric("binary_accuracy", y_true, zeros) == 0.75
    assert metric("subset_accuracy", y_true, zeros) == 0.0


def test_subset_accuracy_hand_values() -> None:
    y_true = np.float32([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
    y_pred = np.float32([[0.9, 0.2, 0.6], [0.1, 0.6, 0.7], [0.4, 0.1, 0.5], [0.9, 0.8, 0.2]])
    np.testing.assert_array_equal(kernels.subset_accuracy(y_true, y_pred), [1.0, 0.0, 1.0, 1.0])
    assert metric("subset_accuracy", y_true, y_pred) == 0.75
    # 0.5 is not above 0.5: row 2 matches its all-zero labels
    assert metric("subset_accuracy", y_true, y_pred, threshold=0.65) == 0.5


def test_threshold_metrics_from_logits_use_the_sigmoid() -> None:
    y_true = np.float32([[1], [0], [1], [0]])
    logits = np.float32([[0.3], [-0.3], [-0.1], [0.2]])  # σ > 0.5 exactly when logit > 0
    assert metric("binary_accuracy", y_true, logits, from_logits=True) == 0.5
    # compared as given, all four logits are below 0.5: the negatives are right
    assert metric("binary_accuracy", y_true, logits) == 0.5
    logits2 = np.float32([[0.3], [-0.3], [0.1], [-0.2]])
    assert metric("binary_accuracy", y_true, logits2, from_logits=True) == 1.0
    assert metric("binary_accuracy", y_true, logits2) == 0.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_numpy_exp_bit_for_bit(dtype: type[np.floating]) -> None:
    # The threshold metrics' numbers depend on every bit: one ulp can cross a threshold.
    x = (np.random.default_rng(0).standard_normal(10_000) * 20).astype(dtype)
    with np.errstate(over="ignore"):
        direct = 1 / (1 + np.exp(-x))
    got = kernels.sigmoid(x)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, direct)


def test_sigmoid_limits_without_warnings() -> None:
    x = np.float32([-1e4, -100.0, 0.0, 100.0, 1e4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflow of e^{1e4} is the limit, not a warning
        got = kernels.sigmoid(x)
    # e^{100} is already past float32's range: σ(-100) rounds to 0, σ(100) to 1
    np.testing.assert_array_equal(got, np.float32([0.0, 0.0, 0.5, 1.0, 1.0]))


@pytest.mark.parametrize("name", ["binary_accuracy", "subset_accuracy"])
def test_threshold_metrics_on_huge_logits(name: str) -> None:
    y_true = np.float32([[1, 0], [0, 1], [1, 1]])
    logits = np.float32([[1e4, -1e4], [-1e4, 1e4], [-1e4, -200.0]])
    got = metric(name, y_true, logits, from_logits=True)
    expected = 4 / 6 if name == "binary_accuracy" else 2 / 3
    assert got == pytest.approx(expected)


# ---- weights ----------------------------------------------------------------------------


def test_weighted_mean_hand_values() -> None:
    values = np.array([1.0, 0.0, 1.0, 1.0])
    assert kernels.weighted_mean(values) == 0.75
    assert kernels.weighted_mean(values, np.array([1.0, 3.0, 0.0, 0.0])) == 0.25
    assert kernels.weighted_mean(values, np.array([0.0, 0.0, 0.0, 0.0])) == 0.0
    # weights broadcast over the values
    grid = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert kernels.weighted_mean(grid, np.array([[1.0], [3.0]])) == pytest.approx(7 / 8)


def test_metric_weights_hand_value() -> None:
    y_pred = np.float32([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    got = metric("sparse_categorical_accuracy", [1, 1, 1], y_pred, sample_weight=[1.0, 2.0, 3.0])
    assert got == pytest.approx((1 + 0 + 3) / 6)


METRIC_CASES = {
    "binary_accuracy": "multi_hot",
    "subset_accuracy": "multi_hot",
    "categorical_accuracy": "one_hot",
    "sparse_categorical_accuracy": "sparse",
    "top_k_categorical_accuracy": "one_hot",
    "sparse_top_k_categorical_accuracy": "sparse",
    "accuracy": "sparse",
}


@PROPERTY
@given(
    st.data(),
    st.sampled_from(sorted(METRIC_CASES)),
    st.floats(1e-3, 1e3),
)
def test_scaling_weights_leaves_every_metric_unchanged(
    data: st.DataObject, name: str, scale: float
) -> None:
    n, c = data.draw(st.integers(1, 8)), data.draw(st.integers(2, 5))
    y_pred = data.draw(hnp.arrays(np.float32, (n, c), elements=st.floats(0, 1, width=32)))
    labels = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
    weights = data.draw(hnp.arrays(np.float64, n, elements=st.floats(0.01, 10)))
    y_true: np.ndarray
    if METRIC_CASES[name] == "sparse":
        y_true = labels
    elif METRIC_CASES[name] == "one_hot":
        y_true = np.eye(c)[labels]
    else:
        y_true = data.draw(hnp.arrays(np.float32, (n, c), elements=st.sampled_from([0.0, 1.0])))
    raw = {"k": 2} if "top_k" in name else {}
    base = metric(name, y_true, y_pred, weights, **raw)
    scaled = metric(name, y_true, y_pred, weights * scale, **raw)
    assert scaled == pytest.approx(base, rel=1e-9, abs=1e-12)
    # unit weights are no weights; and the weighted value is Σ w m / Σ w of the unweighted matches
    assert metric(name, y_true, y_pred, np.ones(n), **raw) == pytest.approx(
        metric(name, y_true, y_pred, **raw)
    )
    assert 0.0 <= base <= 1.0
