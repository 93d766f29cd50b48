"""Every loss and metric the service knows: names, parameters, defaults, and how to compute it.

A :class:`LossSpec` or :class:`MetricSpec` names its Keras 3 parameters with
Keras' defaults; :func:`parse_params` checks a request's parameters against
them (an unknown parameter is an error, as is a wrong type or range), and
:func:`compute_loss` / :func:`compute_metric` run the encoding checks and the
kernel on a prepared :class:`~service.encodings.Batch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service import kernels
from service.encodings import (
    ENCODINGS,
    Batch,
    check_fits_loss,
    check_label_range,
    check_probabilities,
    sparse_labels,
)
from service.errors import Loc, NotFound, invalid

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
        low_ok = self.minimum is None or value >= self.minimum
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
        if self.minimum is not None and self.maximum is not None:
            text += f" in [{self.minimum:g}, {self.maximum:g}]"
        elif self.minimum is not None:
            text += f" ≥ {self.minimum:g}"
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
            info["minimum"] = self.minimum
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


@dataclass(frozen=True)
class LossSpec:
    name: str
    family: Family
    params: tuple[Param, ...]
    description: str


@dataclass(frozen=True)
class MetricSpec:
    name: str
    params: tuple[Param, ...]
    description: str


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec(
            "categorical_crossentropy",
            "categorical",
            (FROM_LOGITS, LABEL_SMOOTHING, AXIS, REDUCTION),
            "Cross-entropy for one-hot or soft labels (integer labels accepted too).",
        ),
        LossSpec(
            "sparse_categorical_crossentropy",
            "sparse",
            (FROM_LOGITS, IGNORE_CLASS, AXIS, REDUCTION),
            "Cross-entropy for integer class labels (one-hot rows accepted too).",
        ),
        LossSpec(
            "binary_crossentropy",
            "binary",
            (FROM_LOGITS, LABEL_SMOOTHING, AXIS, REDUCTION),
            "Cross-entropy for binary and multi-label targets, averaged over the last axis.",
        ),
        LossSpec(
            "categorical_focal_crossentropy",
            "categorical",
            (ALPHA, GAMMA, FROM_LOGITS, LABEL_SMOOTHING, AXIS, REDUCTION),
            "Focal cross-entropy for one-hot or soft labels (integer labels accepted too).",
        ),
        LossSpec(
            "binary_focal_crossentropy",
            "binary",
            (APPLY_CLASS_BALANCING, ALPHA, GAMMA, FROM_LOGITS, LABEL_SMOOTHING, AXIS, REDUCTION),
            "Focal cross-entropy for binary and multi-label targets.",
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
        ),
        MetricSpec(
            "categorical_accuracy",
            (),
            "Share of samples whose argmax matches the label's (first maximum wins ties).",
        ),
        MetricSpec(
            "sparse_categorical_accuracy",
            (),
            "Share of samples whose argmax equals the integer label.",
        ),
        MetricSpec(
            "top_k_categorical_accuracy",
            (K,),
            "Share of samples whose true class is among the k highest scores.",
        ),
        MetricSpec(
            "sparse_top_k_categorical_accuracy",
            (K,),
            "Share of samples whose integer label is among the k highest scores.",
        ),
        MetricSpec(
            "subset_accuracy",
            (THRESHOLD, METRIC_FROM_LOGITS),
            "Share of samples whose every label is matched at `threshold` (exact match).",
        ),
        MetricSpec(
            "accuracy",
            (THRESHOLD, METRIC_FROM_LOGITS, K),
            "Resolved from the labels: sparse → sparse_categorical_accuracy, one-hot or "
            "soft → categorical_accuracy, binary → binary_accuracy, multi-hot → "
            "subset_accuracy.",
        ),
    )
}

#: What `accuracy` means for each label encoding.
ACCURACY_FOR = {
    "sparse": "sparse_categorical_accuracy",
    "one_hot": "categorical_accuracy",
    "soft": "categorical_accuracy",
    "binary": "binary_accuracy",
    "multi_hot": "subset_accuracy",
}


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


# ---- computing ----------------------------------------------------------------------------


def compute_loss(spec: LossSpec, batch: Batch, params: Mapping[str, Any]) -> NDArray[np.floating]:
    """The reduced loss (a 0-d array), or per-sample losses for ``reduction="none"``."""
    check_fits_loss(batch, loss=spec.name, family=spec.family)
    ignore_class = params.get("ignore_class")
    check_label_range(batch, ignore_class)
    from_logits = bool(params["from_logits"])
    if not from_logits:
        check_probabilities(batch, binary=spec.family == "binary", loss=spec.name)
    pred = batch.y_pred
    mask = None
    focal = {k: params[k] for k in ("alpha", "gamma") if k in params}
    smoothing = float(params.get("label_smoothing", 0.0))
    if spec.family == "binary":
        assert batch.dense is not None
        if spec.name == "binary_focal_crossentropy":
            per_row = kernels.binary_focal_crossentropy(
                batch.dense,
                pred,
                apply_class_balancing=params["apply_class_balancing"],
                from_logits=from_logits,
                label_smoothing=smoothing,
                **focal,
            )
        else:
            per_row = kernels.binary_crossentropy(
                batch.dense, pred, from_logits=from_logits, label_smoothing=smoothing
            )
    elif spec.family == "sparse":
        labels, mask = sparse_labels(batch, ignore_class)
        per_row = kernels.sparse_categorical_crossentropy(labels, pred, from_logits=from_logits)
    elif batch.labels is not None:  # integer or one-hot labels: no n × C target matrix needed
        fn = (
            kernels.categorical_focal_crossentropy_from_indices
            if focal
            else kernels.categorical_crossentropy_from_indices
        )
        per_row = fn(
            batch.labels, pred, from_logits=from_logits, label_smoothing=smoothing, **focal
        )
    else:
        assert batch.dense is not None
        dense_fn = (
            kernels.categorical_focal_crossentropy if focal else kernels.categorical_crossentropy
        )
        per_row = dense_fn(
            batch.dense, pred, from_logits=from_logits, label_smoothing=smoothing, **focal
        )
    values = per_row.reshape(batch.sample_shape)
    return kernels.reduce_loss(
        values,
        sample_weight=batch.sample_weight,
        mask=None if mask is None else mask.reshape(batch.sample_shape),
        reduction=params["reduction"],
    )


def resolve_metric(name: str, batch: Batch) -> str:
    return ACCURACY_FOR[batch.encoding] if name == "accuracy" else name


def threshold_input(batch: Batch, params: Mapping[str, Any]) -> NDArray[np.floating]:
    """What threshold metrics compare: `y_pred`, or `sigmoid(y_pred)` with `from_logits`."""
    pred = batch.y_pred
    if params.get("from_logits"):
        # exp(-x) overflows to inf for very negative logits; 1 / (1 + inf) = 0 is σ's limit
        with np.errstate(over="ignore"):
            pred = 1 / (1 + np.exp(-pred))
    return pred


def _metric_error(name: str, batch: Batch, needs: str, instead: str) -> None:
    raise invalid(
        ("y_true",),
        f"{name} needs {needs}, but `y_true` is {batch.encoding}: use {instead}.",
    )


def compute_metric(name: str, batch: Batch, params: Mapping[str, Any]) -> tuple[float, str]:
    """The metric's weighted mean over the batch, and the metric it resolved to."""
    resolved = resolve_metric(name, batch)
    enc = batch.encoding
    fitting = ACCURACY_FOR[enc]
    if resolved in ("binary_accuracy", "subset_accuracy"):
        if enc == "sparse":
            _metric_error(resolved, batch, "targets of `y_pred`'s shape", fitting)
        if resolved == "subset_accuracy" and enc == "soft":
            _metric_error(resolved, batch, "0/1 targets", fitting)
        assert batch.dense is not None
        pred = threshold_input(batch, params)
        if resolved == "binary_accuracy":
            per_row = kernels.binary_accuracy(
                batch.dense, pred, threshold=params["threshold"]
            ).mean(axis=1)
        else:
            per_row = kernels.subset_accuracy(batch.dense, pred, threshold=params["threshold"])
    else:
        if enc == "binary":
            _metric_error(resolved, batch, "at least 2 classes", "binary_accuracy")
        sparse_only = resolved.startswith("sparse_")
        if sparse_only and batch.labels is None:
            _metric_error(resolved, batch, "integer labels or one-hot rows", fitting)
        check_label_range(batch)
        if batch.labels is not None:
            labels = batch.labels
        else:
            assert batch.dense is not None
            labels = batch.dense.argmax(axis=1)
        if resolved.endswith("top_k_categorical_accuracy"):
            per_row = kernels.top_k_accuracy(labels, batch.y_pred, k=params["k"])
        else:
            per_row = kernels.categorical_accuracy(labels, batch.y_pred)
    value = kernels.weighted_mean(per_row.reshape(batch.sample_shape), batch.sample_weight)
    return value, resolved
