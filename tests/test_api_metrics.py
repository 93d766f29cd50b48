"""POST /v1/metrics/{name} and GET /v1/metrics through HTTP."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

MULTI_TRUE = [[1, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 1, 0]]
MULTI_PRED = [
    [0.9, 0.1, 0.0, 0.0, 0.2, 0.0, 0.0, 0.3],
    [0.0, 0.0, 0.1, 0.8, 0.0, 0.0, 0.0, 0.0],
    [0.1, 0.7, 0.0, 0.0, 0.0, 0.0, 0.6, 0.0],
]


@pytest.mark.parametrize(
    ("y_true", "resolved"),
    [
        ([1, 0], "sparse_categorical_accuracy"),
        ([[0, 1, 0], [1, 0, 0]], "categorical_accuracy"),
        ([[0.2, 0.8, 0.0], [0.6, 0.4, 0.0]], "categorical_accuracy"),
        ([[0, 1, 1], [1, 0, 0]], "subset_accuracy"),
    ],
)
def test_accuracy_is_resolved_from_the_labels(client: Any, y_true: Any, resolved: str) -> None:
    y_pred = [[0.1, 0.6, 0.7], [0.8, 0.1, 0.1]]
    r = client.post("/v1/metrics/accuracy", json={"y_true": y_true, "y_pred": y_pred})
    assert r.status_code == 200, r.text
    assert r.json()["resolved_as"] == resolved


def test_accuracy_takes_no_k(client: Any) -> None:
    """None of the metrics it resolves to ranks the top k: a `k` would be ignored and the
    top-1 value answered (0.75 here, where top-2 is 1.0)."""
    y_pred = [[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.6, 0.2, 0.2], [0.2, 0.2, 0.6]]
    body = {"y_true": [1, 0, 0, 2], "y_pred": y_pred, "k": 2}
    r = client.post("/v1/metrics/accuracy", json=body)
    assert r.status_code == 422 and "accuracy does not take `k`" in r.json()["detail"], r.text
    r = client.post("/v1/metrics/sparse_top_k_categorical_accuracy", json=body)
    assert r.json()["value"] == 1.0


def test_binary_labels_resolve_to_binary_accuracy(client: Any) -> None:
    r = client.post("/v1/metrics/accuracy", json={"y_true": [0, 1, 1], "y_pred": [0.2, 0.9, 0.4]})
    assert r.json()["resolved_as"] == "binary_accuracy"
    assert r.json()["value"] == pytest.approx(2 / 3)


def test_binary_accuracy_on_multi_hot_labels_is_diagnosed(client: Any) -> None:
    r = client.post(
        "/v1/metrics/binary_accuracy", json={"y_true": MULTI_TRUE, "y_pred": MULTI_PRED}
    )
    body = r.json()
    # 24 labels, one wrong (0.3 below 0.5 on a positive): 23 / 24.
    assert body["value"] == pytest.approx(23 / 24)
    (warning,) = body["warnings"]
    assert warning["code"] == "binary_accuracy_inflated"
    # all-zeros scores the share of zeros, 19 / 24; subset accuracy is 2 / 3 rows.
    assert f"{19 / 24:.4f}" in warning["message"] and f"{2 / 3:.4f}" in warning["message"]


def test_threshold_metrics_take_from_logits(client: Any) -> None:
    body = {"y_true": [0, 1], "y_pred": [-0.5, 0.3], "from_logits": True}
    assert client.post("/v1/metrics/binary_accuracy", json=body).json()["value"] == 1.0
    body["from_logits"] = False
    assert client.post("/v1/metrics/binary_accuracy", json=body).json()["value"] == 0.5


def test_f_scores_rule_on_a_zero_maximum_reads_the_sigmoid_with_from_logits(client: Any) -> None:
    """Without a threshold a row whose maximum is 0 predicts nothing; with from_logits that
    is read of sigmoid(y_pred), never 0: a row of logits whose largest is 0 predicts it, as
    on the sigmoid's values without from_logits."""
    logits = [[-1.0, 0.0, -3.0], [2.0, 1.0, 0.0]]
    sigmoid = (1 / (1 + np.exp(-np.array(logits, np.float32)))).tolist()
    body = {"y_true": [[0, 1, 0], [1, 0, 0]], "average": "micro"}
    got = client.post("/v1/metrics/f1_score", json={**body, "y_pred": logits, "from_logits": True})
    on_sigmoid = client.post("/v1/metrics/f1_score", json={**body, "y_pred": sigmoid})
    zero = client.post("/v1/metrics/f1_score", json={**body, "y_pred": [[0, 0, 0], [1, 0, 0]]})
    assert got.json()["value"] == pytest.approx(on_sigmoid.json()["value"]) == pytest.approx(1.0)
    assert zero.json()["value"] == pytest.approx(2 / 3)  # the row of zeros predicts nothing


def test_weighted_mean(client: Any) -> None:
    r = client.post(
        "/v1/metrics/sparse_categorical_accuracy",
        json={
            "y_true": [0, 1, 2],
            "y_pred": [[1, 0, 0], [1, 0, 0], [0, 0, 1]],
            "sample_weight": [1, 3, 1],
        },
    )
    assert r.json()["value"] == pytest.approx(2 / 5)


def test_argmax_metric_rejects_soft_labels_for_sparse(client: Any) -> None:
    r = client.post(
        "/v1/metrics/sparse_categorical_accuracy",
        json={"y_true": [[0.5, 0.5]], "y_pred": [[0.4, 0.6]]},
    )
    assert r.status_code == 422 and "categorical_accuracy" in r.json()["detail"]


def test_catalogue(client: Any) -> None:
    names = {m["name"] for m in client.get("/v1/metrics").json()["metrics"]}
    assert names == {
        "binary_accuracy",
        "categorical_accuracy",
        "sparse_categorical_accuracy",
        "top_k_categorical_accuracy",
        "sparse_top_k_categorical_accuracy",
        "subset_accuracy",
        "accuracy",
        "precision",
        "recall",
        "f1_score",
        "fbeta_score",
        "auc",
        "expected_calibration_error",
        "brier_score",
    }


def test_binary_accuracy_that_overstates_nothing_is_not_diagnosed(client: Any) -> None:
    """Multi-hot labels, mostly zeros, every label right: binary and subset accuracy are
    both 1.0, and nothing is inflated."""
    y_true = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]
    y_pred = [[0.9, 0.1, 0.2, 0.1], [0.1, 0.8, 0.1, 0.3], [0.2, 0.1, 0.9, 0.7]]
    r = client.post("/v1/metrics/binary_accuracy", json={"y_true": y_true, "y_pred": y_pred})
    assert r.json()["value"] == 1.0
    assert r.json()["warnings"] == []
    body = {"y_true": y_true, "y_pred": y_pred, "metrics": ["binary_accuracy", "accuracy"]}
    evaluated = client.post("/v1/evaluate", json=body).json()
    assert evaluated["metrics"] == {"binary_accuracy": 1.0, "accuracy": 1.0}
    assert evaluated["warnings"] == []


def test_auc_of_one_class_is_diagnosed_saying_why(client: Any) -> None:
    """No negatives; positives that all weigh 0 (the labels hold both classes, the
    weighted counts one); a multi-label column without positives."""
    r = client.post("/v1/metrics/auc", json={"y_true": [1, 1], "y_pred": [0.2, 0.3]})
    (warning,) = r.json()["warnings"]
    assert warning["code"] == "auc_undefined" and r.json()["value"] == 0.0
    assert warning["message"].startswith("The labels hold no negative element, so the ROC")
    # The PR curve without negatives is defined: its area is what was computed, no warning.
    for summation, area in (("interpolation", 1.0), ("minoring", 2 / 3)):
        body = {"y_true": [1, 1, 1], "y_pred": [0.2, 0.5, 0.9], "curve": "PR"}
        r = client.post("/v1/metrics/auc", json={**body, "summation_method": summation})
        assert r.json()["warnings"] == [] and r.json()["value"] == pytest.approx(area)
    r = client.post("/v1/metrics/auc", json={"y_true": [0, 0], "y_pred": [0.2, 0.3], "curve": "PR"})
    (warning,) = r.json()["warnings"]
    assert "no positive element, so the PR curve's recall is undefined" in warning["message"]
    r = client.post(
        "/v1/metrics/auc",
        json={"y_true": [1, 0], "y_pred": [0.8, 0.3], "sample_weight": [0, 1]},
    )
    (warning,) = r.json()["warnings"]
    assert warning["message"].startswith("The labels hold no positive element of nonzero weight")
    assert "(`sample_weight` counts each element as its weight)" in warning["message"]
    r = client.post(
        "/v1/metrics/auc",
        json={"y_true": [[1, 0], [0, 0]], "y_pred": [[0.8, 0.3], [0.1, 0.6]], "multi_label": True},
    )
    (warning,) = r.json()["warnings"]
    assert warning["message"].startswith("1 of 2 label columns have no positive (column 1 first)")
