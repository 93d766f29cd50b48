"""The per_class and confusion_matrix reports: hand values, references, losses, merges."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service import kernels
from service.kernels import MERGEABLE, merge_stats
from tests import kernel_batches
from tests.kernel_batches import row_weights

PROPERTY = settings(derandomize=True, max_examples=50, deadline=None, database=None)

GRID = st.sampled_from([i / 8 for i in range(9)])


def batches(family: str, *, weighted: bool | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """A batch of one label family, predictions on this module's grid."""
    return kernel_batches.batches(family, GRID, weighted=weighted)


# ---- references, written the plain way ----------------------------------------------------


def reference_classes(batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """True and predicted class per sample (single-label and binary), and the class count."""
    y_true, y_pred = batch["y_true"], batch["y_pred"]
    if y_true.ndim == 1:
        return y_true, y_pred.argmax(axis=1), y_pred.shape[1]
    return (y_true[:, 0] >= 0.5).astype(int), (y_pred[:, 0] > np.float32(0.5)).astype(int), 2


def reference_matrix(batch: dict[str, Any]) -> np.ndarray:
    """scikit-learn's ``confusion_matrix`` (or ``multilabel_confusion_matrix``), by loops."""
    w = row_weights(batch)
    y_true, y_pred = batch["y_true"], batch["y_pred"]
    if y_true.ndim == 2 and y_true.shape[1] > 1:
        matrices = np.zeros((y_true.shape[1], 2, 2))
        for i in range(len(y_true)):
            for c in range(y_true.shape[1]):
                truth, decided = int(y_true[i, c] >= 0.5), int(y_pred[i, c] > np.float32(0.5))
                matrices[c, truth, decided] += w[i]
        return matrices
    truth, predicted, k = reference_classes(batch)
    matrix = np.zeros((k, k))
    for i in range(len(truth)):
        matrix[truth[i], predicted[i]] += w[i]
    return matrix


def reference_scores(batch: dict[str, Any]) -> dict[str, Any]:
    """``precision_recall_fscore_support(average=None, zero_division=0)`` and its averages."""
    m = reference_matrix(batch)
    if m.ndim == 3:
        tp, fp, fn = m[:, 1, 1], m[:, 0, 1], m[:, 1, 0]
    else:
        tp = np.diag(m)
        fp, fn = m.sum(axis=0) - tp, m.sum(axis=1) - tp
    support = tp + fn

    def scores(tp: Any, fp: Any, fn: Any) -> dict[str, np.ndarray]:
        def ratio(a: Any, b: Any) -> np.ndarray:
            a, b = np.asarray(a, float), np.asarray(b, float)
            return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)

        return {
            "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
        }

    per = scores(tp, fp, fn)
    total = support.sum()
    return {
        "support": support,
        **per,
        "macro": {k: v.mean() for k, v in per.items()},
        "weighted": {k: (v * support).sum() / total if total else 0.0 for k, v in per.items()},
        "micro": {k: float(v) for k, v in scores(tp.sum(), fp.sum(), fn.sum()).items()},
    }


# ---- confusion_matrix ---------------------------------------------------------------------


def test_confusion_matrix_hand_values() -> None:
    labels = np.array([0, 1, 2, 2, 1])
    y_pred = np.float32(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.4, 0.3, 0.3]]
    )
    # predicted [0, 1, 1, 2, 0]: rows are true classes, columns predicted ones
    report = kernels.confusion_matrix_report(kernels.confusion_matrix_stats(labels, y_pred))
    assert report == {"labels": [0, 1, 2], "matrix": [[1, 0, 0], [1, 1, 0], [0, 1, 1]]}
    # weighted: cells are sums of weights
    weights = np.float32([1, 2, 0.5, 1, 0.25])
    weighted = kernels.confusion_matrix_stats(labels, y_pred, weights)["matrix"]
    np.testing.assert_allclose(weighted, [[1, 0, 0], [0.25, 2, 0], [0, 0.5, 1]])


def test_confusion_matrix_of_a_binary_batch_has_two_classes() -> None:
    y_true = np.float32([0, 1, 1, 0, 1])
    y_pred = np.float32([0.2, 0.9, 0.5, 0.7, 0.51])
    # 0.5 is not above 0.5: predicted [0, 1, 0, 1, 1]
    stats = kernels.confusion_matrix_stats(y_true, y_pred)
    assert stats["matrix"].tolist() == [[1, 1], [1, 2]]
    named = kernels.confusion_matrix_report(stats, class_names=["neg", "pos"])
    assert named["labels"] == ["neg", "pos"]


def test_confusion_matrices_of_a_multi_label_batch() -> None:
    y_true = np.float32([[1, 0], [0, 1], [1, 1]])
    y_pred = np.float32([[0.9, 0.6], [0.4, 0.2], [0.3, 0.8]])
    report = kernels.confusion_matrix_report(kernels.confusion_matrix_stats(y_true, y_pred))
    # label 0: tn 1 (row 1), fp 0, fn 1 (row 2), tp 1 (row 0)
    # label 1: tn 0, fp 1 (row 0), fn 1 (row 1), tp 1 (row 2)
    assert report == {"labels": [0, 1], "matrices": [[[1, 0], [1, 1]], [[0, 1], [1, 1]]]}


def test_multi_label_from_logits_thresholds_the_sigmoid() -> None:
    y_true = np.float32([[1, 0, 1]])
    logits = np.float32([[0.1, -0.1, 0.0]])  # sigmoid: 0.525, 0.475, exactly 0.5
    matrices = kernels.confusion_matrix_stats(y_true, logits, from_logits=True)["matrix"]
    assert matrices[:, 1, 1].tolist() == [1, 0, 0]  # true positives: only the first
    assert matrices[:, 0, 0].tolist() == [0, 1, 0]  # the second is a true negative


@PROPERTY
@given(st.data())
def test_confusion_matrix_matches_a_loop(data: st.DataObject) -> None:
    batch = data.draw(batches(data.draw(st.sampled_from(["labels", "binary", "multi_label"]))))
    stats = kernels.confusion_matrix_stats(batch["y_true"], batch["y_pred"], batch["sample_weight"])
    np.testing.assert_allclose(stats["matrix"], reference_matrix(batch), rtol=1e-12)
    if batch["sample_weight"] is None:
        assert stats["matrix"].dtype == np.int64


# ---- per_class ----------------------------------------------------------------------------


def test_per_class_hand_values() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    y_pred = np.float32(
        [[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]]
    )
    # predicted [0, 1, 1, 1, 0]; class 0: tp 1, fp 1, fn 1; class 1: tp 2, fp 1, fn 1;
    # class 2: absent and never predicted, scores 0 and still counts in the macro average
    report = kernels.per_class_report(kernels.per_class_stats(labels, y_pred))
    assert report["labels"] == [0, 1, 2]
    assert report["support"] == [2, 3, 0]
    np.testing.assert_allclose(report["precision"], [1 / 2, 2 / 3, 0])
    np.testing.assert_allclose(report["recall"], [1 / 2, 2 / 3, 0])
    np.testing.assert_allclose(report["f1"], [1 / 2, 2 / 3, 0])
    assert report["averages"]["macro"]["f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert report["averages"]["weighted"]["f1"] == pytest.approx((2 * 1 / 2 + 3 * 2 / 3) / 5)
    # micro: tp 3, fp 2, fn 2 → 3/5 each (the accuracy)
    assert report["averages"]["micro"] == pytest.approx(
        {"precision": 0.6, "recall": 0.6, "f1": 0.6}
    )
    assert report["loss"] == {}


@PROPERTY
@given(st.data())
def test_per_class_matches_scikit_learn_formulas(data: st.DataObject) -> None:
    batch = data.draw(batches(data.draw(st.sampled_from(["labels", "binary", "multi_label"]))))
    report = kernels.per_class_report(
        kernels.per_class_stats(batch["y_true"], batch["y_pred"], batch["sample_weight"])
    )
    expected = reference_scores(batch)
    for key in ("support", "precision", "recall", "f1"):
        np.testing.assert_allclose(report[key], expected[key], rtol=1e-12, atol=1e-12, err_msg=key)
    for average in ("macro", "weighted", "micro"):
        for key, value in expected[average].items():
            assert report["averages"][average][key] == pytest.approx(value, rel=1e-12, abs=1e-12)


def test_per_class_losses_are_means_over_each_true_class() -> None:
    labels = np.array([0, 1, 1, 0, 2])
    y_pred = np.float32([[0.8, 0.1, 0.1]] * 5)
    loss = np.float32([0.5, 1.0, 3.0, 1.5, 2.0])
    weights = np.float32([1, 1, 3, 1, 0])
    stats = kernels.per_class_stats(labels, y_pred, weights, losses=[loss, 2 * loss])
    report = kernels.per_class_report(
        stats, loss_names=["ce", "twice"], class_names=["a", "b", "c"]
    )
    assert report["labels"] == ["a", "b", "c"]
    # class 0: (0.5 + 1.5) / 2; class 1: (1 · 1.0 + 3 · 3.0) / 4;
    # class 2 weighs 0: nothing to average
    assert report["loss"]["ce"] == pytest.approx([1.0, 10 / 4, None])
    assert report["loss"]["twice"] == pytest.approx([2.0, 5.0, None])


def test_per_class_losses_of_a_multi_label_batch_average_every_sample() -> None:
    y_true = np.float32([[1, 0], [0, 0], [1, 1]])
    y_pred = np.float32([[0.9, 0.2], [0.1, 0.3], [0.7, 0.6]])
    element_loss = np.float32([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    report = kernels.per_class_report(
        kernels.per_class_stats(y_true, y_pred, losses=[element_loss]), loss_names=["bce"]
    )
    # label 0: (0.1 + 0.3 + 0.5) / 3, label 1: (0.2 + 0.4 + 0.6) / 3, over all samples
    assert report["loss"]["bce"] == pytest.approx([0.3, 0.4])
    assert report["support"] == [2, 1]


def test_per_class_of_a_binary_batch_reports_classes_zero_and_one() -> None:
    y_true = np.float32([[0], [1], [1], [0]])
    y_pred = np.float32([[0.3], [0.8], [0.2], [0.6]])
    report = kernels.per_class_report(kernels.per_class_stats(y_true, y_pred, threshold=0.5))
    # predicted [0, 1, 0, 1]: class 0 tp 1, fp 1, fn 1; class 1 the same
    assert report["labels"] == [0, 1]
    assert report["support"] == [2, 2]
    np.testing.assert_allclose(report["precision"], [0.5, 0.5])


def test_big_single_label_batches_match_the_loop() -> None:
    rng = np.random.default_rng(5)
    n, c = 1200, 250  # several blocks, on several threads
    y_pred = rng.random((n, c), dtype=np.float32)
    labels = rng.integers(0, c, n)
    weight = rng.random(n).astype(np.float32)
    batch = {"y_true": labels, "y_pred": y_pred, "sample_weight": weight}
    stats = kernels.confusion_matrix_stats(labels, y_pred, weight)
    np.testing.assert_allclose(stats["matrix"], reference_matrix(batch), rtol=1e-12)
    report = kernels.per_class_report(kernels.per_class_stats(labels, y_pred, weight))
    np.testing.assert_allclose(report["f1"], reference_scores(batch)["f1"], rtol=1e-12)


# ---- merging, weights ---------------------------------------------------------------------


def _values(report: dict[str, Any]) -> np.ndarray:
    """A report's numbers in one flat float64 array."""
    if "averages" in report:
        numbers = [report[k] for k in ("support", "precision", "recall", "f1")]
        numbers += [[v for avg in report["averages"].values() for v in avg.values()]]
        numbers += [[x if x is not None else -1 for x in v] for v in report["loss"].values()]
        return np.concatenate([np.ravel(np.asarray(x, dtype=np.float64)) for x in numbers])
    key = "matrices" if "matrices" in report else "matrix"
    return np.ravel(np.asarray(report[key], dtype=np.float64))


@PROPERTY
@given(st.data())
def test_any_split_merged_in_any_order_gives_the_one_shot_report(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["per_class", "confusion_matrix"]))
    family = data.draw(st.sampled_from(["labels", "binary", "multi_label"]))
    batch = data.draw(batches(family))
    n, c = batch["y_pred"].shape
    losses: list[np.ndarray] = []
    if name == "per_class":
        shape = (n, c) if family == "multi_label" else (n,)
        losses = [data.draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 5, width=32)))]
    cuts = (
        sorted(data.draw(st.lists(st.integers(1, n - 1), max_size=4, unique=True))) if n > 1 else []
    )
    order = data.draw(st.permutations(list(range(len(cuts) + 1))))
    spec = MERGEABLE[name]
    extra: dict[str, Any] = {"losses": losses} if name == "per_class" else {}
    w = batch["sample_weight"]

    def stats(a: int, b: int) -> dict[str, np.ndarray]:
        part_extra = {"losses": [v[a:b] for v in losses]} if name == "per_class" else {}
        return spec.stats(
            batch["y_true"][a:b], batch["y_pred"][a:b], None if w is None else w[a:b], **part_extra
        )

    parts = [stats(a, b) for a, b in pairwise([0, *cuts, n])]
    merged = parts[order[0]]
    for i in order[1:]:
        merged = merge_stats(merged, parts[i])
    whole = spec.stats(batch["y_true"], batch["y_pred"], w, **extra)
    assert set(merged) == set(whole) == set(spec.keys)
    for key in whole:
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-12, atol=1e-12, err_msg=key)
    finalize: dict[str, Any] = {"loss_names": ["loss"]} if name == "per_class" else {}
    np.testing.assert_allclose(
        _values(spec.finalize(merged, **finalize)),
        _values(spec.finalize(whole, **finalize)),
        rtol=1e-6,
        atol=1e-12,
    )


@PROPERTY
@given(st.data())
def test_weights_of_ones_equal_no_weights(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["per_class", "confusion_matrix"]))
    batch = data.draw(
        batches(data.draw(st.sampled_from(["labels", "binary", "multi_label"])), weighted=False)
    )
    spec = MERGEABLE[name]
    ones = np.ones(len(batch["y_pred"]), dtype=np.float32)
    np.testing.assert_allclose(
        _values(spec.compute(batch["y_true"], batch["y_pred"], None)),
        _values(spec.compute(batch["y_true"], batch["y_pred"], ones)),
        rtol=1e-12,
    )


@PROPERTY
@given(st.data())
def test_integer_labels_equal_a_one_hot_computation(data: st.DataObject) -> None:
    """The matrix from indices is the one-hot rows' transposed product with the predictions'."""
    batch = data.draw(batches("labels"))
    labels, y_pred = batch["y_true"], batch["y_pred"]
    c = y_pred.shape[1]
    truth = np.eye(c)[labels] * row_weights(batch)[:, None]
    predicted = np.eye(c)[y_pred.argmax(axis=1)]
    stats = kernels.confusion_matrix_stats(labels, y_pred, batch["sample_weight"])
    np.testing.assert_allclose(stats["matrix"], truth.T @ predicted, rtol=1e-12)
