"""Losses and metrics as a request computes them, for the kernel tests: through the
service's in-process operations (:mod:`service.operations`), so the parameters, the
batch's validation and the dispatch to the kernels are the API's own."""

from __future__ import annotations

from typing import Any

import numpy as np

from service import operations


def loss(name: str, y_true: Any, y_pred: Any, sample_weight: Any = None, **raw: Any) -> np.ndarray:
    """The loss ``name`` (``dtype``, default float32, is the compute dtype; the rest of
    ``raw`` are the loss's parameters), as an array (0-d unless ``reduction="none"``)."""
    out = operations.loss(
        name, np.asarray(y_true), np.asarray(y_pred), _weights(sample_weight), **raw
    )
    return np.asarray(out["loss"])


def metric(name: str, y_true: Any, y_pred: Any, sample_weight: Any = None, **raw: Any) -> float:
    """The metric ``name`` with parameters ``raw``."""
    out = operations.metric(
        name, np.asarray(y_true), np.asarray(y_pred), _weights(sample_weight), **raw
    )
    value: float = out["value"]
    return value


def _weights(sample_weight: Any) -> Any:
    return None if sample_weight is None else np.asarray(sample_weight)
