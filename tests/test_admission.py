"""The memory budget: reservations, the working-memory estimate against what computing
really allocates, and the refusals it gives (503 before the body, 413 per request)."""

from __future__ import annotations

import base64
import gc
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from service import admission, registry
from service.admission import MemoryBudget, mib
from service.api.body import RawBody
from service.api.compute import _run, decode
from service.errors import PayloadTooLarge, ServiceUnavailable
from service.evaluation import evaluate, loss, metric
from service.main import create_app
from service.settings import Settings
from tests.conftest import SyncClient
from tests.servers import serve_in_thread

MiB = 1024 * 1024


def test_reservations_add_up_and_release_once() -> None:
    budget = MemoryBudget(limit=100, request_limit=100)
    first = budget.reserve(60)
    second = budget.reserve(40)
    assert budget.used == 100
    with pytest.raises(ServiceUnavailable) as refused:
        budget.reserve(1)
    assert "LOSS_SERVICE_MAX_INFLIGHT_BYTES" in refused.value.detail
    first.release()
    first.release()
    assert budget.used == 40
    second.resize(10)
    assert budget.used == 10 and second.peak == 40
    second.release()
    assert budget.used == 0


def test_a_refused_growth_keeps_what_was_held() -> None:
    budget = MemoryBudget(limit=100, request_limit=100)
    held = budget.reserve(70)
    other = budget.reserve(20)
    with pytest.raises(ServiceUnavailable):
        other.resize(40)
    assert (budget.used, other.nbytes) == (90, 20)
    held.release()
    other.release()
    assert budget.used == 0


def test_a_request_over_the_per_request_limit_is_413_naming_what_to_send() -> None:
    budget = MemoryBudget(limit=1000 * MiB, request_limit=10 * MiB)
    reservation = budget.reserve(0)
    with pytest.raises(PayloadTooLarge) as refused:
        reservation.require(working=11 * MiB, held=0)
    detail = refused.value.detail
    assert "11 MiB" in detail and "10 MiB" in detail
    assert "LOSS_SERVICE_MAX_REQUEST_MEMORY_BYTES" in detail and "binary" in detail
    assert budget.used == 0


def test_mib() -> None:
    assert (mib(64 * MiB), mib(MiB // 2), mib(25 * MiB + 1)) == ("64 MiB", "0.5 MiB", "25 MiB")


# ---- the estimate is an upper bound of what computing allocates ----------------------------


def _typed(a: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {
        "dtype": str(a.dtype),
        "shape": list(a.shape),
        "data": base64.b64encode(a.tobytes()).decode(),
    }


def _binary(fields: dict[str, np.ndarray[Any, Any]], extra: dict[str, Any]) -> RawBody:
    header: dict[str, Any] = dict(extra)
    tensors = []
    for name, a in fields.items():
        header[name] = {"dtype": str(a.dtype), "shape": list(a.shape), "binary_data_size": a.nbytes}
        tensors.append(a.tobytes())
    head = orjson.dumps(header)
    return RawBody(bytearray(head + b"".join(tensors)), "binary", len(head))


rng = np.random.default_rng(7)
N, C = 2048, 256
PROBS = rng.dirichlet(np.ones(C), N).astype(np.float32)
LABELS = rng.integers(0, C, N)
MULTI = (rng.random((N, C)) < 0.1).astype(np.float32)


def _cases() -> list[tuple[str, Callable[[], RawBody], Callable[[Any, int], dict[str, Any]]]]:
    sparse = {"y_true": LABELS.astype(np.int64), "y_pred": PROBS}
    as_uint8 = {"y_true": LABELS.astype(np.uint8), "y_pred": (PROBS * 255).astype(np.uint8)}
    as_f64 = {"y_true": LABELS.astype(np.float64), "y_pred": PROBS.astype(np.float64)}
    one_hot = {"y_true": np.eye(C, dtype=np.float32)[LABELS], "y_pred": PROBS}
    multi = {"y_true": MULTI, "y_pred": PROBS}
    evaluate_all = {
        "losses": ["categorical_crossentropy", "categorical_focal_crossentropy"],
        "metrics": ["accuracy", "top_k_categorical_accuracy", "categorical_accuracy"],
    }
    lists = orjson.dumps(
        {"y_true": LABELS.tolist(), "y_pred": PROBS.tolist()}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    typed = orjson.dumps({"y_true": _typed(one_hot["y_true"]), "y_pred": _typed(PROBS)})
    scce = "sparse_categorical_crossentropy"
    return [
        ("binary sparse loss", lambda: _binary(sparse, {}), lambda b, m: loss(scce, b, m)),
        (
            "binary uint8 loss",
            lambda: _binary(as_uint8, {"from_logits": True}),
            lambda b, m: loss(scce, b, m),
        ),
        ("binary float64 evaluate", lambda: _binary(as_f64, {}), evaluate),
        ("binary one-hot evaluate", lambda: _binary(one_hot, evaluate_all), evaluate),
        ("binary multi-hot evaluate", lambda: _binary(multi, {}), evaluate),
        ("binary float64 dtype", lambda: _binary(as_f64, {"dtype": "float64"}), evaluate),
        (
            "json lists loss",
            lambda: RawBody(bytearray(lists), "json", None),
            lambda b, m: loss(scce, b, m),
        ),
        (
            "typed arrays metric",
            lambda: RawBody(bytearray(typed), "json", None),
            lambda b, m: metric("accuracy", b, m),
        ),
    ]


@pytest.mark.parametrize(
    "make_raw, operation", [c[1:] for c in _cases()], ids=[c[0] for c in _cases()]
)
def test_the_estimate_covers_what_computing_allocates(
    make_raw: Callable[[], RawBody], operation: Callable[[Any, int], dict[str, Any]]
) -> None:
    settings = Settings()
    budget = MemoryBudget(settings.max_inflight_bytes, settings.max_request_memory_bytes)
    raw = make_raw()
    body_bytes = len(raw.data)
    raw = RawBody(raw.data, raw.content_type, raw.header_length, budget.reserve(body_bytes))
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = _run(raw, settings, operation)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result
    # What the request reserved once admitted (the body held, plus the estimate) covers the
    # peak of every allocation made while decoding and computing, above what was held.
    assert peak - before <= raw.reservation.peak, (peak - before, raw.reservation.peak)
    # ... and is not a gross overestimate (it would refuse requests for nothing).
    assert raw.reservation.peak < 8 * max(peak - before, body_bytes) + admission.BASE_WORKING_BYTES
    raw.release()
    assert budget.used == 0


def test_decode_refuses_a_large_body_the_streaming_reader_cannot_take() -> None:
    settings = Settings(max_general_json_bytes=64 * 1024)
    # An array of arrays of strings: not numbers, so the general parser would be needed.
    body = orjson.dumps({"y_true": [["a"] * 8] * 4000, "y_pred": [[0.5] * 8] * 4000})
    with pytest.raises(PayloadTooLarge) as refused:
        decode(RawBody(bytearray(body), "json", None), settings)
    detail = refused.value.detail
    assert "LOSS_SERVICE_MAX_GENERAL_JSON_BYTES" in detail
    assert "typed arrays" in detail and "binary" in detail


# ---- through the service ------------------------------------------------------------------


def _small() -> dict[str, Any]:
    return {"y_true": [0, 1], "y_pred": [[0.9, 0.1], [0.2, 0.8]]}


def test_too_many_heads_are_refused_before_any_is_computed(
    make_client: Callable[..., SyncClient],
) -> None:
    client = make_client(max_heads=3)
    ok = client.post("/v1/evaluate", json={"outputs": {str(i): _small() for i in range(3)}})
    assert ok.status_code == 200
    response = client.post("/v1/evaluate", json={"outputs": {str(i): _small() for i in range(4)}})
    assert response.status_code == 413
    assert "4 heads" in response.json()["detail"]
    assert "LOSS_SERVICE_MAX_HEADS" in response.json()["detail"]


def test_too_many_entries_are_refused(make_client: Callable[..., SyncClient]) -> None:
    client = make_client(max_entries=4)
    body = {**_small(), "metrics": [{"name": "accuracy", "as": f"a{i}"} for i in range(5)]}
    response = client.post("/v1/evaluate", json=body)
    assert response.status_code == 413
    assert "LOSS_SERVICE_MAX_ENTRIES" in response.json()["detail"]


def test_a_streaming_evaluation_is_held_to_the_head_and_entry_limits_at_creation(
    make_client: Callable[..., SyncClient], tmp_path: Path
) -> None:
    client = make_client(max_heads=3, max_entries=4, data_dir=tmp_path)
    heads = {"outputs": {str(i): {} for i in range(4)}}
    response = client.post("/v1/evaluations", json=heads)
    assert response.status_code == 413, response.text
    assert "4 heads" in response.json()["detail"]
    assert "LOSS_SERVICE_MAX_HEADS" in response.json()["detail"]
    entries = {"metrics": [{"name": "accuracy", "as": f"a{i}"} for i in range(5)]}
    response = client.post("/v1/evaluations", json=entries)
    assert response.status_code == 413, response.text
    assert "LOSS_SERVICE_MAX_ENTRIES" in response.json()["detail"]
    assert response.json()["errors"][0]["loc"] == ["metrics"]
    response = client.post("/v1/evaluations", json={"outputs": {"h": entries}})
    assert response.status_code == 413, response.text
    assert response.json()["errors"][0]["loc"] == ["outputs", "h", "metrics"]
    at_limits = {"outputs": {str(i): {"metrics": entries["metrics"][:4]} for i in range(3)}}
    assert client.post("/v1/evaluations", json=at_limits).status_code == 201


def test_auc_and_confusion_counts_are_summed_over_a_requests_entries_and_heads(
    make_client: Callable[..., SyncClient], tmp_path: Path
) -> None:
    client = make_client(max_statistic_cells=1000, data_dir=tmp_path)
    auc = [{"name": "auc", "num_thresholds": 100, "as": f"auc{i}"} for i in range(3)]
    two = {**_small(), "metrics": auc[:2]}
    assert client.post("/v1/evaluate", json=two).status_code == 200  # 800 counts
    response = client.post("/v1/evaluate", json={**_small(), "metrics": auc})
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "1200" in detail and "LOSS_SERVICE_MAX_STATISTIC_CELLS" in detail
    assert response.json()["errors"][0]["loc"] == ["metrics", 2]
    # over heads: 400 + 400 + 400
    heads = {"outputs": {h: {**_small(), "metrics": auc[:1]} for h in "abc"}}
    response = client.post("/v1/evaluate", json=heads)
    assert response.status_code == 413, response.text
    assert response.json()["errors"][0]["loc"] == ["outputs", "c", "metrics", 0]
    # a confusion matrix counts classes²: 800 + 2² fits, 800 + 31² does not
    both = {**_small(), "metrics": auc[:2], "reports": ["confusion_matrix"]}
    assert client.post("/v1/evaluate", json=both).status_code == 200
    wide = {
        "y_true": [0, 30],
        "y_pred": np.full((2, 31), 1 / 31).tolist(),
        "metrics": auc[:2],
        "reports": ["confusion_matrix"],
    }
    response = client.post("/v1/evaluate", json=wide)
    assert response.status_code == 413, response.text
    assert response.json()["errors"][0]["loc"] == ["reports", 0]
    # A streaming evaluation: its thresholds alone are refused at creation; its classes,
    # by the batch that brings them (nothing stored).
    response = client.post("/v1/evaluations", json={"metrics": auc})
    assert response.status_code == 413, response.text
    assert response.json()["errors"][0]["loc"] == ["metrics", 2]
    settings = {"metrics": auc[:2], "reports": ["confusion_matrix"]}
    created = client.post("/v1/evaluations", json=settings)
    assert created.status_code == 201, created.text
    eid = created.json()["id"]
    wide = {"y_true": [0, 30], "y_pred": np.full((2, 31), 1 / 31).tolist()}
    response = client.put(f"/v1/evaluations/{eid}/batches/b", json=wide)
    assert response.status_code == 413, response.text
    assert client.get(f"/v1/evaluations/{eid}").json()["n_batches"] == 0
    assert client.put(f"/v1/evaluations/{eid}/batches/b", json=_small()).status_code == 201
    # Its later batches have the first one's classes and entries: not counted again, so an
    # evaluation stored under a higher limit keeps taking batches, and replays.
    registry.set_max_statistic_cells(500)
    assert client.put(f"/v1/evaluations/{eid}/batches/c", json=_small()).status_code == 201
    assert client.put(f"/v1/evaluations/{eid}/batches/b", json=_small()).status_code == 200


def test_a_multi_label_confusion_matrix_counts_2_by_2_per_label(
    make_client: Callable[..., SyncClient],
) -> None:
    client = make_client(max_statistic_cells=1000)
    auc = {"name": "auc", "num_thresholds": 200, "multi_label": True}
    labels = np.eye(30, dtype=int)[:2]
    labels[0, 5] = 1  # multi-hot
    multi_hot = {"y_true": labels.tolist(), "y_pred": np.full((2, 30), 0.5).tolist()}
    # 200 thresholds × 30 labels × 4 = 24,000 counts: over; without it 30 × 4 = 120 counts
    body = {**multi_hot, "metrics": [auc], "reports": ["confusion_matrix"]}
    assert client.post("/v1/evaluate", json=body).status_code == 413
    reports = ["confusion_matrix", {"name": "confusion_matrix", "as": "c2"}]
    response = client.post("/v1/evaluate", json={**multi_hot, "reports": reports})
    assert response.status_code == 200, response.text  # 2 × 120 counts
    # The same 30 classes single-label: a 30 × 30 matrix, 900 counts.
    sparse = {"y_true": [0, 29], "y_pred": np.full((2, 30), 1 / 30).tolist()}
    response = client.post("/v1/evaluate", json={**sparse, "reports": reports})
    assert response.status_code == 413, response.text
    assert "1800" in response.json()["detail"]


def test_a_uint8_body_whose_working_memory_is_over_the_limit_is_413(
    make_client: Callable[..., SyncClient],
) -> None:
    client = make_client(max_request_memory_bytes=16 * MiB)
    y_pred = np.zeros((1024, 4096), np.uint8)  # 4 MiB of uint8, 16 MiB once float32
    body = orjson.dumps({"y_true": _typed(np.zeros(1024, np.int64)), "y_pred": _typed(y_pred)})
    response = client.post(
        "/v1/losses/sparse_categorical_crossentropy",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert "working memory" in response.json()["detail"]


def test_over_the_budget_a_declared_body_gets_503_before_it_is_read() -> None:
    """A request declaring more than the budget has left is answered at once, with
    Retry-After, while the connection holding the budget has sent nothing."""
    app = create_app(Settings(max_inflight_bytes=8 * MiB, max_body_bytes=8 * MiB))
    with serve_in_thread(app) as base:
        host, port = base.removeprefix("http://").split(":")
        head = (
            "POST /v1/evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: {}\r\n\r\n"
        )
        with socket.create_connection((host, int(port)), timeout=5) as holder:
            holder.sendall(head.format(6 * MiB).encode())  # 6 MiB promised, nothing sent
            time.sleep(0.2)
            with socket.create_connection((host, int(port)), timeout=5) as second:
                start = time.monotonic()
                second.sendall(head.format(4 * MiB).encode())
                answer = b""
                while b"LOSS_SERVICE_MAX_INFLIGHT_BYTES" not in answer:
                    answer += second.recv(65536)
                assert time.monotonic() - start < 2
            assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
            assert b"retry-after: 1" in answer.lower()
            assert b"LOSS_SERVICE_MAX_INFLIGHT_BYTES" in answer
        # The holder is gone: its reservation went with it.
        deadline = time.monotonic() + 5
        while app.state.budget.used and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.budget.used == 0


def test_concurrent_requests_leave_the_budget_empty(make_client: Callable[..., SyncClient]) -> None:
    app = create_app(Settings())
    with serve_in_thread(app) as base:
        import httpx

        def post() -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                for _ in range(10):
                    assert client.post("/v1/evaluate", json=_small()).status_code == 200

        threads = [threading.Thread(target=post) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert app.state.budget.used == 0


_HEAP_TOP = """
import ctypes
from service.admission import glibc_call
from service.main import create_app
from service.settings import Settings


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


create_app(Settings())
malloc, free, mallinfo2 = glibc_call("malloc"), glibc_call("free"), glibc_call("mallinfo2")
malloc.restype, malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
free.argtypes = (ctypes.c_void_p,)
mallinfo2.restype = MallInfo2
# A request's worth of buffers under the mmap threshold (1 MiB), on the main heap's top.
blocks = [malloc(768 * 1024) for _ in range(4)]
grown = mallinfo2().arena
for block in reversed(blocks):
    free(block)
print(grown - mallinfo2().arena)
"""


def _printed_by(script: str, env: dict[str, str]) -> list[str]:
    """The words ``script`` prints, run in a process of its own with the service's
    settings at their defaults but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SERVICE_")}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


def _given_back_after_a_request(env: dict[str, str]) -> int:
    """Bytes the main heap gave back to the system when a process that created the app
    (with ``env``'s settings) freed 3 MiB of blocks under the mmap threshold."""
    return int(_printed_by(_HEAP_TOP, env)[-1])


@pytest.mark.skipif(admission.glibc_call("mallinfo2") is None, reason="glibc 2.33+ only")
def test_the_heap_keeps_a_requests_memory_for_the_next_one() -> None:
    """With the mmap threshold fixed, glibc's trim threshold stays at 128 KiB: a heap
    would hand back what each request freed and map it again for the next one. The
    setting keeps up to ``malloc_trim_threshold`` bytes at the top; 0 leaves glibc's."""
    assert _given_back_after_a_request({}) == 0
    given_back = _given_back_after_a_request({"LOSS_SERVICE_MALLOC_TRIM_THRESHOLD": "0"})
    assert given_back >= 2 * MiB
    kept_one = _given_back_after_a_request({"LOSS_SERVICE_MALLOC_TRIM_THRESHOLD": str(MiB)})
    assert kept_one >= 1 * MiB  # 3 MiB freed, over the 1 MiB kept


def test_tune_allocator_leaves_glibc_alone_without_an_mmap_threshold() -> None:
    assert admission.tune_allocator(0, 8 * MiB) is False


_STARTED = """
import asyncio
import gc
from service.main import create_app


async def start() -> None:
    app = create_app()
    async with app.router.lifespan_context(app):
        gc.collect()
        print(gc.get_freeze_count(), len(gc.get_objects()))


asyncio.run(start())
"""


def _after_start(env: dict[str, str], data_dir: Path) -> tuple[int, int]:
    """In a process that built the app and ran its start (its lifespan, which opens the
    store in ``data_dir``): the objects the garbage collector leaves aside, and those its
    full passes still go over."""
    frozen, tracked = _printed_by(_STARTED, {"LOSS_SERVICE_DATA_DIR": str(data_dir), **env})[-2:]
    return int(frozen), int(tracked)


def test_a_started_worker_leaves_what_it_built_out_of_the_collectors_passes(
    tmp_path: Path,
) -> None:
    """A full pass of the collector over a worker's whole heap pauses every request
    (~100 ms measured); once started, it goes over what was made since, a small part."""
    frozen, tracked = _after_start({}, tmp_path)
    assert frozen > 10 * tracked
    assert _after_start({"LOSS_SERVICE_GC_FREEZE": "false"}, tmp_path)[0] == 0


def test_freeze_startup_objects_leaves_the_heap_aside_until_unfrozen() -> None:
    try:
        assert admission.freeze_startup_objects() == gc.get_freeze_count() > 0
        assert gc.get_freeze_count() > len(gc.get_objects())
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
