"""A real ``loss-service serve --workers 2``: metrics add up across the workers, one JSON
access line per request (uvicorn's own access log is off), the metrics dir is removed."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import service_env, wait_healthy

BIN = Path(sys.executable).parent
BODY = {"y_true": [[0, 1, 0], [0, 0, 1]], "y_pred": [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]}
N = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def samples(text: str, metric: str, /, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def per_worker(metrics_dir: Path) -> dict[str, float]:
    """The POSTs each worker answered, read from its own counter file."""
    from prometheus_client.mmap_dict import MmapedDict

    served: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        total = 0.0
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, labels, _ = json.loads(key)
            if sample == "loss_service_requests_total" and labels.get("method") == "POST":
                total += value
        served[path.stem.rsplit("_", 1)[-1]] = total
    return served


@pytest.mark.timeout(120)
def test_two_workers(tmp_path: Path) -> None:
    port = free_port()
    env = service_env()
    env["TMPDIR"] = str(tmp_path)
    env["LOSS_SERVICE_WORKERS"] = "2"
    env["LOSS_SERVICE_PORT"] = str(port)
    log = (tmp_path / "server.log").open("w+")
    process = subprocess.Popen(
        [str(BIN / "loss-service"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    scrapes: list[str] = []
    try:
        wait_healthy(base, process, seconds=60)
        (metrics_dir,) = tmp_path.glob("loss-service-metrics-*")

        url = f"{base}/v1/losses/categorical_crossentropy"
        for _ in range(N):  # a new connection each: the workers share them
            response = httpx.post(url, json=BODY, headers={"Connection": "close"}, timeout=30)
            assert response.status_code == 200
        for _ in range(6):
            response = httpx.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=30)
            assert response.status_code == 200
            scrapes.append(response.text)
        served = per_worker(metrics_dir)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.seek(0)
        output = log.read()
        log.close()

    assert process.returncode == 0, output[-3000:]
    assert len(served) == 2, served
    assert sum(served.values()) == N, served
    print(f"\nrequests answered by each worker: {served}")
    for text in scrapes:  # whichever worker answered the scrape
        labels = {"method": "POST", "route": "/v1/losses/{name}", "status": "200"}
        assert samples(text, "loss_service_requests_total", **labels) == N
        computations = samples(
            text, "loss_service_computations_total", kind="loss", name="categorical_crossentropy"
        )
        assert computations == N
    assert not list(tmp_path.glob("loss-service-metrics-*")), "the metrics dir was not removed"

    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "service.access"]
    posts = [line for line in access if line["method"] == "POST"]
    assert len(posts) == N
    assert all(line["status"] == 200 and line["request_bytes"] > 0 for line in posts)
    assert len({line["request_id"] for line in access}) == len(access)
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
