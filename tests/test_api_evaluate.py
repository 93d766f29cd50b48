"""POST /v1/evaluate: many losses and metrics, defaults from the labels, several heads."""

from __future__ import annotations

import math
from typing import Any

import pytest

Y_PRED = [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]
CCE = (-math.log(0.95) - math.log(0.1)) / 2


def test_defaults_fit_the_labels(client: Any) -> None:
    r = client.post("/v1/evaluate", json={"y_true": [1, 2], "y_pred": Y_PRED})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label_encoding"] == "sparse"
    assert body["losses"] == {"sparse_categorical_crossentropy": pytest.approx(CCE, rel=1e-5)}
    assert body["metrics"] == {"accuracy": 0.5}
    assert body["resolved"] == {"accuracy": "sparse_categorical_accuracy"}


def test_multi_hot_defaults_to_binary_loss_and_subset_accuracy(client: Any) -> None:
    r = client.post(
        "/v1/evaluate", json={"y_true": [[1, 1, 0], [0, 0, 0]], "y_pred": [[0.9, 0.6, 0.2]] * 2}
    )
    body = r.json()
    assert body["label_encoding"] == "multi_hot"
    assert list(body["losses"]) == ["binary_crossentropy"]
    assert body["resolved"]["accuracy"] == "subset_accuracy"
    assert body["metrics"]["accuracy"] == 0.5


def test_named_entries_params_and_top_level_from_logits(client: Any) -> None:
    logits = [[1.0, 3.0, -1.0], [0.0, 0.5, 2.0]]
    r = client.post(
        "/v1/evaluate",
        json={
            "y_true": [1, 2],
            "y_pred": logits,
            "from_logits": True,
            "losses": [
                "categorical_crossentropy",
                {"name": "categorical_crossentropy", "label_smoothing": 0.1, "as": "smoothed"},
            ],
            "metrics": ["accuracy", {"name": "sparse_top_k_categorical_accuracy", "k": 1}],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()

    def lse(row: list[float]) -> float:
        return math.log(sum(math.exp(x) for x in row))

    plain = (lse(logits[0]) - 3.0 + lse(logits[1]) - 2.0) / 2
    assert body["losses"]["categorical_crossentropy"] == pytest.approx(plain, rel=1e-5)
    assert body["losses"]["smoothed"] > body["losses"]["categorical_crossentropy"]
    assert body["metrics"] == {"accuracy": 1.0, "sparse_top_k_categorical_accuracy": 1.0}


def test_same_name_twice_without_as_is_422(client: Any) -> None:
    r = client.post(
        "/v1/evaluate",
        json={"y_true": [1, 2], "y_pred": Y_PRED, "losses": ["binary_crossentropy"] * 2},
    )
    assert r.status_code == 422


def test_duplicate_loss_entries_and_reduction_none_are_422(client: Any) -> None:
    r = client.post(
        "/v1/evaluate",
        json={
            "y_true": [1, 2],
            "y_pred": Y_PRED,
            "losses": ["categorical_crossentropy", "categorical_crossentropy"],
        },
    )
    assert r.status_code == 422 and "`as`" in r.json()["detail"]
    r = client.post(
        "/v1/evaluate",
        json={
            "y_true": [1, 2],
            "y_pred": Y_PRED,
            "losses": [{"name": "categorical_crossentropy", "reduction": "none"}],
        },
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["losses", 0, "reduction"]


def test_several_heads_and_total_loss(client: Any) -> None:
    r = client.post(
        "/v1/evaluate",
        json={
            "outputs": {
                "kind": {"y_true": [1, 2], "y_pred": Y_PRED},
                "tags": {
                    "y_true": [[1, 0], [0, 1]],
                    "y_pred": [[0.8, 0.1], [0.3, 0.6]],
                    "losses": ["binary_crossentropy"],
                },
            },
            "loss_weights": {"kind": 0.5},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    bce = -(math.log(0.8) + math.log(0.9) + math.log(0.7) + math.log(0.6)) / 4
    assert body["outputs"]["tags"]["losses"]["binary_crossentropy"] == pytest.approx(bce, 1e-5)
    assert body["total_loss"] == pytest.approx(0.5 * CCE + bce, rel=1e-5)


def test_head_errors_point_into_the_head(client: Any) -> None:
    r = client.post(
        "/v1/evaluate",
        json={"outputs": {"a": {"y_true": [1, 7], "y_pred": Y_PRED}}},
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"][:3] == ["outputs", "a", "y_true"]
    r = client.post(
        "/v1/evaluate",
        json={"outputs": {"a": {"y_true": [1, 2], "y_pred": Y_PRED}}, "loss_weights": {"b": 1}},
    )
    assert r.status_code == 422 and "not a head" in r.json()["detail"]
