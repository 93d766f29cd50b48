"""decode: a request body to JSON values with NumPy arrays, releasing what it no longer needs;
and where the work runs: small requests on the event loop, big ones in the thread pool."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import orjson
import pytest

from service.admission import MemoryBudget
from service.api.body import RawBody
from service.api.compute import INLINE_BYTES_PER_ELEMENT, compute, decode, work
from service.errors import PayloadTooLarge
from service.settings import Settings


def test_json_text_is_released_once_decoded() -> None:
    y_pred = np.random.default_rng(0).random((256, 40))
    text = orjson.dumps({"y_true": [0] * 256, "y_pred": y_pred}, option=orjson.OPT_SERIALIZE_NUMPY)
    raw = RawBody(bytearray(text), "json", None)
    body = decode(raw, Settings())
    assert len(raw.data) == 0  # the buffer's memory is gone before the computation
    assert isinstance(body["y_pred"], np.ndarray)
    np.testing.assert_array_equal(body["y_pred"], y_pred)
    assert body["y_true"] == [0] * 256


def test_binary_bodies_are_kept_their_arrays_are_views_of_them() -> None:
    y = np.arange(8, dtype=np.float32)
    header = orjson.dumps({"y_pred": {"dtype": "float32", "shape": [8], "binary_data_size": 32}})
    header += b" " * (-len(header) % 8)
    data = bytearray(header + y.tobytes())
    body = decode(RawBody(data, "binary", len(header)), Settings())
    assert len(data) == len(header) + 32
    np.testing.assert_array_equal(body["y_pred"], y)


# ---- where the work runs -------------------------------------------------------------------


def test_work_counts_each_element_once_per_named_entry() -> None:
    batch = {"y_true": [0, 1, 1], "y_pred": [[0.5, 0.5]] * 3}
    assert work(batch) == 3 + 6
    assert work({**batch, "sample_weight": [1, 1, 1]}) == 12
    assert work({**batch, "losses": ["a", "b"], "metrics": ["c"], "reports": []}) == 27
    typed = {"dtype": "float32", "shape": [4, 5], "data": ""}
    assert work({"y_true": np.zeros(4), "y_pred": typed}) == 24
    assert work({"y_true": {"shape": "4x5"}, "y_pred": 0.5}) == 1
    heads = {"outputs": {"a": {**batch, "metrics": ["x", "y"]}, "b": batch}}
    assert work(heads) == 18 + 9
    assert work({"y_true": [], "y_pred": [[]]}) == 0


def _threads_of(body: dict[str, Any], settings: Settings) -> tuple[int, int, int]:
    """The thread that computed ``body``, the event loop's thread, and the budget held
    while computing."""
    budget = MemoryBudget(settings.max_inflight_bytes, settings.max_request_memory_bytes)
    seen: list[tuple[int, int]] = []

    def operation(decoded: Any, max_elements: int) -> dict[str, Any]:
        seen.append((threading.get_ident(), budget.used))
        return {"n": len(decoded["y_true"])}

    async def go() -> int:
        text = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        raw = RawBody(bytearray(text), "json", None, budget.reserve(len(text)))
        assert await compute(raw, settings, operation) == {"n": len(body["y_true"])}
        return threading.get_ident()

    loop_thread = asyncio.run(go())
    assert budget.used == 0  # released once computed
    ((thread, held),) = seen
    return thread, loop_thread, held


def test_small_requests_are_computed_on_the_event_loop_big_ones_in_the_thread_pool() -> None:
    settings = Settings(inline_max_elements=100)
    small = {"y_true": [0] * 10, "y_pred": [[0.5] * 9] * 10}  # 100 elements
    big = {"y_true": [0] * 10, "y_pred": [[0.5] * 10] * 10}  # 110 elements
    thread, loop_thread, held = _threads_of(small, settings)
    assert thread == loop_thread
    assert held > 0  # the working memory is reserved on the loop too
    thread, loop_thread, held = _threads_of(big, settings)
    assert thread != loop_thread and held > 0
    # Entries multiply the work: two losses over 100 elements are 200.
    thread, loop_thread, _ = _threads_of({**small, "losses": ["a", "b"]}, settings)
    assert thread != loop_thread
    thread, loop_thread, _ = _threads_of(small, Settings(inline_max_elements=0))
    assert thread != loop_thread


def test_a_body_too_long_for_its_elements_is_decoded_in_the_thread_pool() -> None:
    settings = Settings(inline_max_elements=100)
    padded = {"y_true": [0], "y_pred": [[0.5]], "pad": " " * (100 * INLINE_BYTES_PER_ELEMENT)}
    thread, loop_thread, _ = _threads_of(padded, settings)
    assert thread != loop_thread
    thread, loop_thread, _ = _threads_of({**padded, "pad": ""}, settings)
    assert thread == loop_thread


def test_small_requests_keep_the_per_request_memory_limit() -> None:
    settings = Settings(max_request_memory_bytes=1024)
    budget = MemoryBudget(settings.max_inflight_bytes, settings.max_request_memory_bytes)
    text = orjson.dumps({"y_true": [0, 1], "y_pred": [[0.9, 0.1], [0.2, 0.8]]})

    def operation(decoded: Any, max_elements: int) -> dict[str, Any]:
        raise AssertionError("computed although over the limit")

    raw = RawBody(bytearray(text), "json", None, budget.reserve(len(text)))
    with pytest.raises(PayloadTooLarge, match="LOSS_SERVICE_MAX_REQUEST_MEMORY_BYTES"):
        asyncio.run(compute(raw, settings, operation))
    assert budget.used == 0


def test_a_refused_body_is_freed_once_answered_not_at_the_next_collection() -> None:
    """An error raised in the thread pool refers to the request's frames (its body among
    them); once it is answered, nothing of it is left in a reference cycle, so the body's
    memory goes at once, not at the next full collection."""
    import gc

    from service.main import create_app

    y_pred = np.zeros((4096, 1000), np.uint8)  # 4 MB, converted: over the request limit
    descriptor = {"dtype": "uint8", "shape": [4096, 1000], "binary_data_size": y_pred.nbytes}
    header = orjson.dumps({"y_true": [0] * 4096, "y_pred": descriptor})
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/evaluate",
        "raw_path": b"/v1/evaluate",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(len(header)).encode()),
        ],
    }
    # Memory handed back after it, too, as after any large request.
    app = create_app(Settings(max_request_memory_bytes=16 << 20, trim_after_bytes=1 << 20))
    statuses: list[int] = []

    async def post(body: bytes) -> None:
        messages = [{"type": "http.request", "body": body}]

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(dict(scope), receive, send)

    async def garbage_after_the_answer() -> list[str]:
        """What only the garbage collector would free (functions whose frames it holds)."""
        await post(header + y_pred.tobytes())
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            return [f.f_code.co_name for f in gc.garbage if hasattr(f, "f_code")]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    gc.collect()
    gc.disable()
    try:
        frames = asyncio.run(garbage_after_the_answer())
    finally:
        gc.enable()
    assert statuses == [413]
    assert frames == []


def test_memory_is_handed_back_after_a_large_request_while_its_answer_goes_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request whose reservation passed trim_after_bytes hands freed memory back to
    the system, in a thread of its own, without holding its answer back meanwhile."""
    import time

    from service.api import compute as module

    handed_back = threading.Event()

    def slow_hand_back() -> bool:
        time.sleep(0.3)
        handed_back.set()
        return True

    monkeypatch.setattr(module, "give_back_memory", slow_hand_back)
    settings = Settings(trim_after_bytes=1024)
    budget = MemoryBudget(settings.max_inflight_bytes, settings.max_request_memory_bytes)
    text = orjson.dumps({"y_true": [0, 1], "y_pred": [[0.9, 0.1], [0.2, 0.8]]})

    def operation(decoded: Any, max_elements: int) -> dict[str, Any]:
        return {"n": len(decoded["y_true"])}

    async def go() -> float:
        raw = RawBody(bytearray(text), "json", None, budget.reserve(len(text)))
        started = time.perf_counter()
        assert await compute(raw, settings, operation) == {"n": 2}
        answered = time.perf_counter() - started
        assert not handed_back.is_set()
        await asyncio.sleep(1.0)  # the hand-back, meanwhile, in its thread
        return answered

    assert asyncio.run(go()) < 0.2
    assert handed_back.is_set()
