"""The service's operations on a decoded request body: one loss, one metric, or many at once.

Each function takes the request body as a dict (arrays still as JSON values,
typed-array dicts, or views decoded from a binary request) and returns the
response body as a dict. Order of work: parameters are checked first (cheap),
then the arrays are decoded and the batch validated (:func:`encodings.prepare`),
then the kernels run and the diagnoses are made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service import diagnostics, registry
from service.arrays import to_array
from service.encodings import Batch, prepare
from service.errors import Loc, ServiceError, invalid

ARRAY_FIELDS = ("y_true", "y_pred", "sample_weight")
COMMON_NAMES = tuple(p.name for p in registry.COMMON)


def _require_object(body: Any, loc: Loc, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        kind = "null" if body is None else type(body).__name__
        raise invalid(loc or ("body",), f"{what} must be a JSON object, received {kind}.")
    return body


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


def _inputs(body: dict[str, Any], loc: Loc, max_elements: int) -> Inputs:
    for name in ("y_true", "y_pred"):
        if body.get(name) is None:
            raise invalid(
                (*loc, name),
                f"`{name}` is missing: expected an array (nested lists or a typed array).",
            )
    common = registry.parse_params(
        "The request", registry.COMMON, {k: body[k] for k in COMMON_NAMES if k in body}, loc
    )
    arrays = {}
    for name in ARRAY_FIELDS:
        if body.get(name) is not None:
            arrays[name] = to_array(body[name], (*loc, name), max_elements)
            # The decoded array takes the field's place, so a typed array's base64 text is
            # freed now rather than when the request ends.
            body[name] = arrays[name]
    return Inputs(arrays["y_true"], arrays["y_pred"], arrays.get("sample_weight"), common)


def _params_of(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ARRAY_FIELDS and k not in COMMON_NAMES}


def _summary(batch: Batch) -> dict[str, Any]:
    return {
        "label_encoding": batch.encoding,
        "n_samples": batch.n_samples,
        "n_classes": batch.n_classes,
    }


def _finite(value: Any, loc: Loc, what: str) -> None:
    """A result that overflowed (weights or values near their dtype's maximum) is refused,
    never sent as ``null``."""
    if not np.all(np.isfinite(value)):
        raise invalid(
            loc,
            f"{what} is not finite: the batch's values or weights are too large for the "
            "computation's dtype. Expected smaller `sample_weight` values, or "
            '`dtype: "float64"`.',
        )


def _loss_value(value: NDArray[np.floating]) -> float | NDArray[np.floating]:
    return float(value) if value.ndim == 0 else value


def loss(name: str, body: Any, max_elements: int) -> dict[str, Any]:
    """``POST /v1/losses/{name}``."""
    spec = registry.get_loss(name)
    body = _require_object(body, (), "The request body")
    params = registry.parse_params(name, spec.params, _params_of(body))
    inputs = _inputs(body, (), max_elements)
    batch = inputs.batch(params["axis"])
    value = registry.compute_loss(spec, batch, params)
    _finite(value, ("body",), f"The {name} loss")
    found = diagnostics.for_loss(spec, batch, params)
    return {
        "loss": _loss_value(value),
        "name": name,
        "reduction": params["reduction"],
        **_summary(batch),
        "warnings": [d.as_dict() for d in found],
    }


def metric(name: str, body: Any, max_elements: int) -> dict[str, Any]:
    """``POST /v1/metrics/{name}``."""
    spec = registry.get_metric(name)
    body = _require_object(body, (), "The request body")
    params = registry.parse_params(name, spec.params, _params_of(body))
    inputs = _inputs(body, (), max_elements)
    batch = inputs.batch(-1)
    value, resolved = registry.compute_metric(name, batch, params)
    _finite(value, ("body",), f"The {name} metric")
    found = diagnostics.for_metric(resolved, batch, params, value)
    return {
        "value": value,
        "name": name,
        "resolved_as": resolved,
        **_summary(batch),
        "warnings": [d.as_dict() for d in found],
    }


# ---- evaluate -----------------------------------------------------------------------------

EVALUATE_FIELDS = frozenset({*ARRAY_FIELDS, *COMMON_NAMES, "from_logits", "losses", "metrics"})

#: What an evaluate call computes when it names no losses or metrics.
DEFAULT_LOSSES = {
    "sparse": "sparse_categorical_crossentropy",
    "one_hot": "categorical_crossentropy",
    "soft": "categorical_crossentropy",
    "multi_hot": "binary_crossentropy",
    "binary": "binary_crossentropy",
}


@dataclass(frozen=True)
class Entry:
    key: str
    name: str
    params: dict[str, Any]
    loc: Loc


def _entries(raw: Any, loc: Loc, kind: str, known: Mapping[str, Any]) -> list[Entry]:
    if not isinstance(raw, list):
        raise invalid(
            loc, f'`{loc[-1]}` must be a list of {kind} names or {{"name": ...}} objects.'
        )
    entries: list[Entry] = []
    seen: dict[str, Loc] = {}
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
            key = alias
        else:
            raise invalid(
                here,
                f"Each entry of `{loc[-1]}` must be a {kind} name or an object with a `name`, "
                f"received {item!r}.",
            )
        if name not in known:
            raise invalid(
                (*here, "name"), f"Unknown {kind} {name!r}: expected one of {sorted(known)}."
            )
        if key in seen:
            raise invalid(
                here,
                f"Two {kind} entries would both be reported as {key!r} (entries "
                f"{seen[key][-1]} and {i}): give one of them another name with `as`.",
            )
        seen[key] = here
        entries.append(Entry(key, name, params, here))
    return entries


def _with_logits(entry: Entry, from_logits: Any, takes_it: bool) -> dict[str, Any]:
    if takes_it and from_logits is not None and "from_logits" not in entry.params:
        return {**entry.params, "from_logits": from_logits}
    return entry.params


def _evaluate_one(body: Any, loc: Loc, max_elements: int) -> tuple[dict[str, Any], float]:
    body = _require_object(body, loc, "An evaluate body")
    unknown = sorted(set(body) - EVALUATE_FIELDS)
    if unknown:
        raise invalid(
            (*loc, unknown[0]),
            f"evaluate does not take {unknown}: it takes {sorted(EVALUATE_FIELDS)} (loss and "
            "metric parameters go inside their entries in `losses` and `metrics`), or "
            "`outputs` and `loss_weights` for several heads.",
        )
    from_logits = body.get("from_logits")
    if from_logits is not None and not isinstance(from_logits, bool):
        raise invalid(
            (*loc, "from_logits"), f"`from_logits` must be true or false, received {from_logits!r}."
        )
    inputs = _inputs(body, loc, max_elements)
    loss_entries = (
        _entries(body["losses"], (*loc, "losses"), "loss", registry.LOSSES)
        if body.get("losses") is not None
        else None
    )
    metric_entries = (
        _entries(body["metrics"], (*loc, "metrics"), "metric", registry.METRICS)
        if body.get("metrics") is not None
        else None
    )
    # Parameters of every entry are checked before any computing.
    parsed_losses = []
    for e in loss_entries or []:
        spec = registry.LOSSES[e.name]
        params = registry.parse_params(
            e.name, spec.params, _with_logits(e, from_logits, True), e.loc
        )
        if params["reduction"] == "none":
            raise invalid(
                (*e.loc, "reduction"),
                "evaluate reports one number per loss: expected a reducing `reduction` "
                "(sum_over_batch_size, mean, sum, mean_with_sample_weight), received 'none'. "
                "Per-sample losses come from POST /v1/losses/{name}.",
            )
        parsed_losses.append((e, spec, params))
    parsed_metrics = []
    for e in metric_entries or []:
        spec_m = registry.METRICS[e.name]
        takes = any(p.name == "from_logits" for p in spec_m.params)
        params = registry.parse_params(
            e.name, spec_m.params, _with_logits(e, from_logits, takes), e.loc
        )
        parsed_metrics.append((e, params))

    try:
        response = _compute(
            inputs,
            parsed_losses,
            parsed_metrics,
            loss_entries is None,
            metric_entries is None,
            from_logits,
            loc,
        )
    except ServiceError as err:
        # Batch errors point at fields of this body (`y_true`, ...): put them under its place.
        raise (err.prefixed(loc) if loc else err) from None
    return response, sum(response["losses"].values())


def _compute(
    inputs: Inputs,
    parsed_losses: list[tuple[Entry, registry.LossSpec, dict[str, Any]]],
    parsed_metrics: list[tuple[Entry, dict[str, Any]]],
    default_losses: bool,
    default_metrics: bool,
    from_logits: bool | None,
    loc: Loc,
) -> dict[str, Any]:
    batch = inputs.batch(-1)
    extra = {} if from_logits is None else {"from_logits": from_logits}
    if default_losses:
        name = DEFAULT_LOSSES[batch.encoding]
        spec = registry.LOSSES[name]
        default = Entry(name, name, extra, (*loc, "losses", 0))
        parsed_losses = [(default, spec, registry.parse_params(name, spec.params, extra))]
    if default_metrics:
        spec_m = registry.METRICS["accuracy"]
        default = Entry("accuracy", "accuracy", extra, (*loc, "metrics", 0))
        parsed_metrics = [(default, registry.parse_params("accuracy", spec_m.params, extra))]

    losses: dict[str, float] = {}
    metrics: dict[str, float] = {}
    resolved: dict[str, str] = {"accuracy": registry.ACCURACY_FOR[batch.encoding]}
    found: list[diagnostics.Diagnosis] = []
    for e, spec, params in parsed_losses:
        b = inputs.batch(params["axis"])
        losses[e.key] = float(registry.compute_loss(spec, b, params))
        _finite(losses[e.key], (*e.loc,), f"The {e.key} loss")
        found += diagnostics.for_loss(spec, b, params)
    for e, params in parsed_metrics:
        value, name = registry.compute_metric(e.name, batch, params)
        _finite(value, (*e.loc,), f"The {e.key} metric")
        metrics[e.key] = value
        if e.name == "accuracy":
            resolved[e.key] = name
        found += diagnostics.for_metric(name, batch, params, value)
    return {
        **_summary(batch),
        "losses": losses,
        "metrics": metrics,
        "resolved": resolved,
        "warnings": [d.as_dict() for d in dict.fromkeys(found)],
    }


def evaluate(body: Any, max_elements: int) -> dict[str, Any]:
    """``POST /v1/evaluate``: one batch, or several heads under ``outputs``."""
    body = _require_object(body, (), "The request body")
    if "outputs" not in body:
        return _evaluate_one(body, (), max_elements)[0]
    unknown = sorted(set(body) - {"outputs", "loss_weights"})
    if unknown:
        raise invalid(
            (unknown[0],),
            f"A several-heads evaluate takes `outputs` and `loss_weights` only, received "
            f"{unknown}: put each head's fields inside its entry in `outputs`.",
        )
    outputs = _require_object(body["outputs"], ("outputs",), "`outputs`")
    if not outputs:
        raise invalid(("outputs",), "`outputs` is empty: expected at least one head.")
    weights = _require_object(body.get("loss_weights") or {}, ("loss_weights",), "`loss_weights`")
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
    results: dict[str, Any] = {}
    total = 0.0
    for head, head_body in outputs.items():
        response, head_loss = _evaluate_one(head_body, ("outputs", head), max_elements)
        results[head] = response
        total += float(weights.get(head, 1.0)) * head_loss
    return {"outputs": results, "total_loss": total}
