"""Every loss and metric the service knows: names, parameters, defaults, and how to compute it.

A :class:`LossSpec`, :class:`MetricSpec` or :class:`ReportSpec` names its
Keras 3 parameters with Keras' defaults, and the label encodings it accepts;
:func:`parse_params` checks a request's parameters against them (an unknown
parameter is an error, as is a wrong type or range).

Validation is layered as scikit-learn's ``_check_targets``: the batch alone
(shapes, values, its encoding) once, in :func:`service.encodings.prepare`; then
whether it fits one loss, metric or report in :func:`check_fits`, from the
spec's properties alone. :func:`compute_loss` / :func:`compute_metric` /
:func:`report_stats` call it before their kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from service import kernels
from service.encodings import (
    ENCODINGS,
    Batch,
    Encoding,
    check_label_range,
    check_probabilities,
    sparse_labels,
)
from service.errors import Loc, NotFound, PayloadTooLarge, invalid
from service.kernels.mergeable import MERGEABLE

ParamKind = Literal["bool", "float", "int", "str"]


@dataclass(frozen=True)
class Param:
    """One parameter: its JSON type, Keras default, allowed values and a one-line description."""

    name: str
    kind: ParamKind
    default: Any
    description: str
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: Whether ``minimum`` itself is refused (Keras refuses it for some parameters).
    exclusive_minimum: bool = False

    def parse(self, value: Any, loc: Loc) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise invalid(loc, f"`{self.name}` must not be null: expected {self.expected()}.")
        ok = {
            "bool": isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "int": (isinstance(value, int) and not isinstance(value, bool))
            or (isinstance(value, float) and value.is_integer()),
            "str": isinstance(value, str),
        }[self.kind]
        if not ok:
            raise invalid(
                loc,
                f"`{self.name}` has the wrong type: expected {self.expected()}, "
                f"received {value!r}.",
            )
        if self.kind == "float":
            value = float(value)
            if not np.isfinite(value):
                raise invalid(loc, f"`{self.name}` must be finite, received {value!r}.")
        if self.kind == "int":
            value = int(value)
        if self.choices is not None and value not in self.choices:
            raise invalid(
                loc,
                f"Invalid value for `{self.name}`: expected one of {list(self.choices)}, "
                f"received {value!r}.",
            )
        low_ok = self.minimum is None or (
            value > self.minimum if self.exclusive_minimum else value >= self.minimum
        )
        high_ok = self.maximum is None or value <= self.maximum
        if not (low_ok and high_ok):
            raise invalid(
                loc,
                f"`{self.name}` is out of range: expected {self.expected()}, received {value!r}.",
            )
        return value

    def expected(self) -> str:
        kind = {
            "bool": "true or false",
            "float": "a number",
            "int": "an integer",
            "str": "a string",
        }
        text = kind[self.kind]
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        opening = "(" if self.exclusive_minimum else "["
        if self.minimum is not None and self.maximum is not None:
            text += f" in {opening}{self.minimum:g}, {self.maximum:g}]"
        elif self.minimum is not None:
            text += f" {'>' if self.exclusive_minimum else '≥'} {self.minimum:g}"
        return text + (" or null" if self.nullable else "")

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "type": {"bool": "boolean", "float": "number", "int": "integer", "str": "string"}[
                self.kind
            ],
            "default": self.default,
            "nullable": self.nullable,
            "description": self.description,
        }
        if self.choices:
            info["choices"] = list(self.choices)
        if self.minimum is not None:
            info["exclusive_minimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            info["maximum"] = self.maximum
        return info


FROM_LOGITS = Param(
    "from_logits",
    "bool",
    False,
    "Whether `y_pred` holds logits (raw scores) rather than probabilities.",
)
LABEL_SMOOTHING = Param(
    "label_smoothing",
    "float",
    0.0,
    "Mixes targets with the uniform distribution: y (1 - s) + s / C (binary: + s / 2).",
    minimum=0.0,
    maximum=1.0,
)
AXIS = Param(
    "axis", "int", -1, "The class axis of `y_pred` (the axis a binary loss averages over)."
)
REDUCTION = Param(
    "reduction",
    "str",
    "sum_over_batch_size",
    "How per-sample losses are reduced: `none` returns them all.",
    choices=kernels.REDUCTIONS,
)
ALPHA = Param("alpha", "float", 0.25, "Focal weighting factor.", minimum=0.0, maximum=1.0)
GAMMA = Param(
    "gamma",
    "float",
    2.0,
    "Focusing parameter: how much easy examples are down-weighted.",
    minimum=0.0,
)
IGNORE_CLASS = Param(
    "ignore_class",
    "int",
    None,
    "A label value to leave out: its positions give 0 and the mean divides by the rest.",
    nullable=True,
)
APPLY_CLASS_BALANCING = Param(
    "apply_class_balancing",
    "bool",
    False,
    "Weigh positives by `alpha` and negatives by `1 - alpha`.",
)
THRESHOLD = Param("threshold", "float", 0.5, "A prediction above this counts as positive.")
K = Param("k", "int", 5, "How many of the highest scores count as a hit.", minimum=1)
METRIC_FROM_LOGITS = Param(
    "from_logits",
    "bool",
    False,
    "Threshold `sigmoid(y_pred)` rather than `y_pred` (argmax metrics ignore it).",
)

THRESHOLDS = Param(
    "thresholds",
    "float",
    None,
    "An element counts as a positive where `y_pred > thresholds` (compared in float32); "
    "null means 0.5, or no threshold when `top_k` is set.",
    nullable=True,
    minimum=0.0,
    maximum=1.0,
)
TOP_K = Param(
    "top_k",
    "int",
    None,
    "Count only the k largest elements of each row as positives (whatever their values).",
    nullable=True,
    minimum=1,
)
CLASS_ID = Param(
    "class_id", "int", None, "Score only this class's column.", nullable=True, minimum=0
)
AVERAGE = Param(
    "average",
    "str",
    None,
    "null: one value per class; micro pools every element; macro is the plain mean over "
    "classes; weighted weighs classes by their support.",
    nullable=True,
    choices=("micro", "macro", "weighted"),
)
BETA = Param(
    "beta",
    "float",
    1.0,
    "Weight of recall against precision.",
    minimum=0.0,
    exclusive_minimum=True,
    # The score takes β² in float64: past this it is infinite, and the score is not a number.
    maximum=1e154,
)
F_THRESHOLD = Param(
    "threshold",
    "float",
    None,
    "A positive is `y_pred > threshold`; null: every element equal to its row's maximum.",
    nullable=True,
    minimum=0.0,
    maximum=1.0,
    exclusive_minimum=True,
)
NUM_THRESHOLDS = Param(
    "num_thresholds",
    "int",
    200,
    "Thresholds of the binned curve, evenly spaced in [0, 1] (Keras' AUC).",
    minimum=2,
    maximum=100_000,
)
CURVE = Param("curve", "str", "ROC", "The curve whose area is computed.", choices=("ROC", "PR"))
SUMMATION = Param(
    "summation_method",
    "str",
    "interpolation",
    "How the area is summed over the threshold intervals.",
    choices=("interpolation", "minoring", "majoring"),
)
MULTI_LABEL = Param(
    "multi_label",
    "bool",
    False,
    "One curve per column, averaged (a column without positives counts as 0), instead of "
    "pooling every element into one curve.",
)
SCORE_FROM_LOGITS = Param(
    "from_logits",
    "bool",
    False,
    "Apply a sigmoid (or, for calibration of single-label batches, a softmax) to `y_pred` first.",
)
N_BINS = Param(
    "n_bins", "int", 15, "Equal-width confidence bins in [0, 1].", minimum=1, maximum=10_000
)
NORM = Param(
    "norm",
    "str",
    "l1",
    "l1: the count-weighted mean gap; l2: its root mean square; max: the largest gap.",
    choices=("l1", "l2", "max"),
)

#: Parameters every compute request takes, on top of the loss's or metric's own.
COMMON = (
    Param(
        "label_encoding",
        "str",
        None,
        "State the encoding of `y_true` instead of detecting it (it is then checked).",
        nullable=True,
        choices=ENCODINGS,
    ),
    Param(
        "dtype",
        "str",
        "float32",
        "The compute dtype: float32 gives Keras' numbers, float64 more precision.",
        choices=("float32", "float64"),
    ),
)

Family = Literal["categorical", "sparse", "binary"]

# ---- label encodings a spec accepts ----------------------------------------------------------

#: Every encoding: the spec resolves or converts whatever labels it is sent.
ANY_LABELS: frozenset[Encoding] = frozenset(ENCODINGS)
ANY_LABELS_NEED = "labels of any encoding"
#: At least 2 classes: every encoding but a single sigmoid output.
CLASSES: frozenset[Encoding] = ANY_LABELS - {"binary"}
#: Class indices: integer labels, or one-hot rows (whose argmax is the index).
CLASS_INDICES: frozenset[Encoding] = frozenset({"sparse", "one_hot"})
#: Targets of ``y_pred``'s shape: every encoding but integer labels.
SHAPED: frozenset[Encoding] = ANY_LABELS - {"sparse"}
#: 0/1 targets of ``y_pred``'s shape.
ZERO_ONE: frozenset[Encoding] = SHAPED - {"soft"}

#: The loss that fits each encoding: what a loss refusing the labels suggests, and what
#: evaluate computes when it is named no loss.
FITTING_LOSS: dict[Encoding, str] = {
    "sparse": "sparse_categorical_crossentropy",
    "one_hot": "categorical_crossentropy",
    "soft": "categorical_crossentropy",
    "multi_hot": "binary_crossentropy",
    "binary": "binary_crossentropy",
}
#: What `accuracy` means for each label encoding: also what a metric refusing the
#: labels suggests.
ACCURACY_FOR: dict[Encoding, str] = {
    "sparse": "sparse_categorical_accuracy",
    "one_hot": "categorical_accuracy",
    "soft": "categorical_accuracy",
    "binary": "binary_accuracy",
    "multi_hot": "subset_accuracy",
}


@dataclass(frozen=True)
class LossSpec:
    """A loss: its parameters, the kernels that compute it (dispatch is a lookup), and
    the label encodings it accepts.

    ``dense`` takes targets of ``y_pred``'s shape (for the sparse loss: class indices);
    ``indices``, where there is one, takes class indices for a categorical loss, so that
    integer labels are never expanded to a one-hot matrix. ``kernel_params`` are the
    parameters passed on to the kernels as keywords. ``accepts`` are the encodings it
    computes on, ``needs`` what that asks of a batch, in the words of the error that
    refuses the others.
    """

    #: What a refusal suggests instead, per encoding of the refused batch.
    fitting: ClassVar[Mapping[Encoding, str]] = FITTING_LOSS
    #: A loss that needs classes refuses a single output: `y_pred`'s class axis.
    single_output_field: ClassVar[str] = "y_pred"
    class_pairs: ClassVar[bool] = False

    name: str
    family: Family
    params: tuple[Param, ...]
    description: str
    dense: Callable[..., NDArray[np.floating]]
    indices: Callable[..., NDArray[np.floating]] | None = None
    kernel_params: tuple[str, ...] = ()
    _: KW_ONLY
    accepts: frozenset[Encoding]
    needs: str

    @property
    def probabilities(self) -> Literal["unit_interval", "distribution"]:
        """What `y_pred` must be able to be with `from_logits` false: values in [0, 1]
        (binary losses), or rows of non-negative values that renormalize."""
        return "unit_interval" if self.family == "binary" else "distribution"


@dataclass(frozen=True)
class MetricSpec:
    """A metric: its parameters and the label encodings it accepts (``needs``: those in
    the words of the error that refuses the others)."""

    fitting: ClassVar[Mapping[Encoding, str]] = ACCURACY_FOR
    single_output_field: ClassVar[str] = "y_true"
    #: Metrics compare or rank `y_pred` as it is: no probabilities required.
    probabilities: ClassVar[None] = None
    class_pairs: ClassVar[bool] = False

    name: str
    params: tuple[Param, ...]
    description: str
    _: KW_ONLY
    accepts: frozenset[Encoding] = ANY_LABELS
    needs: str = ANY_LABELS_NEED


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec(
            "categorical_crossentropy",
            "categorical",
            (FROM_LOGITS, LABEL_SMOOTHING, AXIS, REDUCTION),
            "Cross-entropy for one-hot or soft labels (integer labels accepted too).",
            kernels.categorical_crossentropy,
            kernels.categorical_crossentropy_from_indices,
            ("from_logits", "label_smoothing"),
            accepts=CLASSES,
            needs="at least 2 classes",
        ),
        LossSpec(
            "sparse_categorical_crossentropy",
            "sparse",
            (FROM_LOGITS, IGNORE_CLASS, AXIS, REDUCTION),
            "Cross-entropy for integer class labels (one-hot rows accepted too).",
            kernels.sparse_categorical_crossentropy,
            None,
            ("from_logits",),
            accepts=CLASS_INDICES,
            needs="integer labels or one-hot rows over at least 2 classes",
        ),
        LossSpec(
            "binary_crossentropy",
            "binary",
            (FROM_LOGITS, LABEL_SMOOTHING, AXIS, REDUCTION),
            "Cross-entropy for binary and multi-label targets, averaged over the last axis.",
            kernels.binary_crossentropy,
            None,
            ("from_logits", "label_smoothing"),
            accepts=SHAPED,
            needs="targets of `y_pred`'s shape",
        ),
        LossSpec(
            "categorical_focal_crossentropy",
            "categorical",
            (ALPHA, GAMMA, FROM_LOGITS, LABEL_SMOOTHING, AXIS, REDUCTION),
            "Focal cross-entropy for one-hot or soft labels (integer labels accepted too).",
            kernels.categorical_focal_crossentropy,
            kernels.categorical_focal_crossentropy_from_indices,
            ("alpha", "gamma", "from_logits", "label_smoothing"),
            accepts=CLASSES,
            needs="at least 2 classes",
        ),
        LossSpec(
            "binary_focal_crossentropy",
            "binary",
            (APPLY_CLASS_BALANCING, ALPHA, GAMMA, FROM_LOGITS, LABEL_SMOOTHING, AXIS, REDUCTION),
            "Focal cross-entropy for binary and multi-label targets.",
            kernels.binary_focal_crossentropy,
            None,
            ("apply_class_balancing", "alpha", "gamma", "from_logits", "label_smoothing"),
            accepts=SHAPED,
            needs="targets of `y_pred`'s shape",
        ),
    )
}

METRICS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec(
            "binary_accuracy",
            (THRESHOLD, METRIC_FROM_LOGITS),
            "Share of targets matched by `y_pred > threshold`, element by element.",
            accepts=SHAPED,
            needs="targets of `y_pred`'s shape",
        ),
        MetricSpec(
            "categorical_accuracy",
            (),
            "Share of samples whose argmax matches the label's (first maximum wins ties).",
            accepts=CLASSES,
            needs="at least 2 classes",
        ),
        MetricSpec(
            "sparse_categorical_accuracy",
            (),
            "Share of samples whose argmax equals the integer label.",
            accepts=CLASS_INDICES,
            needs="integer labels or one-hot rows over at least 2 classes",
        ),
        MetricSpec(
            "top_k_categorical_accuracy",
            (K,),
            "Share of samples whose true class is among the k highest scores.",
            accepts=CLASSES,
            needs="at least 2 classes",
        ),
        MetricSpec(
            "sparse_top_k_categorical_accuracy",
            (K,),
            "Share of samples whose integer label is among the k highest scores.",
            accepts=CLASS_INDICES,
            needs="integer labels or one-hot rows over at least 2 classes",
        ),
        MetricSpec(
            "subset_accuracy",
            (THRESHOLD, METRIC_FROM_LOGITS),
            "Share of samples whose every label is matched at `threshold` (exact match).",
            accepts=ZERO_ONE,
            needs="0/1 targets of `y_pred`'s shape",
        ),
        MetricSpec(
            "precision",
            (THRESHOLDS, TOP_K, CLASS_ID, SCORE_FROM_LOGITS),
            "Keras' Precision: true positives over predicted positives, every element a "
            "binary decision (integer labels stand for their one-hot form).",
        ),
        MetricSpec(
            "recall",
            (THRESHOLDS, TOP_K, CLASS_ID, SCORE_FROM_LOGITS),
            "Keras' Recall: true positives over actual positives, every element a binary decision.",
        ),
        MetricSpec(
            "f1_score",
            (AVERAGE, F_THRESHOLD, SCORE_FROM_LOGITS),
            "Keras' F1Score: per class, or averaged (micro, macro, weighted).",
        ),
        MetricSpec(
            "fbeta_score",
            (AVERAGE, BETA, F_THRESHOLD, SCORE_FROM_LOGITS),
            "Keras' FBetaScore: F-score with recall weighted `beta` times precision.",
        ),
        MetricSpec(
            "auc",
            (NUM_THRESHOLDS, CURVE, SUMMATION, MULTI_LABEL, SCORE_FROM_LOGITS),
            "Keras' AUC: the binned area under the ROC or precision-recall curve.",
        ),
        MetricSpec(
            "expected_calibration_error",
            (N_BINS, NORM, SCORE_FROM_LOGITS),
            "torchmetrics' calibration error: the gap between confidence and accuracy over "
            "equal-width confidence bins.",
        ),
        MetricSpec(
            "brier_score",
            (SCORE_FROM_LOGITS,),
            "scikit-learn's Brier score: the mean squared error of the probabilities "
            "(rows are not renormalized).",
        ),
        MetricSpec(
            "accuracy",
            # What the metrics it resolves to take (none of them takes `k`: that is the
            # top-k accuracies').
            (THRESHOLD, METRIC_FROM_LOGITS),
            "Resolved from the labels: sparse → sparse_categorical_accuracy, one-hot or "
            "soft → categorical_accuracy, binary → binary_accuracy, multi-hot → "
            "subset_accuracy.",
        ),
    )
}


@dataclass(frozen=True)
class ReportSpec:
    """A report: its parameters, the label encodings it accepts, and whether it keeps a
    count per pair of classes (``class_pairs``: refused past the class limit)."""

    #: Reports accept every encoding: nothing to suggest instead.
    fitting: ClassVar[Mapping[Encoding, str]] = {}
    single_output_field: ClassVar[str] = "y_true"
    probabilities: ClassVar[None] = None

    name: str
    params: tuple[Param, ...]
    description: str
    _: KW_ONLY
    accepts: frozenset[Encoding] = ANY_LABELS
    needs: str = ANY_LABELS_NEED
    class_pairs: bool = False


#: A loss, metric or report: what :func:`check_fits` reads.
Spec = LossSpec | MetricSpec | ReportSpec


REPORT_THRESHOLD = Param(
    "threshold",
    "float",
    0.5,
    "Multi-hot and binary batches: a label is predicted where its probability (after a "
    "sigmoid with `from_logits`) is above this.",
    minimum=0.0,
    maximum=1.0,
)
REPORT_FROM_LOGITS = Param(
    "from_logits", "bool", False, "Whether `y_pred` holds logits (from evaluate's own)."
)

REPORTS: dict[str, ReportSpec] = {
    s.name: s
    for s in (
        ReportSpec(
            "per_class",
            (REPORT_THRESHOLD, REPORT_FROM_LOGITS),
            "Per class: support, precision, recall, F1 and mean loss, with macro, weighted "
            "and micro averages (scikit-learn's numbers).",
        ),
        ReportSpec(
            "confusion_matrix",
            (REPORT_THRESHOLD, REPORT_FROM_LOGITS),
            "Rows are true classes, columns predicted (one 2x2 matrix per label for "
            "multi-hot batches).",
            class_pairs=True,
        ),
        ReportSpec(
            "calibration",
            (N_BINS, REPORT_FROM_LOGITS),
            "Reliability bins (count, confidence, accuracy) with ECE, MCE and Brier score.",
        ),
    )
}

#: Classes past which the confusion matrix is refused (a setting of the service, passed in
#: by the caller through :func:`set_max_confusion_classes`).
MAX_CONFUSION_CLASSES = [1000]


def set_max_confusion_classes(limit: int) -> None:
    MAX_CONFUSION_CLASSES[0] = limit


def get_loss(name: str) -> LossSpec:
    if name not in LOSSES:
        raise NotFound.at(
            ("path", "name"),
            f"Unknown loss {name!r}: expected one of {sorted(LOSSES)}.",
        )
    return LOSSES[name]


def get_metric(name: str) -> MetricSpec:
    if name not in METRICS:
        raise NotFound.at(
            ("path", "name"),
            f"Unknown metric {name!r}: expected one of {sorted(METRICS)}.",
        )
    return METRICS[name]


def parse_params(
    what: str, params: tuple[Param, ...], raw: Mapping[str, Any], loc: Loc = ()
) -> dict[str, Any]:
    """Check ``raw`` against ``params``; the result holds every parameter, defaults filled in."""
    known = {p.name: p for p in params}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        takes = ", ".join(f"`{n}`" for n in known) or "no parameters"
        raise invalid(
            (*loc, unknown[0]),
            f"{what} does not take {', '.join(f'`{u}`' for u in unknown)}: it takes {takes}.",
        )
    return {n: p.parse(raw[n], (*loc, n)) if n in raw else p.default for n, p in known.items()}


# ---- does the batch fit this loss, metric or report ---------------------------------------

#: What a refused batch holds, in the words of the error.
_RECEIVED: dict[Encoding, str] = {
    "sparse": "`y_true` holds integer class indices (sparse labels)",
    "binary": "`y_true` and `y_pred` hold a single output per sample (binary)",
    "one_hot": "`y_true` holds one-hot rows",
    "multi_hot": "`y_true` is multi_hot (0/1 rows, with any number of ones)",
    "soft": "`y_true` is soft (targets between 0 and 1)",
}
#: What else a refused batch could do, after the loss or metric that fits it.
_OR: dict[Encoding, str] = {
    "sparse": ", or send one target per output",
    "binary": " for one sigmoid output",
}
#: Counts that AUC thresholds (thresholds × columns × 4) and confusion matrices (classes²)
#: keep, summed over one request's entries and heads (a setting of the service, passed in
#: by the caller through :func:`set_max_statistic_cells`). A streaming evaluation keeps
#: them for each batch it stores.
MAX_STATISTIC_CELLS = [1 << 22]
_CELLS_ENV = "LOSS_SERVICE_MAX_STATISTIC_CELLS"


def set_max_statistic_cells(limit: int) -> None:
    MAX_STATISTIC_CELLS[0] = limit


def statistic_cells(
    spec: Spec, params: Mapping[str, Any], columns: int, confusion_cells: int
) -> int:
    """The counts an entry keeps that grow with its parameters and the labels' classes: an
    AUC's thresholds × columns (pooled: 1) × 4, a confusion matrix's ``confusion_cells``
    (see :func:`confusion_cells`); 0 for the others (their statistics grow with the
    classes alone, a few per class)."""
    if "num_thresholds" in params:
        return int(params["num_thresholds"]) * (columns if params["multi_label"] else 1) * 4
    if spec.class_pairs:
        return confusion_cells
    return 0


def confusion_cells(batch: Batch) -> int:
    """The counts of a batch's confusion matrix: classes² for single-label and binary
    labels, 2 × 2 per label for multi-label ones."""
    if batch.encoding == "multi_hot":
        return 4 * batch.n_classes
    classes = 2 if batch.encoding == "binary" else batch.n_classes
    return classes * classes


class CellBudget:
    """What one request's entries keep of :data:`MAX_STATISTIC_CELLS`, counted as each
    head is checked, before anything is computed."""

    def __init__(self, limit: int | None = None) -> None:
        self.used = 0
        #: None: the service's setting (read when counting).
        self.limit = limit

    def take(self, cells: int, loc: Loc, what: str) -> None:
        self.used += cells
        limit = MAX_STATISTIC_CELLS[0] if self.limit is None else self.limit
        if self.used > limit:
            raise PayloadTooLarge.at(
                loc,
                f"{what} takes the request's AUC and confusion counts to {self.used}, over "
                f"the limit of {limit} summed over its entries and heads (setting "
                f"{_CELLS_ENV}): expected fewer AUC thresholds, `multi_label: false`, or "
                "fewer AUC metrics and confusion matrices.",
            )


def check_fits(spec: Spec, batch: Batch, params: Mapping[str, Any]) -> None:
    """Refuse a batch that ``spec`` cannot be computed on, with what is wrong, what was
    expected, what was received and what to use instead.

    The one place that decides it, for losses, metrics and reports alike, from the
    spec's properties and its (checked) parameters: the label encoding against
    ``spec.accepts``; parameters bounded by the batch (``class_id`` and ``top_k`` by its
    columns, ``num_thresholds`` by the AUC cell limit, a report with ``class_pairs`` by
    the confusion class limit); integer labels against the classes (``ignore_class``
    allowed); and, for a loss with ``from_logits`` false, whether ``y_pred`` can be
    probabilities. The batch itself was checked once, by :func:`encodings.prepare`.
    """
    enc = batch.encoding
    if enc not in spec.accepts:
        field = spec.single_output_field if enc == "binary" else "y_true"
        instead = spec.fitting.get(enc)
        use = f": use {instead}{_OR.get(enc, '')}" if instead else ""
        raise invalid((field,), f"{spec.name} needs {spec.needs}, but {_RECEIVED[enc]}{use}.")
    _check_params_fit(spec, batch, params)
    check_label_range(batch, params.get("ignore_class"), spec.name)
    if spec.probabilities is not None and not params["from_logits"]:
        check_probabilities(batch, binary=spec.probabilities == "unit_interval", loss=spec.name)


def _check_params_fit(spec: Spec, batch: Batch, params: Mapping[str, Any]) -> None:
    """Parameters whose range depends on the batch: checked against its columns."""
    columns = batch.n_classes
    class_id = params.get("class_id")
    if class_id is not None and class_id >= columns:
        raise invalid(
            ("class_id",),
            f"`class_id` is {class_id}, but the batch has {columns} class column(s): "
            f"expected 0 to {columns - 1}.",
        )
    top_k = params.get("top_k")
    if top_k is not None and top_k > columns:
        raise invalid(
            ("top_k",),
            f"`top_k` is {top_k}, but the batch has {columns} class column(s): expected at "
            f"most {columns}.",
        )
    if "num_thresholds" in params:
        cells = statistic_cells(spec, params, columns, 0)
        limit = MAX_STATISTIC_CELLS[0]
        if cells > limit:
            raise PayloadTooLarge.at(
                ("num_thresholds",),
                f"{spec.name} with {params['num_thresholds']} thresholds over {columns} "
                f"columns keeps {cells} counts, over the limit of {limit} (setting "
                f"{_CELLS_ENV}): expected fewer thresholds, or `multi_label: false`.",
            )
    if spec.class_pairs:
        classes = 2 if batch.encoding == "binary" else batch.n_classes
        limit = MAX_CONFUSION_CLASSES[0]
        if classes > limit:
            raise invalid(
                ("reports",),
                f"The {spec.name} report of {classes} classes is over the limit of {limit} "
                "(setting LOSS_SERVICE_MAX_CONFUSION_CLASSES): expected fewer classes; the "
                "per_class report has every class's counts.",
            )


# ---- computing ----------------------------------------------------------------------------


def compute_loss(spec: LossSpec, batch: Batch, params: Mapping[str, Any]) -> NDArray[np.floating]:
    """The reduced loss (a 0-d array), or per-sample losses for ``reduction="none"``."""
    values, mask = loss_terms(spec, batch, params)
    return kernels.reduce_loss(
        values, sample_weight=batch.sample_weight, mask=mask, reduction=params["reduction"]
    )


def loss_terms(
    spec: LossSpec, batch: Batch, params: Mapping[str, Any]
) -> tuple[NDArray[np.floating], NDArray[np.bool_] | None]:
    """The per-sample losses before weighting and reduction, in the batch's sample shape,
    and the mask of the positions that count (``ignore_class``), if any."""
    check_fits(spec, batch, params)
    ignore_class = params.get("ignore_class")
    keywords = {k: params[k] for k in spec.kernel_params}
    mask = None
    if spec.family == "sparse":
        labels, mask = sparse_labels(batch, ignore_class)
        per_row = spec.dense(labels, batch.y_pred, **keywords)
    elif spec.indices is not None and batch.labels is not None:
        # Integer or one-hot labels: no n × C target matrix needed.
        per_row = spec.indices(batch.labels, batch.y_pred, **keywords)
    else:
        assert batch.dense is not None
        per_row = spec.dense(batch.dense, batch.y_pred, **keywords)
    values = per_row.reshape(batch.sample_shape)
    return values, None if mask is None else mask.reshape(batch.sample_shape)


def resolve_metric(name: str, batch: Batch) -> str:
    return ACCURACY_FOR[batch.encoding] if name == "accuracy" else name


def threshold_input(batch: Batch, params: Mapping[str, Any]) -> NDArray[np.floating]:
    """What threshold metrics compare: `y_pred`, or `sigmoid(y_pred)` with `from_logits`."""
    return kernels.sigmoid(batch.y_pred) if params.get("from_logits") else batch.y_pred


#: What a metric's value is: one number, or one per class (``average: null``).
MetricValue = float | list[float]


def kernel_inputs(batch: Batch, resolved: str) -> tuple[NDArray[Any], NDArray[Any], Any]:
    """The batch as the mergeable kernels take it (:mod:`service.kernels.stats`): integer
    class indices for single-label batches (never their one-hot form), 0/1 targets of
    ``y_pred``'s shape otherwise, and one weight per row."""
    pred = batch.y_pred
    if batch.encoding == "binary":
        assert batch.dense is not None
        y_true: NDArray[Any] = batch.dense.reshape(-1)
        pred = pred.reshape(-1)
    elif batch.labels is not None:
        y_true = batch.labels
    elif batch.encoding == "soft" and resolved in CALIBRATION_METRICS:
        # Calibration scores single-label batches against one class per row.
        assert batch.dense is not None
        y_true = batch.dense.argmax(axis=1)
    else:
        assert batch.dense is not None
        y_true = batch.dense
    weights = None
    if batch.sample_weight is not None:
        weights = np.broadcast_to(batch.sample_weight, batch.sample_shape).reshape(-1)
    return y_true, pred, weights


CALIBRATION_METRICS = frozenset({"expected_calibration_error", "brier_score", "calibration"})


def _accuracy_matches(resolved: str, batch: Batch, params: Mapping[str, Any]) -> NDArray[Any]:
    """One match per sample (1.0 or 0.0) for the accuracy metrics, on a batch that fits
    them (:func:`check_fits`)."""
    if resolved in ("binary_accuracy", "subset_accuracy"):
        assert batch.dense is not None
        pred = threshold_input(batch, params)
        if resolved == "binary_accuracy":
            per_row = kernels.binary_accuracy(
                batch.dense, pred, threshold=params["threshold"]
            ).mean(axis=1)
        else:
            per_row = kernels.subset_accuracy(batch.dense, pred, threshold=params["threshold"])
    else:
        if batch.labels is not None:
            labels = batch.labels
        else:
            assert batch.dense is not None
            labels = batch.dense.argmax(axis=1)
        if resolved.endswith("top_k_categorical_accuracy"):
            per_row = kernels.top_k_accuracy(labels, batch.y_pred, k=params["k"])
        else:
            per_row = kernels.categorical_accuracy(labels, batch.y_pred)
    matches: NDArray[Any] = per_row.reshape(batch.sample_shape)
    return matches


def metric_stats(
    name: str, batch: Batch, params: Mapping[str, Any]
) -> tuple[dict[str, NDArray[Any]], str]:
    """The batch's sufficient statistics for a metric (they add up across batches, see
    :mod:`service.kernels.stats`), and the metric ``name`` resolved to."""
    resolved = resolve_metric(name, batch)
    check_fits(METRICS[resolved], batch, params)
    if resolved in MERGEABLE:
        spec = MERGEABLE[resolved]
        y_true, pred, weights = kernel_inputs(batch, resolved)
        taken = {k: params[k] for k in spec.stats_params if k in params}
        return spec.stats(y_true, pred, weights, **taken), resolved
    matches = _accuracy_matches(resolved, batch, params)
    return kernels.mean_stats(matches, batch.sample_weight), resolved


def metric_value(
    resolved: str, stats: Mapping[str, NDArray[Any]], params: Mapping[str, Any]
) -> MetricValue:
    """The metric's value from (the sum of) its statistics."""
    if resolved in MERGEABLE:
        spec = MERGEABLE[resolved]
        value = np.asarray(
            spec.finalize(dict(stats), **{k: params[k] for k in spec.finalize_params})
        )
        return float(value) if value.ndim == 0 else [float(v) for v in value.ravel()]
    return kernels.mean_value(stats)


def compute_metric(name: str, batch: Batch, params: Mapping[str, Any]) -> tuple[MetricValue, str]:
    """The metric's value on the batch (a weighted mean for the accuracies), and the
    metric it resolved to."""
    stats, resolved = metric_stats(name, batch, params)
    return metric_value(resolved, stats, params), resolved


def element_losses(spec: LossSpec, batch: Batch, params: Mapping[str, Any]) -> NDArray[np.floating]:
    """A binary loss per element ``(rows, C)`` (each label its own one-column row), for the
    per-class report of multi-label batches."""
    assert spec.family == "binary" and batch.dense is not None
    rows, columns = batch.y_pred.shape
    one_column = Batch(
        batch.encoding,
        batch.y_pred.reshape(-1, 1),
        None,
        batch.dense.reshape(-1, 1),
        (rows * columns,),
        1,
        None,
        batch.stated,
    )
    values, _ = loss_terms(spec, one_column, params)
    return values.reshape(rows, columns)


def report_stats(
    name: str, batch: Batch, params: Mapping[str, Any], losses: list[NDArray[Any]]
) -> dict[str, NDArray[Any]]:
    """A report's statistics on the batch (they add up across batches)."""
    check_fits(REPORTS[name], batch, params)
    spec = MERGEABLE[name]
    y_true, pred, weights = kernel_inputs(batch, name)
    if name != "calibration" and batch.encoding == "soft":
        # A single-label report scores one class per row: the soft row's largest.
        assert batch.dense is not None
        y_true = batch.dense.argmax(axis=1)
    taken = {k: params[k] for k in spec.stats_params if k in params}
    if "losses" in spec.stats_params:
        taken["losses"] = losses
    return spec.stats(y_true, pred, weights, **taken)


def report_value(
    name: str,
    stats: Mapping[str, NDArray[Any]],
    *,
    class_names: list[str] | None = None,
    loss_names: list[str] | None = None,
) -> dict[str, Any]:
    """The report from (the sum of) its statistics."""
    spec = MERGEABLE[name]
    options: dict[str, Any] = {}
    if "class_names" in spec.finalize_params:
        options["class_names"] = class_names
    if "loss_names" in spec.finalize_params:
        options["loss_names"] = loss_names or []
    report: dict[str, Any] = spec.finalize(dict(stats), **options)
    return report


def check_class_names(class_names: list[str], batch: Batch, loc: Loc) -> None:
    expected = 2 if batch.encoding == "binary" else batch.n_classes
    if len(class_names) != expected:
        raise invalid(
            (*loc, "class_names"),
            f"`class_names` has {len(class_names)} names, but the batch has {expected} "
            "classes: expected one name per class.",
        )
