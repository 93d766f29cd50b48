"""The spec's examples: for every loss, metric, evaluate and streaming operation a request
the service accepts and the answer it gives; for the catalogues and health, their answer.

The answers are written out here (numbers rounded to 7 decimals) rather than computed
when the spec is built: the committed spec must be the same file on every machine, and
float32 arithmetic may differ in its last digit between CPUs and NumPy builds.
``tests/test_openapi_examples.py`` sends every request to the service and checks that
it answers the example (numbers within 1e-6), so that the examples stay true. The
catalogues are the one exception: they hold no arithmetic, so their example is the
catalogue itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from service import registry
from service.api import schemas
from service.api.catalogue import catalogue
from service.wire import JSON_MEDIA_TYPE

Body = dict[str, Any]


@dataclass(frozen=True)
class Example:
    """One exchange: a request body (None: the operation takes none) and the answer to it,
    by status."""

    summary: str
    request: Body | None
    responses: Mapping[int, Body] = field(default_factory=dict)


def _loss(
    name: str,
    summary: str,
    request: Body,
    loss: float,
    encoding: str,
    n_samples: int,
    n_classes: int,
) -> Example:
    answer = {
        "loss": loss,
        "name": name,
        "reduction": request.get("reduction", "sum_over_batch_size"),
        "label_encoding": encoding,
        "n_samples": n_samples,
        "n_classes": n_classes,
        "warnings": [],
    }
    return Example(summary, request, {200: answer})


def _metric(
    name: str,
    summary: str,
    request: Body,
    value: float | list[float],
    encoding: str,
    n_samples: int,
    n_classes: int,
    resolved_as: str | None = None,
) -> Example:
    answer = {
        "value": value,
        "name": name,
        "resolved_as": resolved_as or name,
        "label_encoding": encoding,
        "n_samples": n_samples,
        "n_classes": n_classes,
        "warnings": [],
    }
    return Example(summary, request, {200: answer})


# ---- one loss, one metric -------------------------------------------------------------------

_ONE_HOT = {"y_true": [[0, 1, 0], [0, 0, 1]], "y_pred": [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]}
_ARGMAX = {"y_true": [[0, 0, 1], [0, 1, 0]], "y_pred": [[0.1, 0.9, 0.8], [0.05, 0.95, 0.0]]}
_INDICES = {"y_true": [2, 1], "y_pred": _ARGMAX["y_pred"]}
_BINARY = {"y_true": [0, 1, 1, 1], "y_pred": [1, 0, 1, 1]}
_MULTI_LABEL = {
    "y_true": [[1, 1, 1], [1, 0, 0], [1, 1, 0]],
    "y_pred": [[0.2, 0.6, 0.7], [0.2, 0.6, 0.6], [0.6, 0.8, 0.0]],
}

LOSSES: Final[dict[str, Example]] = {
    e.responses[200]["name"]: e
    for e in (
        _loss(
            "categorical_crossentropy",
            "One-hot labels and probabilities",
            _ONE_HOT,
            1.1769392,
            "one_hot",
            2,
            3,
        ),
        _loss(
            "sparse_categorical_crossentropy",
            "Integer class indices and probabilities",
            {"y_true": [1, 2], "y_pred": _ONE_HOT["y_pred"]},
            1.1769392,
            "sparse",
            2,
            3,
        ),
        _loss(
            "binary_crossentropy",
            "Binary labels and logits",
            {"y_true": [0, 1, 0, 0], "y_pred": [-18.6, 0.51, 2.94, -12.8], "from_logits": True},
            0.865458,
            "binary",
            4,
            1,
        ),
        _loss(
            "categorical_focal_crossentropy",
            "One-hot labels and probabilities",
            _ONE_HOT,
            0.2331528,
            "one_hot",
            2,
            3,
        ),
        _loss(
            "binary_focal_crossentropy",
            "Multi-label targets, with class balancing",
            {
                "y_true": [[0, 1], [0, 0]],
                "y_pred": [[0.6, 0.4], [0.4, 0.6]],
                "gamma": 2.0,
                "apply_class_balancing": True,
            },
            0.1596406,
            "multi_hot",
            2,
            2,
        ),
    )
}

METRICS: Final[dict[str, Example]] = {
    e.responses[200]["name"]: e
    for e in (
        _metric(
            "binary_accuracy",
            "One probability per sample",
            {"y_true": [[1], [1], [0], [0]], "y_pred": [[0.98], [1], [0], [0.6]]},
            0.75,
            "binary",
            4,
            1,
        ),
        _metric("categorical_accuracy", "One-hot labels", _ARGMAX, 0.5, "one_hot", 2, 3),
        _metric(
            "sparse_categorical_accuracy", "Integer class indices", _INDICES, 0.5, "sparse", 2, 3
        ),
        _metric(
            "top_k_categorical_accuracy",
            "One-hot labels, k = 2",
            {**_ARGMAX, "k": 2},
            1.0,
            "one_hot",
            2,
            3,
        ),
        _metric(
            "sparse_top_k_categorical_accuracy",
            "Integer class indices, k = 1",
            {**_INDICES, "k": 1},
            0.5,
            "sparse",
            2,
            3,
        ),
        _metric(
            "subset_accuracy",
            "Multi-hot labels: every label of a row must match",
            {"y_true": [[1, 0, 1], [0, 1, 0]], "y_pred": [[0.9, 0.2, 0.7], [0.3, 0.4, 0.1]]},
            0.5,
            "multi_hot",
            2,
            3,
        ),
        _metric("precision", "Binary labels and decisions", _BINARY, 0.6666667, "binary", 4, 1),
        _metric("recall", "Binary labels and decisions", _BINARY, 0.6666667, "binary", 4, 1),
        _metric(
            "f1_score",
            "Multi-label, one value per class",
            {**_MULTI_LABEL, "threshold": 0.5},
            [0.4999999, 0.7999999, 0.6666666],
            "multi_hot",
            3,
            3,
        ),
        _metric(
            "fbeta_score",
            "Multi-label, beta = 2, macro average",
            {**_MULTI_LABEL, "beta": 2.0, "threshold": 0.5, "average": "macro"},
            0.7090131,
            "multi_hot",
            3,
            3,
        ),
        _metric(
            "auc",
            "Binary labels and scores, 3 thresholds",
            {"y_true": [0, 0, 1, 1], "y_pred": [0.0, 0.5, 0.3, 0.9], "num_thresholds": 3},
            0.75,
            "binary",
            4,
            1,
        ),
        _metric(
            "expected_calibration_error",
            "Integer class indices and probabilities, 5 bins",
            {
                "y_true": [0, 1, 2, 1],
                "y_pred": [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1]],
                "n_bins": 5,
            },
            0.35,
            "sparse",
            4,
            3,
        ),
        _metric(
            "brier_score",
            "Binary labels and probabilities",
            {"y_true": [0, 1, 1, 0], "y_pred": [0.1, 0.9, 0.8, 0.3]},
            0.0375,
            "binary",
            4,
            1,
        ),
        _metric(
            "accuracy",
            "Integer labels: resolved as sparse_categorical_accuracy",
            {"y_true": [1, 2], "y_pred": _ONE_HOT["y_pred"]},
            0.5,
            "sparse",
            2,
            3,
            resolved_as="sparse_categorical_accuracy",
        ),
    )
}


# ---- evaluate ---------------------------------------------------------------------------------

EVALUATE: Final[dict[str, Example]] = {
    "one_output": Example(
        "One output: multi-hot labels, a loss and two accuracies",
        {
            "y_true": [[0, 1, 1, 0], [1, 0, 0, 0]],
            "y_pred": [[0.1, 0.8, 0.3, 0.2], [0.6, 0.1, 0.2, 0.1]],
            "losses": ["binary_crossentropy"],
            "metrics": ["accuracy", "binary_accuracy"],
        },
        {
            200: {
                "label_encoding": "multi_hot",
                "n_samples": 2,
                "n_classes": 4,
                "losses": {"binary_crossentropy": 0.3375388},
                "metrics": {"accuracy": 0.5, "binary_accuracy": 0.875},
                "resolved": {"accuracy": "subset_accuracy"},
                "warnings": [
                    {
                        "code": "binary_accuracy_inflated",
                        "message": "binary_accuracy is 0.8750, but `y_true` is multi-hot with 4 "
                        "labels per sample, 62.5% of them zeros: predicting all zeros would score "
                        "0.6250. The subset (exact-match) accuracy is 0.5000; `accuracy` resolves "
                        "to subset_accuracy for multi-hot labels.",
                    }
                ],
            }
        },
    ),
    "heads": Example(
        "Several heads, with loss weights",
        {
            "outputs": {
                "digit": {
                    "y_true": [3, 1],
                    "y_pred": [[0.1, 0.1, 0.1, 0.7], [0.2, 0.6, 0.1, 0.1]],
                    "metrics": ["accuracy"],
                },
                "parity": {
                    "y_true": [1, 1],
                    "y_pred": [0.8, 0.3],
                    "losses": ["binary_crossentropy"],
                    "metrics": ["binary_accuracy"],
                },
            },
            "loss_weights": {"digit": 1.0, "parity": 0.5},
        },
        {
            200: {
                "outputs": {
                    "digit": {
                        "label_encoding": "sparse",
                        "n_samples": 2,
                        "n_classes": 4,
                        "losses": {"sparse_categorical_crossentropy": 0.4337503},
                        "metrics": {"accuracy": 1.0},
                        "resolved": {"accuracy": "sparse_categorical_accuracy"},
                        "warnings": [],
                    },
                    "parity": {
                        "label_encoding": "binary",
                        "n_samples": 2,
                        "n_classes": 1,
                        "losses": {"binary_crossentropy": 0.7135582},
                        "metrics": {"binary_accuracy": 0.5},
                        "resolved": {},
                        "warnings": [],
                    },
                },
                "total_loss": 0.7905294,
            }
        },
    ),
}


# ---- streaming evaluations --------------------------------------------------------------------

#: The path parameters of the examples (an evaluation id is 32 random hex digits).
PATH_PARAMETERS: Final[dict[str, str]] = {
    "evaluation_id": "0cd547c8ddf9251dba0a5dd3bd557747",
    "batch_id": "batch-0001",
    "chart": "confusion_matrix",
    "fmt": "svg",
}
_CREATED_AT = "2026-11-30T20:57:28.431873+00:00"
_UPDATED_AT = "2026-11-30T20:57:28.455634+00:00"
_CLOSED_AT = "2026-11-30T20:58:02.101520+00:00"
_METADATA = {"model": "resnet50", "split": "validation"}
_BATCH_VALUES = {
    "losses": {"sparse_categorical_crossentropy": 0.8256462},
    "metrics": {"accuracy": 0.6666667, "f1_score": 0.5555555},
    "warnings": [],
}


def _summary(status: str, updated_at: str, n_batches: int, n_samples: int) -> Body:
    return {
        "id": PATH_PARAMETERS["evaluation_id"],
        "status": status,
        "created_at": _CREATED_AT,
        "updated_at": updated_at,
        "n_batches": n_batches,
        "n_samples": n_samples,
        "metadata": _METADATA,
    }


_BATCH_ANSWER = {
    "batch_id": PATH_PARAMETERS["batch_id"],
    "n_samples": 3,
    **_BATCH_VALUES,
    "evaluation": {"n_batches": 1, "n_samples": 3},
}

#: One evaluation's life, in order: created, sent one batch, read, listed, closed.
STREAMING: Final[dict[str, Example]] = {
    "create_evaluation": Example(
        "Two metrics, a report, and metadata (the losses: those that fit the first batch)",
        {
            "metrics": ["accuracy", {"name": "f1_score", "average": "macro"}],
            "reports": ["confusion_matrix"],
            "metadata": _METADATA,
        },
        {201: _summary("open", _CREATED_AT, 0, 0)},
    ),
    "put_batch": Example(
        "Three samples, integer labels (201 the first time, 200 for the same batch again)",
        {"y_true": [0, 2, 1], "y_pred": [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.2, 0.3]]},
        {201: _BATCH_ANSWER, 200: _BATCH_ANSWER},
    ),
    "get_evaluation": Example(
        "After one batch",
        None,
        {
            200: {
                **_summary("open", _UPDATED_AT, 1, 3),
                "label_encoding": "sparse",
                "n_classes": 3,
                "losses": _BATCH_VALUES["losses"],
                "metrics": _BATCH_VALUES["metrics"],
                "resolved": {"accuracy": "sparse_categorical_accuracy"},
                "reports": {
                    "confusion_matrix": {
                        "labels": [0, 1, 2],
                        "matrix": [[1, 0, 0], [1, 0, 0], [0, 0, 1]],
                    }
                },
                "warnings": [],
            }
        },
    ),
    "list_batches": Example(
        "One batch",
        None,
        {
            200: {
                "batches": [
                    {
                        "batch_id": PATH_PARAMETERS["batch_id"],
                        "n_samples": 3,
                        **_BATCH_VALUES,
                        "received_at": _UPDATED_AT,
                    }
                ],
                "next": None,
            }
        },
    ),
    "list_evaluations": Example(
        "One evaluation",
        None,
        {200: {"evaluations": [_summary("open", _UPDATED_AT, 1, 3)], "next": None}},
    ),
    "close_evaluation": Example(
        "Closed after one batch", None, {200: _summary("closed", _CLOSED_AT, 1, 3)}
    ),
}


def _service() -> dict[str, Example]:
    # The catalogues as their routes answer them: through their response models.
    losses = schemas.LossCatalogue.model_validate(catalogue("losses", registry.LOSSES.values()))
    metrics = schemas.MetricCatalogue.model_validate(
        catalogue("metrics", registry.METRICS.values())
    )
    return {
        "health": Example("Up", None, {200: {"status": "ok"}}),
        "list_losses": Example("Every loss", None, {200: losses.model_dump(mode="json")}),
        "list_metrics": Example("Every metric", None, {200: metrics.model_dump(mode="json")}),
    }


def examples() -> dict[str, dict[str, Example]]:
    """Every operation's examples, by operation id, then by the examples' names."""
    return {
        **{f"loss_{name}": {name: e} for name, e in LOSSES.items()},
        **{f"metric_{name}": {name: e} for name, e in METRICS.items()},
        "evaluate": EVALUATE,
        **{op: {"evaluation": e} for op, e in STREAMING.items()},
        **{op: {op: e} for op, e in _service().items()},
    }


def add_examples(spec: dict[str, Any]) -> None:
    """Each operation's request and response examples (``examples`` of its JSON media
    types, named alike, so that a request's answer is the response example of its name),
    and examples of the streaming paths' parameters."""
    found = examples()
    for item in spec["paths"].values():
        for operation in item.values():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter["name"] in PATH_PARAMETERS:
                    parameter["example"] = PATH_PARAMETERS[parameter["name"]]
            own = found.get(operation["operationId"])
            if own is None:
                continue
            requests = {
                name: {"summary": e.summary, "value": e.request}
                for name, e in own.items()
                if e.request is not None
            }
            if requests:
                operation["requestBody"]["content"][JSON_MEDIA_TYPE]["examples"] = requests
            statuses = sorted({status for e in own.values() for status in e.responses})
            for status in statuses:
                content = operation["responses"][str(status)]["content"][JSON_MEDIA_TYPE]
                content["examples"] = {
                    name: {"summary": e.summary, "value": e.responses[status]}
                    for name, e in own.items()
                    if status in e.responses
                }
