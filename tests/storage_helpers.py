"""The storage tests' databases and worker processes.

``database(backend, tmp_path)``: a fresh, empty database for one test, as a
:class:`Database` (a URL and a data directory): an SQLite file in the test's
temporary directory, or a schema of its own in PostgreSQL's ``test`` database
at 127.0.0.1:5432 (user ``postgres``), dropped afterwards. When PostgreSQL
does not answer, its tests skip saying so, or fail when ``CI`` is set: CI
must run them (``.ci/pg`` starts PostgreSQL).

The worker functions run in other processes (``multiprocessing`` with the
``spawn`` start method, or ``python tests/storage_helpers.py put-until-killed``)
to test what several processes do to one database.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

PG_HOST, PG_PORT, PG_USER, PG_DATABASE = "127.0.0.1", 5432, "postgres", "test"
PG_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
BACKENDS = ["sqlite", "postgresql"]


@dataclass(frozen=True)
class Database:
    backend: str
    #: ``None``: the default SQLite file in ``data_dir``.
    url: str | None
    data_dir: Path


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_URL, connect_timeout=3, autocommit=True)


def require_postgres() -> None:
    """Skip (or, with ``CI`` set, fail) when PostgreSQL does not answer."""
    try:
        with _admin() as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as error:
        reason = " ".join(str(error).split())
        message = f"PostgreSQL does not answer at {PG_URL} ({reason})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so the PostgreSQL tests must run: run .ci/pg")
        pytest.skip(f"{message}; run .ci/pg to start it")


@contextmanager
def database(backend: str, tmp_path: Path) -> Iterator[Database]:
    """A fresh database for one test (see the module's docstring)."""
    data_dir = tmp_path / "data"
    if backend == "sqlite":
        yield Database(backend, None, data_dir)
        return
    require_postgres()
    schema = f"storage_test_{os.getpid()}_{secrets.token_hex(4)}"
    with _admin() as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield Database(backend, f"{PG_URL}?options=-csearch_path%3D{schema}", data_dir)
    finally:
        with _admin() as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


# -- batches that tests and workers agree on --------------------------------------------


def batch_stats(batch_id: str, variant: int = 0) -> dict[str, np.ndarray]:
    """Statistics derived from the batch id: floats of every magnitude, and counts."""
    seed = int.from_bytes(hashlib.sha256(f"{batch_id}/{variant}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    scales = 2.0 ** rng.integers(-60, 60, 6)
    return {
        "loss_sum": rng.normal(size=6) * scales,
        "weight_sum": rng.exponential(size=2),
        "confusion": rng.integers(0, 50, (3, 3)),
    }


def content_hash(batch_id: str, variant: int = 0) -> bytes:
    return hashlib.sha256(f"{batch_id}/{variant}".encode()).digest()


def answer_of(batch_id: str, variant: int = 0) -> dict[str, Any]:
    return {"batch_id": batch_id, "variant": variant}


def spawn() -> Any:
    """The multiprocessing context of the workers: fresh interpreters, no forked pools."""
    return multiprocessing.get_context("spawn")


# -- workers ------------------------------------------------------------------------------


def put_worker(
    url: str | None,
    data_dir: str,
    evaluation_id: str,
    puts: Sequence[tuple[str, int]],
    barrier: Barrier,
    results: Any,
) -> None:
    """Put ``(batch_id, variant)`` pairs in order once every worker is ready; report outcomes."""
    from service.storage import Store

    store = Store.open(url, Path(data_dir), migrate=False)
    try:
        barrier.wait(timeout=60)
        outcomes = []
        for batch_id, variant in puts:
            result = store.put_batch(
                "owner",
                evaluation_id,
                batch_id,
                content_hash(batch_id, variant),
                batch_stats(batch_id, variant),
                answer_of(batch_id, variant),
                10,
            )
            outcomes.append((batch_id, variant, result.outcome.value))
        results.put(outcomes)
    except Exception as error:
        results.put(f"error: {type(error).__name__}: {error}")
    finally:
        store.dispose()


def open_worker(url: str | None, data_dir: str, barrier: Barrier, results: Any) -> None:
    """Open (and so migrate) the store at the same moment as the other workers."""
    from service.storage import Store, current_revision

    barrier.wait(timeout=60)
    try:
        store = Store.open(url, Path(data_dir))
    except Exception as error:
        results.put(f"error: {type(error).__name__}: {error}")
        return
    try:
        results.put(current_revision(store.engine))
    finally:
        store.dispose()


def put_until_killed(url: str, data_dir: str, evaluation_id: str) -> None:
    """Put batch after batch; print each id once its put has returned (it is acknowledged)."""
    from service.storage import PutOutcome, Store

    store = Store.open(None if url == "-" else url, Path(data_dir), migrate=False)
    number = 0
    while True:
        batch_id = f"acked-{number}"
        result = store.put_batch(
            "owner",
            evaluation_id,
            batch_id,
            content_hash(batch_id),
            batch_stats(batch_id),
            answer_of(batch_id),
            10,
        )
        assert result.outcome is PutOutcome.CREATED, result.outcome
        sys.stdout.write(f"{batch_id}\n")
        sys.stdout.flush()
        number += 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["put-until-killed"] and len(sys.argv) == 5:
        put_until_killed(*sys.argv[2:5])
    else:
        sys.exit("usage: storage_helpers.py put-until-killed URL|- DATA_DIR EVALUATION_ID")
