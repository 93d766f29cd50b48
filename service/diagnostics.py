"""Diagnoses: likely mistakes in a batch that can still be computed, each with a stable code.

A diagnosis never changes a number; it is returned beside it, in ``warnings``,
with a message that gives the figures behind it. The codes:

``binary_accuracy_inflated``
    binary accuracy on multi-hot labels, where true negatives dominate it.
``multi_hot_labels_with_categorical_loss``
    several ones per row sent to a categorical loss.
``multi_hot_labels_with_argmax_metric``
    several ones per row scored by an argmax metric (it only sees the first one).
``predictions_look_like_probabilities``
    ``from_logits`` is true, but the predictions already are probabilities.
``probabilities_renormalized``
    ``from_logits`` is false and rows do not sum to 1, so they were renormalized.
``labels_without_positive``
    rows of ``y_true`` that hold no one, sent to a categorical loss or an argmax metric.
``class_without_support``
    classes with no true sample: their precision, recall and F1 are reported as 0.
``auc_undefined``
    AUC asked of labels with a single class (or, per label, a column without positives).
``calibration_of_scores``
    calibration asked of values outside [0, 1] without ``from_logits``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service import kernels
from service.encodings import Batch
from service.registry import LossSpec, threshold_input

#: A row "sums to 1" within this tolerance (float32 softmax outputs are this close).
SUM_TOLERANCE = 1e-3

CODES: dict[str, str] = {
    "binary_accuracy_inflated": "Binary accuracy on multi-hot labels counts every label "
    "separately, so true negatives dominate it; the message gives the subset accuracy and the "
    "score of predicting all zeros.",
    "multi_hot_labels_with_categorical_loss": "Several ones per row were sent to a categorical "
    "loss, which treats them as one distribution; binary_crossentropy fits multi-label targets.",
    "multi_hot_labels_with_argmax_metric": "Several ones per row were scored by an argmax "
    "metric, which only sees the first one; subset_accuracy fits multi-label targets.",
    "predictions_look_like_probabilities": "`from_logits` is true but every row of `y_pred` is "
    "already a probability distribution (a softmax or sigmoid applied twice).",
    "probabilities_renormalized": "`from_logits` is false and rows of `y_pred` do not sum to 1, "
    "so the categorical loss renormalized them.",
    "labels_without_positive": "Rows of `y_true` hold no 1 (every target 0): a categorical "
    "loss gives each a loss of 0, an argmax metric reads each as class 0.",
    "class_without_support": "Some classes have no true sample in the batch: their "
    "precision, recall and F1 are reported as 0 and pull macro averages down.",
    "auc_undefined": "AUC was asked of labels with a single class (no positives, or no "
    "negatives for the ROC curve), or per label of a column without positives: that area is "
    "reported as 0.",
    "calibration_of_scores": "Calibration was asked of values outside [0, 1] with "
    "`from_logits` false: they are not probabilities, so confidences and bins mean nothing.",
}

_SUPPORT_METRICS = frozenset({"f1_score", "fbeta_score"})
_CALIBRATION = frozenset({"expected_calibration_error", "brier_score", "calibration"})


@dataclass(frozen=True)
class Diagnosis:
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _looks_like_probabilities(batch: Batch, categorical: bool) -> bool:
    p = batch.y_pred
    if float(p.min()) < 0 or float(p.max()) > 1:
        return False
    if not categorical:
        return True
    return bool(np.all(np.abs(batch.row_sums() - 1) <= SUM_TOLERANCE))


def _positives(batch: Batch) -> tuple[int, int, int]:
    """Of a multi-hot batch's rows: how many hold several ones, how many none, and all."""
    ones = batch.dense.sum(axis=-1) if batch.dense is not None else np.zeros(0)
    return int(np.count_nonzero(ones >= 2)), int(np.count_nonzero(ones == 0)), int(ones.size)


def for_loss(spec: LossSpec, batch: Batch, params: Mapping[str, Any]) -> list[Diagnosis]:
    found = []
    categorical = spec.family != "binary"
    if batch.encoding == "multi_hot" and spec.family == "categorical":
        several, empty, rows = _positives(batch)
        if several:
            found.append(
                Diagnosis(
                    "multi_hot_labels_with_categorical_loss",
                    f"`y_true` is multi-hot ({several} of {rows} rows hold several ones), but "
                    f"{spec.name} treats each row as one distribution over the classes. For "
                    "multi-label targets use binary_crossentropy with sigmoid outputs.",
                )
            )
        if empty:
            found.append(
                Diagnosis(
                    "labels_without_positive",
                    f"{empty} of {rows} rows of `y_true` hold no 1 (every target 0): "
                    f"{spec.name} gives each of them a loss of 0, which lowers the mean. "
                    "Expected one 1 a row (or integer labels); for targets that may have no "
                    "positive, binary_crossentropy with sigmoid outputs.",
                )
            )
    if params.get("from_logits"):
        if _looks_like_probabilities(batch, categorical):
            what = (
                "every row of `y_pred` is already a probability distribution (values in [0, 1] "
                "summing to 1)"
                if categorical
                else "every value of `y_pred` lies in [0, 1], as sigmoid outputs do"
            )
            found.append(
                Diagnosis(
                    "predictions_look_like_probabilities",
                    f"`from_logits` is true, but {what}: {spec.name} applies a "
                    f"{'softmax' if categorical else 'sigmoid'} to them again, which flattens "
                    "the predictions. If they are probabilities, send `from_logits: false`.",
                )
            )
    elif categorical:
        off = np.abs(batch.row_sums() - 1) > SUM_TOLERANCE
        if off.any():
            row = int(np.argmax(off))
            found.append(
                Diagnosis(
                    "probabilities_renormalized",
                    f"{int(off.sum())} of {batch.n_rows} rows of `y_pred` do not sum to 1 (row "
                    f"{row} sums to {float(batch.row_sums()[row]):.6g}), so {spec.name} divided "
                    "each row by its sum. If `y_pred` holds logits, send `from_logits: true`.",
                )
            )
    return found


def _without_support(support: NDArray[Any], what: str) -> list[Diagnosis]:
    empty = np.flatnonzero(np.asarray(support) == 0)
    if not empty.size:
        return []
    shown = ", ".join(str(int(c)) for c in empty[:5]) + (", ..." if empty.size > 5 else "")
    return [
        Diagnosis(
            "class_without_support",
            f"{empty.size} of {np.asarray(support).size} classes have no true sample in the "
            f"batch (class {shown}): {what} reports their precision, recall and F1 as 0, "
            "which pulls macro averages down.",
        )
    ]


def _auc_undefined(
    stats: Mapping[str, NDArray[Any]], params: Mapping[str, Any], weighted: bool
) -> list[Diagnosis]:
    """``weighted``: the counts are of ``sample_weight`` (an element of weight 0 is not
    counted: labels may hold both classes and the weighted counts one only)."""
    weight = " of nonzero weight" if weighted else ""
    positives = np.asarray(stats["tp"])[0] + np.asarray(stats["fn"])[0]
    negatives = np.asarray(stats["fp"])[0] + np.asarray(stats["tn"])[0]
    if params.get("multi_label"):
        empty = np.flatnonzero(np.atleast_1d(positives) == 0)
        if not empty.size:
            return []
        return [
            Diagnosis(
                "auc_undefined",
                f"{empty.size} of {np.atleast_1d(positives).size} label columns have no "
                f"positive{weight} (column {int(empty[0])} first): their AUC is undefined and "
                "counts as 0 in the mean over columns.",
            )
        ]
    if float(positives) > 0 and (float(negatives) > 0 or params.get("curve") == "PR"):
        # Without negatives the PR curve is defined (a precision of 1 at every threshold):
        # its area is reported as computed.
        return []
    which = "positive" if float(positives) == 0 else "negative"
    curve = "ROC curve is" if params.get("curve") == "ROC" else "PR curve's recall is"
    return [
        Diagnosis(
            "auc_undefined",
            f"The labels hold no {which} element{weight}, so the {curve} undefined and auc "
            "is reported as 0: AUC needs both classes in the data"
            + (" (`sample_weight` counts each element as its weight)." if weighted else "."),
        )
    ]


def _scores_not_probabilities(
    batch: Batch, params: Mapping[str, Any], what: str
) -> list[Diagnosis]:
    if params.get("from_logits"):
        return []
    low, high = float(batch.y_pred.min()), float(batch.y_pred.max())
    if low >= 0 and high <= 1:
        return []
    return [
        Diagnosis(
            "calibration_of_scores",
            f"{what} was asked of `y_pred` in [{low:.4g}, {high:.4g}], outside [0, 1], with "
            "`from_logits` false: these are not probabilities, so its confidences mean "
            "nothing. If `y_pred` holds logits, send `from_logits: true`.",
        )
    ]


def for_report(
    name: str, batch: Batch, stats: Mapping[str, NDArray[Any]], params: Mapping[str, Any]
) -> list[Diagnosis]:
    if name == "per_class":
        return _without_support(stats["support"], "the per_class report")
    if name == "calibration":
        return _scores_not_probabilities(batch, params, "The calibration report")
    return []


def for_metric(
    resolved: str,
    batch: Batch,
    params: Mapping[str, Any],
    value: Any,
    stats: Mapping[str, NDArray[Any]] | None = None,
) -> list[Diagnosis]:
    if stats is not None:
        if resolved in _SUPPORT_METRICS and params.get("average") in (None, "macro"):
            return _without_support(stats["support"], resolved)
        if resolved == "auc":
            return _auc_undefined(stats, params, batch.sample_weight is not None)
        if resolved in _CALIBRATION:
            return _scores_not_probabilities(batch, params, resolved)
    if batch.encoding != "multi_hot" or batch.dense is None:
        return []
    if resolved == "binary_accuracy":
        threshold = params.get("threshold", 0.5)
        pred = threshold_input(batch, params)
        subset = kernels.weighted_mean(
            kernels.subset_accuracy(batch.dense, pred, threshold=threshold).reshape(
                batch.sample_shape
            ),
            batch.sample_weight,
        )
        zeros = kernels.weighted_mean(
            (batch.dense == 0).mean(axis=1).reshape(batch.sample_shape), batch.sample_weight
        )
        if zeros <= 0.5 or value <= subset:
            # Negatives are not the majority, or the binary figure is no higher than the
            # exact-match one: it overstates nothing.
            return []
        return [
            Diagnosis(
                "binary_accuracy_inflated",
                f"binary_accuracy is {value:.4f}, but `y_true` is multi-hot with "
                f"{batch.n_classes} labels per sample, {zeros:.1%} of them zeros: predicting "
                f"all zeros would score {zeros:.4f}. The subset (exact-match) accuracy is "
                f"{subset:.4f}; `accuracy` resolves to subset_accuracy for multi-hot labels.",
            )
        ]
    if resolved in ("categorical_accuracy", "top_k_categorical_accuracy"):
        several, empty, rows = _positives(batch)
        found = []
        if several:
            found.append(
                Diagnosis(
                    "multi_hot_labels_with_argmax_metric",
                    f"{resolved} takes the argmax of each multi-hot row of `y_true`, i.e. only "
                    "its first positive label, so it measures nothing meaningful for "
                    "multi-label targets: use subset_accuracy.",
                )
            )
        if empty:
            found.append(
                Diagnosis(
                    "labels_without_positive",
                    f"{empty} of {rows} rows of `y_true` hold no 1 (every target 0): {resolved} "
                    "takes the argmax of each, class 0, as its label. Expected one 1 a row (or "
                    "integer labels).",
                )
            )
        return found
    return []
