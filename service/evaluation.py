"""The service's operations on a request's document: one loss, one metric, or many at once.

A *document* is the request body once decoded: a dict (arrays still as JSON
values, typed-array dicts, or views decoded from a binary request); "body" is
left to the HTTP bytes (:mod:`service.api.body`). Each function takes a
document and returns the response's, also a dict. Order of work: parameters
are checked first (cheap), then the arrays are decoded and the batch validated
(:func:`encodings.prepare`) and fitted to each loss, metric or report
(:func:`registry.check_fits`), then the kernels run and the diagnoses are made.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service import diagnostics, kernels, registry
from service.arrays import to_array
from service.encodings import Batch, Encoding, prepare
from service.errors import FieldError, Loc, NotFound, ServiceError, invalid, json_kind
from service.wire import ARRAY_FIELDS

COMMON_NAMES = tuple(p.name for p in registry.COMMON)


def _require_object(document: Any, loc: Loc, what: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        kind = "null" if document is None else type(document).__name__
        raise invalid(loc or ("body",), f"{what} must be a JSON object, received {kind}.")
    return document


@dataclass
class Inputs:
    """The arrays of one batch, decoded, and the request-wide options."""

    y_true: NDArray[Any]
    y_pred: NDArray[Any]
    sample_weight: NDArray[Any] | None
    common: dict[str, Any]
    _batches: dict[int, Batch] = field(default_factory=dict)

    def batch(self, axis: int) -> Batch:
        """The validated batch for a class axis (computed once per axis)."""
        if axis not in self._batches:
            self._batches[axis] = prepare(
                self.y_true,
                self.y_pred,
                sample_weight=self.sample_weight,
                axis=axis,
                label_encoding=self.common["label_encoding"],
                dtype=self.common["dtype"],
            )
        return self._batches[axis]


def _inputs(document: dict[str, Any], loc: Loc, max_elements: int) -> Inputs:
    common = registry.parse_params(
        "The request", registry.COMMON, {k: document[k] for k in COMMON_NAMES if k in document}, loc
    )
    return inputs_of(document, loc, max_elements, common)


def inputs_of(
    document: dict[str, Any], loc: Loc, max_elements: int, common: dict[str, Any]
) -> Inputs:
    """The arrays of a document, decoded, with the request-wide options ``common``."""
    for name in ("y_true", "y_pred"):
        if document.get(name) is None:
            raise invalid(
                (*loc, name),
                f"`{name}` is missing: expected an array (nested lists or a typed array).",
            )
    arrays = {}
    for name in ARRAY_FIELDS:
        if document.get(name) is not None:
            arrays[name] = to_array(document[name], (*loc, name), max_elements)
            # The decoded array takes the field's place, so a typed array's base64 text is
            # freed now rather than when the request ends.
            document[name] = arrays[name]
    return Inputs(arrays["y_true"], arrays["y_pred"], arrays.get("sample_weight"), common)


def _params_of(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in ARRAY_FIELDS and k not in COMMON_NAMES}


def _summary(batch: Batch) -> dict[str, Any]:
    return {
        "label_encoding": batch.encoding,
        "n_samples": batch.n_samples,
        "n_classes": batch.n_classes,
    }


def _finite(value: Any, loc: Loc, what: str, batch: Batch) -> None:
    """A result that overflowed (weights or values near their dtype's maximum) is refused,
    never sent as ``null``."""
    if not np.all(np.isfinite(value)):
        smaller = (
            "`y_pred` values"
            if batch.sample_weight is None
            else "`sample_weight` or `y_pred` values"
        )
        wider = "" if batch.y_pred.dtype == np.float64 else ', or `dtype: "float64"`'
        raise invalid(
            loc,
            f"{what} is not finite: the batch's values or weights (or their sums) are too "
            f"large for the computation's dtype ({batch.y_pred.dtype}). Expected smaller "
            f"{smaller}{wider}.",
        )


def _weights_received(batch: Batch) -> str:
    """What a batch's weights were, for a message about sums that overflow."""
    weights = batch.sample_weight
    if weights is None or weights.size == 0:
        return "received no `sample_weight`: the batch's own values are that large"
    with np.errstate(over="ignore"):
        largest = float(np.max(weights))
        total = float(np.sum(weights, dtype=np.float64))
    summed = f"summing to {total:.3g}" if math.isfinite(total) else "whose sum overflows float64"
    return f"received `sample_weight` values up to {largest:.3g}, {summed}"


def _sums_fit(
    stats: Mapping[str, NDArray[Any]], batch: Batch, loc: Loc, what: str, limit: float
) -> None:
    """Statistics (the weighted sums a result is computed from) that overflowed, or whose
    size reaches ``limit``, are refused: a value computed from them would be infinite,
    NaN or wrong (an overflowed total weight makes a weighted mean 0), never sent.

    Metrics and reports take ``kernels.STATISTIC_LIMIT``, within which their finalizers'
    own sums stay finite; a loss, computed from a sum and a divisor, takes any finite
    statistics (``limit`` infinity)."""
    for name, value in stats.items():
        size = kernels.statistic_size(value)
        if size < limit:
            continue
        if math.isinf(limit):
            wrong, expected = "overflows float64 (past 1.8e308)", "are finite in float64"
        else:
            reach = f"reaches {size:.3g}" if math.isfinite(size) else "overflows float64"
            if np.size(value) > 1:
                # The bound holds for the sum of a statistic's elements (thresholds, classes).
                reach = f"added up over its {np.size(value)} elements {reach}"
            wrong = (
                f"{reach}, past the {limit:.3g} (2**1000) within which its value is computed "
                "without float64 overflowing"
            )
            expected = f"stay below {limit:.3g}"
        raise invalid(
            loc,
            f"{what} cannot be computed: its weighted sum `{name}` {wrong}. Expected "
            f"`sample_weight` values whose weighted sums {expected}; "
            f"{_weights_received(batch)}.",
        )


def check_head_sizes(heads: Mapping[str, Mapping[str, Any]]) -> None:
    """The heads of one batch (each head's response) hold as many samples each: they are
    a model's outputs for the same samples (Keras refuses such data too)."""
    sizes = {head: response["n_samples"] for head, response in heads.items()}
    if len(set(sizes.values())) > 1:
        raise invalid(
            ("outputs",),
            "The heads of a batch are a model's outputs for the same samples, so they hold "
            f"as many samples each; received {sizes}.",
        )


def weighted_total(weights: Mapping[str, float], losses: Mapping[str, Any]) -> float:
    """Each head's losses (``losses[head]``: its loss values) added, times its
    ``loss_weights`` entry (1 if none), added: the ``total_loss`` of several heads, or
    ``inf`` / ``nan`` where it overflows."""
    total: float = sum(
        float(weights.get(head, 1.0)) * sum(values) for head, values in losses.items()
    )
    return total


def total_loss(weights: Mapping[str, float], heads: Mapping[str, Mapping[str, Any]]) -> float:
    """A several-heads ``total_loss`` (:func:`weighted_total` of each head's response's
    ``losses``), refused when it overflows rather than sent as ``null``."""
    total = weighted_total(
        weights, {head: response["losses"].values() for head, response in heads.items()}
    )
    if not math.isfinite(total):
        raise invalid(
            ("loss_weights",),
            "`total_loss` is not finite: the heads' losses times `loss_weights` overflow. "
            "Expected smaller `loss_weights`.",
        )
    return total


def _loss_value(value: NDArray[np.floating]) -> float | NDArray[np.floating]:
    return float(value) if value.ndim == 0 else value


def loss(name: str, document: Any, max_elements: int) -> dict[str, Any]:
    """``POST /v1/losses/{name}``."""
    spec = registry.get_loss(name)
    document = _require_object(document, (), "The request body")
    params = registry.parse_params(name, spec.params, _params_of(document))
    inputs = _inputs(document, (), max_elements)
    batch = inputs.batch(params["axis"])
    value = registry.compute_loss(spec, batch, params)
    _finite(value, ("body",), f"The {name} loss", batch)
    weights = inputs.sample_weight
    if value.ndim == 1 and weights is not None and weights.shape[1:] == (1,):
        # Keras brings per-sample losses of one axis to weights of shape (n, 1) by adding
        # one (squeeze_or_expand_to_same_rank): its per-sample answer is (n, 1) then.
        value = value[:, None]
    found = diagnostics.for_loss(spec, batch, params)
    return {
        "loss": _loss_value(value),
        "name": name,
        "reduction": params["reduction"],
        **_summary(batch),
        "warnings": [d.as_dict() for d in found],
    }


def metric(name: str, document: Any, max_elements: int) -> dict[str, Any]:
    """``POST /v1/metrics/{name}``."""
    spec = registry.get_metric(name)
    document = _require_object(document, (), "The request body")
    params = registry.parse_params(name, spec.params, _params_of(document))
    inputs = _inputs(document, (), max_elements)
    batch = inputs.batch(-1)
    with _overflow_checked():
        stats, resolved = registry.metric_stats(name, batch, params)
        _sums_fit(stats, batch, ("body",), f"The {name} metric", kernels.STATISTIC_LIMIT)
        value = registry.metric_value(resolved, stats, params)
    _finite(value, ("body",), f"The {name} metric", batch)
    found = diagnostics.for_metric(resolved, batch, params, value, stats)
    return {
        "value": value,
        "name": name,
        "resolved_as": resolved,
        **_summary(batch),
        "warnings": [d.as_dict() for d in found],
    }


# ---- evaluate -----------------------------------------------------------------------------

#: The settings of an evaluate document (a head): everything but its arrays.
SETTING_FIELDS = frozenset(
    {*COMMON_NAMES, "from_logits", "losses", "metrics", "reports", "class_names"}
)
EVALUATE_FIELDS = frozenset({*ARRAY_FIELDS, *SETTING_FIELDS})

#: Label families: batches of one family can be evaluated together.
FAMILY = {
    "sparse": "single_label",
    "one_hot": "single_label",
    "soft": "soft",
    "multi_hot": "multi_label",
    "binary": "binary",
}


@dataclass(frozen=True)
class Entry:
    """One loss, metric or report of an evaluate document: the key it is reported under, its
    name and its parameters (checked: defaults filled in)."""

    key: str
    name: str
    params: dict[str, Any]
    loc: Loc

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "params": self.params}


def _entries(
    raw: Any, loc: Loc, kind: str, known: Mapping[str, Any], stored: bool = False
) -> list[Entry]:
    """The entries as named, parameters not yet checked; every unknown name at once.
    ``stored``: `as` names stored before their rules grew stricter pass."""
    if not isinstance(raw, list):
        raise invalid(
            loc, f'`{loc[-1]}` must be a list of {kind} names or {{"name": ...}} objects.'
        )
    entries: list[Entry] = []
    seen: dict[str, Loc] = {}
    unknown: list[tuple[Loc, str]] = []
    for i, item in enumerate(raw):
        here = (*loc, i)
        if isinstance(item, str):
            name, params, key = item, {}, item
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            params = {k: v for k, v in item.items() if k not in ("name", "as")}
            name = item["name"]
            alias = item.get("as", name)
            if not isinstance(alias, str) or not alias:
                raise invalid(
                    (*here, "as"), f"`as` must be a non-empty string, received {alias!r}."
                )
            problem = None if stored or "as" not in item else name_problem(alias)
            if problem is not None:
                raise invalid(
                    (*here, "as"),
                    f"`as` names a result, its statistics and charts: expected 1–{NAME_MAX} "
                    f"characters with no `/` and no control character; received a name "
                    f"{problem} ({alias[:40]!r}).",
                )
            key = alias
        else:
            raise invalid(
                here,
                f"Each entry of `{loc[-1]}` must be a {kind} name or an object with a `name`, "
                f"received {item!r}.",
            )
        if name not in known:
            unknown.append(((*here, "name"), name))
            continue
        if key in seen:
            raise invalid(
                here,
                f"Two {kind} entries would both be reported as {key!r} (entries "
                f"{seen[key][-1]} and {i}): give one of them another name with `as`.",
            )
        seen[key] = here
        entries.append(Entry(key, name, params, here))
    if unknown:
        names = ", ".join(repr(name) for _, name in unknown)
        kinds = "losses" if kind == "loss" else f"{kind}s"
        message = (
            f"Unknown {kinds if len(unknown) > 1 else kind} {names} in `{loc[-1]}`: "
            f"expected {kinds} among {sorted(known)}."
        )
        raise NotFound(message, [FieldError(where, message) for where, _ in unknown])
    return entries


def _with_logits(entry: Entry, from_logits: Any, takes_it: bool) -> dict[str, Any]:
    if takes_it and from_logits is not None and "from_logits" not in entry.params:
        return {**entry.params, "from_logits": from_logits}
    return entry.params


def _takes_logits(params: tuple[registry.Param, ...]) -> bool:
    return any(p.name == "from_logits" for p in params)


@dataclass(frozen=True)
class Plan:
    """The checked settings of one evaluate document (a head): what to compute, before any
    array is looked at. ``losses``/``metrics`` None: those that fit the labels."""

    losses: list[Entry] | None
    metrics: list[Entry] | None
    reports: list[Entry]
    from_logits: bool | None
    class_names: list[str] | None
    common: dict[str, Any]
    loc: Loc


#: Characters a name may not hold: control characters (C0, DEL, C1: not printable, most
#: not allowed in XML) and the noncharacters U+FFFE and U+FFFF (not allowed in XML). Names
#: label charts (SVG) and pages.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ufffe\uffff]")
#: The longest head name or `as` name: it leads the names of stored statistics and the
#: paths of charts.
NAME_MAX = 128


def name_problem(name: str) -> str | None:
    """What keeps ``name`` (a head's, or an entry's `as`) from naming statistics, charts
    and page sections, in a few words; ``None``: nothing."""
    if not name:
        return "empty"
    if len(name) > NAME_MAX:
        return f"{len(name)} characters long, over {NAME_MAX}"
    if "/" in name:
        return "holding a `/`"
    control = CONTROL.search(name)
    if control is not None:
        return f"holding U+{ord(control.group()):04X}, a control character or noncharacter"
    return None


def _class_names_problem(names: Any, stored: bool = False) -> str | None:
    """What is wrong with a ``class_names`` value, in a few words (``None``: nothing);
    ``stored``: names stored before control characters were refused pass."""
    if not isinstance(names, list):
        return f"a JSON {json_kind(names)}"
    if not names:
        return "an empty list"
    for index, name in enumerate(names):
        if not isinstance(name, str):
            return f"a JSON {json_kind(name)} at index {index} ({str(name)[:40]})"
        control = None if stored else CONTROL.search(name)
        if control is not None:
            # They label charts and pages: a NUL or an escape breaks an SVG's XML.
            return (
                f"a name holding U+{ord(control.group()):04X} (a control character or "
                f"noncharacter) at index {index} ({name[:40]!r}); expected printable text"
            )
    return None


def parse_plan(document: Any, loc: Loc = (), *, arrays: bool = True, stored: bool = False) -> Plan:
    """Check an evaluate document's settings (all but the arrays, or all but nothing when
    ``arrays`` is false: a streaming evaluation's settings have no arrays). ``stored``:
    an evaluation's settings as stored, accepted when it was created, read again under
    the rules they were created under where those have since grown stricter."""
    document = _require_object(document, loc, "An evaluate body")
    allowed = EVALUATE_FIELDS if arrays else SETTING_FIELDS
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise invalid(
            (*loc, unknown[0]),
            f"evaluate does not take {unknown}: it takes {sorted(allowed)} (loss and "
            "metric parameters go inside their entries in `losses` and `metrics`), or "
            "`outputs` and `loss_weights` for several heads.",
        )
    from_logits = document.get("from_logits")
    if from_logits is not None and not isinstance(from_logits, bool):
        raise invalid(
            (*loc, "from_logits"), f"`from_logits` must be true or false, received {from_logits!r}."
        )
    common = registry.parse_params(
        "The request", registry.COMMON, {k: document[k] for k in COMMON_NAMES if k in document}, loc
    )
    class_names = document.get("class_names")
    problem = None if class_names is None else _class_names_problem(class_names, stored)
    if problem is not None:
        raise invalid(
            (*loc, "class_names"),
            f"`class_names` must be a non-empty list of strings, one per class; received "
            f"{problem}.",
        )
    losses = metrics = None
    if document.get("losses") is not None:
        losses = []
        for e in _entries(document["losses"], (*loc, "losses"), "loss", registry.LOSSES, stored):
            spec = registry.LOSSES[e.name]
            params = registry.parse_params(
                e.name, spec.params, _with_logits(e, from_logits, True), e.loc
            )
            if params["reduction"] == "none":
                raise invalid(
                    (*e.loc, "reduction"),
                    "evaluate reports one number per loss: expected a reducing `reduction` "
                    "(sum_over_batch_size, mean, sum, mean_with_sample_weight), received "
                    "'none'. Per-sample losses come from POST /v1/losses/{name}.",
                )
            losses.append(Entry(e.key, e.name, params, e.loc))
    if document.get("metrics") is not None:
        metrics = []
        for e in _entries(
            document["metrics"], (*loc, "metrics"), "metric", registry.METRICS, stored
        ):
            spec_m = registry.METRICS[e.name]
            takes = _takes_logits(spec_m.params)
            params = registry.parse_params(
                e.name, spec_m.params, _with_logits(e, from_logits, takes), e.loc
            )
            metrics.append(Entry(e.key, e.name, params, e.loc))
    reports = []
    if document.get("reports") is not None:
        for e in _entries(
            document["reports"], (*loc, "reports"), "report", registry.REPORTS, stored
        ):
            spec_r = registry.REPORTS[e.name]
            params = registry.parse_params(
                e.name, spec_r.params, _with_logits(e, from_logits, True), e.loc
            )
            reports.append(Entry(e.key, e.name, params, e.loc))
    return Plan(losses, metrics, reports, from_logits, class_names, common, loc)


def resolve_plan(plan: Plan, encoding: Encoding) -> dict[str, list[Entry]]:
    """The entries a plan computes on labels of ``encoding``: the ones it names, or
    those that fit the labels (the loss of :data:`registry.FITTING_LOSS` and
    ``accuracy``)."""
    extra = {} if plan.from_logits is None else {"from_logits": plan.from_logits}
    losses, metrics = plan.losses, plan.metrics
    if losses is None:
        name = registry.FITTING_LOSS[encoding]
        spec = registry.LOSSES[name]
        losses = [
            Entry(
                name,
                name,
                registry.parse_params(name, spec.params, extra),
                (*plan.loc, "losses", 0),
            )
        ]
    if metrics is None:
        spec_m = registry.METRICS["accuracy"]
        metrics = [
            Entry(
                "accuracy",
                "accuracy",
                registry.parse_params("accuracy", spec_m.params, extra),
                (*plan.loc, "metrics", 0),
            )
        ]
    return {"losses": losses, "metrics": metrics, "reports": plan.reports}


@dataclass
class HeadResult:
    """One head evaluated on one batch: its response, and the statistics of every entry
    (``kind/key/stat`` → array), which add up across batches."""

    response: dict[str, Any]
    stats: dict[str, NDArray[Any]]
    facts: dict[str, Any]


def _per_class_losses(entries: list[Entry], family: str) -> list[Entry]:
    """The losses the per-class report has a mean of: those with one value per sample
    (per element for multi-label batches, which only the binary losses have)."""
    return [
        e
        for e in entries
        if e.params.get("ignore_class") is None
        and e.params["axis"] == -1
        and (family != "multi_label" or registry.LOSSES[e.name].family == "binary")
    ]


def per_class_loss_names(entries: list[Entry], family: str) -> list[str]:
    return [e.key for e in _per_class_losses(entries, family)]


def _per_sample_losses(
    entries: list[Entry], batch: Batch, inputs: Inputs
) -> tuple[list[str], list[NDArray[Any]]]:
    """Per-sample losses for the per-class report (see :func:`_per_class_losses`)."""
    family = FAMILY[batch.encoding]
    kept = _per_class_losses(entries, family)
    values: list[NDArray[Any]] = []
    for e in kept:
        spec = registry.LOSSES[e.name]
        if family == "multi_label":
            values.append(registry.element_losses(spec, batch, e.params))
        else:
            per_sample, _ = registry.loss_terms(spec, inputs.batch(-1), e.params)
            values.append(per_sample.reshape(-1))
    return [e.key for e in kept], values


def _overflow_checked() -> np.errstate:
    """Arithmetic whose overflow (to infinity, or NaN after it) is refused by the checks
    of its results (:func:`_finite`, :func:`_sums_fit`), not reported as a warning of
    the process."""
    return np.errstate(over="ignore", invalid="ignore")


def evaluate_head(
    plan: Plan,
    inputs: Inputs,
    resolved: dict[str, list[Entry]] | None = None,
    cells: registry.CellBudget | None = None,
) -> HeadResult:
    """Compute a plan on one batch: values, diagnoses and statistics.

    ``resolved``: the entries fixed by an earlier batch (a streaming evaluation), else
    those that fit this batch's labels. ``cells``: the request's count of AUC and
    confusion counts, shared by its heads (a 413 past the limit, before anything is
    computed). Statistics that overflow float64, and those of a metric or report past
    ``kernels.STATISTIC_LIMIT``, are a 422 (:func:`_sums_fit`)."""
    with _overflow_checked():
        return _evaluate_head(plan, inputs, resolved, cells or registry.CellBudget())


def _take_cells(
    plan: Plan, entries: dict[str, list[Entry]], batch: Batch, cells: registry.CellBudget
) -> None:
    """Count the entries' AUC and confusion counts against the request's limit."""
    confusion = registry.confusion_cells(batch)
    for kind, specs in (("metric", registry.METRICS), ("report", registry.REPORTS)):
        for e in entries[f"{kind}s"]:
            spec: registry.Spec = specs[e.name]
            taken = registry.statistic_cells(spec, e.params, batch.n_classes, confusion)
            if taken:
                # Relative to the head: errors are put under its place by the caller.
                cells.take(taken, e.loc[len(plan.loc) :], f"The {e.key} {kind}")


def _evaluate_head(
    plan: Plan,
    inputs: Inputs,
    resolved: dict[str, list[Entry]] | None,
    cells: registry.CellBudget,
) -> HeadResult:
    batch = inputs.batch(-1)
    entries = resolved or resolve_plan(plan, batch.encoding)
    if resolved is None:
        # A streaming evaluation's later batches have its first batch's classes and
        # entries: counted then (evaluations stored before the limit keep taking batches).
        _take_cells(plan, entries, batch, cells)
    losses: dict[str, float] = {}
    metrics: dict[str, registry.MetricValue] = {}
    resolved_names: dict[str, str] = {}
    stats: dict[str, NDArray[Any]] = {}
    found: list[diagnostics.Diagnosis] = []
    for e in entries["losses"]:
        spec = registry.LOSSES[e.name]
        b = inputs.batch(e.params["axis"])
        values, mask = registry.loss_terms(spec, b, e.params)
        # The one-shot number as Keras computes it (in the compute dtype).
        reduced = float(
            kernels.reduce_loss(
                values, sample_weight=b.sample_weight, mask=mask, reduction=e.params["reduction"]
            )
        )
        loss_stats = kernels.loss_stats(values, sample_weight=b.sample_weight, mask=mask)
        # The statistics first: their message names the sum that overflowed float64.
        _sums_fit(loss_stats, b, (*e.loc,), f"The {e.key} loss", math.inf)
        _finite(reduced, (*e.loc,), f"The {e.key} loss", b)
        losses[e.key] = reduced
        for k, v in loss_stats.items():
            stats[f"loss/{e.key}/{k}"] = v
        found += diagnostics.for_loss(spec, b, e.params)
    for e in entries["metrics"]:
        metric_stats, name = registry.metric_stats(e.name, batch, e.params)
        _sums_fit(metric_stats, batch, (*e.loc,), f"The {e.key} metric", kernels.STATISTIC_LIMIT)
        value = registry.metric_value(name, metric_stats, e.params)
        _finite(value, (*e.loc,), f"The {e.key} metric", batch)
        metrics[e.key] = value
        if e.name == "accuracy":
            resolved_names[e.key] = name
        for k, v in metric_stats.items():
            stats[f"metric/{e.key}/{k}"] = v
        found += diagnostics.for_metric(name, batch, e.params, value, metric_stats)
    reports: dict[str, Any] = {}
    if entries["reports"]:
        loss_names, per_sample = _per_sample_losses(entries["losses"], batch, inputs)
        for e in entries["reports"]:
            report_stats = registry.report_stats(e.name, batch, e.params, per_sample)
            _sums_fit(
                report_stats, batch, (*e.loc,), f"The {e.key} report", kernels.STATISTIC_LIMIT
            )
            reports[e.key] = registry.report_value(
                e.name, report_stats, class_names=plan.class_names, loss_names=loss_names
            )
            for k, v in report_stats.items():
                stats[f"report/{e.key}/{k}"] = v
            found += diagnostics.for_report(e.name, batch, report_stats, e.params)
    if plan.class_names is not None:
        registry.check_class_names(plan.class_names, batch, plan.loc)
    response: dict[str, Any] = {
        **_summary(batch),
        "losses": losses,
        "metrics": metrics,
        "resolved": resolved_names,
        "warnings": [d.as_dict() for d in dict.fromkeys(found)],
    }
    if reports:
        response["reports"] = reports
    facts = {
        "family": FAMILY[batch.encoding],
        "n_classes": batch.n_classes,
        "entries": {kind: [e.as_dict() for e in items] for kind, items in entries.items()},
        "resolved": resolved_names,
        "label_encoding": batch.encoding,
        # Rows (1) or rows of sequences (2, ...): batches of another kind cannot be one
        # evaluate's arrays together.
        "sample_axes": len(batch.sample_shape),
    }
    return HeadResult(response, stats, facts)


def _evaluate_one(
    document: Any, loc: Loc, max_elements: int, cells: registry.CellBudget | None = None
) -> dict[str, Any]:
    plan = parse_plan(document, loc)
    inputs = _inputs(document, loc, max_elements)
    try:
        result = evaluate_head(plan, inputs, cells=cells)
    except ServiceError as err:
        # Batch errors point at fields of this document (`y_true`, ...): put them under its place.
        raise (err.prefixed(loc) if loc else err) from None
    return result.response


def check_heads(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A several-heads document's ``outputs`` and ``loss_weights``, checked."""
    unknown = sorted(set(document) - {"outputs", "loss_weights"})
    if unknown:
        raise invalid(
            (unknown[0],),
            f"A several-heads evaluate takes `outputs` and `loss_weights` only, received "
            f"{unknown}: put each head's fields inside its entry in `outputs`.",
        )
    outputs = _require_object(document["outputs"], ("outputs",), "`outputs`")
    if not outputs:
        raise invalid(("outputs",), "`outputs` is empty: expected at least one head.")
    for head in outputs:
        problem = name_problem(head)
        if problem is not None:
            raise invalid(
                ("outputs", head[:NAME_MAX]),
                f"Head names are 1–{NAME_MAX} characters with no `/` and no control "
                "character (a head's name leads the names of its statistics, the paths of "
                f"its charts and their titles); received a name {problem} ({head[:40]!r}).",
            )
    raw_weights = document.get("loss_weights")
    weights = (
        {}
        if raw_weights is None
        else _require_object(raw_weights, ("loss_weights",), "`loss_weights`")
    )
    for head, w in weights.items():
        if head not in outputs:
            raise invalid(
                ("loss_weights", head),
                f"`loss_weights` names {head!r}, which is not a head in `outputs` "
                f"({sorted(outputs)}).",
            )
        if not isinstance(w, int | float) or isinstance(w, bool) or not np.isfinite(w):
            raise invalid(
                ("loss_weights", head), f"Loss weights must be finite numbers, received {w!r}."
            )
    return outputs, weights


def check_evaluate_settings(document: Any) -> None:
    """Refuse what :func:`evaluate` refuses of a document's settings (its fields, heads and
    names), in its words, without computing anything: for the report page of one batch."""
    document = _require_object(document, (), "The request body")
    if "outputs" not in document:
        parse_plan(document)
        return
    outputs, _ = check_heads(document)
    for head, head_document in outputs.items():
        parse_plan(head_document, ("outputs", head))


def evaluate(document: Any, max_elements: int) -> dict[str, Any]:
    """``POST /v1/evaluate``: one batch, or several heads under ``outputs``."""
    document = _require_object(document, (), "The request body")
    if "outputs" not in document:
        return _evaluate_one(document, (), max_elements)
    outputs, weights = check_heads(document)
    cells = registry.CellBudget()
    results = {
        head: _evaluate_one(head_document, ("outputs", head), max_elements, cells)
        for head, head_document in outputs.items()
    }
    check_head_sizes(results)
    return {"outputs": results, "total_loss": total_loss(weights, results)}
