"""``/v2``, the Open Inference Protocol: ``tritonclient.http`` against a real server, and
the same numbers as ``/v1`` for the same arrays.

tritonclient's HTTP client runs on gevent; it is used here without monkeypatching (it
does not need it), against a uvicorn serving the app in a thread, and closed after use.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

from service import oip, registry
from service.main import create_app
from service.settings import Settings
from tests.conftest import SyncClient
from tests.servers import serve_in_thread

KEY = "oip-key"
DATATYPE = {np.dtype(v): k for k, v in oip.DATATYPES.items()}

ONE_HOT = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]], np.float32)
PROBS = np.array([[0.05, 0.9, 0.05], [0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], np.float32)
LOGITS = np.array(
    [[0.5, 2.0, -1.0], [1.0, -0.5, 0.25], [3.0, 0.0, 0.5], [0.0, 1.5, 1.0]], np.float32
)
SPARSE = np.array([1, 2, 0, 1], np.int64)
WEIGHTS = np.array([1.0, 0.5, 2.0, 1.5], np.float32)
BINARY_TRUE = np.array([[1], [0], [1], [1]], np.float32)
BINARY_PRED = np.array([[0.8], [0.3], [0.4], [0.9]], np.float32)
MULTI_HOT = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(create_app(Settings())) as base:
        yield base


@pytest.fixture
def triton_client(server: str) -> Iterator[Any]:
    made = triton.InferenceServerClient(server.removeprefix("http://"))
    try:
        yield made
    finally:
        made.close()


def inputs(arrays: dict[str, NDArray[Any]], *, binary: bool) -> list[Any]:
    tensors = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), DATATYPE[array.dtype])
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    return tensors


def typed(array: NDArray[Any]) -> dict[str, Any]:
    """The /v1 typed array of ``array``: the same bytes, so the same values."""
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "data": base64.b64encode(array.tobytes()).decode(),
    }


def v1(server: str, model: oip.Model, arrays: dict[str, NDArray[Any]], **params: Any) -> Any:
    kind = "losses" if model.kind == "loss" else "metrics"
    body = {name: typed(array) for name, array in arrays.items()} | params
    return httpx.post(f"{server}/v1/{kind}/{model.name}", json=body, timeout=30)


# ---- health and metadata ------------------------------------------------------------------


def test_server_is_live_and_ready(triton_client: Any) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()


def test_health_answers_are_200_with_an_empty_body(server: str) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/accuracy/ready"):
        response = httpx.get(server + path)
        assert response.status_code == 200, path
        assert response.content == b"", path


@pytest.mark.parametrize("name", sorted([*registry.LOSSES, *registry.METRICS]))
def test_every_loss_and_metric_is_a_ready_model(triton_client: Any, name: str) -> None:
    assert triton_client.is_model_ready(name)
    assert triton_client.is_model_ready(name, model_version="1")


def test_an_unknown_model_or_version_is_not_ready(triton_client: Any, server: str) -> None:
    assert not triton_client.is_model_ready("mean_squared_error")
    assert not triton_client.is_model_ready("accuracy", model_version="2")
    response = httpx.get(f"{server}/v2/models/mean_squared_error/ready")
    assert response.status_code == 404
    assert "Unknown model 'mean_squared_error'" in response.json()["error"]


def test_server_metadata(triton_client: Any) -> None:
    metadata = triton_client.get_server_metadata()
    assert metadata["name"] == "loss-service"
    assert isinstance(metadata["version"], str) and metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata(triton_client: Any) -> None:
    loss = triton_client.get_model_metadata("categorical_crossentropy")
    assert loss["name"] == "categorical_crossentropy"
    assert loss["versions"] == ["1"]
    assert [t["name"] for t in loss["inputs"]] == ["y_true", "y_pred", "sample_weight"]
    assert all(-1 in t["shape"] for t in loss["inputs"])
    assert loss["outputs"] == [{"name": "loss", "datatype": "FP64", "shape": [-1]}]
    metric = triton_client.get_model_metadata("accuracy", model_version="1")
    assert metric["outputs"][0]["name"] == "value"


def test_metadata_of_an_unknown_model_is_a_404_in_the_protocol_shape(triton_client: Any) -> None:
    with pytest.raises(InferenceServerException) as caught:
        triton_client.get_model_metadata("hinge")
    assert caught.value.status() == "404"
    assert caught.value.message().startswith("Unknown model 'hinge': the models are")


# ---- inference: the numbers of /v1 ----------------------------------------------------------

CASES: list[tuple[str, dict[str, NDArray[Any]], dict[str, Any]]] = [
    ("categorical_crossentropy", {"y_true": ONE_HOT, "y_pred": PROBS}, {}),
    (
        "categorical_crossentropy",
        {"y_true": ONE_HOT, "y_pred": LOGITS, "sample_weight": WEIGHTS},
        {"from_logits": True, "label_smoothing": 0.1},
    ),
    ("categorical_crossentropy", {"y_true": ONE_HOT, "y_pred": PROBS}, {"reduction": "none"}),
    ("sparse_categorical_crossentropy", {"y_true": SPARSE, "y_pred": PROBS}, {}),
    (
        "sparse_categorical_crossentropy",
        {"y_true": SPARSE, "y_pred": LOGITS},
        {"from_logits": True, "reduction": "sum", "dtype": "float64"},
    ),
    ("binary_crossentropy", {"y_true": BINARY_TRUE, "y_pred": BINARY_PRED}, {}),
    ("binary_crossentropy", {"y_true": MULTI_HOT, "y_pred": LOGITS}, {"from_logits": True}),
    (
        "categorical_focal_crossentropy",
        {"y_true": ONE_HOT, "y_pred": PROBS},
        {"alpha": 0.5, "gamma": 3.0},
    ),
    (
        "binary_focal_crossentropy",
        {"y_true": BINARY_TRUE, "y_pred": BINARY_PRED, "sample_weight": WEIGHTS},
        {"apply_class_balancing": True, "reduction": "none"},
    ),
    ("accuracy", {"y_true": SPARSE, "y_pred": PROBS}, {}),
    ("accuracy", {"y_true": MULTI_HOT, "y_pred": PROBS}, {"threshold": 0.25}),
    ("binary_accuracy", {"y_true": BINARY_TRUE, "y_pred": BINARY_PRED}, {"threshold": 0.35}),
    ("categorical_accuracy", {"y_true": ONE_HOT, "y_pred": PROBS, "sample_weight": WEIGHTS}, {}),
    ("sparse_categorical_accuracy", {"y_true": SPARSE, "y_pred": LOGITS}, {}),
    ("top_k_categorical_accuracy", {"y_true": ONE_HOT, "y_pred": PROBS}, {"k": 2}),
    ("sparse_top_k_categorical_accuracy", {"y_true": SPARSE, "y_pred": PROBS}, {"k": 1}),
    ("subset_accuracy", {"y_true": MULTI_HOT, "y_pred": LOGITS}, {"from_logits": True}),
]


def _case_id(case: tuple[str, dict[str, Any], dict[str, Any]]) -> str:
    name, arrays, params = case
    return "-".join([name, *arrays, *(f"{k}={v}" for k, v in params.items())])


def _expected(value: Any, compute_dtype: str) -> NDArray[Any]:
    """The /v1 value as the protocol answers it: a number as float64, per-sample values
    in the computation's dtype."""
    if isinstance(value, list):
        return np.asarray(value, compute_dtype)
    return np.asarray([value], np.float64)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_values_equal_v1_exactly(
    server: str,
    triton_client: Any,
    case: tuple[str, dict[str, NDArray[Any]], dict[str, Any]],
    binary: bool,
) -> None:
    name, arrays, params = case
    model = oip.model(name)
    reference = v1(server, model, arrays, **params)
    assert reference.status_code == 200, reference.text
    expected = reference.json()
    result = triton_client.infer(
        name, inputs(arrays, binary=binary), parameters=params or None, request_id="case-1"
    )
    got = result.as_numpy(model.output)
    want = _expected(expected[model.output], params.get("dtype", "float32"))
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # exactly: no tolerance
    response = result.get_response()
    assert response["model_name"] == name
    assert response["id"] == "case-1"
    parameters = response["parameters"]
    assert json.loads(parameters["warnings"]) == expected["warnings"]
    for key in ("label_encoding", "n_samples", "n_classes", "reduction", "resolved_as"):
        assert parameters.get(key) == expected.get(key), key


def test_json_fp64_data_equals_v1_nested_lists(server: str, triton_client: Any) -> None:
    y_pred = PROBS.astype(np.float64) + 0.001  # float64 values that are not float32 values
    result = triton_client.infer(
        "categorical_crossentropy",
        inputs({"y_true": ONE_HOT, "y_pred": y_pred}, binary=False),
        parameters={"dtype": "float64"},
    )
    reference = httpx.post(
        f"{server}/v1/losses/categorical_crossentropy",
        json={"y_true": ONE_HOT.tolist(), "y_pred": y_pred.tolist(), "dtype": "float64"},
    ).json()
    assert result.as_numpy("loss").tolist() == [reference["loss"]]


def test_from_logits_is_taken_from_the_parameters(triton_client: Any) -> None:
    arrays = inputs({"y_true": ONE_HOT, "y_pred": LOGITS}, binary=True)
    as_logits = triton_client.infer(
        "categorical_crossentropy", arrays, parameters={"from_logits": True}
    ).as_numpy("loss")
    clipped = inputs({"y_true": ONE_HOT, "y_pred": np.abs(LOGITS)}, binary=True)
    as_probabilities = triton_client.infer("categorical_crossentropy", clipped).as_numpy("loss")
    assert as_logits[0] != as_probabilities[0]
    expected = -np.mean(
        np.log(np.sum(ONE_HOT * np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True), -1))
    )
    assert as_logits[0] == pytest.approx(expected, rel=1e-6)


def test_warnings_and_resolution_are_in_the_response_parameters(triton_client: Any) -> None:
    response = triton_client.infer(
        "categorical_crossentropy",
        inputs({"y_true": ONE_HOT, "y_pred": PROBS}, binary=True),
        parameters={"from_logits": True},
    ).get_response()
    codes = [w["code"] for w in json.loads(response["parameters"]["warnings"])]
    assert codes == ["predictions_look_like_probabilities"]
    metric = triton_client.infer(
        "accuracy", inputs({"y_true": MULTI_HOT, "y_pred": PROBS}, binary=True)
    ).get_response()
    assert metric["parameters"]["resolved_as"] == "subset_accuracy"


@pytest.mark.parametrize(
    ("outputs", "binary"),
    [
        (None, True),  # tritonclient then asks every output in binary
        ([triton.InferRequestedOutput("value", binary_data=True)], True),
        ([triton.InferRequestedOutput("value", binary_data=False)], False),
    ],
    ids=["default", "binary", "json"],
)
def test_binary_outputs_as_asked(
    triton_client: Any, outputs: list[Any] | None, binary: bool
) -> None:
    result = triton_client.infer(
        "categorical_accuracy",
        inputs({"y_true": ONE_HOT, "y_pred": PROBS}, binary=False),
        outputs=outputs,
    )
    output = result.get_output("value")
    assert ("data" not in output) is binary
    assert (output.get("parameters", {}).get("binary_data_size") == 8) is binary
    assert result.as_numpy("value").tolist() == [0.5]


def test_a_binary_answer_carries_its_header_length(server: str) -> None:
    body = {
        "inputs": [
            {"name": "y_true", "shape": [4], "datatype": "INT64", "data": SPARSE.tolist()},
            {"name": "y_pred", "shape": [4, 3], "datatype": "FP32", "data": PROBS.tolist()},
        ],
        "parameters": {"binary_data_output": True},
    }
    response = httpx.post(f"{server}/v2/models/sparse_categorical_accuracy/infer", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(response.content[length:], "<f8").tolist() == [0.5]


def test_a_large_binary_batch_equals_v1(server: str, triton_client: Any) -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(100_000, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=100_000).astype(np.int64)
    arrays = {"y_true": labels, "y_pred": logits}
    model = oip.model("sparse_categorical_crossentropy")
    reference = v1(server, model, arrays, from_logits=True).json()
    result = triton_client.infer(
        model.name, inputs(arrays, binary=True), parameters={"from_logits": True}
    )
    assert result.as_numpy("loss").tolist() == [reference["loss"]]
    assert result.get_response()["parameters"]["n_samples"] == 100_000


def test_a_body_over_the_limit_is_a_413_that_tritonclient_reads() -> None:
    with serve_in_thread(create_app(Settings(max_body_bytes=10_000))) as base:
        made = triton.InferenceServerClient(base.removeprefix("http://"))
        try:
            y_pred = np.full((100_000, 3), 1 / 3, np.float32)
            y_true = np.zeros((100_000, 3), np.float32)
            with pytest.raises(InferenceServerException) as caught:
                made.infer(
                    "categorical_crossentropy",
                    inputs({"y_true": y_true, "y_pred": y_pred}, binary=True),
                )
            assert caught.value.status() == "413"
            assert "over the limit of 10000 bytes" in caught.value.message()
            assert made.is_server_live()  # the client goes on with a new connection
        finally:
            made.close()


def test_versioned_inference_is_the_same(triton_client: Any) -> None:
    arrays = {"y_true": SPARSE, "y_pred": PROBS}
    plain = triton_client.infer("sparse_categorical_crossentropy", inputs(arrays, binary=True))
    versioned = triton_client.infer(
        "sparse_categorical_crossentropy", inputs(arrays, binary=True), model_version="1"
    )
    assert versioned.as_numpy("loss").tolist() == plain.as_numpy("loss").tolist()
    assert versioned.get_response()["model_version"] == "1"
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer(
            "sparse_categorical_crossentropy", inputs(arrays, binary=True), model_version="3"
        )
    assert caught.value.status() == "404"
    assert "has no version '3': its only version is '1'" in caught.value.message()


# ---- errors ---------------------------------------------------------------------------------


def test_a_nan_is_the_v1_422_as_an_inference_server_exception(
    server: str, triton_client: Any
) -> None:
    y_pred = PROBS.copy()
    y_pred[1, 2] = np.nan
    reference = v1(
        server, oip.model("categorical_crossentropy"), {"y_true": ONE_HOT, "y_pred": y_pred}
    )
    assert reference.status_code == 422
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer(
            "categorical_crossentropy", inputs({"y_true": ONE_HOT, "y_pred": y_pred}, binary=True)
        )
    assert caught.value.status() == "422"
    assert caught.value.message() == reference.json()["detail"]
    assert "NaN" in caught.value.message()


def test_an_unknown_parameter_is_the_v1_422(server: str, triton_client: Any) -> None:
    arrays = {"y_true": ONE_HOT, "y_pred": PROBS}
    reference = v1(server, oip.model("categorical_accuracy"), arrays, k=3)
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer(
            "categorical_accuracy", inputs(arrays, binary=False), parameters={"k": 3}
        )
    assert caught.value.status() == "422"
    assert caught.value.message() == reference.json()["detail"]
    assert "does not take `k`" in caught.value.message()


def test_an_unknown_model_is_a_404(triton_client: Any) -> None:
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer("hinge", inputs({"y_true": ONE_HOT, "y_pred": PROBS}, binary=True))
    assert caught.value.status() == "404"
    assert "Unknown model 'hinge'" in caught.value.message()


def test_a_codec_error_reaches_tritonclient(triton_client: Any) -> None:
    tensor = triton.InferInput("weights", [4], "FP32")
    tensor.set_data_from_numpy(WEIGHTS)
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer(
            "accuracy", [*inputs({"y_true": SPARSE, "y_pred": PROBS}, binary=True), tensor]
        )
    assert caught.value.status() == "422"
    assert "is named 'weights'" in caught.value.message()


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


BODY = {
    "inputs": [
        {"name": "y_true", "shape": [4], "datatype": "INT64", "data": SPARSE.tolist()},
        {"name": "y_pred", "shape": [4, 3], "datatype": "FP32", "data": PROBS.tolist()},
    ]
}
INFER = "/v2/models/sparse_categorical_crossentropy/infer"


def test_a_json_body_needs_no_content_type(client: SyncClient) -> None:
    response = client.post(INFER, content=orjson.dumps(BODY))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["name"] == "loss"


def test_another_content_type_is_a_415(client: SyncClient) -> None:
    detail = _error(
        client.post(INFER, content=orjson.dumps(BODY), headers={"content-type": "text/plain"}),
        415,
    )
    assert "'text/plain' is not supported; expected application/json or" in detail


def test_malformed_json_is_a_400(client: SyncClient) -> None:
    detail = _error(client.post(INFER, content=b'{"inputs": ['), 400)
    assert "not valid JSON" in detail


def test_an_octet_stream_without_header_length_is_all_json(client: SyncClient) -> None:
    # As Triton reads it: with no Inference-Header-Content-Length the body is JSON,
    # whatever its Content-Type says.
    octet = {"content-type": "application/octet-stream"}
    response = client.post(INFER, content=orjson.dumps(BODY), headers=octet)
    assert response.status_code == 200, response.text
    assert response.json() == client.post(INFER, content=orjson.dumps(BODY)).json()
    # Tensors after the JSON, the header length forgotten: the 400 names it.
    framed = orjson.dumps(BODY) + b"\x00\x01"
    detail = _error(client.post(INFER, content=framed, headers=octet), 400)
    assert "needs Inference-Header-Content-Length" in detail


def test_an_empty_body_is_a_400(client: SyncClient) -> None:
    assert "the request body is empty" in _error(client.post(INFER, content=b""), 400)


def test_a_body_over_the_limit_is_a_413_that_closes(make_client: Any) -> None:
    small = make_client(max_body_bytes=100)
    response = small.post(INFER, content=orjson.dumps(BODY))
    detail = _error(response, 413)
    assert "over the limit of 100 bytes" in detail
    assert response.headers["connection"] == "close"


def test_a_json_body_over_the_json_limit_is_a_413(make_client: Any) -> None:
    small = make_client(max_general_json_bytes=200)
    detail = _error(small.post(INFER, content=orjson.dumps(BODY)), 413)
    assert "binary tensor data extension" in detail


@pytest.mark.parametrize(
    ("method", "path", "status", "words"),
    [
        ("POST", "/v2/repository/index", 404, "No route /v2/repository/index"),
        ("GET", "/v2/models/auc/config", 404, "No route /v2/models/auc/config"),
        ("GET", "/v2/models/auc/", 404, "served without the trailing slash"),
        ("GET", INFER, 405, f"GET is not allowed on {INFER}: expected POST"),
        ("DELETE", "/v2", 405, "DELETE is not allowed on /v2: expected GET"),
    ],
)
def test_paths_and_methods_the_protocol_lacks_answer_in_its_error_shape(
    client: SyncClient, method: str, path: str, status: int, words: str
) -> None:
    # The protocol's clients read {"error"} from any /v2 answer (tritonclient's model
    # configuration call, which the service lacks, could not read a problem document).
    response = client.request(method, path)
    assert words in _error(response, status)
    if status == 405:
        assert response.headers["allow"]
    assert client.get("/v1/nothing").headers["content-type"] == "application/problem+json"


def test_a_protocol_call_the_service_lacks_reaches_the_client_as_its_404(
    triton_client: Any,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        triton_client.get_model_config("auc")
    assert caught.value.status() == "404"
    assert caught.value.message().startswith("No route /v2/models/auc/config: ")


# ---- API keys -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured() -> Iterator[str]:
    with serve_in_thread(create_app(Settings(api_keys=[KEY]))) as base:
        yield base


def test_models_need_the_api_key_when_keys_are_configured(secured: str) -> None:
    made = triton.InferenceServerClient(secured.removeprefix("http://"))
    try:
        assert made.is_server_live()
        assert made.is_server_ready()
        assert made.get_server_metadata()["name"] == "loss-service"
        assert not made.is_model_ready("accuracy")
        arrays = inputs({"y_true": SPARSE, "y_pred": PROBS}, binary=True)
        with pytest.raises(InferenceServerException) as caught:
            made.infer("accuracy", arrays)
        assert caught.value.status() == "401"
        assert "needs an API key" in caught.value.message()
        with pytest.raises(InferenceServerException) as caught:
            made.infer("accuracy", arrays, headers={"Authorization": "Bearer wrong"})
        assert caught.value.status() == "403"
        authorized = {"Authorization": f"Bearer {KEY}"}
        assert made.is_model_ready("accuracy", headers=authorized)
        value = made.infer("accuracy", arrays, headers=authorized).as_numpy("value")
        assert value.tolist() == [0.5]
    finally:
        made.close()
    response = httpx.post(f"{secured}{INFER}", json=BODY)
    assert response.headers["www-authenticate"].startswith("Bearer")
    _error(response, 401)


# ---- the spec -------------------------------------------------------------------------------


def test_the_spec_documents_the_protocol_errors_not_problem_json(client: SyncClient) -> None:
    spec = client.get("/openapi.json").json()
    operations = [
        (path, operation)
        for path, item in spec["paths"].items()
        if path.startswith("/v2/models")
        for operation in item.values()
    ]
    assert len(operations) == 6
    for path, operation in operations:
        assert "oip" in operation["tags"]
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                continue
            assert set(response["content"]) == {"application/json"}, (path, status)
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/InferenceError"}, (path, status)
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert set(infer["responses"]["200"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }
