"""Mergeable statistics: the contract every metric and report keeps, and the shared helpers."""

from __future__ import annotations

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
