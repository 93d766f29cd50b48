"""Graceful shutdown: SIGTERM while requests are in flight, every one of them is answered
(200), then ``loss-service serve`` exits 0."""

from __future__ import annotations

import asyncio
import base64
import math
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import service_env, wait_healthy

BIN = Path(sys.executable).parent
SMALL = {"y_true": [[0, 1, 0], [0, 0, 1]], "y_pred": [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]}
ROUTE = "/v1/losses/{name}"
N_LARGE = 10
N_SMALL = 10
EXIT_BOUND_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def typed(array: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "data": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode(),
    }


def large_body(seed: int, rows: int = 2000, classes: int = 1000) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    y_pred = rng.random((rows, classes), dtype=np.float32) + np.float32(0.01)
    y_pred /= y_pred.sum(axis=1, keepdims=True)
    labels = rng.integers(0, classes, rows).astype(np.int32)
    return {"y_true": typed(labels), "y_pred": typed(y_pred)}


def progress(text: str) -> tuple[float, float]:
    """(compute requests being served, compute requests answered) from /metrics."""
    served = answered = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "loss_service_requests_in_progress":
                served = sample.value - 1  # the scrape itself
            elif sample.name == "loss_service_requests_total" and sample.labels["route"] == ROUTE:
                answered += sample.value
    return served, answered


async def scenario(base: str, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    bodies = [large_body(i) for i in range(N_LARGE)] + [SMALL] * N_SMALL
    url = f"{base}/v1/losses/sparse_categorical_crossentropy"
    small_url = f"{base}/v1/losses/categorical_crossentropy"
    limits = httpx.Limits(max_connections=len(bodies) + 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        tasks = [
            asyncio.create_task(client.post(url if i < N_LARGE else small_url, json=body))
            for i, body in enumerate(bodies)
        ]
        # Every request has reached the app (being served or answered): SIGTERM now.
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=10) as scraper:
            while True:
                served, answered = progress((await scraper.get(f"{base}/metrics")).text)
                if served + answered >= len(bodies):
                    break
                assert time.monotonic() < deadline, (served, answered)
                await asyncio.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        responses = await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "served_at_sigterm": served,
        "answered_at_sigterm": answered,
        "responses": responses,
        "signalled": signalled,
    }


@pytest.mark.timeout(240)
def test_sigterm_finishes_in_flight_requests(tmp_path: Path) -> None:
    port = free_port()
    env = service_env()
    log = (tmp_path / "server.log").open("w+")
    process = subprocess.Popen(
        [str(BIN / "loss-service"), "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, seconds=30)

        result = asyncio.run(scenario(base, process))
        exit_code = process.wait(timeout=EXIT_BOUND_S)
        exited_after = time.monotonic() - result["signalled"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.seek(0)
        output = log.read()
        log.close()

    responses = result["responses"]
    errors = [r for r in responses if not isinstance(r, httpx.Response)]
    assert not errors, f"{errors}\n{output[-3000:]}"
    assert [r.status_code for r in responses] == [200] * (N_LARGE + N_SMALL), output[-3000:]
    for response in responses[:N_LARGE]:
        assert math.isfinite(response.json()["loss"])
    for response in responses[N_LARGE:]:
        assert response.json()["loss"] == pytest.approx(1.1769392, abs=1e-6)
    # SIGTERM did arrive while requests were in flight.
    assert result["served_at_sigterm"] >= N_LARGE // 2, result
    assert exit_code == 0, output[-3000:]
    assert exited_after < EXIT_BOUND_S
    assert "Shutting down" in output
    assert "Traceback" not in output
    print(
        f"\nSIGTERM with {result['served_at_sigterm']:.0f} requests in flight and "
        f"{result['answered_at_sigterm']:.0f} answered; all {len(responses)} got 200; "
        f"exit 0 after {exited_after:.2f} s"
    )


@pytest.mark.timeout(60)
def test_an_upload_cut_by_shutdown_gets_a_503_not_a_500(tmp_path: Path) -> None:
    """A body still arriving when the graceful shutdown time is up is answered 503 with
    Retry-After (send it again elsewhere), with no traceback in the log."""
    port = free_port()
    env = {**service_env(), "LOSS_SERVICE_SHUTDOWN_TIMEOUT": "1"}
    log = (tmp_path / "server.log").open("w+")
    process = subprocess.Popen(
        [str(BIN / "loss-service"), "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, seconds=30)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(
                b"POST /v1/losses/categorical_crossentropy HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                b'{"y_true": [' + b"0, " * 1000
            )
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.seek(0)
        output = log.read()
        log.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
    assert b"retry-after: 1" in answer.lower()
    assert b"shut down before the request body was complete" in answer
    assert "Traceback" not in output, output[-3000:]
