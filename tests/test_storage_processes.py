"""Several processes on one database: concurrent writers, a writer killed with SIGKILL, and
concurrent startup migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import os
import queue
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import storage_helpers
from sqlalchemy import func, select, text
from storage_helpers import BACKENDS, Database, batch_stats, content_hash, database, spawn

from service.storage import PutOutcome, Store, head_revision
from service.storage.schema import batches

WORKERS = 4
SHARED = [f"shared-{n}" for n in range(16)]  # every worker puts these, same content
CONTESTED = [f"contested-{n}" for n in range(3)]  # every worker puts its own content


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with database(request.param, tmp_path) as fresh:
        yield fresh


def run_workers(target: Any, argument_lists: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(*arguments, barrier, results)`` in one spawned process per list."""
    context = spawn()
    barrier = context.Barrier(len(argument_lists))
    results = context.Queue()
    processes = [
        context.Process(target=target, args=(*arguments, barrier, results))
        for arguments in argument_lists
    ]
    for process in processes:
        process.start()
    collected: list[Any] = []
    try:
        deadline = time.monotonic() + 120
        while len(collected) < len(processes):
            try:
                collected.append(results.get(timeout=0.5))
            except queue.Empty:
                crashed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                assert not crashed, f"a worker process died (exit codes {crashed})"
                assert time.monotonic() < deadline, "the workers did not finish in 120 s"
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    assert [process.exitcode for process in processes] == [0] * len(processes)
    errors = [result for result in collected if isinstance(result, str) and "error" in result]
    assert not errors, errors
    return collected


def bits(values: np.ndarray) -> list[int]:
    return np.ascontiguousarray(values, dtype=np.float64).view(np.int64).ravel().tolist()


def test_concurrent_writers_count_every_batch_exactly_once(db: Database) -> None:
    store = Store.open(db.url, db.data_dir)
    try:
        evaluation = store.create_evaluation("owner", {}, {})
        plans = []
        for worker in range(WORKERS):
            puts = [(batch_id, 0) for batch_id in SHARED]
            puts += [(f"own-{worker}-{n}", 0) for n in range(5)]
            puts += [(batch_id, worker) for batch_id in CONTESTED]
            random.Random(worker).shuffle(puts)
            plans.append((db.url, str(db.data_dir), evaluation.id, puts))
        reports = run_workers(storage_helpers.put_worker, plans)

        outcomes: dict[str, Counter[str]] = {}
        created_variant: dict[str, int] = {}
        for report in reports:
            for batch_id, variant, outcome in report:
                outcomes.setdefault(batch_id, Counter())[outcome] += 1
                if outcome == PutOutcome.CREATED:
                    created_variant[batch_id] = variant
        for batch_id in SHARED:
            assert outcomes[batch_id] == Counter(created=1, replayed=WORKERS - 1), batch_id
        for batch_id in CONTESTED:
            assert outcomes[batch_id] == Counter(created=1, conflict=WORKERS - 1), batch_id
        own = [b for b in outcomes if b.startswith("own-")]
        assert len(own) == 5 * WORKERS
        assert all(outcomes[b] == Counter(created=1) for b in own)

        expected_ids = SHARED + CONTESTED + own
        page = store.list_batches("owner", evaluation.id, limit=1000)
        assert page is not None
        assert [b.seq for b in page.items] == list(range(1, len(expected_ids) + 1))
        assert sorted(b.batch_id for b in page.items) == sorted(expected_ids)
        for batch in page.items:
            assert batch.content_hash == content_hash(
                batch.batch_id, created_variant[batch.batch_id]
            )
        totals = store.get_totals("owner", evaluation.id)
        assert totals is not None
        assert totals.evaluation.n_batches == len(expected_ids)
        assert totals.evaluation.n_samples == 10 * len(expected_ids)
        stats = [batch_stats(b, created_variant[b]) for b in expected_ids]
        for name in ("loss_sum", "weight_sum"):
            exact = [math.fsum(s[name][i] for s in stats) for i in range(stats[0][name].size)]
            assert totals.values[name].tolist() == exact
        confusion = np.sum([s["confusion"] for s in stats], axis=0)
        assert totals.values["confusion"].tolist() == confusion.tolist()
    finally:
        store.dispose()


def test_every_acknowledged_batch_survives_a_killed_writer(db: Database) -> None:
    store = Store.open(db.url, db.data_dir)
    evaluation = store.create_evaluation("owner", {}, {})
    store.dispose()
    command = [
        sys.executable,
        storage_helpers.__file__,
        "put-until-killed",
        db.url or "-",
        str(db.data_dir),
        evaluation.id,
    ]
    acknowledged: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as writer:
        assert writer.stdout is not None
        try:
            deadline = time.monotonic() + 60
            while len(acknowledged) < 30:
                line = writer.stdout.readline()
                assert line, f"the writer stopped (exit code {writer.poll()})"
                acknowledged.append(line.strip())
                assert time.monotonic() < deadline, "the writer is too slow"
        finally:
            # Killed in the middle of whatever put comes next: no clean shutdown.
            os.kill(writer.pid, signal.SIGKILL)
        # Lines written before the kill were acknowledged too.
        acknowledged += writer.stdout.read().split()
    assert writer.returncode == -signal.SIGKILL

    reopened = Store.open(db.url, db.data_dir)
    try:
        page = reopened.list_batches("owner", evaluation.id, limit=1000)
        assert page is not None
        stored = [b.batch_id for b in page.items]
        # Every acknowledged batch; at most one more, committed as the kill came.
        assert stored[: len(acknowledged)] == acknowledged
        assert len(stored) - len(acknowledged) in (0, 1)
        for batch_id in acknowledged:
            replay = reopened.put_batch(
                "owner", evaluation.id, batch_id, content_hash(batch_id), {}, {}, 10
            )
            assert replay.outcome is PutOutcome.REPLAYED
        # The totals and the batches were committed together: rebuilding changes nothing.
        totals = reopened.get_totals("owner", evaluation.id)
        rebuilt = reopened.rebuild_totals("owner", evaluation.id)
        assert totals is not None and rebuilt is not None
        assert totals.evaluation.n_batches == rebuilt.evaluation.n_batches == len(stored)
        for name, value in totals.values.items():
            assert bits(value) == bits(rebuilt.values[name]), name
        with reopened.engine.connect() as connection:
            if db.backend == "sqlite":
                assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
            count = select(func.count()).select_from(batches)
            assert connection.execute(count).scalar() == len(stored)
    finally:
        reopened.dispose()


def test_processes_starting_together_migrate_once(db: Database) -> None:
    revisions = run_workers(storage_helpers.open_worker, [(db.url, str(db.data_dir))] * WORKERS)
    assert revisions == [head_revision()] * WORKERS
    store = Store.open(db.url, db.data_dir)
    try:
        with store.engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [row[0] for row in versions] == [head_revision()]
        evaluation = store.create_evaluation(None, {}, {})
        result = store.put_batch(None, evaluation.id, "b", b"h", {"x": np.ones(2)}, {}, 2)
        assert result.outcome is PutOutcome.CREATED
    finally:
        store.dispose()
