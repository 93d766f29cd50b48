"""The in-process operations give the HTTP API's answers, and raise its errors."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest

from service import operations
from service.errors import InvalidInput, NotFound

Y_TRUE = [1, 2, 0]
Y_PRED = [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]]


def test_the_module_examples_run() -> None:
    result = doctest.testmod(operations)
    assert result.attempted >= 2 and result.failed == 0


def test_loss_metric_and_evaluate_equal_the_api(client: Any) -> None:
    body = {"y_true": Y_TRUE, "y_pred": Y_PRED}
    assert operations.loss("categorical_crossentropy", Y_TRUE, Y_PRED, label_smoothing=0.1) == (
        client.post(
            "/v1/losses/categorical_crossentropy", json={**body, "label_smoothing": 0.1}
        ).json()
    )
    assert operations.metric("f1_score", np.array(Y_TRUE), np.array(Y_PRED), average="macro") == (
        client.post("/v1/metrics/f1_score", json={**body, "average": "macro"}).json()
    )
    evaluated = operations.evaluate(
        Y_TRUE, Y_PRED, [1.0, 2.0, 0.5], metrics=["accuracy", "auc"], reports=["per_class"]
    )
    expected = client.post(
        "/v1/evaluate",
        json={
            **body,
            "sample_weight": [1.0, 2.0, 0.5],
            "metrics": ["accuracy", "auc"],
            "reports": ["per_class"],
        },
    ).json()
    assert evaluated == expected


def test_the_api_errors_are_raised() -> None:
    with pytest.raises(NotFound):
        operations.loss("nope", Y_TRUE, Y_PRED)
    with pytest.raises(InvalidInput, match="alpha"):
        operations.loss("categorical_crossentropy", Y_TRUE, Y_PRED, alpha=0.5)
    with pytest.raises(InvalidInput, match="non-finite"):
        operations.metric("accuracy", Y_TRUE, np.full((3, 3), np.nan))


def test_heads() -> None:
    head = {"y_true": Y_TRUE, "y_pred": Y_PRED}
    out = operations.evaluate_heads({"a": head, "b": head}, loss_weights={"a": 2.0})
    loss = out["outputs"]["a"]["losses"]["sparse_categorical_crossentropy"]
    assert out["total_loss"] == pytest.approx(3 * loss)
