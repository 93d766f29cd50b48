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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

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
}


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


def for_loss(spec: LossSpec, batch: Batch, params: Mapping[str, Any]) -> list[Diagnosis]:
    found = []
    categorical = spec.family != "binary"
    if batch.encoding == "multi_hot" and spec.family == "categorical":
        ones = batch.dense.sum(axis=1) if batch.dense is not None else np.zeros(1)
        found.append(
            Diagnosis(
                "multi_hot_labels_with_categorical_loss",
                f"`y_true` is multi-hot (rows hold {int(ones.min())} to {int(ones.max())} ones), "
                f"but {spec.name} treats each row as one distribution over the classes. For "
                "multi-label targets use binary_crossentropy with sigmoid outputs.",
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


def for_metric(
    resolved: str, batch: Batch, params: Mapping[str, Any], value: float
) -> list[Diagnosis]:
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
        return [
            Diagnosis(
                "multi_hot_labels_with_argmax_metric",
                f"{resolved} takes the argmax of each multi-hot row of `y_true`, i.e. only its "
                "first positive label, so it measures nothing meaningful for multi-label "
                "targets: use subset_accuracy.",
            )
        ]
    return []
