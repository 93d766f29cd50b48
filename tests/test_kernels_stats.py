"""Mergeable statistics: the contract every metric and report keeps, and the shared helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service import kernels
from service.kernels import MERGEABLE, merge_stats, sum_stats
from service.kernels.stats import as_rows, count_true, divide_no_nan, row_weights

BATCHES = {
    "single_label": (
        np.array([0, 2, 1, 2]),
        np.float32([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3], [0.5, 0.4, 0.1]]),
    ),
    "binary": (np.float32([0, 1, 1, 0]), np.float32([0.2, 0.9, 0.4, 0.6])),
    "multi_label": (
        np.float32([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1]]),
        np.float32([[0.9, 0.2, 0.6], [0.1, 0.4, 0.3], [0.7, 0.8, 0.1], [0.2, 0.6, 0.9]]),
    ),
}


def test_every_metric_and_report_is_registered() -> None:
    assert set(MERGEABLE) == {
        "precision",
        "recall",
        "f1_score",
        "fbeta_score",
        "auc",
        "expected_calibration_error",
        "brier_score",
        "per_class",
        "confusion_matrix",
        "calibration",
    }
    assert {spec.kind for spec in MERGEABLE.values()} == {"metric", "report"}


@pytest.mark.parametrize("family", sorted(BATCHES))
@pytest.mark.parametrize("name", sorted(MERGEABLE))
def test_statistics_have_the_declared_keys_and_add_up(name: str, family: str) -> None:
    spec = MERGEABLE[name]
    y_true, y_pred = BATCHES[family]
    first = spec.stats(y_true[:2], y_pred[:2])
    second = spec.stats(y_true[2:], y_pred[2:])
    whole = spec.stats(y_true, y_pred)
    assert tuple(sorted(whole)) == tuple(sorted(spec.keys))
    for stats in (first, second, whole):
        assert all(v.dtype in (np.int64, np.float64) for v in stats.values()), stats
    merged = merge_stats(first, second)
    for key in whole:
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-12, err_msg=key)
    assert {k: v.tolist() for k, v in sum_stats([first, second]).items()} == {
        k: v.tolist() for k, v in merged.items()
    }


def test_merge_promotes_counts_to_sums_of_weights() -> None:
    counts = {"n": np.array([1, 2], dtype=np.int64)}
    sums = {"n": np.array([0.5, 0.25])}
    merged = merge_stats(counts, sums)
    assert merged["n"].dtype == np.float64 and merged["n"].tolist() == [1.5, 2.25]
    # the inputs are left alone
    assert counts["n"].tolist() == [1, 2]


def test_sum_stats_needs_a_batch_and_leaves_its_inputs_alone() -> None:
    with pytest.raises(ValueError, match="at least one"):
        sum_stats([])
    part = {"n": np.array([1])}
    total = sum_stats([part, part, part])
    assert total["n"].tolist() == [3] and part["n"].tolist() == [1]


def test_compute_splits_parameters_between_stats_and_finalize() -> None:
    y_true, y_pred = BATCHES["single_label"]
    spec = MERGEABLE["fbeta_score"]
    direct = kernels.fbeta_score(y_true, y_pred, beta=2.0, threshold=0.25, average="macro")
    assert spec.compute(y_true, y_pred, beta=2.0, threshold=0.25, average="macro") == direct
    with pytest.raises(TypeError, match="top_k"):
        spec.compute(y_true, y_pred, top_k=2)


def test_rows_read_the_label_family_from_the_shapes() -> None:
    y_pred = np.zeros((4, 3), dtype=np.float32)
    assert as_rows(np.array([0, 1, 2, 0]), y_pred).family == "single_label"
    assert as_rows(np.array([[0], [1], [2], [0]]), y_pred).family == "single_label"
    assert as_rows(np.eye(3)[[0, 1, 2, 0]], y_pred).family == "multi_label"
    assert as_rows(np.zeros(4), np.zeros(4, dtype=np.float32)).family == "binary"
    assert as_rows(np.zeros((4, 1)), np.zeros((4, 1), dtype=np.float32)).family == "binary"
    # leading axes flatten into rows, classes stay last
    rows = as_rows(np.zeros((2, 5), dtype=int), np.zeros((2, 5, 3), dtype=np.float32))
    assert rows.pred.shape == (10, 3) and rows.labels is not None and rows.labels.shape == (10,)


def test_row_weights_and_safe_division() -> None:
    assert row_weights(None, 3) is None
    assert row_weights(2.0, 3).tolist() == [2.0, 2.0, 2.0]
    assert row_weights(np.float32([[1], [2]]), 2).tolist() == [1.0, 2.0]
    assert divide_no_nan(np.array([1.0, 0.0, 2.0]), np.array([2.0, 0.0, 0.0])).tolist() == [
        0.5,
        0.0,
        0.0,
    ]


def test_count_true_past_the_uint16_span() -> None:
    rng = np.random.default_rng(0)
    tall = rng.random((70_000, 3)) < 0.9  # columns of more Trues than a uint16 holds
    np.testing.assert_array_equal(count_true(tall, axis=0), tall.sum(axis=0))
    np.testing.assert_array_equal(count_true(tall.T, axis=1), tall.sum(axis=0))
    assert count_true(tall, axis=0).dtype == np.int64


#: Finalizer parameters whose arithmetic differs (pooled sums, interpolation, norms).
_FINALIZE_VARIANTS: dict[str, list[dict[str, object]]] = {
    "auc": [{}, {"curve": "PR"}, {"curve": "PR", "summation_method": "majoring"}],
    "f1_score": [{}, {"average": "micro"}, {"average": "macro"}, {"average": "weighted"}],
    "fbeta_score": [{"beta": 2.0, "average": "weighted"}, {"beta": 0.5, "average": "micro"}],
    "expected_calibration_error": [{}, {"norm": "l2"}, {"norm": "max"}],
    "per_class": [{"loss_names": ["l"]}],
}


def _numbers(value: object) -> list[float]:
    """Every number in a finalizer's value or report (nested lists and dicts)."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list | tuple):
        return [n for v in value for n in _numbers(v)]
    if isinstance(value, np.ndarray):
        return [float(v) for v in value.ravel()]
    if isinstance(value, int | float | np.number) and not isinstance(value, bool):
        return [float(value)]
    return []


@pytest.mark.parametrize("family", sorted(BATCHES))
@pytest.mark.parametrize("name", sorted(MERGEABLE))
def test_finalizers_take_statistics_up_to_the_limit_without_overflowing(
    name: str, family: str
) -> None:
    # Weighted statistics scaled by a power of two (exactly) until the largest one's size
    # is just under the limit: every finalizer's intermediate sums stay finite, and the
    # values that are ratios of the statistics do not change.
    spec = MERGEABLE[name]
    y_true, y_pred = BATCHES[family]
    weights = np.array([1.0, 2.5, 0.5, 3.0])
    # Per-sample losses (per element for multi-label batches) for the per-class report.
    shape = y_pred.shape if family == "multi_label" else (4,)
    losses = [np.arange(1.0, math.prod(shape) + 1).reshape(shape) * 0.3]
    extra = {"losses": losses} if name == "per_class" else {}
    stats = {
        k: v.astype(np.float64) for k, v in spec.stats(y_true, y_pred, weights, **extra).items()
    }
    largest = max(kernels.statistic_size(v) for v in stats.values())
    scale = 2.0 ** math.floor(math.log2(kernels.STATISTIC_LIMIT * 0.999 / largest))
    scaled = {k: v * scale for k, v in stats.items()}
    assert max(kernels.statistic_size(v) for v in scaled.values()) < kernels.STATISTIC_LIMIT
    for params in _FINALIZE_VARIANTS.get(name, [{}]):
        with np.errstate(over="raise", invalid="raise"):
            big = spec.finalize(scaled, **params)
        small = spec.finalize(stats, **params)
        assert all(math.isfinite(n) for n in _numbers(big)), (params, big)
        if spec.kind == "metric":
            np.testing.assert_allclose(np.asarray(big), np.asarray(small), rtol=1e-6)


def test_the_size_of_a_statistic_is_the_sum_of_its_magnitudes() -> None:
    assert kernels.statistic_size(np.array([1.5, -2.5, 0.0])) == 4.0
    assert kernels.statistic_size(np.array([], dtype=np.float64)) == 0.0
    assert kernels.statistic_size(np.array(7, dtype=np.int64)) == 7.0
    # Finite elements whose sum is past float64's range: infinite, without a warning.
    assert kernels.statistic_size(np.array([1e308, -1e308])) == math.inf
    assert kernels.STATISTIC_LIMIT == 2.0**1000


def test_past_the_limit_a_finalizer_can_overflow_to_a_wrong_number() -> None:
    # Why statistics past the limit are refused: tp + fp overflows, and precision would
    # read 0 where it is 0.5.
    half = np.array([2.0**1023])
    stats = {"tp": half, "fp": half, "fn": np.zeros(1)}
    with np.errstate(over="ignore"):
        assert float(kernels.precision_value(stats)) == 0.0
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        kernels.precision_value(stats)
    assert kernels.statistic_size(half) > kernels.STATISTIC_LIMIT
