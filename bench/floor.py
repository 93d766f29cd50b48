"""The service with a `PUT`'s storing cut down: a measuring instrument for bench.streaming.

    python -m bench.floor {skip|row} serve --port 8000 [loss-service serve options]

Runs ``loss-service`` (one worker: uvicorn in this process) with
``Store.submit_batch`` replaced for every batch but an evaluation's first, which is
stored as usual (it fixes the evaluation's facts, against which the next batches are
evaluated, as in the service). Everything else a `PUT` does is the service's own: the
body's intake, the batch's evaluation, its statistics and its hash, the answer.

- ``skip``: nothing is stored; the batch is answered as created at once. Its time over
  evaluate's is what a `PUT` costs before any storing.
- ``row``: one row (a sequence number and the batch's hash) inserted and committed on a
  connection of the store's engine, set up as the store's (SQLite: write-ahead log,
  ``synchronous=FULL``, ``BEGIN IMMEDIATE``; PostgreSQL: one prepared statement run in
  autocommit, one round trip): the least that a durable acknowledgement of a batch
  costs, whatever is kept besides.

Between ``row`` and the service lies what keeping the evaluation costs (its exact
totals, counts and warnings, the batch's statistics and answer for replays, the checks
that make a batch count once); between ``skip`` and ``row``, the durable commit.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

MODES = ("skip", "row")

_local = threading.local()


def _commit_row(store: Any, content_hash: bytes) -> int:
    """Insert and commit one row on this thread's connection; the row's number."""
    connection = getattr(_local, "connection", None)
    if connection is None:
        connection = _local.connection = store.engine.raw_connection()
        sqlite = store.engine.dialect.name == "sqlite"
        _local.sqlite = sqlite
        _local.n = 0
        cursor = connection.cursor()
        blob = "BLOB" if sqlite else "BYTEA"
        cursor.execute(f"CREATE TABLE IF NOT EXISTS bench_floor (n BIGINT, hash {blob})")
        connection.commit()
        if not sqlite:
            driver = connection.driver_connection
            driver.autocommit = True
            name = f"bench_floor_{threading.get_ident()}".encode()
            driver.pgconn.prepare(name, b"INSERT INTO bench_floor VALUES ($1, $2)", [20, 17])
            _local.statement = name
        _local.cursor = cursor
    _local.n += 1
    if _local.sqlite:
        _local.cursor.execute("BEGIN IMMEDIATE")
        _local.cursor.execute("INSERT INTO bench_floor VALUES (?, ?)", (_local.n, content_hash))
        _local.cursor.execute("COMMIT")
    else:
        pgconn = connection.driver_connection.pgconn
        result = pgconn.exec_prepared(
            _local.statement, [b"%d" % _local.n, bytes(content_hash)], [0, 1]
        )
        if result.status != 1:  # PGRES_COMMAND_OK
            raise RuntimeError(f"the floor's insert failed: {result.error_message!r}")
    return int(_local.n)


def patch(mode: str) -> None:
    """Replace ``Store.submit_batch`` as ``mode`` says (see the module's text)."""
    from service.storage.rows import PutOutcome
    from service.storage.store import Store

    if mode not in MODES:
        raise SystemExit(f"mode: one of {', '.join(MODES)}; received {mode!r}")
    submit = Store.submit_batch
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def submit_batch(
        self: Store,
        owner: str | None,
        evaluation_id: str,
        batch_id: str,
        content_hash: bytes,
        stats: Any,
        answer: Any,
        n_samples: int,
        **options: Any,
    ) -> Future[Any]:
        if options.get("facts") is not None:
            return submit(
                self, owner, evaluation_id, batch_id, content_hash, stats, answer, n_samples,
                **options,
            )  # fmt: skip
        if mode == "row":
            _commit_row(self, content_hash)
        with lock:
            # The first batch, stored as usual, counts as one.
            n_batches = counts[evaluation_id] = counts.get(evaluation_id, 1) + 1
        future: Future[Any] = Future()
        future.set_result(
            SimpleNamespace(
                outcome=PutOutcome.CREATED,
                answer=dict(answer),
                batch=None,
                evaluation=SimpleNamespace(
                    n_batches=n_batches, n_samples=n_batches * int(n_samples)
                ),
            )
        )
        return future

    Store.submit_batch = submit_batch  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    patch(argv[0])
    from service.cli import main as service_main

    # One worker (uvicorn in this process, where the store is replaced).
    return service_main([*argv[1:], "--workers", "1"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
