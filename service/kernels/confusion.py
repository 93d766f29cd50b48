"""The ``per_class`` and ``confusion_matrix`` reports, scikit-learn's numbers, mergeable.

Labels and statistics follow :mod:`service.kernels.stats`. Decisions:

* single-label batches (integer labels): the predicted class is the row's
  first argmax (of logits as of probabilities: the softmax keeps the order);
* binary batches (one column, or 1-D) report two classes, 0 and 1, as
  scikit-learn does: predicted 1 where ``p > threshold``, true 1 where the
  label is at least 0.5 (labels are 0 or 1);
* multi-label batches: each element is a decision, ``p > threshold``
  (``sigmoid(p) > threshold`` with ``from_logits``), against a label of at
  least 0.5.

Thresholds are compared strictly and in ``y_pred``'s dtype. With
``sample_weight``, supports and matrix cells are sums of weights; without,
int64 counts.

``per_class`` gives scikit-learn's ``precision_recall_fscore_support(labels=
range(C), average=None, zero_division=0)`` per class, its ``macro`` (plain
mean over all classes, absent ones scoring 0), ``weighted`` (by support)
and ``micro`` (pooled counts) averages, and, when per-sample losses are
given, each class's mean loss. ``confusion_matrix`` gives scikit-learn's
``confusion_matrix`` (rows: true class, columns: predicted), or for
multi-label batches ``multilabel_confusion_matrix``'s ``[[tn, fp], [fn, tp]]``
per label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.kernels._blocks import for_each_block
from service.kernels.classification import sigmoid_into
from service.kernels.stats import (
    Floats,
    Mergeable,
    Rows,
    Stats,
    as_rows,
    column_sums,
    divide_no_nan,
    weighted_bincount,
)


def _predicted_classes(rows: Rows, threshold: float, from_logits: bool) -> NDArray[np.intp]:
    """First argmax per row (single-label), or ``p > threshold`` as class 0/1 (binary)."""
    n, c = rows.n_rows, rows.n_classes
    if c == 1:
        p = rows.pred[:, 0]
        if from_logits:
            p = sigmoid_into(p, np.empty_like(p))
        decided: NDArray[np.intp] = (p > p.dtype.type(threshold)).astype(np.intp)
        return decided
    out = np.empty(n, dtype=np.intp)

    def work(sl: slice) -> None:
        out[sl] = np.argmax(rows.pred[sl], axis=1)

    for_each_block(n, c, work)
    return out


def _true_classes(rows: Rows) -> NDArray[np.intp]:
    """The integer labels, or binary targets as classes 0/1 (1 from 0.5 up)."""
    if rows.labels is not None:
        return rows.labels
    assert rows.dense is not None
    return (rows.dense[:, 0] >= 0.5).astype(np.intp)


def _element_decisions(rows: Rows, threshold: float, from_logits: bool) -> NDArray[np.bool_]:
    """``(rows, C)`` multi-label decisions ``p > threshold``, after a sigmoid for logits."""
    p = rows.pred
    if from_logits:
        p = sigmoid_into(p, np.empty_like(p))
    decided: NDArray[np.bool_] = p > p.dtype.type(threshold)
    return decided


def _single_label_counts(
    truth: NDArray[np.intp], predicted: NDArray[np.intp], w: NDArray[np.float64] | None, c: int
) -> tuple[NDArray[Any], ...]:
    """``tp``, ``fp``, ``fn``, ``support`` per class from true and predicted class indices."""
    hit = truth == predicted

    def count(index: NDArray[np.intp], keep: NDArray[np.bool_] | None) -> NDArray[Any]:
        if keep is not None:
            index = index[keep]
        weights = None if w is None else (w if keep is None else w[keep])
        return weighted_bincount(index, weights, c)

    return count(truth, hit), count(predicted, ~hit), count(truth, ~hit), count(truth, None)


# ---- per_class ---------------------------------------------------------------------------


def per_class_stats(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    threshold: float = 0.5,
    from_logits: bool = False,
    losses: Sequence[Any] = (),
) -> Stats:
    """Per class: ``tp``, ``fp``, ``fn``, ``support``, and loss sums for the class means.

    Args:
      y_true, y_pred, sample_weight: a batch (:mod:`service.kernels.stats`).
      threshold: the positive decision of binary and multi-label batches.
      from_logits: apply the sigmoid before thresholding (binary, multi-label).
      losses: per-sample losses, one array per loss, unweighted:
        ``(rows,)`` for single-label and binary batches (grouped by true
        class), ``(rows, C)`` element losses for multi-label ones.

    Returns:
      ``tp``, ``fp``, ``fn``, ``support`` ``(K,)`` for ``K`` classes (2 for a
      binary batch), ``loss_sum`` ``(len(losses), K)`` (``Σ w loss``) and
      ``loss_weight`` ``(K,)`` (``Σ w`` over the samples each class's mean
      divides by: its support, or every row for multi-label).
    """
    rows = as_rows(y_true, y_pred, sample_weight)
    w = rows.weight
    if rows.family == "multi_label":
        assert rows.dense is not None
        truth = rows.dense >= 0.5
        decided = _element_decisions(rows, threshold, from_logits)
        tp = column_sums(truth & decided, w)
        fp = column_sums(~truth & decided, w)
        fn = column_sums(truth & ~decided, w)
        support = column_sums(truth, w)
        n_classes = rows.n_classes
        loss_weight = np.full(n_classes, rows.n_rows if w is None else np.sum(w))
        loss_sum = [
            column_sums(np.asarray(v, dtype=np.float64).reshape(rows.n_rows, -1), w) for v in losses
        ]
    else:
        true_class = _true_classes(rows)
        n_classes = max(rows.n_classes, 2)
        predicted = _predicted_classes(rows, threshold, from_logits)
        tp, fp, fn, support = _single_label_counts(true_class, predicted, w, n_classes)
        loss_weight = support.astype(np.float64)
        ones = np.ones(rows.n_rows) if w is None else w
        loss_sum = [
            np.bincount(
                true_class,
                weights=ones * np.asarray(v, dtype=np.float64).reshape(-1),
                minlength=n_classes,
            )
            for v in losses
        ]
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "support": support,
        "loss_sum": np.array(loss_sum, dtype=np.float64).reshape(len(losses), n_classes),
        "loss_weight": np.asarray(loss_weight, dtype=np.float64),
    }


def _scores(tp: Floats, fp: Floats, fn: Floats) -> dict[str, Any]:
    """scikit-learn's precision, recall and F1 with ``zero_division=0``.

    F1 is ``2 tp / (2 tp + fp + fn)``, scikit-learn's form, 0 when that is 0/0.
    """
    return {
        "precision": divide_no_nan(tp, tp + fp),
        "recall": divide_no_nan(tp, tp + fn),
        "f1": divide_no_nan(2 * tp, 2 * tp + fp + fn),
    }


def per_class_report(
    stats: Stats,
    *,
    class_names: Sequence[str] | None = None,
    loss_names: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``per_class`` report: per-class scores and supports, averages, mean losses.

    ``labels`` are ``class_names`` where given, else the class indices;
    ``loss`` maps each of ``loss_names`` (in :func:`per_class_stats`'s order)
    to its per-class mean (None for a class with nothing to average).
    """
    tp, fp, fn, support = (
        np.asarray(stats[k], dtype=np.float64) for k in ("tp", "fp", "fn", "support")
    )
    per = _scores(tp, fp, fn)
    total_support = support.sum()
    micro = _scores(tp.sum(), fp.sum(), fn.sum())
    averages = {
        "macro": {k: float(v.mean()) for k, v in per.items()},
        "weighted": {
            k: float(np.dot(v, support) / total_support) if total_support > 0 else 0.0
            for k, v in per.items()
        },
        "micro": {k: float(v) for k, v in micro.items()},
    }
    loss_sum = np.asarray(stats["loss_sum"], dtype=np.float64)
    loss_weight = np.asarray(stats["loss_weight"], dtype=np.float64)
    losses = {
        name: [
            float(s / c) if c > 0 else None for s, c in zip(loss_sum[i], loss_weight, strict=True)
        ]
        for i, name in enumerate(loss_names)
    }
    return {
        "labels": _labels(tp.size, class_names),
        "support": np.asarray(stats["support"]).tolist(),
        "precision": per["precision"].tolist(),
        "recall": per["recall"].tolist(),
        "f1": per["f1"].tolist(),
        "loss": losses,
        "averages": averages,
    }


def _labels(n: int, class_names: Sequence[str] | None) -> list[Any]:
    return list(class_names) if class_names is not None else list(range(n))


# ---- confusion_matrix ---------------------------------------------------------------------


def confusion_matrix_stats(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    threshold: float = 0.5,
    from_logits: bool = False,
) -> Stats:
    """``{"matrix"}``: ``(K, K)`` true × predicted class (``K = 2`` for a binary batch), or
    ``(C, 2, 2)`` ``[[tn, fp], [fn, tp]]`` per label for a multi-label batch.

    Single-label cells are one weighted ``bincount`` of ``true K + predicted``.
    """
    rows = as_rows(y_true, y_pred, sample_weight)
    w = rows.weight
    if rows.family == "multi_label":
        assert rows.dense is not None
        truth = rows.dense >= 0.5
        decided = _element_decisions(rows, threshold, from_logits)
        cells = [
            [column_sums(~truth & ~decided, w), column_sums(~truth & decided, w)],
            [column_sums(truth & ~decided, w), column_sums(truth & decided, w)],
        ]
        return {"matrix": np.moveaxis(np.array(cells), -1, 0)}
    k = max(rows.n_classes, 2)
    index = _true_classes(rows) * k + _predicted_classes(rows, threshold, from_logits)
    if w is None:
        flat: NDArray[Any] = np.bincount(index, minlength=k * k).astype(np.int64, copy=False)
    else:
        flat = np.bincount(index, weights=w, minlength=k * k)
    return {"matrix": flat.reshape(k, k)}


def confusion_matrix_report(
    stats: Stats, *, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """``{"labels", "matrix"}``, or ``{"labels", "matrices"}`` for a multi-label batch."""
    matrix = np.asarray(stats["matrix"])
    key = "matrices" if matrix.ndim == 3 else "matrix"
    return {"labels": _labels(matrix.shape[0], class_names), key: matrix.tolist()}


PER_CLASS = Mergeable(
    name="per_class",
    stats=per_class_stats,
    finalize=per_class_report,
    keys=("tp", "fp", "fn", "support", "loss_sum", "loss_weight"),
    stats_params=("threshold", "from_logits", "losses"),
    finalize_params=("class_names", "loss_names"),
    kind="report",
)
CONFUSION_MATRIX = Mergeable(
    name="confusion_matrix",
    stats=confusion_matrix_stats,
    finalize=confusion_matrix_report,
    keys=("matrix",),
    stats_params=("threshold", "from_logits"),
    finalize_params=("class_names",),
    kind="report",
)

__all__ = [
    "CONFUSION_MATRIX",
    "PER_CLASS",
    "confusion_matrix_report",
    "confusion_matrix_stats",
    "per_class_report",
    "per_class_stats",
]
