"""Pure NumPy kernels: arrays in, arrays out, no web imports, no validation.

Callers (the registry) validate inputs once and move the class axis last;
these functions trust their inputs.
"""

from service.kernels._blocks import set_threads as set_kernel_threads
from service.kernels.accuracy import (
    binary_accuracy,
    categorical_accuracy,
    mean_stats,
    mean_value,
    sigmoid,
    subset_accuracy,
    top_k_accuracy,
    weighted_mean,
)
from service.kernels.binary import binary_crossentropy, binary_focal_crossentropy
from service.kernels.calibration import (
    brier_score,
    brier_stats,
    brier_value,
    calibration_report,
    calibration_stats,
    ece_stats,
    ece_value,
    expected_calibration_error,
)
from service.kernels.categorical import (
    categorical_crossentropy,
    categorical_crossentropy_from_indices,
    categorical_focal_crossentropy,
    categorical_focal_crossentropy_from_indices,
    sparse_categorical_crossentropy,
)
from service.kernels.classification import (
    auc,
    auc_columns_without_positives,
    auc_curve,
    auc_stats,
    auc_thresholds,
    auc_value,
    f1_score,
    fbeta_score,
    fbeta_stats,
    fbeta_value,
    precision,
    precision_recall_stats,
    precision_value,
    recall,
    recall_value,
)
from service.kernels.confusion import (
    confusion_matrix_report,
    confusion_matrix_stats,
    per_class_report,
    per_class_stats,
)
from service.kernels.mergeable import MERGEABLE
from service.kernels.reduction import (
    REDUCTIONS,
    Reduction,
    loss_from_stats,
    loss_stats,
    reduce_loss,
)
from service.kernels.stats import (
    STATISTIC_LIMIT,
    Mergeable,
    Stats,
    merge_stats,
    statistic_size,
    sum_stats,
)

__all__ = [
    "MERGEABLE",
    "REDUCTIONS",
    "STATISTIC_LIMIT",
    "Mergeable",
    "Reduction",
    "Stats",
    "auc",
    "auc_columns_without_positives",
    "auc_curve",
    "auc_stats",
    "auc_thresholds",
    "auc_value",
    "binary_accuracy",
    "binary_crossentropy",
    "binary_focal_crossentropy",
    "brier_score",
    "brier_stats",
    "brier_value",
    "calibration_report",
    "calibration_stats",
    "categorical_accuracy",
    "categorical_crossentropy",
    "categorical_crossentropy_from_indices",
    "categorical_focal_crossentropy",
    "categorical_focal_crossentropy_from_indices",
    "confusion_matrix_report",
    "confusion_matrix_stats",
    "ece_stats",
    "ece_value",
    "expected_calibration_error",
    "f1_score",
    "fbeta_score",
    "fbeta_stats",
    "fbeta_value",
    "loss_from_stats",
    "loss_stats",
    "mean_stats",
    "mean_value",
    "merge_stats",
    "per_class_report",
    "per_class_stats",
    "precision",
    "precision_recall_stats",
    "precision_value",
    "recall",
    "recall_value",
    "reduce_loss",
    "set_kernel_threads",
    "sigmoid",
    "sparse_categorical_crossentropy",
    "statistic_size",
    "subset_accuracy",
    "sum_stats",
    "top_k_accuracy",
    "weighted_mean",
]
