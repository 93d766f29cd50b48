"""POST /v1/evaluate: many losses and metrics, defaults from the labels, several heads."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
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


def test_heads_of_different_sizes_are_refused(client: Any) -> None:
    """One model's outputs for the same samples (as a streaming batch's heads must be)."""
    heads = {
        "a": {"y_true": [1], "y_pred": [[0.3, 0.7]]},
        "b": {"y_true": [0, 1, 1], "y_pred": [[0.6, 0.4], [0.2, 0.8], [0.1, 0.9]]},
    }
    r = client.post("/v1/evaluate", json={"outputs": heads})
    assert r.status_code == 422, r.text
    assert "received {'a': 1, 'b': 3}" in r.json()["detail"]
    assert r.json()["errors"][0]["loc"] == ["outputs"]


@pytest.mark.parametrize("head", ["", "a/b", "x\u0001"])
def test_head_names_are_non_empty_without_slash_or_control_characters(
    client: Any, head: str
) -> None:
    """As for a streaming evaluation and evaluate's page: the JSON answer and the page
    of one body agree."""
    body = {"outputs": {head: {"y_true": [1], "y_pred": [[0.3, 0.7]]}}}
    for accept in ("application/json", "text/html"):
        r = client.post("/v1/evaluate", json=body, headers={"accept": accept})
        assert r.status_code == 422, (accept, r.text[:200])
        assert r.json()["errors"][0]["loc"] == ["outputs", head]


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
    # loss_weights is an object of numbers (or absent, or null); nothing else passes for it.
    heads = {"a": {"y_true": [1, 2], "y_pred": Y_PRED}}
    for wrong in ([], 0, "", False, [1]):
        r = client.post("/v1/evaluate", json={"outputs": heads, "loss_weights": wrong})
        assert r.status_code == 422, (wrong, r.text)
        assert r.json()["errors"][0]["loc"] == ["loss_weights"]
        assert "`loss_weights` must be a JSON object" in r.json()["detail"]
    r = client.post("/v1/evaluate", json={"outputs": heads, "loss_weights": None})
    assert r.status_code == 200
    # A total that overflows is refused, not sent as null: a loss of -log(0.01) ≈ 4.6
    # times 1e308.
    wrong_head = {"y_true": [2, 2], "y_pred": [[0.98, 0.01, 0.01]] * 2}
    r = client.post(
        "/v1/evaluate", json={"outputs": {"a": wrong_head}, "loss_weights": {"a": 1e308}}
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["loss_weights"]
    assert "`total_loss` is not finite" in r.json()["detail"]


def test_unknown_names_are_one_404_listing_every_one(client: Any) -> None:
    body = {
        "y_true": [0, 1],
        "y_pred": [[0.9, 0.1], [0.2, 0.8]],
        "losses": ["nope_loss", "categorical_crossentropy"],
        "metrics": ["accuracy", "nope_a", {"name": "nope_b"}],
    }
    r = client.post("/v1/evaluate", json=body)
    assert r.status_code == 404
    problem = r.json()
    assert "'nope_loss'" in problem["detail"]
    body["losses"] = ["categorical_crossentropy"]
    r = client.post("/v1/evaluate", json=body)
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert "'nope_a'" in detail and "'nope_b'" in detail and "precision" in detail
    assert [e["loc"] for e in r.json()["errors"]] == [
        ["metrics", 1, "name"],
        ["metrics", 2, "name"],
    ]


def test_resolved_only_for_an_accuracy_that_was_asked(client: Any) -> None:
    base = {"y_true": [0, 1], "y_pred": [[0.9, 0.1], [0.2, 0.8]]}
    asked = client.post("/v1/evaluate", json={**base, "metrics": ["categorical_accuracy"]})
    assert asked.json()["resolved"] == {}
    default = client.post("/v1/evaluate", json=base)
    assert default.json()["resolved"] == {"accuracy": "sparse_categorical_accuracy"}


def test_new_metrics_and_reports_in_evaluate(client: Any) -> None:
    body = {
        "y_true": [0, 1, 2, 1],
        "y_pred": [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]],
        "metrics": ["precision", {"name": "f1_score", "average": "macro"}, "auc"],
        "reports": ["per_class", "confusion_matrix", {"name": "calibration", "n_bins": 5}],
        "class_names": ["cat", "dog", "eel"],
    }
    r = client.post("/v1/evaluate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    # Predicted classes 0, 1, 2, 0 against 0, 1, 2, 1: one dog taken for a cat.
    assert out["reports"]["confusion_matrix"] == {
        "labels": ["cat", "dog", "eel"],
        "matrix": [[1, 0, 0], [1, 1, 0], [0, 0, 1]],
    }
    per_class = out["reports"]["per_class"]
    assert per_class["support"] == [1, 2, 1]
    assert per_class["recall"] == pytest.approx([1.0, 0.5, 1.0])
    assert per_class["precision"] == pytest.approx([0.5, 1.0, 1.0])
    assert set(per_class["loss"]) == {"sparse_categorical_crossentropy"}
    assert out["reports"]["calibration"]["n_bins"] == 5
    # f1 per class: 2/3, 2/3, 1 → macro 7/9 (Keras adds an epsilon).
    assert out["metrics"]["f1_score"] == pytest.approx(7 / 9, rel=1e-5)
    assert 0 < out["metrics"]["auc"] <= 1


def test_a_report_over_the_class_limit_is_422(make_client: Any) -> None:
    client = make_client(max_confusion_classes=2)
    body = {
        "y_true": [0, 1, 2],
        "y_pred": [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
        "reports": ["confusion_matrix"],
    }
    r = client.post("/v1/evaluate", json=body)
    assert r.status_code == 422
    assert "LOSS_SERVICE_MAX_CONFUSION_CLASSES" in r.json()["detail"]


def test_unknown_losses_are_one_404_naming_each_and_the_known_ones(client: Any) -> None:
    body = {"y_true": [0, 1], "y_pred": [[0.7, 0.3], [0.2, 0.8]], "losses": ["nope", "nada"]}
    r = client.post("/v1/evaluate", json=body)
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert detail.startswith("Unknown losses 'nope', 'nada' in `losses`: expected losses among ")
    assert "sparse_categorical_crossentropy" in detail
    one = client.post("/v1/evaluate", json={**body, "losses": ["nope"]}).json()["detail"]
    assert one.startswith("Unknown loss 'nope' in `losses`: expected losses among ")


HUGE = {"y_true": [0, 1], "y_pred": [[0.9, 0.1], [0.8, 0.2]], "dtype": "float64"}


def _refused_for_overflowing_weights(r: Any) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    detail = r.json()["detail"]
    assert "weighted sum `weight` overflows float64" in detail, detail
    assert "Expected `sample_weight` values whose weighted sums" in detail
    assert "received `sample_weight` values up to 1e+308, whose sum overflows" in detail


def test_weighted_sums_that_overflow_float64_are_a_422_not_a_wrong_number(client: Any) -> None:
    # Weights 1e308 fit float64, their sum does not: the accuracy Σ w·correct / Σ w would
    # be 1e308 / inf = 0 where it is 0.5. A 422 saying so.
    body = {**HUGE, "sample_weight": [1e308, 1e308]}
    _refused_for_overflowing_weights(client.post("/v1/evaluate", json=body))
    # Metrics only: the accuracy's sums are refused alike.
    r = client.post("/v1/evaluate", json={**body, "losses": [], "metrics": ["accuracy"]})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["metrics", 0]
    assert "The accuracy metric cannot be computed" in r.json()["detail"]


def test_the_report_page_of_weights_whose_sums_overflow_is_a_422(client: Any) -> None:
    body = {**HUGE, "sample_weight": [1e308, 1e308]}
    r = client.post("/v1/evaluate", json=body, headers={"Accept": "text/html"})
    _refused_for_overflowing_weights(r)


def test_a_metric_whose_finite_sums_would_overflow_when_added_is_a_422(client: Any) -> None:
    # tp = fp = 1e308 are finite, tp + fp is not: precision would read 0 where it is 0.5.
    # Metrics are computed from weighted sums below 2**1000 (≈ 1.07e301), within which
    # nothing they add up overflows.
    body = {"y_true": [1, 0], "y_pred": [0.9, 0.8], "dtype": "float64"}
    weighted = {**body, "sample_weight": [1e308, 1e308]}
    r = client.post("/v1/metrics/precision", json=weighted)
    assert r.status_code == 422, r.text
    assert "The precision metric cannot be computed" in r.json()["detail"]
    assert "past the 1.07e+301 (2**1000)" in r.json()["detail"]
    r = client.post(
        "/v1/evaluate", json={**weighted, "losses": [], "metrics": ["precision", "auc"]}
    )
    assert r.status_code == 422, r.text
    # Within the limit, the same weights' ratios are computed right.
    within = {**body, "sample_weight": [3e300, 3e300]}
    assert client.post("/v1/metrics/precision", json=within).json()["value"] == 0.5
    r = client.post("/v1/evaluate", json={**HUGE, "sample_weight": [3e300, 3e300]})
    assert r.status_code == 200, r.text
    assert r.json()["metrics"] == {"accuracy": 0.5}
    # An AUC's counts per threshold are bounded added up, and its message says so.
    auc = {**body, "sample_weight": [1e299, 1e299], "num_thresholds": 200}
    r = client.post("/v1/metrics/auc", json=auc)
    assert r.status_code == 422, r.text
    assert "added up over its 200 elements reaches" in r.json()["detail"], r.text


def test_soft_targets_as_json_or_float32_give_the_same_bits(client: Any) -> None:
    # The same float32 values sent as JSON lists (read as float64) and as a typed float32
    # array: one batch for a streaming evaluation's hash, so one set of numbers.
    y_true = np.float32([[0.15865174, 0.1778992, 0.66344905], [0.6482021, 0.35166007, 1.4e-4]])
    y_pred = [[0.66523004, 0.021254132, 0.31351587], [0.19502917, 0.7236425, 0.081328303]]
    as_typed = {
        "dtype": "float32",
        "shape": [2, 3],
        "data": base64.b64encode(y_true.tobytes()).decode(),
    }
    metrics = [
        {"name": n, "average": a, "as": f"{n}_{a}"}
        for n in ("f1_score", "fbeta_score")
        for a in ("micro", "macro", "weighted")
    ]
    answers = [
        client.post(
            "/v1/evaluate",
            json={"y_true": targets, "y_pred": y_pred, "metrics": [*metrics, "brier_score", "auc"]},
        ).json()
        for targets in (y_true.tolist(), as_typed)
    ]
    assert answers[0]["metrics"] == answers[1]["metrics"]
