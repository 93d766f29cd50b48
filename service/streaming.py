"""Streaming evaluations: one evaluation fed batch by batch, by many workers, exactly.

An evaluation's *settings* are an evaluate document without arrays (checked once, when it
is created). Each batch is evaluated as ``POST /v1/evaluate`` would evaluate it
(:func:`service.evaluation.evaluate_head`), which also yields every loss's, metric's
and report's sufficient statistics; the store adds those up exactly across batches,
and :func:`results` finalizes them into the evaluate response over every batch.

A batch sent again under its id is compared with the first by a hash of its arrays as
computed (:class:`_Digest`): the hash an evaluation uses is one of its settings, fixed
at its creation (``content_hash``): XXH3-128 for every new evaluation; evaluations
created before the setting existed go on with SHA-256, the hash their batches were
stored with.

The first accepted batch fixes the evaluation's *facts*: per head, the label family
(single-label, soft, multi-label, binary), the number of classes, and the losses,
metrics and reports with their parameters (the defaults that fit its labels, and what
``accuracy`` resolved to). Later batches are computed with those entries, so every
batch adds up the same statistics; one whose heads, family or classes differ is a
422 that says what differs.

Nothing here touches HTTP or the database: the web layer reads bodies and answers,
:mod:`service.storage` keeps batches and totals.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash
from numpy.typing import NDArray

from service import diagnostics, kernels, registry
from service.encodings import Batch
from service.errors import (
    Conflict,
    FieldError,
    InvalidInput,
    Loc,
    ServiceError,
    invalid,
    json_kind,
)
from service.evaluation import (
    FAMILY,
    SETTING_FIELDS,
    Entry,
    Inputs,
    Plan,
    check_head_sizes,
    check_heads,
    evaluate_head,
    inputs_of,
    parse_plan,
    per_class_loss_names,
    total_loss,
    weighted_total,
)
from service.wire import ARRAY_FIELDS

#: The name of the one head of an evaluation without ``outputs``.
SINGLE = ""
MAX_METADATA_KEYS = 64
MAX_METADATA_CHARS = 1024
_CREATE_FIELDS = frozenset({*SETTING_FIELDS, "metadata"})
_HEADS_FIELDS = frozenset({"outputs", "loss_weights", "metadata"})
#: The hash of new evaluations' batches (their setting ``content_hash``): XXH3-128 takes
#: ~12 µs a MiB, SHA-256 ~0.5 ms, as long as the evaluation of a 256×1000 batch itself.
#: A hash here tells a batch sent again (a retry) from other content under the same id,
#: within one evaluation, which only its creator's key can reach: it needs no resistance
#: to crafted collisions, and 128 bits make an accidental one out of reach.
CONTENT_HASH = "xxh3-128"
#: The hash of evaluations created before ``content_hash`` was one of their settings.
LEGACY_CONTENT_HASH = "sha256"
_HASHES: dict[str, Callable[[], Any]] = {
    "xxh3-128": xxhash.xxh3_128,
    "sha256": hashlib.sha256,
}
#: The hashes a new evaluation can be created with (setting ``LOSS_SERVICE_CONTENT_HASH``).
CONTENT_HASHES = tuple(_HASHES)
#: How new evaluations hash their dense labels (binary, multi-hot, soft targets; their
#: setting ``label_hash``): cast to the compute dtype, as the losses take them, so that JSON
#: ``1`` and ``1.0``, or integer, boolean and float arrays of the same targets, are the
#: same batch. Evaluations created without the setting hash them in the dtype they
#: arrived in, as when they were created (their stored hashes stay valid).
LABEL_HASH = "compute-dtype"


def _metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    problem = _metadata_problem(raw)
    if problem is not None:
        raise invalid(
            ("metadata",),
            f"`metadata` must be a flat object of strings: at most {MAX_METADATA_KEYS} keys, "
            f"keys and values of at most {MAX_METADATA_CHARS} characters; received {problem}.",
        )
    return dict(raw)


def _metadata_problem(raw: Any) -> str | None:
    """What is wrong with a ``metadata`` value, in a few words (``None``: nothing)."""
    if not isinstance(raw, dict):
        return f"a JSON {json_kind(raw)}"
    if len(raw) > MAX_METADATA_KEYS:
        return f"an object of {len(raw)} keys"
    for key, value in raw.items():
        if len(key) > MAX_METADATA_CHARS:
            return f"a key of {len(key)} characters ({key[:20]!r}…)"
        if not isinstance(value, str):
            return f"key {key[:40]!r} holding a JSON {json_kind(value)}"
        if len(value) > MAX_METADATA_CHARS:
            return f"key {key[:40]!r} holding {len(value)} characters"
    return None


def parse_settings(
    document: Any, content_hash: str = CONTENT_HASH, max_cells: int | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """A creation document's settings (checked: names, parameters, heads) as the JSON the
    store keeps, with the hash its batches are compared with (``content_hash``, one of
    :data:`CONTENT_HASHES`), and its metadata. Arrays belong to batches, not here.
    ``max_cells``: the limit of AUC and confusion counts (None: the service's setting)."""
    if content_hash not in _HASHES:
        raise ValueError(f"unknown content hash {content_hash!r}: one of {sorted(_HASHES)}")
    if not isinstance(document, dict):
        raise invalid(("body",), "The request body must be a JSON object of settings.")
    if any(name in document for name in ARRAY_FIELDS):
        raise invalid(
            ("body",),
            "An evaluation is created without arrays: send `y_true`, `y_pred` and "
            "`sample_weight` in its batches (PUT /v1/evaluations/{id}/batches/{batch_id}).",
        )
    metadata = _metadata(document.get("metadata"))
    if "outputs" in document:
        unknown = sorted(set(document) - _HEADS_FIELDS)
        if unknown:
            raise invalid(
                (unknown[0],),
                f"An evaluation with several heads takes `outputs`, `loss_weights` and "
                f"`metadata`, received {unknown}: put each head's settings in `outputs`.",
            )
        outputs, weights = check_heads({k: v for k, v in document.items() if k != "metadata"})
        heads = {}
        cells = registry.CellBudget(max_cells)
        for head, settings in outputs.items():
            _take_cells(parse_plan(settings, ("outputs", head), arrays=False), cells)
            heads[head] = settings
        return {
            "outputs": heads,
            "loss_weights": weights,
            "content_hash": content_hash,
            "label_hash": LABEL_HASH,
        }, metadata
    unknown = sorted(set(document) - _CREATE_FIELDS)
    if unknown:
        raise invalid(
            (unknown[0],),
            f"An evaluation takes {sorted(_CREATE_FIELDS)} (or `outputs` for several heads), "
            f"received {unknown}.",
        )
    settings = {k: v for k, v in document.items() if k != "metadata"}
    _take_cells(parse_plan(settings, (), arrays=False), registry.CellBudget(max_cells))
    return {
        "outputs": {SINGLE: settings},
        "loss_weights": {},
        "content_hash": content_hash,
        "label_hash": LABEL_HASH,
    }, metadata


def _take_cells(plan: Plan, cells: registry.CellBudget) -> None:
    """Refuse settings whose AUC counts pass the limit whatever the labels' classes (each
    AUC's thresholds × 4 at least): an evaluation that no batch could be sent to. The
    batches' classes are counted as they come."""
    for e in plan.metrics or []:
        taken = registry.statistic_cells(registry.METRICS[e.name], e.params, 1, 0)
        if taken:
            cells.take(taken, e.loc, f"The {e.key} metric")


def _plans(config: Mapping[str, Any]) -> dict[str, Plan]:
    return {
        head: parse_plan(
            _as_created(settings),
            () if head == SINGLE else ("outputs", head),
            arrays=False,
            stored=True,
        )
        for head, settings in config["outputs"].items()
    }


def _as_created(settings: Mapping[str, Any]) -> Mapping[str, Any]:
    """A head's stored settings without what later versions refuse but which meant
    nothing then: `accuracy` took a `k` (and ignored it) before it was refused."""
    metrics = settings.get("metrics")
    if not isinstance(metrics, list):
        return settings
    kept = [
        {k: v for k, v in m.items() if k != "k"}
        if isinstance(m, dict) and m.get("name") == "accuracy"
        else m
        for m in metrics
    ]
    return {**settings, "metrics": kept}


# ---- one batch ---------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    """A batch evaluated under an evaluation's settings."""

    content_hash: bytes
    n_samples: int
    stats: dict[str, NDArray[Any]]
    facts: dict[str, Any]
    answer: dict[str, Any]
    warning_codes: list[str]


def _entries_from_facts(facts: Mapping[str, Any]) -> dict[str, list[Entry]]:
    """The entries the first batch fixed; ``accuracy`` as what it resolved to."""
    resolved = facts["resolved"]
    return {
        kind: [
            Entry(e["key"], resolved.get(e["key"], e["name"]), dict(e["params"]), ()) for e in items
        ]
        for kind, items in facts["entries"].items()
    }


def _head_names(outputs: Any) -> str:
    if isinstance(outputs, dict):
        return str(sorted(outputs))
    return f"(not an object: {outputs!r:.40})"


def _batch_heads(document: Any, config: Mapping[str, Any]) -> dict[str, tuple[dict[str, Any], Loc]]:
    """The arrays of each head of a batch document, its heads checked against the settings."""
    if not isinstance(document, dict):
        raise invalid(("body",), "A batch must be a JSON object of arrays.")
    heads = set(config["outputs"])
    if heads == {SINGLE}:
        unknown = sorted(set(document) - set(ARRAY_FIELDS))
        if "outputs" in unknown:
            raise invalid(
                ("outputs",),
                "This evaluation was created without `outputs`: it has one head, and a "
                'batch is {"y_true", "y_pred", "sample_weight"?}; received a batch of '
                f"heads {_head_names(document['outputs'])}. Expected: send the head's arrays "
                "as the batch, or create an evaluation with `outputs` for several heads.",
            )
        if unknown:
            raise invalid(
                (unknown[0],),
                f"A batch holds `y_true`, `y_pred` and `sample_weight` only, received "
                f"{unknown}: settings are the evaluation's, fixed at its creation.",
            )
        return {SINGLE: (document, ())}
    if "outputs" not in document:
        raise invalid(
            ("outputs",),
            f"This evaluation has heads {sorted(heads)}: a batch is "
            '{"outputs": {<head>: {"y_true", "y_pred", "sample_weight"?}}}; received a '
            f"batch of fields {sorted(document)}.",
        )
    unknown = sorted(set(document) - {"outputs"})
    if unknown:
        raise invalid(
            (unknown[0],),
            f"A batch of an evaluation with heads {sorted(heads)} holds `outputs` only, "
            f"received also {unknown}: put each head's arrays (its `sample_weight` too) "
            "inside its entry in `outputs`; settings are the evaluation's, fixed at its "
            "creation.",
        )
    if not isinstance(document["outputs"], dict):
        raise invalid(
            ("outputs",),
            f"`outputs` must be an object of heads {sorted(heads)}, received a JSON "
            f"{json_kind(document['outputs'])}: a batch is "
            '{"outputs": {<head>: {"y_true", "y_pred", "sample_weight"?}}}.',
        )
    sent = set(document["outputs"])
    if sent != heads:
        missing, extra = sorted(heads - sent), sorted(sent - heads)
        raise invalid(
            ("outputs",),
            f"The batch's heads differ from the evaluation's {sorted(heads)}: "
            f"missing {missing}, unknown {extra}.",
        )
    out = {}
    for head, head_document in document["outputs"].items():
        loc: Loc = ("outputs", head)
        if not isinstance(head_document, dict):
            raise invalid(loc, "Each head of a batch must be an object of arrays.")
        unknown = sorted(set(head_document) - set(ARRAY_FIELDS))
        if unknown:
            raise invalid(
                (*loc, unknown[0]),
                f"A head of a batch holds `y_true`, `y_pred` and `sample_weight` only, "
                f"received {unknown}.",
            )
        out[head] = (head_document, loc)
    return out


class Mismatch(InvalidInput):
    """A batch whose labels' family or classes differ from those its evaluation's first
    batch fixed (a 422 like any invalid input; told apart for the batch counters)."""


#: Label encodings that hold others' batches: a multi-label evaluation's batch whose rows
#: hold one positive each, a soft one's whose rows are one-hot or multi-hot (see
#: :func:`service.encodings.prepare`'s stated encodings).
_HOLDING = frozenset({"multi_hot", "soft"})


def _read(inputs: Inputs, stored: Mapping[str, Any] | None) -> tuple[Inputs, Batch]:
    """A head's batch, validated. Once the first batch fixed its labels as multi-hot or
    soft (none stated at creation), a later batch that such labels hold is read as such,
    as one evaluate over all the batches reads it; one they do not hold is read as
    detected, and told apart by :func:`_differs`."""
    fixed = None if stored is None else stored["label_encoding"]
    if inputs.common["label_encoding"] is None and fixed in _HOLDING:
        held = Inputs(
            inputs.y_true,
            inputs.y_pred,
            inputs.sample_weight,
            {**inputs.common, "label_encoding": fixed},
        )
        try:
            return held, held.batch(-1)
        except InvalidInput:
            pass
    return inputs, inputs.batch(-1)


def _differs(head: str, stored: Mapping[str, Any], found: Mapping[str, Any]) -> str | None:
    where = "" if head == SINGLE else f"head {head!r}: "
    if stored["family"] != found["family"]:
        return (
            f"{where}the batch's labels are {found['label_encoding']} ({found['family']}), "
            f"but the evaluation's are {stored['family']} (fixed by its first batch, "
            f"{stored['label_encoding']}); state `label_encoding` at creation to fix it"
        )
    if stored["n_classes"] != found["n_classes"]:
        return (
            f"{where}the batch has {found['n_classes']} classes, the evaluation "
            f"{stored['n_classes']} (fixed by its first batch)"
        )
    # Evaluations whose first batch came before this fact was kept have none.
    axes = stored.get("sample_axes")
    if axes is not None and axes != found["sample_axes"]:
        return (
            f"{where}the batch's `y_pred` holds {_axes(found['sample_axes'])}, the "
            f"evaluation's {_axes(axes)} (fixed by its first batch): one evaluate could not "
            "take both together"
        )
    return None


def _axes(sample_axes: int) -> str:
    if sample_axes <= 1:
        return "one prediction row per sample, shape (samples, classes)"
    steps = ", ".join(["steps"] * (sample_axes - 1))
    return f"sequences, shape (samples, {steps}, classes)"


class _Digest:
    """The evaluation's hash (see :data:`CONTENT_HASH`) over each head's arrays as
    computed, in the order of the heads: for each, its name, then each array's name,
    dtype and shape, and its bytes."""

    def __init__(self, kind: str) -> None:
        new = _HASHES.get(kind)
        if new is None:
            # An evaluation created by a later version of the service, read by this one.
            raise Conflict(
                f"This evaluation's batches are hashed with {kind!r}, which this version of "
                "the service does not know: send its batches to the version that created it."
            )
        self._hash = new()

    def add(self, head: str, arrays: list[tuple[str, NDArray[Any]]]) -> None:
        self._hash.update(f"head:{head};".encode())
        for name, array in arrays:
            contiguous = np.ascontiguousarray(array)
            self._hash.update(f"{name}:{contiguous.dtype.str}:{contiguous.shape};".encode())
            self._hash.update(contiguous.reshape(-1).view(np.uint8).data)

    def digest(self) -> bytes:
        return bytes(self._hash.digest())


def evaluate_batch(
    config: Mapping[str, Any],
    document: Any,
    facts: Mapping[str, Any] | None,
    max_elements: int,
    max_cells: int | None = None,
) -> BatchOutcome:
    """Evaluate one batch document under the evaluation's settings (and the facts its first
    batch fixed, if any): its statistics, its own answer, its facts, its hash.
    ``max_cells``: the limit of AUC and confusion counts (None: the service's setting).

    The hash is over the arrays as computed (predictions in the compute dtype, labels as
    indices, or as targets in the compute dtype: see :data:`LABEL_HASH`), so the same
    batch sent as JSON lists, typed arrays or binary tensors is the same batch."""
    plans = _plans(config)
    digest = _Digest(config.get("content_hash", LEGACY_CONTENT_HASH))
    computed_labels = config.get("label_hash") == LABEL_HASH
    stats: dict[str, NDArray[Any]] = {}
    head_facts: dict[str, Any] = {}
    responses: dict[str, dict[str, Any]] = {}
    codes: list[str] = []
    differences: list[str] = []
    cells = registry.CellBudget(max_cells)
    for head, (head_document, loc) in sorted(_batch_heads(document, config).items()):
        plan = plans[head]
        stored = None if facts is None else facts["heads"][head]
        # Its arrays' errors name their place (the head's included), as evaluate's do.
        arrays_in = inputs_of(head_document, loc, max_elements, plan.common)
        try:
            inputs, batch = _read(arrays_in, stored)
            found = {
                "family": FAMILY[batch.encoding],
                "n_classes": batch.n_classes,
                "label_encoding": batch.encoding,
                "sample_axes": len(batch.sample_shape),
            }
            if stored is not None:
                difference = _differs(head, stored, found)
                if difference is not None:
                    differences.append(difference)
                    continue
            labels: NDArray[Any]
            if batch.labels is not None:
                labels = batch.labels
            else:
                assert batch.dense is not None
                if computed_labels:
                    labels = batch.dense.astype(batch.y_pred.dtype, copy=False)
                else:
                    # Created before the setting: its stored hashes were made of the targets
                    # as they arrived (the batch's float ones are cast since).
                    labels = np.ascontiguousarray(inputs.y_true).reshape(batch.dense.shape)
            arrays = [("y_pred", batch.y_pred), ("y_true", labels)]
            if batch.sample_weight is not None:
                arrays.append(("sample_weight", batch.sample_weight))
            digest.add(head, arrays)
            result = evaluate_head(
                plan, inputs, None if stored is None else _entries_from_facts(stored), cells
            )
        except ServiceError as err:
            raise (err.prefixed(loc) if loc else err) from None
        head_facts[head] = stored if stored is not None else result.facts
        prefix = "" if head == SINGLE else f"{head}/"
        for key, value in result.stats.items():
            # float64 throughout: a count and a weight sum then add up alike, whichever
            # batches carry weights.
            stats[prefix + key] = np.asarray(value, dtype=np.float64)
        response = result.response
        if stored is not None:
            response["resolved"] = dict(stored["resolved"])
        responses[head] = response
        codes += [w["code"] for w in response["warnings"]]
    if differences:
        message = "The batch does not fit the evaluation: " + "; ".join(differences) + "."
        raise Mismatch(message, [FieldError(("y_true",), message)])
    check_head_sizes(responses)
    n_samples = next(iter(responses.values()))["n_samples"]
    if set(responses) == {SINGLE}:
        answer = {
            key: responses[SINGLE][key] for key in ("n_samples", "losses", "metrics", "warnings")
        }
    else:
        weights = config["loss_weights"]
        answer = {
            "n_samples": n_samples,
            "outputs": {
                head: {k: r[k] for k in ("n_samples", "losses", "metrics", "warnings")}
                for head, r in responses.items()
            },
            "total_loss": total_loss(weights, responses),
            "warnings": [w for r in responses.values() for w in r["warnings"]],
        }
    return BatchOutcome(
        digest.digest(),
        int(n_samples),
        stats,
        {"heads": head_facts},
        answer,
        sorted(set(codes)),
    )


# ---- the results over every batch ----------------------------------------------------------


def _head_results(
    plan: Plan, facts: Mapping[str, Any], totals: Mapping[str, NDArray[Any]], prefix: str
) -> dict[str, Any]:
    entries = _entries_from_facts(facts)

    def stats_of(kind: str, key: str) -> dict[str, NDArray[Any]]:
        start = f"{prefix}{kind}/{key}/"
        return {name[len(start) :]: v for name, v in totals.items() if name.startswith(start)}

    losses = {
        e.key: kernels.loss_from_stats(stats_of("loss", e.key), e.params["reduction"])
        for e in entries["losses"]
    }
    metrics = {
        e.key: registry.metric_value(e.name, _counts(stats_of("metric", e.key)), e.params)
        for e in entries["metrics"]
    }
    out: dict[str, Any] = {
        "label_encoding": facts["label_encoding"],
        "n_classes": facts["n_classes"],
        "losses": losses,
        "metrics": metrics,
        "resolved": dict(facts["resolved"]),
    }
    if entries["reports"]:
        loss_names = per_class_loss_names(entries["losses"], facts["family"])
        out["reports"] = {
            e.key: registry.report_value(
                e.name,
                _counts(stats_of("report", e.key)),
                class_names=plan.class_names,
                loss_names=loss_names,
            )
            for e in entries["reports"]
        }
    return out


def _counts(stats: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    """Totals as the finalizers take them: whole-number sums back as int64 counts (they
    were summed exactly as float64), so the reports' counts read as integers."""
    out: dict[str, NDArray[Any]] = {}
    for name, value in stats.items():
        array = np.asarray(value)
        whole = array.dtype.kind == "f" and bool(np.all(array == np.round(array)))
        small = bool(np.all(np.abs(array) < 2**53)) if array.size else True
        out[name] = array.astype(np.int64) if whole and small else array
    return out


def total_loss_guard(
    config: Mapping[str, Any], facts: Mapping[str, Any]
) -> Callable[[Callable[[str], Any]], str | None] | None:
    """For an evaluation of several heads: what refuses a batch after which its
    ``total_loss`` (each head's losses times ``loss_weights``, added) would overflow,
    read from the running totals with the batch as :func:`results` reads it (the store
    asks it in the transaction that would store the batch). ``None`` for one head."""
    heads = list(config["outputs"])
    if heads == [SINGLE]:
        return None
    losses = {
        head: [
            (e.key, e.params["reduction"])
            for e in _entries_from_facts(facts["heads"][head])["losses"]
        ]
        for head in heads
    }

    def value(read: Callable[[str], Any], head: str, key: str, reduction: Any) -> float:
        start = f"{head}/loss/{key}/"
        stats = {name: read(start + name) for name in ("sum", "count", "weight")}
        return kernels.loss_from_stats(stats, reduction)

    def guard(read: Callable[[str], Any]) -> str | None:
        values = {
            head: [value(read, head, key, reduction) for key, reduction in entries]
            for head, entries in losses.items()
        }
        if math.isfinite(weighted_total(config["loss_weights"], values)):
            return None
        return (
            "The batch would take the evaluation's `total_loss` (each head's losses times "
            "`loss_weights`, added) past float64's range: it was not stored, so that the "
            "evaluation's results can still be read. Expected smaller `loss_weights` at "
            "creation, or batches whose losses keep the weighted total finite."
        )

    return guard


def results(
    config: Mapping[str, Any],
    facts: Mapping[str, Any] | None,
    totals: Mapping[str, NDArray[Any]],
    warning_counts: Mapping[str, int],
    n_samples: int | None = None,
) -> dict[str, Any]:
    """The evaluate response over every accepted batch (empty before the first one).
    ``n_samples``: the batches' samples, each head's (several heads: as in evaluate's
    response, every head holds as many); the warnings are the evaluation's, counted
    over batches, not each head's."""
    warnings = [
        {"code": code, "message": diagnostics.CODES.get(code, code), "batches": count}
        for code, count in sorted(warning_counts.items())
    ]
    heads = list(config["outputs"])
    if facts is None:
        if heads == [SINGLE]:
            return {
                "label_encoding": None,
                "n_classes": None,
                "losses": {},
                "metrics": {},
                "resolved": {},
                "warnings": warnings,
            }
        return {"outputs": {}, "total_loss": None, "warnings": warnings}
    plans = _plans(config)
    if heads == [SINGLE]:
        return {
            **_head_results(plans[SINGLE], facts["heads"][SINGLE], totals, ""),
            "warnings": warnings,
        }
    outputs = {}
    for head in heads:
        values = _head_results(plans[head], facts["heads"][head], totals, f"{head}/")
        if n_samples is not None:
            values = {"label_encoding": values["label_encoding"], "n_samples": n_samples, **values}
        outputs[head] = values
    weights = config["loss_weights"]
    return {"outputs": outputs, "total_loss": total_loss(weights, outputs), "warnings": warnings}


def curves(
    config: Mapping[str, Any], facts: Mapping[str, Any] | None, totals: Mapping[str, NDArray[Any]]
) -> dict[str, dict[str, Any]]:
    """Per head, each ``auc`` metric's counts per threshold (the points of its ROC or PR
    curve), for the charts: ``{head: {key: {"curve", "thresholds", "true_positives",
    ...}}}`` (head ``""`` without ``outputs``)."""
    if facts is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for head in config["outputs"]:
        prefix = "" if head == SINGLE else f"{head}/"
        found = {}
        for e in _entries_from_facts(facts["heads"][head])["metrics"]:
            if e.name != "auc":
                continue
            start = f"{prefix}metric/{e.key}/"
            stats = {k[len(start) :]: v for k, v in totals.items() if k.startswith(start)}
            found[e.key] = {
                "curve": e.params["curve"],
                "thresholds": kernels.auc_thresholds(int(e.params["num_thresholds"])).tolist(),
                "true_positives": stats["tp"].tolist(),
                "false_positives": stats["fp"].tolist(),
                "true_negatives": stats["tn"].tolist(),
                "false_negatives": stats["fn"].tolist(),
            }
        out[head] = found
    return out


def _by_kind(part: dict[str, Any], head_facts: Mapping[str, Any] | None) -> dict[str, Any]:
    """A head's answer with its reports under their kinds (``per_class``...), the first of
    each kind, whatever `as` named them: what the page and the charts look up."""
    reports = part.get("reports")
    if not reports or head_facts is None:
        return part
    kinds = {e["key"]: e["name"] for e in head_facts["entries"]["reports"]}
    by_kind: dict[str, Any] = {}
    for key, value in reports.items():
        by_kind.setdefault(kinds.get(key, key), value)
    return {**part, "reports": by_kind}


def for_pictures(
    response: dict[str, Any],
    found: Mapping[str, dict[str, Any]],
    facts: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``response`` (from :func:`results`) as the page and the charts read it: each head's
    ``curves`` beside its ``reports``, its reports under their kinds (see
    :func:`_by_kind`; ``facts``: the evaluation's, ``None`` before its first batch)."""
    heads = {} if facts is None else facts["heads"]
    out = dict(response)
    if "outputs" in out and isinstance(out["outputs"], dict):
        out["outputs"] = {
            head: {**_by_kind(part, heads.get(head)), "curves": found.get(head, {})}
            for head, part in out["outputs"].items()
        }
    else:
        out = {**_by_kind(out, heads.get(SINGLE)), "curves": found.get(SINGLE, {})}
    return out
