"""Reducing per-sample losses to the number a caller asked for, as Keras 3 does.

``sum_over_batch_size`` and ``mean`` divide the (weighted) sum by the number
of loss values; ``mean_with_sample_weight`` by the sum of the weights; ``sum``
does not divide; ``none`` returns the weighted values. A ``mask`` (positions
left out by ``ignore_class``) is merged into the weights first, scaled so that
the mean divides by the count of the positions kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.kernels.categorical import Floats

Reduction = Literal["sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", "none"]
REDUCTIONS: tuple[Reduction, ...] = (
    "sum_over_batch_size",
    "mean",
    "sum",
    "mean_with_sample_weight",
    "none",
)


def reduce_loss(
    values: Floats,
    *,
    sample_weight: Floats | None = None,
    mask: NDArray[np.bool_] | None = None,
    reduction: Reduction = "sum_over_batch_size",
) -> Floats:
    """Weight, mask and reduce ``values``; ``sample_weight`` must broadcast to them."""
    dtype = values.dtype
    weights = None if sample_weight is None else sample_weight.astype(dtype, copy=False)
    if mask is not None:
        keep = mask.astype(dtype)
        if reduction in ("sum_over_batch_size", "mean"):
            valid = keep.sum()
            keep *= dtype.type(keep.size) / valid if valid else dtype.type(0)
        weights = keep if weights is None else weights * keep
    if weights is not None:
        values = values * weights
    if reduction == "none":
        return values
    total = values.sum(dtype=dtype)
    if reduction == "sum":
        return np.asarray(total)
    if reduction == "mean_with_sample_weight" and weights is not None:
        divisor = np.broadcast_to(weights, values.shape).sum(dtype=dtype)
        if not np.isfinite(divisor):
            # Weights whose sum overflows the dtype: dividing by it would read 0 (Keras's
            # answer) where the weighted mean is not; NaN, for the caller to refuse.
            return np.asarray(dtype.type(np.nan))
        return np.asarray(total / divisor if divisor else dtype.type(0))
    return np.asarray(total / dtype.type(values.size))


def loss_stats(
    values: Floats,
    *,
    sample_weight: Floats | None = None,
    mask: NDArray[np.bool_] | None = None,
) -> dict[str, NDArray[Any]]:
    """What :func:`reduce_loss` needs of a batch, in a form that adds up across batches.

    ``sum`` is ``Σ v w m`` (float64), ``count`` the number of loss values that count
    (``Σ m``, int64) and ``weight`` ``Σ w m`` (int64 without weights). With ``m`` the
    mask (all ones without one) and ``w`` the weights (ones without them), every
    reduction of the concatenated batches is one of ``sum``, ``sum / count`` and
    ``sum / weight`` (:func:`loss_from_stats`): Keras rescales a masked batch's weights
    by ``size / Σ m``, so its ``sum_over_batch_size`` is ``Σ v w m / Σ m``.
    """
    v = values.astype(np.float64)
    keep = None if mask is None else np.broadcast_to(mask, values.shape)
    if sample_weight is not None:
        w = np.broadcast_to(sample_weight, values.shape).astype(np.float64)
        if keep is not None:
            w = w * keep
        total, weight = np.dot(v.ravel(), w.ravel()), np.asarray(w.sum(), dtype=np.float64)
    elif keep is not None:
        total = v[keep].sum()
        weight = np.asarray(int(keep.sum()), dtype=np.int64)
    else:
        total, weight = v.sum(), np.asarray(v.size, dtype=np.int64)
    count = v.size if keep is None else int(keep.sum())
    return {
        "sum": np.asarray(total, dtype=np.float64),
        "count": np.asarray(count, dtype=np.int64),
        "weight": weight,
    }


def loss_from_stats(stats: Mapping[str, NDArray[Any]], reduction: Reduction) -> float:
    """The reduced loss of the batches whose :func:`loss_stats` were added up."""
    total = float(stats["sum"])
    if reduction == "sum":
        return total
    divisor = float(stats["weight"] if reduction == "mean_with_sample_weight" else stats["count"])
    return total / divisor if divisor else 0.0
