"""Streaming evaluations across real service processes: ``kill -9`` after acknowledged
batches loses none; replicas sharing PostgreSQL count every batch exactly once while
batches are sent twice, concurrently, and one replica is killed mid-stream; two workers
on one SQLite file take many concurrent writers."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.servers import service_env, wait_healthy
from tests.storage_helpers import database

BIN = Path(sys.executable).parent
RNG = np.random.default_rng(3)
N_BATCHES = 24
BATCHES = [
    {
        "y_true": RNG.integers(0, 4, 16).tolist(),
        "y_pred": RNG.dirichlet(np.ones(4), 16).astype(np.float32).tolist(),
    }
    for _ in range(N_BATCHES)
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def service(
    url: str | None, data_dir: Path, log: Path, workers: int = 1
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**service_env(), "LOSS_SERVICE_DATA_DIR": str(data_dir), "TMPDIR": str(log.parent)}
    if url is not None:
        env["LOSS_SERVICE_DATABASE_URL"] = url
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(BIN / "loss-service"), "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, seconds=60, on_exit=lambda: log.read_text()[-3000:])
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def put(base: str, eid: str, i: int) -> int:
    """PUT batch ``i``; a connection error is the caller's to retry elsewhere."""
    with httpx.Client(base_url=base, timeout=30) as client:
        r = client.put(f"/v1/evaluations/{eid}/batches/batch-{i}", json=BATCHES[i])
        return r.status_code


def expected(base: str, indices: list[int]) -> dict[str, Any]:
    body = {
        "y_true": [y for i in indices for y in BATCHES[i]["y_true"]],
        "y_pred": [p for i in indices for p in BATCHES[i]["y_pred"]],
    }
    return httpx.post(f"{base}/v1/evaluate", json=body, timeout=30).json()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_after_acknowledged_batches_loses_none(backend: str, tmp_path: Path) -> None:
    with database(backend, tmp_path) as db:
        log = tmp_path / "service.log"
        with service(db.url, db.data_dir, log) as (base, process):
            eid = httpx.post(f"{base}/v1/evaluations", json={}, timeout=30).json()["id"]
            acknowledged = [i for i in range(12) if put(base, eid, i) == 201]
            assert acknowledged == list(range(12))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        with service(db.url, db.data_dir, log) as (base, _):
            got = httpx.get(f"{base}/v1/evaluations/{eid}", timeout=30).json()
            assert got["n_batches"] == 12 and got["n_samples"] == 12 * 16
            once = expected(base, acknowledged)
            np.testing.assert_allclose(
                got["losses"]["sparse_categorical_crossentropy"],
                once["losses"]["sparse_categorical_crossentropy"],
                rtol=1e-6,
            )
            # A replay after the restart is still a replay.
            assert put(base, eid, 0) == 200


@pytest.mark.timeout(240)
def test_replicas_sharing_postgresql_count_each_batch_once(tmp_path: Path) -> None:
    """Three service processes on one PostgreSQL; every batch is sent twice at once to
    two replicas; the third replica is killed mid-stream and its batches are retried
    on the others. Every batch counts once, and every replica reads the same numbers."""
    with database("postgresql", tmp_path) as db:
        logs = [tmp_path / f"replica-{k}.log" for k in range(3)]
        with (
            service(db.url, db.data_dir, logs[0]) as (a, _),
            service(db.url, db.data_dir, logs[1]) as (b, _),
            service(db.url, db.data_dir, logs[2]) as (c, victim),
        ):
            eid = httpx.post(f"{a}/v1/evaluations", json={}, timeout=30).json()["id"]

            def send(i: int) -> list[int]:
                first, second = [(a, b), (b, c), (c, a)][i % 3]
                statuses = []
                for base in (first, second):
                    try:
                        statuses.append(put(base, eid, i))
                    except httpx.TransportError:
                        # The killed replica: retried on one that is alive.
                        statuses.append(put(a if base != a else b, eid, i))
                return statuses

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(send, i) for i in range(N_BATCHES)]
                time.sleep(0.3)
                victim.send_signal(signal.SIGKILL)
                results = [f.result() for f in futures]
            # Each send answered (the first 201, a replay 200; a batch the killed replica
            # committed before it could answer is a 200 on the retry).
            for statuses in results:
                assert set(statuses) <= {200, 201} and statuses.count(201) <= 1, results
            views = [
                httpx.get(f"{base}/v1/evaluations/{eid}", timeout=30).json() for base in (a, b)
            ]
            assert views[0]["n_batches"] == N_BATCHES == views[1]["n_batches"]
            for key in ("losses", "metrics", "n_samples"):
                assert views[0][key] == views[1][key]
            once = expected(a, list(range(N_BATCHES)))
            np.testing.assert_allclose(
                views[0]["metrics"]["accuracy"], once["metrics"]["accuracy"], rtol=1e-6
            )


@pytest.mark.timeout(180)
def test_two_workers_on_sqlite_take_many_concurrent_writers(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    with service(None, tmp_path / "data", log, workers=2) as (base, _):
        eid = httpx.post(f"{base}/v1/evaluations", json={}, timeout=30).json()["id"]
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            # Every batch twice, by different writers at once.
            statuses = list(pool.map(lambda i: put(base, eid, i % N_BATCHES), range(2 * N_BATCHES)))
        assert statuses.count(201) == N_BATCHES and statuses.count(200) == N_BATCHES
        got = httpx.get(f"{base}/v1/evaluations/{eid}", timeout=30).json()
        assert got["n_batches"] == N_BATCHES
    assert "database is locked" not in log.read_text()
