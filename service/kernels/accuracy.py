"""Accuracy metrics: one match (1.0 or 0.0) per prediction, and their weighted mean.

Argmax metrics take 2-D ``(rows, classes)`` predictions and return one match
per row; threshold metrics compare element by element. Ties follow Keras:
``argmax`` picks the first maximum, and ``in_top_k`` counts a class as in the
top ``k`` when fewer than ``k`` classes score strictly higher than it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.kernels._blocks import for_each_block
from service.kernels.categorical import Floats, Indices

Matches = NDArray[np.float64]


def sigmoid(x: Floats) -> Floats:
    """``1 / (1 + e^{-x})`` in ``x``'s dtype: what the threshold metrics compare with
    ``from_logits``.

    NumPy's own ``exp`` on purpose, not the float32 ``exp2`` route of
    :func:`service.kernels.classification.sigmoid_into`: the two differ by an ulp on
    about a third of float32 inputs, and one ulp can carry a value across a threshold.
    ``e^{-x}`` overflows to infinity for very negative ``x``; ``1 / (1 + inf)`` is then
    exactly 0, the sigmoid's limit.
    """
    with np.errstate(over="ignore"):
        result: Floats = 1 / (1 + np.exp(-x))
    return result


def binary_accuracy(y_true: Floats, y_pred: Floats, *, threshold: float = 0.5) -> Matches:
    """``y_true == (y_pred > threshold)``, element by element."""
    matches: Matches = np.equal(y_true, y_pred > y_pred.dtype.type(threshold)).astype(np.float64)
    return matches


def subset_accuracy(y_true: Floats, y_pred: Floats, *, threshold: float = 0.5) -> Matches:
    """Exact match per row of 2-D multi-label targets: every label right, or no hit."""
    hits: NDArray[np.bool_] = np.equal(y_true, y_pred > y_pred.dtype.type(threshold))
    matches: Matches = np.all(hits, axis=1).astype(np.float64)
    return matches


def categorical_accuracy(labels: Indices, y_pred: Floats) -> Matches:
    """``labels == argmax(y_pred)`` per row; for one-hot or soft targets pass their argmax."""
    matches: Matches = np.equal(labels, y_pred.argmax(axis=1)).astype(np.float64)
    return matches


def top_k_accuracy(labels: Indices, y_pred: Floats, *, k: int = 5) -> Matches:
    """1.0 where the true class is among the ``k`` highest scores of its row.

    A hit is "fewer than ``k`` classes score strictly higher": tied classes at
    the boundary all count as in the top ``k``, as TensorFlow's ``in_top_k``.
    """
    n, c = y_pred.shape
    out = np.empty(n, dtype=np.float64)

    def work(rows: slice) -> None:
        scores = y_pred[rows]
        target = np.take_along_axis(scores, labels[rows, None], axis=1)
        higher = np.count_nonzero(scores > target, axis=1)
        out[rows] = higher < k

    for_each_block(n, c, work)
    return out


def weighted_mean(values: Matches, sample_weight: Floats | None = None) -> float:
    """Mean of ``values``, or ``Σ v w / Σ w`` with weights broadcast to ``values``.

    Like Keras metrics, zero total weight gives 0.0 rather than a division by zero.
    """
    if sample_weight is None:
        return float(values.mean())
    weights = np.broadcast_to(sample_weight, values.shape).astype(np.float64)
    total = float(weights.sum())
    return float(np.dot(values.ravel(), weights.ravel()) / total) if total else 0.0


def mean_stats(values: Matches, sample_weight: Floats | None = None) -> dict[str, NDArray[Any]]:
    """The statistics of :func:`weighted_mean` that add up across batches: ``sum`` of
    ``v w`` and ``weight``, the sum of the weights (a count without weights)."""
    if sample_weight is None:
        return {
            "sum": np.asarray(values.sum(), dtype=np.float64),
            "weight": np.asarray(values.size, dtype=np.int64),
        }
    weights = np.broadcast_to(sample_weight, values.shape).astype(np.float64)
    return {
        "sum": np.asarray(np.dot(values.ravel(), weights.ravel()), dtype=np.float64),
        "weight": np.asarray(weights.sum(), dtype=np.float64),
    }


def mean_value(stats: Mapping[str, NDArray[Any]]) -> float:
    """``sum / weight`` (0.0 for no weight, as Keras metrics)."""
    weight = float(stats["weight"])
    return float(stats["sum"]) / weight if weight else 0.0
