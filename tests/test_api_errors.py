"""A battery of bad inputs: each gets a clear 4xx problem, never a 5xx."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

GOOD_PRED = [[0.2, 0.8], [0.6, 0.4]]
F32 = base64.b64encode(np.float32([0.5, 0.5]).tobytes()).decode()

JSON_CASES: list[tuple[str, str, Any, int, str]] = [
    (
        "ragged",
        "/v1/losses/categorical_crossentropy",
        {"y_true": [[0, 1], [1]], "y_pred": GOOD_PRED},
        422,
        "rectangular",
    ),
    (
        "strings",
        "/v1/losses/categorical_crossentropy",
        {"y_true": [["a", "b"], ["c", "d"]], "y_pred": GOOD_PRED},
        422,
        "numbers",
    ),
    (
        "deeply nested",
        "/v1/losses/categorical_crossentropy",
        {"y_true": [[[[[[[[0]]]]]]]], "y_pred": GOOD_PRED},
        422,
        "does not match",
    ),
    (
        "nan in typed array",
        "/v1/losses/binary_crossentropy",
        {
            "y_true": [0, 1],
            "y_pred": {
                "dtype": "float32",
                "shape": [2],
                "data": base64.b64encode(np.float32([np.nan, 0.5])).decode(),
            },
        },
        422,
        "non-finite",
    ),
    (
        "byte count",
        "/v1/losses/binary_crossentropy",
        {"y_true": [0, 1], "y_pred": {"dtype": "float32", "shape": [3], "data": F32}},
        422,
        "bytes",
    ),
    (
        "bad base64",
        "/v1/losses/binary_crossentropy",
        {"y_true": [0, 1], "y_pred": {"dtype": "float32", "shape": [2], "data": "***"}},
        422,
        "base64",
    ),
    (
        "unknown dtype",
        "/v1/losses/binary_crossentropy",
        {"y_true": [0, 1], "y_pred": {"dtype": "float128", "shape": [2], "data": F32}},
        422,
        "float128",
    ),
    (
        "negative shape",
        "/v1/losses/binary_crossentropy",
        {"y_true": [0, 1], "y_pred": {"dtype": "float32", "shape": [-2], "data": F32}},
        422,
        "non-negative",
    ),
    (
        "huge shape",
        "/v1/losses/binary_crossentropy",
        {"y_true": [0, 1], "y_pred": {"dtype": "float32", "shape": [2**40, 2**40], "data": F32}},
        413,
        "elements",
    ),
    (
        "labels out of range",
        "/v1/losses/sparse_categorical_crossentropy",
        {"y_true": [0, 5], "y_pred": GOOD_PRED},
        422,
        "[0, 1]",
    ),
    (
        "negative labels",
        "/v1/losses/categorical_crossentropy",
        {"y_true": [0, -1], "y_pred": GOOD_PRED},
        422,
        "outside the classes",
    ),
    (
        "fractional labels",
        "/v1/losses/sparse_categorical_crossentropy",
        {"y_true": [0, 0.5], "y_pred": GOOD_PRED},
        422,
        "integer class indices",
    ),
    (
        "shape mismatch",
        "/v1/losses/categorical_crossentropy",
        {"y_true": [[0, 1, 0]], "y_pred": GOOD_PRED},
        422,
        "does not match",
    ),
    (
        "empty batch",
        "/v1/losses/categorical_crossentropy",
        {"y_true": [], "y_pred": []},
        422,
        "empty",
    ),
    ("missing y_pred", "/v1/losses/categorical_crossentropy", {"y_true": [0, 1]}, 422, "missing"),
    (
        "unknown parameter",
        "/v1/losses/binary_crossentropy",
        {"y_true": [0, 1], "y_pred": [0.5, 0.5], "smoothing": 0.1},
        422,
        "does not take",
    ),
    (
        "wrong type",
        "/v1/losses/binary_crossentropy",
        {"y_true": [0, 1], "y_pred": [0.5, 0.5], "from_logits": "yes"},
        422,
        "true or false",
    ),
    (
        "label smoothing range",
        "/v1/losses/binary_crossentropy",
        {"y_true": [0, 1], "y_pred": [0.5, 0.5], "label_smoothing": 2},
        422,
        "[0, 1]",
    ),
    (
        "bad reduction",
        "/v1/losses/binary_crossentropy",
        {"y_true": [0, 1], "y_pred": [0.5, 0.5], "reduction": "avg"},
        422,
        "expected one of",
    ),
    (
        "axis out of range",
        "/v1/losses/categorical_crossentropy",
        {"y_true": [[0, 1], [1, 0]], "y_pred": GOOD_PRED, "axis": 3},
        422,
        "axis",
    ),
    (
        "k below 1",
        "/v1/metrics/top_k_categorical_accuracy",
        {"y_true": [[0, 1], [1, 0]], "y_pred": GOOD_PRED, "k": 0},
        422,
        "k",
    ),
    (
        "sample weight shape",
        "/v1/losses/categorical_crossentropy",
        {"y_true": [0, 1], "y_pred": GOOD_PRED, "sample_weight": [1, 2, 3]},
        422,
        "sample_weight",
    ),
    (
        "stated encoding",
        "/v1/losses/categorical_crossentropy",
        {"y_true": [[1, 1], [0, 1]], "y_pred": GOOD_PRED, "label_encoding": "one_hot"},
        422,
        "one_hot",
    ),
    ("body not an object", "/v1/evaluate", [1, 2, 3], 422, "JSON object"),
    (
        "heads shape mismatch",
        "/v1/evaluate",
        {
            "outputs": {
                "a": {"y_true": [0, 1], "y_pred": GOOD_PRED},
                "b": {"y_true": [0, 1, 1], "y_pred": GOOD_PRED},
            }
        },
        422,
        "does not match",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [c[1:] for c in JSON_CASES],
    ids=[c[0] for c in JSON_CASES],
)
def test_bad_json_inputs(client: Any, path: str, body: Any, status: int, words: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert words in problem["detail"], problem["detail"]
    assert problem["errors"] and problem["status"] == status


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"y_true": [0, 1], "y_pred": [NaN, 0.5]}', {"Content-Type": "application/json"}, 400),
        (b'{"y_true": [0, 1', {"Content-Type": "application/json"}, 400),
        (b"[" * 5000 + b"]" * 5000, {"Content-Type": "application/json"}, 400),
        (b"y_true=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        (b"\x00\x01", {"Content-Type": "application/octet-stream"}, 400),
    ],
    ids=["nan token", "truncated", "nested 5000 deep", "form", "binary without header length"],
)
def test_bad_bodies(client: Any, content: bytes, headers: dict[str, str], status: int) -> None:
    r = client.post("/v1/losses/binary_crossentropy", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_framework_errors_are_problems_too(client: Any) -> None:
    # (Under /v2 the protocol's {"error"} shape: see test_api_oip.)
    for r, status in ((client.get("/v3/nothing"), 404), (client.get("/v1/evaluate"), 405)):
        assert r.status_code == status
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == status


def test_body_over_the_limit_is_413(make_client: Any) -> None:
    small = make_client(max_body_bytes=1000)
    r = small.post(
        "/v1/losses/binary_crossentropy", json={"y_true": [0] * 400, "y_pred": [0.5] * 400}
    )
    assert r.status_code == 413
    assert "LOSS_SERVICE_MAX_BODY_BYTES" in r.json()["detail"]


def test_elements_over_the_limit_is_413(make_client: Any) -> None:
    small = make_client(max_elements=10)
    r = small.post(
        "/v1/losses/binary_crossentropy", json={"y_true": [0] * 20, "y_pred": [0.5] * 20}
    )
    assert r.status_code == 413


def test_weights_beyond_the_dtype_and_sums_that_overflow_are_422_never_null(
    client: Any,
) -> None:
    base = {"y_true": [0, 1], "y_pred": [[0.9, 0.1], [0.2, 0.8]]}
    for path in ("/v1/losses/sparse_categorical_crossentropy", "/v1/evaluate"):
        response = client.post(path, json={**base, "sample_weight": [1e308, 1e308]})
        assert response.status_code == 422, response.text
        assert "sample_weight" in response.json()["detail"]
        # Within float32, but their weighted sum is not.
        big = {**base, "y_pred": [[0.01, 0.99], [0.99, 0.01]], "sample_weight": [3e38, 3e38]}
        response = client.post(path, json=big)
        assert response.status_code == 422, response.text
        assert "not finite" in response.json()["detail"]


def test_a_weighted_mean_whose_weights_sum_past_the_dtype_is_422_not_0(client: Any) -> None:
    # Dividing by a total weight that overflowed would read 0.0 where the weighted mean
    # is 0.29: refused on every path, whatever the dtype.
    base = {
        "y_true": [0, 1],
        "y_pred": [[0.7, 0.3], [0.2, 0.8]],
        "reduction": "mean_with_sample_weight",
    }
    for weights, dtype in (([1e308, 1e308], "float64"), ([3e38, 3e38], "float32")):
        body = {**base, "sample_weight": weights, "dtype": dtype}
        response = client.post("/v1/losses/sparse_categorical_crossentropy", json=body)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "not finite" in detail and f"({dtype})" in detail, detail
        assert ('`dtype: "float64"`' in detail) is (dtype == "float32"), detail
        entry = {"name": "sparse_categorical_crossentropy", "reduction": base["reduction"]}
        evaluate = {**body, "losses": [entry]}
        del evaluate["reduction"]
        response = client.post("/v1/evaluate", json=evaluate)
        assert response.status_code == 422, response.text
    fits = {**base, "sample_weight": [1e300, 1e300], "dtype": "float64"}
    response = client.post("/v1/losses/sparse_categorical_crossentropy", json=fits)
    assert response.status_code == 200, response.text
    assert response.json()["loss"] == pytest.approx((-np.log(0.7) - np.log(0.8)) / 2)


def test_a_long_unknown_key_is_not_sent_back_whole(client: Any) -> None:
    key = "k" * 1_000_000
    response = client.post("/v1/evaluate", json={"y_true": [1], "y_pred": [[0.5, 0.5]], key: 1})
    assert response.status_code == 422
    assert len(response.content) < 10_000
    assert "more characters" in response.json()["detail"]


def test_a_deeply_nested_binary_header_is_not_a_500(client: Any) -> None:
    header = b'{"y_true": [1], "y_pred": [[0.5, 0.5]], "x": ' + b"[" * 900 + b"]" * 900 + b"}"
    response = client.post(
        "/v1/evaluate",
        content=header,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )
    assert response.status_code == 422, response.text


def test_health_answers_head(client: Any) -> None:
    response = client.head("/healthz")
    assert response.status_code == 200
    assert response.content == b""


def test_a_trailing_slash_is_a_404_that_names_the_path_never_a_redirect(
    make_client: Any, tmp_path: Any
) -> None:
    client = make_client(data_dir=tmp_path)
    evaluation = client.post("/v1/evaluations", json={}).json()["id"]
    for method, path in (
        ("GET", f"/v1/evaluations/{evaluation}/"),
        ("DELETE", f"/v1/evaluations/{evaluation}/"),
        ("GET", "/v1/evaluations/"),
        ("POST", "/v1/losses/categorical_crossentropy/"),
        ("GET", f"/v1/evaluations/{evaluation}/batches/"),
        ("HEAD", f"/v1/evaluations/{evaluation}/batches/"),
    ):
        response = client.request(method, path, follow_redirects=False)
        assert response.status_code == 404, (method, path, response.status_code)
        assert "allow" not in response.headers
        if method != "HEAD":
            served = path.rstrip("/")
            assert f"without the trailing slash: {served})" in response.json()["detail"]
    assert client.get(f"/v1/evaluations/{evaluation}").status_code == 200  # not deleted
    # No hint where the path without the slash does not serve the method either.
    for method, path in (("DELETE", "/v1/losses/"), ("PUT", f"/v1/evaluations/{evaluation}/")):
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert "trailing slash" not in response.json()["detail"]


@pytest.mark.parametrize(
    ("batch", "received"), [("w1/", "'w1/'"), ("w1%2F", "'w1/'"), ("", "''"), ("a/b", "'a/b'")]
)
def test_a_batch_id_with_a_slash_is_a_422_naming_it(
    make_client: Any, tmp_path: Any, batch: str, received: str
) -> None:
    client = make_client(data_dir=tmp_path)
    evaluation = client.post("/v1/evaluations", json={}).json()["id"]
    body = {"y_true": [0, 1], "y_pred": [0.2, 0.7]}
    url = f"/v1/evaluations/{evaluation}/batches/{batch}"
    response = client.put(url, json=body, follow_redirects=False)
    assert response.status_code == 422, response.status_code
    assert f"received {received}" in response.json()["detail"]
    assert client.get(f"/v1/evaluations/{evaluation}").json()["n_batches"] == 0


@pytest.mark.parametrize(
    ("path", "received"),
    [
        ("/v1/evaluations?limit=0", "received '0'"),
        ("/v1/evaluations?limit=1000000", "received '1000000'"),
        ("/v1/evaluations?cursor=garbage", "received 'garbage'"),
        ("/v1/evaluations/{id}/batches?limit=0", "received '0'"),
        ("/v1/evaluations/{id}/batches?cursor=xyz", "received 'xyz'"),
        ("/v1/evaluations/" + "e" * 65, "(65 characters)"),
    ],
)
def test_invalid_parameters_say_what_was_received(
    make_client: Any, tmp_path: Any, path: str, received: str
) -> None:
    client = make_client(data_dir=tmp_path)
    evaluation = client.post("/v1/evaluations", json={}).json()["id"]
    response = client.get(path.replace("{id}", evaluation))
    assert response.status_code == 422
    problem = response.json()
    assert received in problem["detail"]
    assert all(received in error["msg"] for error in problem["errors"])


def test_a_batch_id_over_its_length_says_what_was_received(make_client: Any, tmp_path: Any) -> None:
    client = make_client(data_dir=tmp_path)
    evaluation = client.post("/v1/evaluations", json={}).json()["id"]
    body = {"y_true": [0, 1], "y_pred": [0.2, 0.7]}
    response = client.put(f"/v1/evaluations/{evaluation}/batches/{'b' * 129}", json=body)
    assert response.status_code == 422
    assert "at most 128 characters; received 'bbbb" in response.json()["detail"]
    assert "(129 characters)" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "received"),
    [
        ({"metadata": {"run": {"seed": 1}}}, "received key 'run' holding a JSON object"),
        ({"metadata": ["run"]}, "received a JSON array"),
        ({"metadata": {f"k{i}": "v" for i in range(65)}}, "received an object of 65 keys"),
        ({"metadata": {"k": "v" * 1025}}, "received key 'k' holding 1025 characters"),
        ({"class_names": [1, 2]}, "received a JSON number at index 0 (1)"),
        ({"class_names": []}, "received an empty list"),
        ({"class_names": "cat,dog"}, "received a JSON string"),
        # Names label charts: a NUL would make an SVG ill-formed XML.
        (
            {"class_names": ["cat", "d\u0000g"]},
            "received a name holding U+0000 (a control character or noncharacter) at index 1 "
            "('d\\x00g')",
        ),
        # U+FFFE is no XML character either.
        (
            {"class_names": ["cat", "\ufffe"]},
            "received a name holding U+FFFE (a control character or noncharacter) at index 1",
        ),
        (
            {"outputs": {"a\u001bb": {}}},
            "received a name holding U+001B, a control character or noncharacter ('a\\x1bb')",
        ),
        (
            {"outputs": {"h\uffff": {}}},
            "received a name holding U+FFFF, a control character or noncharacter",
        ),
        # A long name would make every batch's statistics too long to store (a 500).
        (
            {"outputs": {"Y" * 129: {}}},
            "Head names are 1–128 characters with no `/` and no control character",
        ),
        (
            {"metrics": [{"name": "accuracy", "as": "m" * 129}]},
            "received a name 129 characters long, over 128 ('mmmm",
        ),
        (
            {"losses": [{"name": "binary_crossentropy", "as": "a\u0001b"}]},
            "`as` names a result, its statistics and charts: expected 1–128 characters",
        ),
        (
            {"reports": [{"name": "per_class", "as": "x/y"}]},
            "received a name holding a `/` ('x/y')",
        ),
    ],
)
def test_evaluation_settings_say_what_was_received(
    make_client: Any, tmp_path: Any, body: dict[str, Any], received: str
) -> None:
    client = make_client(data_dir=tmp_path)
    response = client.post("/v1/evaluations", json=body)
    assert response.status_code == 422
    assert received in response.json()["detail"]


def test_class_names_of_an_evaluate_request_say_what_was_received(client: Any) -> None:
    body = {"y_true": [0, 1], "y_pred": [[0.9, 0.1], [0.2, 0.8]], "class_names": ["a", None]}
    response = client.post("/v1/evaluate", json=body)
    assert response.status_code == 422
    assert "received a JSON null at index 1" in response.json()["detail"]


@pytest.mark.parametrize("shape", [[2**62, 0], [0, 2**62]])
@pytest.mark.parametrize("path", ["/v1/losses/binary_crossentropy", "/v1/evaluate"])
def test_an_empty_typed_array_of_huge_dimensions_is_a_422(
    client: Any, path: str, shape: list[int]
) -> None:
    # No element: not a 413 for the working memory of 2**62 rows, nor a 500 from NumPy.
    empty = {"dtype": "float32", "shape": shape, "data": ""}
    r = client.post(path, json={"y_true": empty, "y_pred": [0.5]})
    assert r.status_code == 422, r.text
    assert (
        "an empty array whose other dimensions multiply to 4611686018427387904"
        in r.json()["detail"]
    )
