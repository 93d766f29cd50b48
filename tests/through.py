"""Losses and metrics as a request computes them (registry → encodings → kernels), for
the kernel tests: parameters parsed by the registry, the batch validated and prepared
by the encodings, then computed."""

from __future__ import annotations

from typing import Any

import numpy as np

from service import encodings, registry


def _batch(y_true: Any, y_pred: Any, sample_weight: Any, **options: Any) -> encodings.Batch:
    return encodings.prepare(
        np.asarray(y_true),
        np.asarray(y_pred),
        sample_weight=None if sample_weight is None else np.asarray(sample_weight),
        **options,
    )


def loss(name: str, y_true: Any, y_pred: Any, sample_weight: Any = None, **raw: Any) -> np.ndarray:
    """The loss ``name``; ``dtype`` (default float32) is the compute dtype, the rest of
    ``raw`` are the loss's parameters."""
    dtype = raw.pop("dtype", "float32")
    spec = registry.get_loss(name)
    params = registry.parse_params(name, spec.params, raw)
    batch = _batch(y_true, y_pred, sample_weight, axis=params["axis"], dtype=dtype)
    return np.asarray(registry.compute_loss(spec, batch, params))


def metric(name: str, y_true: Any, y_pred: Any, sample_weight: Any = None, **raw: Any) -> float:
    """The metric ``name`` with parameters ``raw``."""
    spec = registry.get_metric(name)
    params = registry.parse_params(name, spec.params, raw)
    value, _ = registry.compute_metric(name, _batch(y_true, y_pred, sample_weight), params)
    return value
