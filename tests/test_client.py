"""service.client: the async client in process (``httpx.ASGITransport``), the sync client
against a real uvicorn server on 127.0.0.1, and the request encodings byte for byte."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from importlib import metadata
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
    AsyncLossClient,
    ComputeDType,
    Encoding,
    EvaluateParams,
    EvaluateResult,
    HeadsResult,
    LabelEncoding,
    LossClient,
    LossParams,
    LossResult,
    LossServiceError,
    MetricParams,
    MetricResult,
    Reduction,
    ServiceWarning,
    build_request,
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
def server_url() -> Iterator[str]:
    """The service under uvicorn in a background thread, on a free port of 127.0.0.1."""
    with serve_in_thread(create_app(Settings())) as url:
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
    assert orjson.loads(content) == {"y_true": [1, 2], "y_pred": Y_PRED, "from_logits": False}
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
