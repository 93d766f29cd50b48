"""Pure NumPy kernels: arrays in, arrays out, no web imports, no validation.

Callers (the registry) validate inputs once and move the class axis last;
these functions trust their inputs.
"""

from service.kernels.accuracy import (
    binary_accuracy,
    categorical_accuracy,
    subset_accuracy,
    top_k_accuracy,
    weighted_mean,
)
from service.kernels.binary import binary_crossentropy, binary_focal_crossentropy
from service.kernels.categorical import (
    categorical_crossentropy,
    categorical_crossentropy_from_indices,
    categorical_focal_crossentropy,
    categorical_focal_crossentropy_from_indices,
    sparse_categorical_crossentropy,
)
from service.kernels.reduction import REDUCTIONS, Reduction, reduce_loss

__all__ = [
    "REDUCTIONS",
    "Reduction",
    "binary_accuracy",
    "binary_crossentropy",
    "binary_focal_crossentropy",
    "categorical_accuracy",
    "categorical_crossentropy",
    "categorical_crossentropy_from_indices",
    "categorical_focal_crossentropy",
    "categorical_focal_crossentropy_from_indices",
    "reduce_loss",
    "sparse_categorical_crossentropy",
    "subset_accuracy",
    "top_k_accuracy",
    "weighted_mean",
]
