"""The service's operations in process, typed: exactly what the HTTP API computes, for
tests, benchmarks, notebooks and the command line.

Arrays are NumPy arrays (or nested lists); parameters are the loss's or metric's Keras
parameters by keyword, checked as the API checks them. Each call returns the response
the API would send, as a dict, and raises the API's errors
(:class:`service.errors.ServiceError`: ``InvalidInput`` for a 422, ``NotFound`` for
a 404, ...)::

    >>> from service import operations
    >>> out = operations.loss("sparse_categorical_crossentropy", [1, 2],
    ...                       [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    >>> round(out["loss"], 6)
    1.176939
    >>> operations.metric("accuracy", [1, 2], [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])["resolved_as"]
    'sparse_categorical_accuracy'
"""

from __future__ import annotations

from typing import Any

from service import evaluation

#: The element limit of the in-process calls (the service's default setting).
MAX_ELEMENTS = 64 * 1024 * 1024


def _document(
    y_true: Any, y_pred: Any, sample_weight: Any, params: dict[str, Any]
) -> dict[str, Any]:
    document = {"y_true": y_true, "y_pred": y_pred, **params}
    if sample_weight is not None:
        document["sample_weight"] = sample_weight
    return document


def loss(
    name: str, y_true: Any, y_pred: Any, sample_weight: Any = None, **params: Any
) -> dict[str, Any]:
    """``POST /v1/losses/{name}``: ``{"loss", "name", "reduction", "label_encoding",
    "n_samples", "n_classes", "warnings"}``."""
    return evaluation.loss(name, _document(y_true, y_pred, sample_weight, params), MAX_ELEMENTS)


def metric(
    name: str, y_true: Any, y_pred: Any, sample_weight: Any = None, **params: Any
) -> dict[str, Any]:
    """``POST /v1/metrics/{name}``: ``{"value", "name", "resolved_as", ...}``."""
    return evaluation.metric(name, _document(y_true, y_pred, sample_weight, params), MAX_ELEMENTS)


def evaluate(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    losses: list[Any] | None = None,
    metrics: list[Any] | None = None,
    reports: list[Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``POST /v1/evaluate`` on one batch: ``losses``/``metrics`` None mean those that fit
    the labels; ``options`` are evaluate's other fields (``from_logits``,
    ``label_encoding``, ``dtype``, ``class_names``)."""
    entries = {"losses": losses, "metrics": metrics, "reports": reports}
    params = {**options, **{k: v for k, v in entries.items() if v is not None}}
    return evaluation.evaluate(_document(y_true, y_pred, sample_weight, params), MAX_ELEMENTS)


def evaluate_heads(
    outputs: dict[str, dict[str, Any]], loss_weights: dict[str, float] | None = None
) -> dict[str, Any]:
    """``POST /v1/evaluate`` with several heads (each an evaluate document)."""
    document: dict[str, Any] = {"outputs": outputs}
    if loss_weights is not None:
        document["loss_weights"] = loss_weights
    return evaluation.evaluate(document, MAX_ELEMENTS)
