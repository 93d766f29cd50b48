"""POST /v1/losses/{name} and GET /v1/losses through HTTP."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import orjson
import pytest

Y_TRUE = [[0, 1, 0], [0, 0, 1]]
Y_PRED = [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]
# Keras' documented example: mean of -log(0.95) and -log(0.1).
EXPECTED = (-math.log(0.95) - math.log(0.1)) / 2


def problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail", "errors"} <= set(body)
    assert body["status"] == status and body["errors"]
    return body


def test_documented_example(client: Any) -> None:
    r = client.post(
        "/v1/losses/categorical_crossentropy", json={"y_true": Y_TRUE, "y_pred": Y_PRED}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["loss"] == pytest.approx(EXPECTED, rel=1e-6)
    assert body["label_encoding"] == "one_hot" and body["n_samples"] == 2
    assert body["n_classes"] == 3 and body["warnings"] == []


@pytest.mark.parametrize("labels", [[1, 2], [1.0, 2.0], [[1], [2]], Y_TRUE])
@pytest.mark.parametrize("name", ["categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_either_label_encoding_gives_the_same_loss(client: Any, name: str, labels: Any) -> None:
    r = client.post(f"/v1/losses/{name}", json={"y_true": labels, "y_pred": Y_PRED})
    assert r.status_code == 200, r.text
    assert r.json()["loss"] == pytest.approx(EXPECTED, rel=1e-5)


def test_reduction_none_gives_per_sample_values(client: Any) -> None:
    r = client.post(
        "/v1/losses/binary_crossentropy",
        json={"y_true": [0, 1, 1], "y_pred": [0.1, 0.8, 0.4], "reduction": "none"},
    )
    assert r.status_code == 200
    expected = [-math.log(0.9), -math.log(0.8), -math.log(0.4)]
    assert r.json()["loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("body", "shape"),
    [
        # Keras (squeeze_or_expand_to_same_rank) expands per-sample losses of rank 1 to the
        # weights' (n, 1): SparseCategoricalCrossentropy(reduction="none")(y, p,
        # sample_weight=[[1.], [2.]]) is [[0.0513], [4.6052]].
        ({"y_true": [1, 2], "y_pred": [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]}, [2, 1]),
        ({"y_true": [[1], [0]], "y_pred": [[0.8], [0.3]]}, [2, 1]),
        # Losses of rank 2 (sequences) take (n, t, 1) weights squeezed.
        ({"y_true": [[1, 0]], "y_pred": [[[0.2, 0.8], [0.6, 0.4]]]}, [1, 2]),
    ],
)
def test_reduction_none_with_a_trailing_weight_axis_has_keras_shape(
    client: Any, body: dict[str, Any], shape: list[int]
) -> None:
    y_pred = np.asarray(body["y_pred"])
    n_weights = y_pred.shape[:-1] if y_pred.shape[-1] > 1 else y_pred.shape[:1]
    weights = np.arange(1.0, 1.0 + np.prod(n_weights)).reshape(*n_weights, 1)
    name = "binary_crossentropy" if y_pred.shape[-1] == 1 else "sparse_categorical_crossentropy"
    weighted = client.post(
        f"/v1/losses/{name}",
        json={**body, "reduction": "none", "sample_weight": weights.tolist()},
    )
    assert weighted.status_code == 200, weighted.text
    flat = client.post(
        f"/v1/losses/{name}",
        json={**body, "reduction": "none", "sample_weight": weights[..., 0].tolist()},
    )
    got = np.asarray(weighted.json()["loss"])
    assert list(got.shape) == shape
    np.testing.assert_array_equal(got.reshape(-1), np.asarray(flat.json()["loss"]).reshape(-1))


def test_typed_arrays_are_accepted(client: Any) -> None:
    def typed(a: np.ndarray) -> dict[str, Any]:
        return {"dtype": a.dtype.name, "shape": list(a.shape), "data": base64.b64encode(a).decode()}

    body = {"y_true": typed(np.int32([1, 2])), "y_pred": typed(np.float32(Y_PRED))}
    r = client.post("/v1/losses/sparse_categorical_crossentropy", json=body)
    assert r.status_code == 200
    assert r.json()["loss"] == pytest.approx(EXPECTED, rel=1e-5)


def test_binary_encoding(client: Any) -> None:
    y_pred, y_true = np.float32(Y_PRED), np.int64([1, 2])
    header = orjson.dumps(
        {
            "y_true": {"dtype": "int64", "shape": [2], "binary_data_size": y_true.nbytes},
            "y_pred": {"dtype": "float32", "shape": [2, 3], "binary_data_size": y_pred.nbytes},
            "reduction": "sum",
        }
    )
    r = client.post(
        "/v1/losses/categorical_crossentropy",
        content=header + y_true.tobytes() + y_pred.tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["loss"] == pytest.approx(2 * EXPECTED, rel=1e-5)


def test_logits_need_from_logits(client: Any) -> None:
    logits = [[2.0, -1.0, 0.5], [0.3, 1.2, -0.7]]
    body = problem(
        client.post(
            "/v1/losses/categorical_crossentropy", json={"y_true": [0, 1], "y_pred": logits}
        ),
        422,
    )
    assert "from_logits: true" in body["detail"] and "-1.0" in body["detail"]
    ok = client.post(
        "/v1/losses/categorical_crossentropy",
        json={"y_true": [0, 1], "y_pred": logits, "from_logits": True},
    )
    assert ok.status_code == 200


def test_binary_losses_reject_probabilities_above_one(client: Any) -> None:
    r = client.post("/v1/losses/binary_crossentropy", json={"y_true": [0, 1], "y_pred": [0.2, 1.5]})
    assert "from_logits" in problem(r, 422)["detail"]


def test_soft_labels_to_the_sparse_loss_name_the_loss_that_fits(client: Any) -> None:
    r = client.post(
        "/v1/losses/sparse_categorical_crossentropy",
        json={"y_true": [[0.2, 0.8, 0.0], [0.0, 0.5, 0.5]], "y_pred": Y_PRED},
    )
    assert "use categorical_crossentropy" in problem(r, 422)["detail"]
    r = client.post(
        "/v1/losses/sparse_categorical_crossentropy",
        json={"y_true": [[1, 1, 0], [0, 0, 1]], "y_pred": Y_PRED},
    )
    assert "use binary_crossentropy" in problem(r, 422)["detail"]


def test_a_parameter_the_loss_does_not_take_is_422(client: Any) -> None:
    r = client.post(
        "/v1/losses/sparse_categorical_crossentropy",
        json={"y_true": [1, 2], "y_pred": Y_PRED, "label_smoothing": 0.1},
    )
    body = problem(r, 422)
    assert "does not take `label_smoothing`" in body["detail"]
    assert body["errors"][0]["loc"] == ["label_smoothing"]


def test_warnings_for_renormalized_and_double_softmax(client: Any) -> None:
    r = client.post(
        "/v1/losses/categorical_crossentropy",
        json={"y_true": [1, 0], "y_pred": [[0.2, 0.2, 0.1], [0.5, 0.3, 0.1]]},
    )
    codes = [w["code"] for w in r.json()["warnings"]]
    assert codes == ["probabilities_renormalized"]
    r = client.post(
        "/v1/losses/categorical_crossentropy",
        json={"y_true": [1, 2], "y_pred": Y_PRED, "from_logits": True},
    )
    assert [w["code"] for w in r.json()["warnings"]] == ["predictions_look_like_probabilities"]


def test_rows_without_a_positive_are_not_called_multi_hot(client: Any) -> None:
    """An all-zero row sent to a categorical loss (a loss of 0 for it) is its own
    diagnosis; several ones in a row the multi-hot one, each counting its rows."""
    y_pred = [[0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]
    r = client.post(
        "/v1/losses/categorical_crossentropy",
        json={"y_true": [[0, 0, 0], [0, 1, 0], [0, 0, 1]], "y_pred": y_pred},
    )
    (warning,) = r.json()["warnings"]
    assert warning["code"] == "labels_without_positive"
    assert warning["message"].startswith("1 of 3 rows of `y_true` hold no 1 (every target 0)")
    r = client.post(
        "/v1/losses/categorical_crossentropy",
        json={"y_true": [[1, 1, 0], [0, 0, 0], [0, 1, 1]], "y_pred": y_pred},
    )
    codes = {w["code"]: w["message"] for w in r.json()["warnings"]}
    assert set(codes) == {"multi_hot_labels_with_categorical_loss", "labels_without_positive"}
    assert "(2 of 3 rows hold several ones)" in codes["multi_hot_labels_with_categorical_loss"]
    r = client.post(
        "/v1/metrics/categorical_accuracy",
        json={"y_true": [[0, 0, 0], [0, 1, 0], [0, 0, 1]], "y_pred": y_pred},
    )
    assert [w["code"] for w in r.json()["warnings"]] == ["labels_without_positive"]
    assert "takes the argmax of each, class 0" in r.json()["warnings"][0]["message"]


def test_a_loss_that_overflows_names_what_to_make_smaller(client: Any) -> None:
    """The values alone when no weights were sent; weights too when they were."""
    logits = [[-1e38, 1e38], [1e38, -1e38]]
    body = {"y_true": [0, 1], "y_pred": logits, "from_logits": True}
    r = client.post("/v1/losses/sparse_categorical_crossentropy", json=body)
    assert r.status_code == 422, r.text
    assert "Expected smaller `y_pred` values, or" in r.json()["detail"]
    r = client.post(
        "/v1/losses/sparse_categorical_crossentropy", json={**body, "sample_weight": [1, 1]}
    )
    assert "Expected smaller `sample_weight` or `y_pred` values" in r.json()["detail"]


def test_unknown_loss_is_404_listing_the_known_ones(client: Any) -> None:
    body = problem(client.post("/v1/losses/hinge", json={"y_true": [1], "y_pred": [[1]]}), 404)
    assert "categorical_crossentropy" in body["detail"]


def test_catalogue_lists_every_parameter_and_default(client: Any) -> None:
    r = client.get("/v1/losses")
    assert r.status_code == 200
    losses = {item["name"]: item for item in r.json()["losses"]}
    assert len(losses) == 5
    focal = {p["name"]: p["default"] for p in losses["binary_focal_crossentropy"]["parameters"]}
    assert focal == {
        "apply_class_balancing": False,
        "alpha": 0.25,
        "gamma": 2.0,
        "from_logits": False,
        "label_smoothing": 0.0,
        "axis": -1,
        "reduction": "sum_over_batch_size",
    }
    assert "binary_accuracy_inflated" in r.json()["warning_codes"]
