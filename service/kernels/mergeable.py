"""Every mergeable metric and report by name, for a streaming layer to drive alike.

Each entry is a :class:`service.kernels.stats.Mergeable`: its ``stats``
function, the ``keys`` of its statistics, and the ``finalize`` function that
turns the sum of many batches' statistics (:func:`merge_stats`) into the
value or the report.
"""

from __future__ import annotations

from service.kernels.calibration import BRIER_SCORE, CALIBRATION, EXPECTED_CALIBRATION_ERROR
from service.kernels.classification import AUC, F1_SCORE, FBETA_SCORE, PRECISION, RECALL
from service.kernels.confusion import CONFUSION_MATRIX, PER_CLASS
from service.kernels.stats import Mergeable, merge_stats, sum_stats

#: Metrics (``finalize`` gives a NumPy value) and reports (a JSON-ready dict), by name.
MERGEABLE: dict[str, Mergeable] = {
    spec.name: spec
    for spec in (
        PRECISION,
        RECALL,
        F1_SCORE,
        FBETA_SCORE,
        AUC,
        EXPECTED_CALIBRATION_ERROR,
        BRIER_SCORE,
        PER_CLASS,
        CONFUSION_MATRIX,
        CALIBRATION,
    )
}

__all__ = ["MERGEABLE", "Mergeable", "merge_stats", "sum_stats"]
