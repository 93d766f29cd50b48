"""Reducing per-sample losses to the number a caller asked for, as Keras 3 does.

``sum_over_batch_size`` and ``mean`` divide the (weighted) sum by the number
of loss values; ``mean_with_sample_weight`` by the sum of the weights; ``sum``
does not divide; ``none`` returns the weighted values. A ``mask`` (positions
left out by ``ignore_class``) is merged into the weights first, scaled so that
the mean divides by the count of the positions kept.
"""

from __future__ import annotations

from typing import Literal

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
        return np.asarray(total / divisor if divisor else dtype.type(0))
    return np.asarray(total / dtype.type(values.size))
