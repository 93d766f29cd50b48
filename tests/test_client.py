"""service.client: the async client in process (``httpx.ASGITransport``), the sync client
against a real uvicorn server on 127.0.0.1, and the request encodings byte for byte;
streaming evaluations against real servers (idempotent reruns, retries through an ASGI
app or a transport that fails on purpose, batches split under a small body limit)."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import inspect
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from importlib import metadata
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar, get_args

import httpx
import numpy as np
import orjson
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from servers import serve_in_thread

from service.arrays import parse_binary
from service.client import (
    AsyncEvaluation,
    AsyncLossClient,
    BatchResult,
    ComputeDType,
    ConflictError,
    CountedWarning,
    Encoding,
    EvaluateParams,
    EvaluateResult,
    Evaluation,
    EvaluationResults,
    EvaluationSummary,
    HeadsResult,
    InvalidInputError,
    LabelEncoding,
    LossClient,
    LossParams,
    LossResult,
    LossServiceError,
    MetricParams,
    MetricResult,
    NotFoundError,
    PayloadTooLargeError,
    Reduction,
    RetryPolicy,
    ServiceUnavailableError,
    ServiceWarning,
    _EvaluationHandle,
    _retry_after,
    build_request,
    content_digest,
    encode_body,
)
from service.main import create_app
from service.settings import Settings

T = TypeVar("T")

Y_TRUE = [[0, 1, 0], [0, 0, 1]]
Y_PRED = [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]
CCE = 1.1769392490386963  # Keras: categorical_crossentropy(Y_TRUE, Y_PRED)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def async_client(**kwargs: Any) -> AsyncLossClient:
    app = create_app(Settings())
    return AsyncLossClient("http://testserver", transport=httpx.ASGITransport(app=app), **kwargs)


def big_batch(n: int = 1024, c: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    return labels, logits


def reference_sparse_cce(labels: np.ndarray, logits: np.ndarray) -> float:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


# ---- a real server for the sync client --------------------------------------------------


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service under uvicorn in a background thread, on a free port of 127.0.0.1
    (its evaluations in a temporary directory)."""
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data")))
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def sync_client(server_url: str) -> Iterator[LossClient]:
    with LossClient(server_url, timeout=30) as client:
        yield client


class Seen:
    """An event hook that records the Content-Type of every request sent."""

    def __init__(self) -> None:
        self.content_types: list[str] = []

    def __call__(self, request: httpx.Request) -> None:
        self.content_types.append(request.headers.get("content-type", ""))

    async def on_request(self, request: httpx.Request) -> None:
        self(request)


# ---- the sync client, over a socket -------------------------------------------------------


def test_sync_health_and_catalogues(sync_client: LossClient) -> None:
    assert sync_client.health() == {"status": "ok"}
    names = {entry["name"] for entry in sync_client.losses()["losses"]}
    assert "categorical_crossentropy" in names
    assert "accuracy" in {entry["name"] for entry in sync_client.metrics()["metrics"]}


def test_sync_golden_loss(sync_client: LossClient) -> None:
    result = sync_client.loss("categorical_crossentropy", Y_TRUE, Y_PRED)
    assert isinstance(result, LossResult)
    assert result.loss == pytest.approx(CCE, rel=1e-6)
    assert isinstance(result.loss, float)
    assert result.label_encoding == "one_hot"
    assert (result.name, result.reduction) == ("categorical_crossentropy", "sum_over_batch_size")
    assert (result.n_samples, result.n_classes, result.warnings) == (2, 3, [])
    # The same with integer labels and NumPy inputs.
    labels = np.array([1, 2])
    result = sync_client.loss("categorical_crossentropy", labels, np.array(Y_PRED, np.float32))
    assert result.loss == pytest.approx(CCE, rel=1e-6)
    assert result.label_encoding == "sparse"


def test_sync_reduction_none_is_an_array(sync_client: LossClient) -> None:
    result = sync_client.loss(
        "binary_crossentropy", [0, 1, 1], [-2.0, 1.5, 0.3], from_logits=True, reduction="none"
    )
    assert isinstance(result.loss, np.ndarray)
    assert result.loss.dtype == np.float32
    np.testing.assert_allclose(result.loss, [0.126928, 0.20141327, 0.55435526], rtol=1e-6)


def test_sync_metric_and_evaluate(sync_client: LossClient) -> None:
    result = sync_client.metric(
        "accuracy", [[1, 0, 0, 1], [0, 1, 0, 0]], [[0.8, 0.1, 0.2, 0.7], [0.3, 0.4, 0.1, 0.1]]
    )
    assert isinstance(result, MetricResult)
    assert result.value == 0.5
    assert result.resolved_as == "subset_accuracy"
    assert result.warnings == []
    evaluated = sync_client.evaluate(
        [1, 2],
        Y_PRED,
        losses=["sparse_categorical_crossentropy", {"name": "categorical_crossentropy"}],
        metrics=["accuracy"],
    )
    assert isinstance(evaluated, EvaluateResult)
    assert evaluated.losses["categorical_crossentropy"] == pytest.approx(CCE, rel=1e-6)
    assert evaluated.losses["sparse_categorical_crossentropy"] == pytest.approx(CCE, rel=1e-6)
    assert evaluated.metrics == {"accuracy": 0.5}
    assert evaluated.resolved == {"accuracy": "sparse_categorical_accuracy"}
    assert evaluated.label_encoding == "sparse"


def test_sync_evaluate_heads(sync_client: LossClient) -> None:
    result = sync_client.evaluate_heads(
        {
            "kind": {"y_true": [1, 2], "y_pred": Y_PRED},
            "tags": {"y_true": [[1, 0], [0, 1]], "y_pred": [[0.8, 0.1], [0.3, 0.6]]},
        },
        loss_weights={"kind": 0.5},
    )
    assert isinstance(result, HeadsResult)
    assert result.total_loss == pytest.approx(0.8500936627388, rel=1e-6)
    assert set(result.outputs) == {"kind", "tags"}
    assert isinstance(result.outputs["tags"], EvaluateResult)
    assert result.outputs["tags"].label_encoding == "one_hot"


def test_sync_large_batch_goes_binary_with_the_json_loss(server_url: str) -> None:
    labels, logits = big_batch()
    seen = Seen()
    with LossClient(server_url, event_hooks={"request": [seen]}) as client:
        binary = client.loss("sparse_categorical_crossentropy", labels, logits, from_logits=True)
    with LossClient(server_url, event_hooks={"request": [seen]}, encoding="json") as client:
        as_json = client.loss("sparse_categorical_crossentropy", labels, logits, from_logits=True)
    assert seen.content_types == ["application/octet-stream", "application/json"]
    assert binary.loss == as_json.loss
    assert binary.loss == pytest.approx(reference_sparse_cce(labels, logits), rel=1e-5)


def test_sync_error_raises_with_the_problem(sync_client: LossClient) -> None:
    with pytest.raises(LossServiceError) as caught:
        sync_client.loss("categorical_crossentropy", [0, 1], [[2.0, -1.0], [0.5, 1.5]])
    err = caught.value
    assert err.status == 422
    assert err.title == "Invalid input"
    assert "from_logits: true" in err.detail
    assert err.errors and err.errors[0]["loc"] == ["y_pred"]
    assert err.problem["type"] == "urn:loss-service:problem:invalid-input"
    assert err.problem["instance"] == "/v1/losses/categorical_crossentropy"
    assert "422" in str(err)


def test_sync_unknown_loss_is_a_404(sync_client: LossClient) -> None:
    with pytest.raises(LossServiceError) as caught:
        sync_client.loss("no_such_loss", [1], [[0.5, 0.5]])
    assert caught.value.status == 404
    assert "categorical_crossentropy" in caught.value.detail


# ---- the async client, in process ---------------------------------------------------------


def test_async_golden_values() -> None:
    async def main() -> None:
        async with async_client() as client:
            assert await client.health() == {"status": "ok"}
            loss = await client.loss("categorical_crossentropy", Y_TRUE, Y_PRED)
            assert loss.loss == pytest.approx(CCE, rel=1e-6)
            metric = await client.metric("categorical_accuracy", Y_TRUE, Y_PRED)
            assert metric.value == 0.5
            evaluated = await client.evaluate(Y_TRUE, Y_PRED)
            assert evaluated.losses == {"categorical_crossentropy": pytest.approx(CCE, rel=1e-6)}
            heads = await client.evaluate_heads({"a": {"y_true": [1, 2], "y_pred": Y_PRED}})
            assert heads.total_loss == pytest.approx(CCE, rel=1e-6)
            assert (await client.losses())["losses"]
            assert (await client.metrics())["metrics"]

    run(main())


def test_async_reduction_none_float64() -> None:
    async def main() -> LossResult:
        async with async_client() as client:
            return await client.loss(
                "categorical_crossentropy", Y_TRUE, Y_PRED, reduction="none", dtype="float64"
            )

    result = run(main())
    assert isinstance(result.loss, np.ndarray)
    assert result.loss.dtype == np.float64
    assert result.loss.shape == (2,)
    assert result.loss.mean() == pytest.approx(CCE, rel=1e-6)


@pytest.mark.parametrize("encoding", ["typed", "binary"])
def test_async_large_batch_every_encoding_gives_the_json_loss(encoding: Encoding) -> None:
    labels, logits = big_batch(2048, 7)
    seen = Seen()

    async def main() -> tuple[float, float, float]:
        hooks = {"request": [seen.on_request]}
        async with async_client(event_hooks=hooks) as auto:
            binary = await auto.loss(
                "sparse_categorical_crossentropy", labels, logits, None, from_logits=True
            )
        async with async_client(event_hooks=hooks, encoding="json") as json_client:
            as_json = await json_client.loss(
                "sparse_categorical_crossentropy", labels, logits, from_logits=True
            )
        async with async_client(event_hooks=hooks, encoding=encoding) as forced:
            other = await forced.loss(
                "sparse_categorical_crossentropy", labels, logits, from_logits=True
            )
        return float(binary.loss), float(as_json.loss), float(other.loss)

    binary, as_json, other = run(main())
    expected_type = "application/json" if encoding == "typed" else "application/octet-stream"
    assert seen.content_types == ["application/octet-stream", "application/json", expected_type]
    assert binary == as_json == other
    assert binary == pytest.approx(reference_sparse_cce(labels, logits), rel=1e-5)


def test_async_threshold_is_the_total_element_count() -> None:
    seen = Seen()
    y_true = np.zeros(10, np.int64)
    y_pred = np.full((10, 4), 0.25, np.float32)  # 10 + 40 = 50 elements

    async def main() -> None:
        hooks = {"request": [seen.on_request]}
        async with async_client(event_hooks=hooks, binary_threshold=50) as client:
            await client.loss("sparse_categorical_crossentropy", y_true, y_pred)
        async with async_client(event_hooks=hooks, binary_threshold=49) as client:
            await client.loss("sparse_categorical_crossentropy", y_true, y_pred)

    run(main())
    assert seen.content_types == ["application/json", "application/octet-stream"]


def test_async_errors_raise() -> None:
    async def main() -> None:
        async with async_client() as client:
            with pytest.raises(LossServiceError) as caught:
                await client.loss("categorical_crossentropy", [0, 1], [[2.0, -1.0], [0.5, 1.5]])
            assert caught.value.status == 422
            assert "from_logits: true" in caught.value.detail
            # The same mistake in a binary request.
            labels, logits = big_batch()
            with pytest.raises(LossServiceError) as caught:
                await client.loss("categorical_crossentropy", labels, logits)
            assert caught.value.status == 422
            assert "from_logits" in caught.value.detail
            with pytest.raises(LossServiceError) as caught:
                await client.loss("binary_crossentropy", [0, 1], [0.2, 0.3], gamma=2.0)
            assert caught.value.status == 422
            assert "gamma" in caught.value.detail

    run(main())


# ---- what goes on the wire ----------------------------------------------------------------


def test_api_key_is_a_bearer_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok"})

    with LossClient("http://x", api_key="s3cret", transport=httpx.MockTransport(handler)) as c:
        c.health()
    with LossClient("http://x", transport=httpx.MockTransport(handler)) as c:
        c.health()
    assert seen[0].headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in seen[1].headers


def test_an_error_that_is_not_a_problem_document() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="upstream down")

    with (
        LossClient("http://x", transport=httpx.MockTransport(handler)) as client,
        pytest.raises(LossServiceError) as caught,
    ):
        client.health()
    assert caught.value.status == 502
    assert caught.value.title == "Bad Gateway"
    assert caught.value.detail == "upstream down"
    assert caught.value.errors == []


def test_binary_body_decodes_to_the_same_arrays_heads_included() -> None:
    rng = np.random.default_rng(1)
    a_true = rng.integers(0, 3, size=100)
    a_pred = rng.random((100, 3)).astype(np.float64)
    b_true = rng.integers(0, 2, size=(50, 4)).astype(np.uint8)
    b_pred = np.asfortranarray(rng.random((50, 4)).astype(">f4"))  # not C-order, big-endian
    weights = np.arange(50, dtype=np.uint32)  # not a wire dtype: sent as int64
    request = build_request(
        "/v1/evaluate",
        {
            "outputs": {
                "a": {"y_true": a_true, "y_pred": a_pred, "losses": ["categorical_crossentropy"]},
                "b": {"y_pred": b_pred, "y_true": b_true, "sample_weight": weights},
            },
            "loss_weights": {"a": 0.5},
        },
        encoding="binary",
    )
    assert request.encoding == "binary"
    assert request.content is not None
    header_length = int(request.headers["Inference-Header-Content-Length"])
    body = parse_binary(request.content, header_length, 10**6)
    head_a, head_b = body["outputs"]["a"], body["outputs"]["b"]
    np.testing.assert_array_equal(head_a["y_true"], a_true)
    np.testing.assert_array_equal(head_a["y_pred"], a_pred)
    np.testing.assert_array_equal(head_b["y_true"], b_true)
    np.testing.assert_array_equal(head_b["y_pred"], b_pred)
    np.testing.assert_array_equal(head_b["sample_weight"], weights)
    assert head_b["sample_weight"].dtype == np.int64
    assert head_a["losses"] == ["categorical_crossentropy"]
    assert body["loss_weights"] == {"a": 0.5}


def test_binary_header_is_padded_so_tensors_start_aligned() -> None:
    labels, logits = big_batch(300, 7)
    for extra in range(8):  # header lengths that vary with the parameters
        request = build_request(
            "/v1/losses/x",
            {"y_true": labels, "y_pred": logits, "pad": "x" * extra},
            encoding="binary",
        )
        assert request.content is not None
        length = int(request.headers["Inference-Header-Content-Length"])
        assert length % 64 == 0
        assert request.content[:length].rstrip(b" ").endswith(b"}")
        body = parse_binary(request.content, length, 10**6)
        assert body["pad"] == "x" * extra
        assert body["y_true"].flags.aligned and body["y_pred"].flags.aligned


def test_json_and_typed_bodies() -> None:
    body = {
        "y_true": np.array([1, 2]),
        "y_pred": np.array(Y_PRED, np.float32),
        "from_logits": False,
    }
    content, headers, used = encode_body(body, "json")
    assert used == "json" and headers["Content-Type"] == "application/json"
    # float32 values as the float64 numbers equal to them (0.699999988..., not 0.7).
    exact = np.array(Y_PRED, np.float32).astype(np.float64).tolist()
    assert orjson.loads(content) == {"y_true": [1, 2], "y_pred": exact, "from_logits": False}
    assert np.array_equal(np.array(orjson.loads(content)["y_pred"], np.float32), body["y_pred"])
    content, _, used = encode_body(body, "typed")
    typed = orjson.loads(content)["y_pred"]
    assert used == "typed"
    assert typed["dtype"] == "float32" and typed["shape"] == [2, 3]
    # Values that are not arrays (ragged rows) go as they are, for the service to judge.
    content, _, _ = encode_body({"y_true": [1, 2], "y_pred": [[0.5, 0.5], [1.0]]}, "json")
    assert orjson.loads(content)["y_pred"] == [[0.5, 0.5], [1.0]]


def test_ragged_rows_are_the_services_422() -> None:
    async def main() -> LossServiceError:
        async with async_client() as client:
            try:
                await client.loss("categorical_crossentropy", [1, 0], [[0.5, 0.5], [1.0]])
            except LossServiceError as err:
                return err
        raise AssertionError("no error raised")

    err = run(main())
    assert err.status == 422
    assert "rectangular" in err.detail


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"encoding": "xml"}, "encoding"), ({"binary_threshold": -1}, "binary_threshold")],
)
def test_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LossClient("http://x", **kwargs)


# ---- values the service must see, dtypes it cannot take -------------------------------------


def bad_batch(field: str, bad: float) -> dict[str, Any]:
    y_pred = np.array(Y_PRED)
    weights = np.ones(2)
    if field == "y_pred":
        y_pred[1, 2] = bad
    else:
        weights[1] = bad
    return {"y_true": [1, 2], "y_pred": y_pred, "sample_weight": weights}


@pytest.mark.parametrize("encoding", ["auto", "json"])
@pytest.mark.parametrize(
    ("field", "bad"),
    [("y_pred", np.nan), ("y_pred", np.inf), ("sample_weight", -np.inf)],
    ids=["nan", "inf", "weight"],
)
def test_non_finite_values_get_the_services_422_with_the_index(
    server_url: str, encoding: Encoding, field: str, bad: float
) -> None:
    """JSON has no NaN: sent as lists, NaN became null and the service could only say
    "received null"; sent typed, the service's own check names the value and its index."""
    with LossClient(server_url, encoding=encoding) as client, pytest.raises(LossServiceError) as e:
        client.loss("categorical_crossentropy", **bad_batch(field, bad))
    assert e.value.status == 422
    assert "non-finite" in e.value.detail
    assert e.value.errors[0]["loc"] == ([field, 1, 2] if field == "y_pred" else [field, 1])


def test_non_finite_values_go_typed_not_as_lists() -> None:
    body = bad_batch("y_pred", np.nan)
    request = build_request("/v1/losses/x", body, encoding="json")
    assert request.encoding == "typed"
    assert request.content is not None
    typed = orjson.loads(request.content)["y_pred"]
    assert typed["dtype"] == "float64" and typed["shape"] == [2, 3]
    decoded = np.frombuffer(base64.b64decode(typed["data"]), np.float64).reshape(2, 3)
    np.testing.assert_array_equal(decoded, body["y_pred"])  # NaN where it was
    # Finite arrays stay JSON lists.
    assert build_request("/v1/losses/x", bad_batch("y_pred", 0.5), encoding="json").encoding == (
        "json"
    )


@pytest.mark.parametrize(
    ("value", "dtype", "what"),
    [
        (np.array([[0.5 + 1j, 0.5]]), "complex128", "complex"),
        ([[0.5, None]], "object", "None"),
        (np.array([["0.5", "0.5"]]), "<U3", "strings"),
        ("0.5", "<U3", "strings"),
        (np.array([["2024-01-01", "2024-01-02"]], "datetime64[D]"), "datetime64[D]", "dates"),
    ],
    ids=["complex", "object", "strings", "a-string", "dates"],
)
def test_unsupported_dtypes_are_refused_before_sending(value: Any, dtype: str, what: str) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={})

    with (
        LossClient("http://x", transport=httpx.MockTransport(handler)) as client,
        pytest.raises(TypeError) as caught,
    ):
        client.loss("binary_crossentropy", [[0, 1]], value)
    message = str(caught.value)
    assert "`y_pred`" in message
    assert f"dtype {dtype}" in message and what in message
    assert "bool, uint8, int8, int16, int32, int64, float16, float32, float64" in message
    assert sent == []


def test_an_unsupported_dtype_in_a_head_names_the_head() -> None:
    outputs = {"kind": {"y_true": [1, 2], "y_pred": np.array(Y_PRED, np.complex64)}}
    with pytest.raises(TypeError, match=r"`outputs\.kind\.y_pred` holds complex numbers"):
        build_request("/v1/evaluate", {"outputs": outputs})


# ---- typed parameters and results -----------------------------------------------------------


def test_keyword_parameters_are_the_services() -> None:
    from service.api import schemas
    from service.encodings import ENCODINGS
    from service.kernels import REDUCTIONS

    arrays = {"y_true", "y_pred", "sample_weight"}
    assert LossParams.__optional_keys__ == set(schemas.LossRequest.model_fields) - arrays
    assert MetricParams.__optional_keys__ == set(schemas.MetricRequest.model_fields) - arrays
    evaluate_fields = set(schemas.EvaluateRequest.model_fields) - arrays - {"losses", "metrics"}
    assert EvaluateParams.__optional_keys__ == evaluate_fields
    assert set(get_args(Reduction)) == set(REDUCTIONS)
    assert set(get_args(LabelEncoding)) == set(ENCODINGS)
    assert set(get_args(ComputeDType)) == set(
        get_args(schemas.LossRequest.model_fields["dtype"].annotation)
    )
    # No catch-all keyword arguments in the signatures: each is a TypedDict.
    for method in (LossClient.loss, LossClient.metric, AsyncLossClient.evaluate):
        (kwargs,) = [
            p for p in inspect.signature(method).parameters.values() if p.kind is p.VAR_KEYWORD
        ]
        assert "Unpack" in str(kwargs.annotation)


def test_an_unknown_keyword_is_a_type_error_before_sending() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={})

    with LossClient("http://x", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(TypeError, match=r"from_logit\b.*from_logits"):
            client.loss("binary_crossentropy", [0, 1], [0.2, 0.3], from_logit=True)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="gamma"):
            client.metric("accuracy", [0, 1], [0.2, 0.3], gamma=2.0)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="reduction"):
            client.evaluate([0, 1], [0.2, 0.3], reduction="sum")  # type: ignore[call-arg]
    assert sent == []


def test_warnings_are_typed(sync_client: LossClient) -> None:
    result = sync_client.loss("categorical_crossentropy", [1, 2], Y_PRED, from_logits=True)
    (warning,) = result.warnings
    assert isinstance(warning, ServiceWarning)
    assert warning.code == "predictions_look_like_probabilities"
    assert warning.message
    assert result.document["warnings"] == [{"code": warning.code, "message": warning.message}]


# ---- the client alone: httpx, NumPy and orjson -----------------------------------------------

ISOLATED = """
import importlib.abc, json, sys

BLOCKED = frozenset(sys.argv[2].split(","))
STARTUP = set(sys.modules)  # what .pth files imported before this script ran


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed")
        return None


sys.meta_path.insert(0, Block())
import numpy as np
from service.client import LossClient, LossServiceError

y_pred = [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]
out = {}
for encoding in ("json", "typed", "binary"):
    with LossClient(sys.argv[1], encoding=encoding) as client:
        out[encoding] = client.loss("categorical_crossentropy", [1, 2], y_pred).loss
with LossClient(sys.argv[1]) as client:
    out["metric"] = client.metric("accuracy", [1, 2], y_pred).resolved_as
    out["evaluate"] = client.evaluate([1, 2], y_pred, losses=["categorical_crossentropy"]).losses
    try:
        client.loss("categorical_crossentropy", [1, 2], np.array([[0.5, np.nan, 0.5]] * 2))
    except LossServiceError as error:
        out["error"] = [error.status, error.errors[0]["loc"]]
    evaluation = client.evaluation(metrics=["accuracy"])
    evaluation.feed(np.array([1, 2, 0]), np.array(y_pred + [[0.6, 0.2, 0.2]]), batch_size=2)
    out["streamed"] = evaluation.results().metrics
out["loaded"] = sorted({m.partition(".")[0] for m in set(sys.modules) - STARTUP} & BLOCKED)
print(json.dumps(out))
"""


def _needs(names: set[str]) -> set[str]:
    """``names`` and every distribution they need (canonical names), by their metadata."""
    needed: set[str] = set()
    pending = list(names)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in needed:
            continue
        needed.add(name)
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return needed


def test_the_client_needs_only_httpx_numpy_and_orjson(server_url: str) -> None:
    allowed = _needs({"httpx", "numpy", "orjson"}) | {"loss-service"}
    blocked = {
        module
        for module, dists in metadata.packages_distributions().items()
        if not {canonicalize_name(d) for d in dists} & allowed and module.isidentifier()
    }
    assert {"fastapi", "starlette", "pydantic", "pydantic_settings", "uvicorn"} <= blocked
    assert "pybase64" in blocked
    result = subprocess.run(
        [sys.executable, "-c", ISOLATED, server_url, ",".join(sorted(blocked))],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["json"] == out["typed"] == out["binary"] == pytest.approx(CCE, rel=1e-6)
    assert out["metric"] == "sparse_categorical_accuracy"
    assert out["evaluate"] == {"categorical_crossentropy": pytest.approx(CCE, rel=1e-6)}
    assert out["error"] == [422, ["y_pred", 0, 1]]
    assert out["streamed"] == {"accuracy": pytest.approx(2 / 3)}
    assert out["loaded"] == []


def test_per_class_values_and_reports(sync_client: LossClient) -> None:
    """f1_score with ``average=None`` gives one value per class; reports come back by key."""
    y_true = [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
    y_pred = [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1]]
    metric = sync_client.metric("f1_score", y_true, y_pred)
    assert isinstance(metric.value, list) and len(metric.value) == 3
    assert all(isinstance(v, float) for v in metric.value)
    evaluated = sync_client.evaluate(
        y_true, y_pred, metrics=["f1_score", "accuracy"], reports=["per_class"]
    )
    assert evaluated.metrics["f1_score"] == pytest.approx(metric.value)
    assert isinstance(evaluated.metrics["accuracy"], float)
    assert evaluated.reports is not None and set(evaluated.reports) == {"per_class"}
    assert sync_client.evaluate(y_true, y_pred, metrics=["accuracy"]).reports is None


# ---- streaming evaluations ----------------------------------------------------------------

SC = 5  # classes of the streaming data
STREAM_SETTINGS: dict[str, Any] = {
    "metrics": ["accuracy", {"name": "f1_score", "average": "macro"}, "auc", "brier_score"],
    "reports": ["per_class", "confusion_matrix", "calibration"],
}


def stream_data(n: int = 200, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_pred = rng.dirichlet(np.ones(SC), n).astype(np.float32)
    y_true = rng.integers(0, SC, n)
    weights = rng.uniform(0.5, 2.0, n).astype(np.float32)
    return y_true, y_pred, weights


def assert_close(got: Any, expected: Any, where: str = "") -> None:
    """Nested documents equal: strings and None exactly, numbers to rtol 1e-6."""
    if isinstance(got, dict):
        assert got.keys() == expected.keys(), where
        for key in got:
            assert_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(got, list) and got and isinstance(got[0], dict | list | str):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_close(a, b, f"{where}[{i}]")
    elif got is None or isinstance(got, str):
        assert got == expected, where
    else:
        np.testing.assert_allclose(
            np.asarray(got, float), np.asarray(expected, float), rtol=1e-6, err_msg=where
        )


def assert_same_as_evaluate(got: EvaluationResults, once: EvaluateResult) -> None:
    assert isinstance(got.result, EvaluateResult)
    assert got.result.label_encoding == once.label_encoding
    assert got.result.n_classes == once.n_classes
    assert got.result.resolved == once.resolved
    assert_close(got.losses, once.losses, "losses")
    assert_close(got.metrics, once.metrics, "metrics")
    assert_close(got.reports, once.reports, "reports")


@pytest.fixture
def stream_url(tmp_path: Path) -> Iterator[str]:
    """A service with its own fresh evaluation store."""
    with serve_in_thread(create_app(Settings(data_dir=tmp_path))) as url:
        yield url


def test_an_evaluation_equals_one_evaluate_over_its_batches(stream_url: str) -> None:
    y_true, y_pred, weights = stream_data()
    cuts = [0, 37, 38, 120, 200]  # uneven batches, one of a single row
    with LossClient(stream_url) as client:
        evaluation = client.evaluation(
            **STREAM_SETTINGS, class_names=list("abcde"), metadata={"model": "m1"}
        )
        assert isinstance(evaluation, Evaluation)
        assert evaluation.summary.status == "open" and evaluation.summary.n_batches == 0
        assert evaluation.url == f"{stream_url}/v1/evaluations/{evaluation.id}"
        empty = evaluation.results()
        assert (empty.result, empty.losses, empty.n_batches) == (None, {}, 0)
        added = evaluation.add_all(
            (y_true[lo:hi], y_pred[lo:hi], weights[lo:hi]) for lo, hi in pairwise(cuts)
        )
        assert [b.created for b in added] == [True] * 4
        assert [b.evaluation_batches for b in added] == [1, 2, 3, 4]
        assert added[1].n_samples == 1 and isinstance(added[1].metrics["accuracy"], float)
        got = evaluation.results()
        once = client.evaluate(
            y_true, y_pred, weights, **STREAM_SETTINGS, class_names=list("abcde")
        )
    assert isinstance(got, EvaluationResults)
    assert (got.id, got.status, got.n_batches, got.n_samples) == (evaluation.id, "open", 4, 200)
    assert got.metadata == {"model": "m1"}
    assert got.created_at <= got.updated_at and got.created_at.tzinfo is not None
    assert_same_as_evaluate(got, once)
    assert got.reports is not None and got.reports["per_class"]["labels"] == list("abcde")
    assert all(isinstance(w, CountedWarning) and w.batches >= 1 for w in got.warnings)


def test_a_float32_batch_sent_as_json_or_binary_is_one_batch_of_a_float64_evaluation(
    stream_url: str,
) -> None:
    y_true = np.array([0, 2, 1])
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]], np.float32)
    with LossClient(stream_url, encoding="json") as client:
        evaluation = client.evaluation(dtype="float64")
        first = evaluation.add(y_true, y_pred, batch_id="b")
    assert first.created
    for encoding in ("binary", "typed"):
        with LossClient(stream_url, encoding=encoding) as other:
            again = other.open_evaluation(evaluation.id).add(y_true, y_pred, batch_id="b")
            assert not again.created and again.losses == first.losses
            once = other.evaluate(y_true, y_pred, dtype="float64")
            assert once.losses == first.losses


def test_the_history_close_report_list_and_delete(stream_url: str) -> None:
    y_true, y_pred, _ = stream_data(50)
    with LossClient(stream_url) as client:
        evaluation = client.evaluation(metrics=["accuracy"], metadata={"split": "val"})
        sent = evaluation.feed(y_true, y_pred, batch_size=7)
        assert [b.n_samples for b in sent] == [7] * 7 + [1]
        history = list(evaluation.batches(page_size=3))  # three pages and a bit
        assert [b.batch_id for b in history] == [b.batch_id for b in sent]
        assert all(b.received_at is not None and b.created is None for b in history)
        assert [b.metrics for b in history] == [b.metrics for b in sent]
        html = evaluation.report_html()
        assert "<html" in html.lower() and evaluation.id in html
        assert evaluation.report_url == f"{evaluation.url}/report"
        assert httpx.get(evaluation.report_url).status_code == 200
        listed = list(client.evaluations(page_size=1))
        assert [e.id for e in listed] == [evaluation.id]
        assert isinstance(listed[0], EvaluationSummary) and listed[0].metadata == {"split": "val"}
        closed = evaluation.close()
        assert (closed.status, closed.n_batches, closed.n_samples) == ("closed", 8, 50)
        # A closed evaluation still answers a replay (a rerun of the job, through a new
        # handle); a new batch is a conflict.
        replay = client.open_evaluation(evaluation.id).add(y_true[:7], y_pred[:7])
        assert (replay.batch_id, replay.created) == (sent[0].batch_id, False)
        with pytest.raises(ConflictError) as caught:
            evaluation.add(y_true[:3], y_pred[:3])
        assert caught.value.status == 409 and "closed" in caught.value.detail
        evaluation.delete()
        with pytest.raises(NotFoundError):
            evaluation.results()
        assert list(client.evaluations()) == []


def test_rerunning_the_same_job_adds_nothing(stream_url: str) -> None:
    y_true, y_pred, weights = stream_data(90)

    def job(evaluation: Evaluation) -> list[BatchResult]:
        return evaluation.feed(y_true, y_pred, weights, batch_size=20)

    with LossClient(stream_url) as client:
        evaluation = client.evaluation(metrics=["accuracy"])
        first = job(evaluation)
        before = evaluation.results()
        rerun = job(client.open_evaluation(evaluation.id))
        after = evaluation.results()
    assert [b.created for b in first] == [True] * 5
    assert [b.created for b in rerun] == [False] * 5
    assert [b.batch_id for b in rerun] == [b.batch_id for b in first]
    assert (after.n_batches, after.n_samples) == (before.n_batches, before.n_samples) == (5, 90)
    assert after.metrics == before.metrics and after.losses == before.losses


def test_batch_ids_are_content_ids_counted_per_occurrence(stream_url: str) -> None:
    """Equal batches in one job are each counted (the n-th gets ``-n``); a batch_prefix
    starts every id; a given id is used as it is."""
    y_true, y_pred = np.array([0, 1]), np.array([[0.8, 0.2], [0.3, 0.7]], np.float32)
    with LossClient(stream_url) as client:
        evaluation = client.evaluation(batch_prefix="worker-1.")
        a, b = evaluation.add(y_true, y_pred), evaluation.add(y_true, y_pred)
        other = evaluation.add(y_true[::-1], y_pred)
        named = evaluation.add(y_true, y_pred, batch_id="mine")
        again = client.open_evaluation(evaluation.id, batch_prefix="worker-1.")
        replayed = again.add(y_true, y_pred)
        assert evaluation.results().n_batches == 4
    assert a.batch_id.startswith("worker-1.") and len(a.batch_id) == len("worker-1.") + 32
    assert b.batch_id == f"{a.batch_id}-2"
    assert other.batch_id not in (a.batch_id, b.batch_id)
    assert named.batch_id == "mine" and named.created
    assert (replayed.batch_id, replayed.created) == (a.batch_id, False)
    # Ids never change from version to version (a job rerun after an upgrade sends the
    # ids it sent before): the digest of these arrays as every version made it.
    body = {"y_true": y_true, "y_pred": y_pred}
    assert content_digest(body) == "1c106b4a4bad2a797d923eda10b2f27f"


def test_dot_ids_are_sent_as_one_path_segment(stream_url: str) -> None:
    """``.`` and ``..`` are batch ids the service takes: sent as they are, a URL would read
    them as "this" and "the parent" (a PUT to the batches, or to the evaluation)."""
    y_true, y_pred = np.array([0, 1]), np.array([[0.8, 0.2], [0.3, 0.7]], np.float32)
    with LossClient(stream_url) as client:
        evaluation = client.evaluation()
        one = evaluation.add(y_true, y_pred, batch_id=".")
        two = evaluation.add(y_true[::-1], y_pred, batch_id="..")
        assert (one.batch_id, one.created, two.batch_id, two.created) == (".", True, "..", True)
        assert [b.batch_id for b in evaluation.batches()] == [".", ".."]
        with pytest.raises(NotFoundError):
            client.open_evaluation(".")


def test_threads_sharing_a_handle_never_share_a_batch_id() -> None:
    """Each add takes its occurrence number under a lock: equal batches added at once from
    several threads are each counted (one id each)."""
    now = datetime.now(UTC)
    summary = EvaluationSummary("e", "open", now, now, 0, 0, {}, {})
    handle = _EvaluationHandle("http://x", summary, "")
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda _: handle._take_id("d")[1], range(800)))
    finally:
        sys.setswitchinterval(previous)
    assert len(set(ids)) == 800


class Interpose:
    """An ASGI app in front of the service: the first ``times`` requests of ``method``
    are answered ``status`` (with ``headers``) instead of the service's answer; with
    ``forward``, the service handles them first (a stored batch whose answer is lost)."""

    def __init__(
        self,
        app: Any,
        *,
        method: str = "PUT",
        status: int = 503,
        headers: dict[str, str] | None = None,
        times: int = 1,
        forward: bool = False,
    ) -> None:
        self.app = app
        self.method, self.status, self.times, self.forward = method, status, times, forward
        self.headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.seen: list[tuple[str, float]] = []  # (method, monotonic time)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.seen.append((scope["method"], time.monotonic()))
        if scope["method"] != self.method or self.times <= 0:
            await self.app(scope, receive, send)
            return
        self.times -= 1
        if self.forward:

            async def discard(message: dict[str, Any]) -> None:
                pass

            await self.app(scope, receive, discard)
        else:
            while (await receive()).get("more_body", False):
                pass
        body = orjson.dumps({"title": "Interposed", "status": self.status, "detail": "try again"})
        headers = [(b"content-type", b"application/problem+json"), *self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def test_a_503_with_retry_after_is_retried_after_that_time(tmp_path: Path) -> None:
    front = Interpose(create_app(Settings(data_dir=tmp_path)), headers={"Retry-After": "1"})
    y_true, y_pred, _ = stream_data(30)
    with serve_in_thread(front) as url, LossClient(url) as client:
        evaluation = client.evaluation()
        result = evaluation.add(y_true, y_pred)
        assert result.created is True and result.evaluation_batches == 1
        assert evaluation.results().n_batches == 1
    puts = [t for method, t in front.seen if method == "PUT"]
    assert len(puts) == 2
    assert puts[1] - puts[0] >= 0.95  # Retry-After: 1, not the 0.5 s backoff


def test_a_stored_batch_whose_answer_was_lost_is_counted_once(tmp_path: Path) -> None:
    front = Interpose(create_app(Settings(data_dir=tmp_path)), status=502, forward=True)
    y_true, y_pred, _ = stream_data(30)
    with serve_in_thread(front) as url, LossClient(url, retry=RetryPolicy(backoff=0.01)) as c:
        evaluation = c.evaluation()
        result = evaluation.add(y_true, y_pred)
        assert result.created is False  # the service had it from the first attempt
        got = evaluation.results()
    assert (got.n_batches, got.n_samples) == (1, 30)
    assert [m for m, _ in front.seen].count("PUT") == 2


def test_a_batch_sent_again_after_its_sending_failed_keeps_its_id(tmp_path: Path) -> None:
    """A batch counts towards ``-<n>`` once accepted: sent again on the same handle after
    every attempt failed (its answers lost, the batch stored), it is the same batch."""
    front = Interpose(create_app(Settings(data_dir=tmp_path)), status=502, forward=True, times=2)
    y_true, y_pred, _ = stream_data(30)
    policy = RetryPolicy(attempts=2, backoff=0.01)
    with serve_in_thread(front) as url, LossClient(url, retry=policy) as client:
        evaluation = client.evaluation()
        first_id = content_digest({"y_true": y_true, "y_pred": y_pred})
        with pytest.raises(LossServiceError):
            evaluation.add(y_true, y_pred)
        again = evaluation.add(y_true, y_pred)
        assert (again.batch_id, again.created) == (first_id, False)
        got = evaluation.results()
        assert (got.n_batches, got.n_samples) == (1, 30)
        # Accepted now: the same content again is the job's second such batch.
        assert evaluation.add(y_true, y_pred).batch_id == f"{again.batch_id}-2"


def test_equal_batches_sent_at_once_each_count(tmp_path: Path) -> None:
    """Each takes its number when it is sent, not when it is accepted."""
    y_true, y_pred, _ = stream_data(10)

    async def go() -> tuple[list[str], int]:
        app = create_app(Settings(data_dir=tmp_path))
        transport = httpx.ASGITransport(app=app)
        async with AsyncLossClient("http://testserver", transport=transport) as client:
            evaluation = await client.evaluation()
            sent = await asyncio.gather(*(evaluation.add(y_true, y_pred) for _ in range(3)))
            return [r.batch_id for r in sent], (await evaluation.results()).n_batches

    ids, n_batches = run(go())
    digest = content_digest({"y_true": y_true, "y_pred": y_pred})
    assert sorted(ids) == [digest, f"{digest}-2", f"{digest}-3"] and n_batches == 3


def test_retries_are_bounded_and_creation_is_not_retried_after_a_500(tmp_path: Path) -> None:
    front = Interpose(create_app(Settings(data_dir=tmp_path)), status=503, times=100)
    y_true, y_pred, _ = stream_data(10)
    policy = RetryPolicy(attempts=3, backoff=0.01)
    with serve_in_thread(front) as url, LossClient(url, retry=policy) as client:
        evaluation = client.evaluation()
        with pytest.raises(ServiceUnavailableError) as caught:
            evaluation.add(y_true, y_pred)
        assert caught.value.status == 503 and caught.value.detail == "try again"
        assert [m for m, _ in front.seen].count("PUT") == 3
        # POST /v1/evaluations may have created one before a 500: it is not sent again.
        front.method, front.status, front.times, front.forward = "POST", 500, 1, True
        with pytest.raises(LossServiceError) as failed:
            client.evaluation()
        assert failed.value.status == 500
        assert [m for m, _ in front.seen].count("POST") == 2  # the first, and this one
        # Without retries, a 503 is raised at once.
    with serve_in_thread(front) as url, LossClient(url, retry=None) as client:
        front.method, front.status, front.times, front.forward = "GET", 503, 1, False
        with pytest.raises(ServiceUnavailableError):
            client.open_evaluation(evaluation.id)
        assert client.open_evaluation(evaluation.id).id == evaluation.id


class FlakyTransport(httpx.BaseTransport):
    """The network, except that the first ``failures`` PUTs fail to connect."""

    def __init__(self, failures: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.failures = failures
        self.puts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.puts += 1
            if self.puts <= self.failures:
                raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_connection_errors_are_retried(stream_url: str) -> None:
    y_true, y_pred, _ = stream_data(10)
    transport = FlakyTransport(failures=2)
    with LossClient(stream_url, transport=transport, retry=RetryPolicy(backoff=0.01)) as c:
        evaluation = c.evaluation()
        assert evaluation.add(y_true, y_pred).created is True
        assert transport.puts == 3
        transport.failures, transport.puts = 5, 0
        with pytest.raises(httpx.ConnectError):
            evaluation.add(y_true[:5], y_pred[:5])
        assert transport.puts == 5  # the policy's attempts
        assert evaluation.results().n_batches == 1


class Statuses:
    """A response hook recording each request's method and answer status."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def __call__(self, response: httpx.Response) -> None:
        self.seen.append((response.request.method, response.status_code))


def test_a_batch_over_the_body_limit_is_split_into_parts(
    tmp_path: Path, sync_client: LossClient
) -> None:
    y_true, y_pred, weights = stream_data(3000, seed=5)
    limit = 20_000  # the whole batch is about 84 kB in the binary encoding
    statuses = Statuses()
    app = create_app(Settings(data_dir=tmp_path, max_body_bytes=limit))
    with (
        serve_in_thread(app) as url,
        LossClient(url, event_hooks={"response": [statuses]}) as client,
    ):
        evaluation = client.evaluation(**STREAM_SETTINGS)
        result = evaluation.add(y_true, y_pred, weights, batch_id="big")
        assert [p.batch_id for p in result.parts] == [f"big.{k}" for k in range(5)]
        assert [p.n_samples for p in result.parts] == [600] * 5
        assert (result.n_samples, result.created, result.losses) == (3000, True, {})
        assert [s for m, s in statuses.seen if m == "PUT"] == [413] + [201] * 5
        got = evaluation.results()
        # The limit is known now: a later batch is split before it is sent.
        statuses.seen.clear()
        rerun = client.open_evaluation(evaluation.id).add(y_true, y_pred, weights, batch_id="big")
        assert [p.batch_id for p in rerun.parts] == [f"big.{k}" for k in range(5)]
        assert [s for m, s in statuses.seen if m == "PUT"] == [200] * 5
        assert evaluation.results().n_batches == 5
    assert (got.n_batches, got.n_samples) == (5, 3000)
    # The whole batch in one evaluate call, on a service without that limit.
    assert_same_as_evaluate(got, sync_client.evaluate(y_true, y_pred, weights, **STREAM_SETTINGS))


@pytest.mark.parametrize("weight", [2.0, [2.0], [[2.0]]], ids=["number", "(1,)", "(1,1)"])
def test_a_weight_of_one_element_goes_whole_with_each_part(
    tmp_path: Path, sync_client: LossClient, weight: Any
) -> None:
    """The service applies a ``sample_weight`` of one element to every row: a batch that
    has one is split as any other, each part taking the weight whole."""
    y_true, y_pred, _ = stream_data(3000, seed=5)
    app = create_app(Settings(data_dir=tmp_path, max_body_bytes=20_000))
    with serve_in_thread(app) as url, LossClient(url) as client:
        evaluation = client.evaluation(**STREAM_SETTINGS)
        result = evaluation.add(y_true, y_pred, np.array(weight), batch_id="big")
        got = evaluation.results()
    assert len(result.parts) > 1 and sum(p.n_samples for p in result.parts) == 3000
    assert (got.n_batches, got.n_samples) == (len(result.parts), 3000)
    everything = sync_client.evaluate(y_true, y_pred, np.array(weight), **STREAM_SETTINGS)
    assert_same_as_evaluate(got, everything)


def test_a_413_that_fewer_rows_cannot_cure_is_not_split(tmp_path: Path) -> None:
    """AUC with many thresholds over many columns keeps more counts than the service's
    limit whatever the rows: the batch is refused once, with the service's words, not
    sent again in ever smaller parts."""
    rng = np.random.default_rng(2)
    y_true = (rng.random((400, 50)) < 0.3).astype(np.float32)
    y_pred = rng.random((400, 50)).astype(np.float32)
    statuses = Statuses()
    app = create_app(Settings(data_dir=tmp_path))
    auc = {"name": "auc", "num_thresholds": 100_000, "multi_label": True}
    with (
        serve_in_thread(app) as url,
        LossClient(url, event_hooks={"response": [statuses]}) as client,
    ):
        evaluation = client.evaluation(metrics=[auc], label_encoding="multi_hot")
        with pytest.raises(PayloadTooLargeError) as refused:
            evaluation.add(y_true, y_pred, batch_id="wide")
    assert "thresholds" in refused.value.detail
    assert not getattr(refused.value, "__notes__", [])
    assert [s for m, s in statuses.seen if m == "PUT"] == [413]


@pytest.mark.parametrize("encoding", ["json", "typed"])
def test_heads_over_the_element_limit_as_json_go_binary_and_split(
    tmp_path: Path, encoding: str
) -> None:
    """A batch of heads whose JSON (or typed) arrays are over the service's elements limit
    is sent again in the binary encoding, then split: the 413 names each head's array."""
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 4000), rng.random(4000).astype(np.float32)
    heads = {"a": {"y_true": y, "y_pred": p}, "b": {"y_true": y, "y_pred": p}}
    app = create_app(Settings(data_dir=tmp_path, max_elements=3000))
    with serve_in_thread(app) as url, LossClient(url, encoding=encoding) as client:
        evaluation = client.evaluation(outputs={"a": {}, "b": {}})
        result = evaluation.add(outputs=heads)
        assert evaluation.results().n_samples == 4000
    assert len(result.parts) == 2


#: A new evaluation, as the service answers its creation.
CREATED = {
    "id": "e1",
    "status": "open",
    "created_at": "2026-01-01T00:00:00+00:00",
    "updated_at": "2026-01-01T00:00:00+00:00",
    "n_batches": 0,
    "n_samples": 0,
    "metadata": {},
}


def test_a_413_naming_no_place_is_split(tmp_path: Path) -> None:
    """A gateway's 413, whatever its JSON (here ``errors`` without ``loc``), is taken as
    the body's size: the batch is split."""

    def gateway(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json=CREATED)
        if len(request.content) > 20_000:
            too_large = {"code": "REQUEST_TOO_LARGE", "message": "Request entity too large"}
            return httpx.Response(413, json={"errors": [too_large]})
        answer = {"batch_id": request.url.path.rsplit("/", 1)[-1], "n_samples": 1}
        answer |= {"losses": {}, "metrics": {}, "warnings": []}
        return httpx.Response(201, json={**answer, "evaluation": {"n_batches": 1, "n_samples": 1}})

    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 10, 1000), rng.random((1000, 10)).astype(np.float32)
    transport = httpx.MockTransport(gateway)
    with LossClient("http://gateway.test", transport=transport, retry=None) as client:
        result = client.evaluation().add(y_true, y_pred)
    assert len(result.parts) == 2  # halved: the 413 names no byte limit


def test_a_refused_part_says_its_rows_and_the_parts_stored(tmp_path: Path) -> None:
    y_true, y_pred, weights = stream_data(3000, seed=5)
    y_pred = y_pred.copy()
    y_pred[900, 0] = np.nan
    app = create_app(Settings(data_dir=tmp_path, max_body_bytes=20_000))
    with serve_in_thread(app) as url, LossClient(url) as client:
        evaluation = client.evaluation(**STREAM_SETTINGS)
        with pytest.raises(InvalidInputError) as refused:
            evaluation.add(y_true, y_pred, weights, batch_id="big")
        assert "index [300, 0]" in refused.value.detail  # within the part
        (note,) = refused.value.__notes__
        assert "Part 'big.1' of batch 'big'" in note and "rows 600 to 1199" in note
        assert "Parts already stored: 'big.0'" in note
        # Sent again, corrected, under its id: the stored part is a replay.
        fixed = evaluation.add(*stream_data(3000, seed=5), batch_id="big")
        assert [p.created for p in fixed.parts] == [False, True, True, True, True]
        assert evaluation.results().n_samples == 3000


def test_a_split_first_batch_fixes_the_family_its_whole_labels_have(
    tmp_path: Path, sync_client: LossClient
) -> None:
    """The evaluation's first batch, multi-hot, split where its first rows hold one
    positive each: the part sent first is one with a multi-hot row, so the evaluation is
    multi-hot and every part fits it (sent first in order, the first part would have
    fixed one-hot, and the parts with several positives been refused)."""
    rng = np.random.default_rng(3)
    y_true = np.zeros((600, 10), np.float32)
    y_true[np.arange(600), rng.integers(0, 10, 600)] = 1
    y_true[400:, 0] = 1  # the last rows hold two positives (or one, in class 0)
    y_pred = rng.random((600, 10)).astype(np.float32)
    app = create_app(Settings(data_dir=tmp_path, max_body_bytes=20_000))
    with serve_in_thread(app) as url, LossClient(url) as client:
        evaluation = client.evaluation(losses=["binary_crossentropy"])
        result = evaluation.add(y_true, y_pred, batch_id="big")
        assert len(result.parts) > 2 and result.n_samples == 600
        assert [p.batch_id for p in result.parts] == [f"big.{k}" for k in range(len(result.parts))]
        assert result.evaluation_batches == len(result.parts)
        got = evaluation.results()
    once = sync_client.evaluate(y_true, y_pred, losses=["binary_crossentropy"])
    assert once.label_encoding == "multi_hot"
    assert_same_as_evaluate(got, once)


def test_a_split_first_batch_with_rows_without_a_positive_is_multi_hot(
    tmp_path: Path, sync_client: LossClient
) -> None:
    """A row with no positive makes labels multi-hot, as a row with several does: the
    part holding it goes first (sent in order, the first part, one-hot, would have fixed
    one-hot and the last been refused)."""
    rng = np.random.default_rng(8)
    y_true = np.eye(6, dtype=np.float32)[rng.integers(0, 6, 600)]
    y_true[-3:] = 0
    y_pred = rng.random((600, 6)).astype(np.float32)
    app = create_app(Settings(data_dir=tmp_path, max_body_bytes=20_000))
    with serve_in_thread(app) as url, LossClient(url) as client:
        evaluation = client.evaluation(losses=["binary_crossentropy"])
        result = evaluation.add(y_true, y_pred, batch_id="big")
        assert len(result.parts) >= 2  # the rows without a positive in the last
        got = evaluation.results()
    once = sync_client.evaluate(y_true, y_pred, losses=["binary_crossentropy"])
    assert once.label_encoding == "multi_hot"
    assert_same_as_evaluate(got, once)


def test_a_split_first_batch_whose_heads_disagree_on_the_part_to_send_first(
    tmp_path: Path,
) -> None:
    """Head a's soft rows in the first part, head b's multi-hot rows in the last: no part
    fixes both families. The refusal says so and how to state them; stated at creation,
    the same batch is taken."""
    rng = np.random.default_rng(4)
    n = 1200
    soft = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    soft[:5] = [0.2, 0.5, 0.3]
    multi = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    multi[-5:] = [1, 1, 0]
    outputs = {
        "a": {"y_true": soft, "y_pred": rng.dirichlet([1, 1, 1], n).astype(np.float32)},
        "b": {"y_true": multi, "y_pred": rng.random((n, 3)).astype(np.float32)},
    }
    app = create_app(Settings(data_dir=tmp_path, max_body_bytes=20_000))
    with serve_in_thread(app) as url, LossClient(url) as client:
        evaluation = client.evaluation(outputs={"a": {}, "b": {}})
        with pytest.raises(InvalidInputError) as refused:
            evaluation.add(outputs=outputs, batch_id="big")
        notes = "\n".join(refused.value.__notes__)
        assert "each head's most general labels (soft, then multi-hot rows) are not all" in notes
        assert "outputs={head: {'label_encoding': ...}}" in notes
        stated = client.evaluation(
            outputs={"a": {"label_encoding": "soft"}, "b": {"label_encoding": "multi_hot"}}
        )
        result = stated.add(outputs=outputs, batch_id="big")
        assert len(result.parts) > 2 and result.n_samples == n
        heads = stated.results().result
        assert isinstance(heads, HeadsResult)
        assert (heads.outputs["a"].label_encoding, heads.outputs["b"].label_encoding) == (
            "soft",
            "multi_hot",
        )


def test_the_body_limit_as_an_option_and_parts_split_again(tmp_path: Path) -> None:
    """With ``max_body_bytes`` given, nothing over it is sent; a part the service still
    refuses is split again under ids derived from its own, and the limit the 413 names
    is used from then on."""
    y_true, y_pred, _ = stream_data(1000, seed=6)  # 28 bytes a row: 28 kB and a header
    statuses = Statuses()
    app = create_app(Settings(data_dir=tmp_path, max_body_bytes=8_000))
    with (
        serve_in_thread(app) as url,
        LossClient(url, max_body_bytes=15_000, event_hooks={"response": [statuses]}) as c,
    ):
        evaluation = c.evaluation()
        result = evaluation.add(y_true, y_pred, batch_id="b")
        ids = [p.batch_id for p in result.parts]
        leaves = [q.batch_id for p in result.parts for q in (p.parts or [p])]
        assert ids == ["b.0", "b.1"]  # over 15 kB: two parts of 500 rows, 14 kB each
        assert leaves == ["b.0.0", "b.0.1", "b.1.0", "b.1.1"]  # each over 8 kB: in two
        # b.0 is refused (413, naming 8000 bytes); b.1 is split before it is sent.
        assert [s for m, s in statuses.seen if m == "PUT"] == [413, 201, 201, 201, 201]
        assert [q.n_samples for p in result.parts for q in p.parts] == [250] * 4
        assert evaluation.results().n_samples == 1000
    y_pred = np.full((1, 10_000), 1e-4, np.float32)  # one row over the limit: no split
    with serve_in_thread(app) as url, LossClient(url) as client:
        with pytest.raises(PayloadTooLargeError) as caught:
            client.open_evaluation(evaluation.id).add([3], y_pred)
        assert caught.value.status == 413 and "8000 bytes" in caught.value.detail


@pytest.mark.parametrize(("rows", "n_parts"), [(300, 0), (1000, 2)])
def test_a_rerun_in_another_encoding_sends_the_same_parts(
    tmp_path: Path, rows: int, n_parts: int
) -> None:
    """Whether a batch is split, and where, depends on the batch and the body limit, not
    on the encoding: JSON lists are about four times the binary size here, yet a JSON run
    and its reruns in the other encodings (the limit learned from a 413, or given) send
    the same ids with the same rows, so the evaluation counts each row once."""
    y_true, y_pred, _ = stream_data(rows, seed=7)  # 28 bytes a row in the binary encoding
    app = create_app(Settings(data_dir=tmp_path, max_body_bytes=15_000))
    runs: list[tuple[Encoding, int | None]] = [
        ("json", None),
        ("binary", None),
        ("typed", None),
        ("auto", None),
        ("json", 15_000),
        ("typed", 15_000),
    ]
    with serve_in_thread(app) as url:
        with LossClient(url) as client:
            evaluation_id = client.evaluation().id
        sent: list[BatchResult] = []
        for encoding, limit in runs:
            with LossClient(url, encoding=encoding, max_body_bytes=limit) as client:
                sent.append(client.open_evaluation(evaluation_id).add(y_true, y_pred))
        with LossClient(url) as client:
            got = client.open_evaluation(evaluation_id).results()
    whole = sent[0].batch_id
    expected = [f"{whole}.{k}" for k in range(n_parts)]
    for (encoding, limit), result in zip(runs, sent, strict=True):
        where = f"{encoding}, max_body_bytes={limit}"
        assert result.batch_id == whole, where
        assert [p.batch_id for p in result.parts] == expected, where
        assert [p.n_samples for p in result.parts] == [rows // 2] * n_parts, where
        assert result.n_samples == rows, where
    assert [r.created for r in sent] == [True] + [False] * (len(runs) - 1)
    assert (got.n_batches, got.n_samples) == (max(1, n_parts), rows)


def test_a_batch_shorter_as_json_than_binary_is_split_by_its_binary_size(
    tmp_path: Path,
) -> None:
    """Multi-hot int64 labels and boolean predictions are shorter as JSON lists than in the
    binary encoding: under a limit between the two, the JSON run sends the batch in the
    binary encoding too, so that the service's limit splits both runs alike."""
    rng = np.random.default_rng(1)
    y_true = (rng.random((400, 6)) < 0.3).astype(np.int64)  # 48 bytes a row in binary
    y_pred = rng.random((400, 6)) < 0.5  # 6 bytes a row in binary
    json_size = len(encode_body({"y_true": y_true, "y_pred": y_pred}, "json")[0])
    binary_size = len(encode_body({"y_true": y_true, "y_pred": y_pred}, "binary")[0])
    assert json_size < 20_500 < binary_size
    app = create_app(Settings(data_dir=tmp_path, max_body_bytes=20_500))
    with serve_in_thread(app) as url:
        with LossClient(url) as client:
            evaluation_id = client.evaluation(metrics=["binary_accuracy"]).id
        sent = []
        for encoding in ("json", "binary", "json"):
            with LossClient(url, encoding=encoding) as client:
                sent.append(client.open_evaluation(evaluation_id).add(y_true, y_pred))
        with LossClient(url) as client:
            got = client.open_evaluation(evaluation_id).results()
    for result in sent:
        assert [p.batch_id for p in result.parts] == [f"{sent[0].batch_id}.{k}" for k in (0, 1)]
    assert [r.created for r in sent] == [True, False, False]
    assert (got.n_batches, got.n_samples) == (2, 400)


def test_typed_errors_for_404_409_and_422(stream_url: str) -> None:
    y_true, y_pred, _ = stream_data(20)
    with LossClient(stream_url) as client:
        with pytest.raises(NotFoundError) as missing:
            client.open_evaluation("0" * 32)
        assert missing.value.status == 404 and "No evaluation" in missing.value.detail
        evaluation = client.evaluation()
        evaluation.add(y_true[:10], y_pred[:10], batch_id="a")
        with pytest.raises(ConflictError) as conflict:
            evaluation.add(y_true[10:], y_pred[10:], batch_id="a")
        assert conflict.value.status == 409 and "other content" in conflict.value.detail
        with pytest.raises(InvalidInputError) as unfit:
            evaluation.add([0, 1], [[0.5, 0.5], [0.2, 0.8]])
        assert unfit.value.status == 422 and "2 classes" in unfit.value.detail
        with pytest.raises(NotFoundError) as unknown:
            client.evaluation(metrics=["no_such_metric"])
        assert "'no_such_metric'" in unknown.value.detail
        assert evaluation.results().n_batches == 1
    for error in (missing, conflict, unfit):
        assert isinstance(error.value, LossServiceError)


def test_wrong_calls_are_refused_before_sending() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    with LossClient("http://x", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(TypeError, match=r"from_logit\b.*from_logits"):
            client.evaluation(from_logit=True)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="per head"):
            client.evaluation(metrics=["accuracy"], outputs={"a": {}})
        with pytest.raises(ValueError, match="needs `outputs`"):
            client.evaluation(loss_weights={"a": 2.0})
        with pytest.raises(TypeError, match=r"head 'a'.*\bmetric\b"):
            client.evaluation(outputs={"a": {"metric": ["accuracy"]}})  # type: ignore[typeddict-unknown-key]
        with pytest.raises(ValueError, match="batch_prefix"):
            client.evaluation(batch_prefix="no spaces")
        summary = EvaluationSummary(
            "e1", "open", datetime.now(UTC), datetime.now(UTC), 0, 0, {}, document={}
        )
        evaluation = Evaluation(client, summary)
        with pytest.raises(ValueError, match=r"batch id .* received 'a/b'"):
            evaluation.add([0], [[0.5, 0.5]], batch_id="a/b")
        with pytest.raises(TypeError, match="y_true and y_pred"):
            evaluation.add([0])
        with pytest.raises(ValueError, match="same number of rows: y_true: 2, y_pred: 3"):
            evaluation.feed([0, 1], [[0.5, 0.5]] * 3, batch_size=2)
        with pytest.raises(ValueError, match="batch_size"):
            evaluation.feed([0], [[0.5, 0.5]], batch_size=0)
    assert sent == []


def test_several_heads(stream_url: str) -> None:
    rng = np.random.default_rng(8)
    kind_true, kind_pred, _ = stream_data(40)
    tags_true = (rng.random((40, 3)) < 0.4).astype(np.float32)
    tags_pred = rng.random((40, 3)).astype(np.float32)
    heads = {
        "kind": {"metrics": ["accuracy"]},
        "tags": {"losses": ["binary_crossentropy"], "label_encoding": "multi_hot"},
    }
    with LossClient(stream_url) as client:
        evaluation = client.evaluation(outputs=heads, loss_weights={"kind": 0.5})
        results = evaluation.feed(
            outputs={
                "kind": {"y_true": kind_true, "y_pred": kind_pred},
                "tags": {"y_true": tags_true, "y_pred": tags_pred},
            },
            batch_size=15,
        )
        got = evaluation.results()
        once = client.evaluate_heads(
            {
                "kind": {"y_true": kind_true, "y_pred": kind_pred, **heads["kind"]},
                "tags": {"y_true": tags_true, "y_pred": tags_pred, **heads["tags"]},
            },
            loss_weights={"kind": 0.5},
        )
    assert [r.n_samples for r in results] == [15, 15, 10]
    assert results[0].outputs is not None and set(results[0].outputs) == {"kind", "tags"}
    assert results[0].total_loss is not None and results[0].losses == {}
    assert isinstance(got.result, HeadsResult)
    assert got.result.total_loss == pytest.approx(once.total_loss, rel=1e-6)
    for head in ("kind", "tags"):
        assert_close(got.result.outputs[head].losses, once.outputs[head].losses, head)
        assert_close(got.result.outputs[head].metrics, once.outputs[head].metrics, head)
    with pytest.raises(TypeError, match="has heads"):
        _ = got.losses


def test_a_rerun_that_lists_heads_or_arrays_in_another_order_counts_nothing_twice(
    stream_url: str,
) -> None:
    """The service takes a batch's heads and fields in any order as the same batch: its id
    does not depend on them either (a dict of heads built from a set changes order from
    run to run), so a rerun so written is counted once."""
    rng = np.random.default_rng(3)
    a_true, a_pred = rng.integers(0, 3, 20), rng.dirichlet(np.ones(3), 20).astype(np.float32)
    b_true, b_pred = rng.integers(0, 4, 20), rng.dirichlet(np.ones(4), 20).astype(np.float32)
    with LossClient(stream_url) as client:
        evaluation = client.evaluation(outputs={"a": {}, "b": {}})
        first = evaluation.feed(
            outputs={
                "a": {"y_true": a_true, "y_pred": a_pred},
                "b": {"y_true": b_true, "y_pred": b_pred},
            },
            batch_size=10,
        )
        rerun = client.open_evaluation(evaluation.id).feed(
            outputs={
                "b": {"y_true": b_true, "y_pred": b_pred},
                "a": {"y_pred": a_pred, "y_true": a_true},
            },
            batch_size=10,
        )
        assert evaluation.results().n_batches == 2
    assert [r.batch_id for r in rerun] == [r.batch_id for r in first]
    assert [r.created for r in rerun] == [False, False]
    # A body of one head keeps the id every version gave it.
    arrays = {"y_true": a_true[:2], "y_pred": a_pred[:2]}
    assert content_digest({"y_pred": arrays["y_pred"], "y_true": arrays["y_true"]}) == (
        content_digest(arrays)
    )


def test_an_api_key_and_credentials_in_the_url_are_refused_together() -> None:
    """httpx would send the URL's user and password as Basic authorization in place of the
    key: the service would never see the key."""
    with pytest.raises(ValueError, match="both go in the Authorization header"):
        LossClient("http://user:pw@127.0.0.1:9", api_key="key")
    with pytest.raises(ValueError, match="both go in the Authorization header"):
        AsyncLossClient("http://user@127.0.0.1:9", api_key="key")
    LossClient("http://user:pw@127.0.0.1:9").close()  # credentials alone: a proxy's


def test_a_head_given_as_a_tuple_is_told_the_form_it_takes(stream_url: str) -> None:
    with LossClient(stream_url) as client:
        evaluation = client.evaluation(outputs={"a": {}})
        with pytest.raises(
            TypeError,
            match=r"head 'a' of a batch is a mapping of y_true, "
            r"y_pred, sample_weight \(its arrays by name\); received tuple",
        ):
            evaluation.add(outputs={"a": (np.array([0]), np.array([[0.6, 0.4]]))})  # type: ignore[dict-item]


def test_async_streaming_evaluation(tmp_path: Path) -> None:
    front = Interpose(create_app(Settings(data_dir=tmp_path)), headers={"Retry-After": "0"})
    y_true, y_pred, _ = stream_data(120)

    async def batches() -> AsyncIterator[dict[str, Any]]:
        for lo in range(0, 120, 50):
            yield {"y_true": y_true[lo : lo + 50], "y_pred": y_pred[lo : lo + 50]}

    async def main() -> tuple[EvaluationResults, EvaluateResult, list[BatchResult], int]:
        transport = httpx.ASGITransport(app=front)
        async with AsyncLossClient("http://testserver", transport=transport) as client:
            evaluation = await client.evaluation(**STREAM_SETTINGS)
            assert isinstance(evaluation, AsyncEvaluation)
            sent = await evaluation.add_all(batches())  # the first PUT is a 503, retried
            sent += await evaluation.feed(y_true, y_pred, batch_size=70)
            again = await client.open_evaluation(evaluation.id)
            assert (await again.add_all([(y_true[:50], y_pred[:50])]))[0].created is False
            history = [b async for b in evaluation.batches(page_size=2)]
            assert [b.batch_id for b in history] == [b.batch_id for b in sent]
            assert [e.id async for e in client.evaluations()] == [evaluation.id]
            got = await evaluation.results()
            html = await evaluation.report_html()
            assert evaluation.id in html
            assert (await evaluation.close()).status == "closed"
            await evaluation.delete()
            with pytest.raises(NotFoundError):
                await evaluation.results()
            all_rows = (np.concatenate([y_true, y_true]), np.concatenate([y_pred, y_pred]))
            once = await client.evaluate(*all_rows, **STREAM_SETTINGS)
            return got, once, sent, len(history)

    got, once, sent, n_history = run(main())
    assert [b.created for b in sent] == [True] * 5
    assert (got.n_batches, got.n_samples, n_history) == (5, 240, 5)
    assert_same_as_evaluate(got, once)
    assert [m for m, _ in front.seen].count("PUT") == 7  # 5 batches, a retry, a replay


def test_retry_after_and_backoff() -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=3.0, max_retry_after=10.0)
    waits = [policy.wait(k, None) for k in range(6)]
    for k, wait in enumerate(waits):
        full = min(3.0, 0.5 * 2**k)
        assert full / 2 <= wait <= full
    assert policy.wait(0, 4.0) == 4.0 and policy.wait(0, 60.0) == 10.0
    request = httpx.Request("GET", "http://x")
    in_a_minute = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=60), True)
    dated = httpx.Response(503, headers={"Retry-After": in_a_minute}, request=request)
    assert 55 <= (_retry_after(dated) or 0) <= 60
    assert _retry_after(httpx.Response(503, headers={"Retry-After": "7"})) == 7.0
    assert _retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    assert _retry_after(httpx.Response(503)) is None
    with pytest.raises(ValueError, match="attempts must be >= 1, received 0"):
        RetryPolicy(attempts=0)
