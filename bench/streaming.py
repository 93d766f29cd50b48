"""Streaming evaluations, measured against the service's own one-shot evaluate.

    python -m bench.streaming [--quick] [--batches 10000]
    python -m bench.streaming --floor-pairs 3   # the one-row store, then the service, 3 times

Starts ``loss-service serve`` (one worker) on SQLite (a temporary data directory) and,
when it answers at 127.0.0.1:5432, on PostgreSQL (a schema of its own, dropped after),
and prints, in one run:

- ``PUT`` of a 256×1000 float32 batch (binary encoding) against ``POST /v1/evaluate``
  of the same body, rounds of one each: the median of each and their ratio (target
  ≤ 1.3×), over 400 rounds of a running service, after ``FIRST_ROUNDS`` rounds right
  after its start, whose ratio is shown too (on SQLite, their commits also grow the
  write-ahead log file: see ``FIRST_ROUNDS``);
- the same rounds on the service with its storing cut down (:mod:`bench.floor`):
  nothing stored, and one row committed with nothing else kept (the least a durable
  acknowledgement costs);
- ``GET /v1/evaluations/{id}`` of an evaluation holding ``--batches`` batches (small
  ones, 8×10): its median time (target ≤ 20 ms);
- the server's RSS after the first 500 of those batches and after all of them: growth
  per batch (target: none);
- small batches (32×10 JSON) under wrk -c32 (32 httpx clients where wrk is not installed):
  PUT (a new batch id each request) against
  ``POST /v1/evaluate`` of the same body, in requests per second (target ≥ 0.5×; PUTs
  that arrive together share a commit).
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench import free_port, proc_status, serve, venv_script
from bench.throughput import (
    GENERATOR_ENV,
    Load,
    request_body,
    run_httpx,
    run_wrk,
    wrk_script,
)

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MiB = 1024 * 1024


def rss(pid: int) -> int:
    return proc_status(pid, "VmRSS") or 0


@contextmanager
def service(
    url: str | None,
    data_dir: Path,
    settings: dict[str, str] | None = None,
    floor: str | None = None,
) -> Iterator[tuple[str, int]]:
    """``loss-service serve`` (one worker) on ``data_dir`` (or PostgreSQL at ``url``), with
    the defaults but ``settings`` (environment variables); its URL and process id.
    ``floor``: the service with a PUT's storing cut down (see :mod:`bench.floor`)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SERVICE_")}
    env.update(settings or {})
    env["LOSS_SERVICE_DATA_DIR"] = str(data_dir)
    if url:
        env["LOSS_SERVICE_DATABASE_URL"] = url
    program = [venv_script("loss-service")]
    if floor is not None:
        program = [sys.executable, "-m", "bench.floor", floor]
    command = [*program, "serve", "--port", str(port), "--log-level", "warning"]
    with serve(command, port, probe="/healthz", env=env, timeout=60) as server:
        yield server.url, server.pid


@contextmanager
def postgres_schema() -> Iterator[str | None]:
    """A URL whose search path is a fresh schema (dropped after), or None without PG."""
    try:
        import psycopg

        admin = psycopg.connect(PG_URL, connect_timeout=3, autocommit=True)
    except Exception:
        yield None
        return
    schema = f"bench_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{PG_URL}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def binary_body(rows: int, classes: int, seed: int) -> tuple[bytes, dict[str, str]]:
    rng = np.random.default_rng(seed)
    y_pred = rng.dirichlet(np.ones(classes), rows).astype(np.float32)
    y_true = rng.integers(0, classes, rows).astype(np.int64)
    header = orjson.dumps(
        {
            "y_true": {"dtype": "int64", "shape": [rows], "binary_data_size": y_true.nbytes},
            "y_pred": {
                "dtype": "float32",
                "shape": [rows, classes],
                "binary_data_size": y_pred.nbytes,
            },
        }
    )
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return header + y_true.tobytes() + y_pred.tobytes(), headers


#: Rounds measured apart right after the service starts. On SQLite the write-ahead log
#: file starts empty and grows by each commit's pages (five of 4 KiB for one of these
#: PUTs) until the first checkpoint (at SQLite's default of 1000 pages, after about 200
#: PUTs); from then on commits write over the file, and a running service goes on so.
#: A commit that grows the file also makes fdatasync write its new size (on ext4 a
#: journal commit): the table of the storing alone shows what that adds. The goal is
#: judged on the rounds after these; their own ratio is shown next to it.
FIRST_ROUNDS = 250


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def put_against_evaluate(
    base: str, rounds: int, first: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median ms of PUT (new batch each time) and of POST /v1/evaluate, interleaved (one
    of each a round, which goes first alternating: neither always follows the other),
    over ``rounds`` rounds after ``first`` rounds, whose medians come second."""
    body, headers = binary_body(256, 1000, 0)
    puts: list[float] = []
    posts: list[float] = []
    first_puts: list[float] = []
    first_posts: list[float] = []
    with httpx.Client(base_url=base, timeout=60) as client:
        eid = client.post("/v1/evaluations", json={}).json()["id"]

        def post() -> float:
            start = time.perf_counter()
            r = client.post("/v1/evaluate", content=body, headers=headers)
            elapsed = time.perf_counter() - start
            assert r.status_code == 200, r.text
            return elapsed

        def put(i: int) -> float:
            start = time.perf_counter()
            r = client.put(f"/v1/evaluations/{eid}/batches/b{i}", content=body, headers=headers)
            elapsed = time.perf_counter() - start
            assert r.status_code == 201, r.text
            return elapsed

        for i in range(first + rounds + 3):
            if i % 2:
                put_s = put(i)
                post_s = post()
            else:
                post_s = post()
                put_s = put(i)
            if i < 3:  # the first rounds warm caches and connections
                continue
            into_puts, into_posts = (first_puts, first_posts) if i < first + 3 else (puts, posts)
            into_puts.append(put_s)
            into_posts.append(post_s)
    return (median_ms(puts), median_ms(posts)), (median_ms(first_puts), median_ms(first_posts))


def store_alone(
    url: str | None, data_dir: Path, pause: float, rounds: int, first: int
) -> tuple[float, float]:
    """Median ms of a PUT's storing alone, in this process: ``Store.put_batch`` of the
    large batch as evaluated once (its hash, statistics and answer), one put after each
    ``pause`` seconds (an evaluate's time, as between the PUTs of the rounds), over the
    first ``first`` puts after the store opens and over the ``rounds`` after those."""
    from service.arrays import parse_binary
    from service.settings import Settings
    from service.storage import PutOutcome, Store
    from service.streaming import evaluate_batch, parse_settings

    settings = Settings()
    body, headers = binary_body(256, 1000, 0)
    length = int(headers["inference-header-content-length"])
    document = parse_binary(body, length, settings.max_elements)
    config, metadata = parse_settings({}, settings.content_hash)
    with np.errstate(over="ignore", invalid="ignore"):
        outcome = evaluate_batch(config, document, None, settings.max_elements)
    store = Store.open(url, data_dir)
    times: list[float] = []
    try:
        evaluation = store.create_evaluation(None, config, metadata)
        for i in range(first + rounds):
            time.sleep(pause)
            start = time.perf_counter()
            result = store.put_batch(
                None,
                evaluation.id,
                f"b{i}",
                outcome.content_hash,
                outcome.stats,
                {"batch_id": f"b{i}", **outcome.answer},
                outcome.n_samples,
                facts=outcome.facts if i == 0 else None,
                warnings=outcome.warning_codes,
            )
            times.append(time.perf_counter() - start)
            assert result.outcome is PutOutcome.CREATED, result
    finally:
        store.dispose()
    return median_ms(times[:first]), median_ms(times[first:])


def commit_alone(url: str | None, data_dir: Path, pause: float, rounds: int) -> float:
    """Median ms of the machine's durable commit alone: one row (an integer and 200
    bytes) inserted and committed on a connection set up as the store's (SQLite:
    write-ahead log, ``synchronous=FULL``, ``BEGIN IMMEDIATE``; PostgreSQL: one statement
    in autocommit, as a PUT's), one commit after each ``pause`` seconds, over ``rounds``
    commits after 50. What any acknowledged batch costs at least, whatever the service
    does besides."""
    from service.storage.engine import make_engine

    engine = make_engine(url, data_dir)
    sqlite = engine.dialect.name == "sqlite"
    connection = engine.raw_connection()
    driver: Any = connection.driver_connection
    blob = "BLOB" if sqlite else "BYTEA"
    mark = "?" if sqlite else "%s"
    times: list[float] = []
    try:
        cursor = connection.cursor()
        cursor.execute(f"CREATE TABLE bench_commit (n BIGINT, payload {blob})")
        connection.commit()
        if not sqlite:
            driver.autocommit = True
        insert = f"INSERT INTO bench_commit VALUES ({mark}, {mark})"
        payload = bytes(200)
        for i in range(50 + rounds):
            time.sleep(pause)
            start = time.perf_counter()
            if sqlite:
                cursor.execute("BEGIN IMMEDIATE")
                cursor.execute(insert, (i, payload))
                cursor.execute("COMMIT")
            else:
                cursor.execute(insert, (i, payload))
            times.append(time.perf_counter() - start)
        cursor.execute("DROP TABLE bench_commit")
        if not sqlite:
            driver.autocommit = False
        connection.commit()
    finally:
        connection.close()
        engine.dispose()
    return median_ms(times[50:])


def put_script(evaluation_id: str, body: bytes, directory: Path) -> Path:
    """A wrk script that PUTs ``body`` under a new batch id each request."""
    script = directory / "put.lua"
    script.write_text(
        'wrk.method = "PUT"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body.decode()}]==]\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        f'  return wrk.format(nil, "/v1/evaluations/{evaluation_id}/batches/b" .. n)\n'
        "end\n"
    )
    return script


def use_wrk() -> bool:
    """wrk when it is on the PATH (and not set aside by ``BENCH_LOAD_GENERATOR=httpx``),
    else the Python load generator, which is slower than the server it loads."""
    return shutil.which("wrk") is not None and os.environ.get(GENERATOR_ENV) != "httpx"


def small_throughput(base: str, seconds: float) -> tuple[Load, Load, int]:
    """wrk -c32 on a 32×10 JSON batch: PUT (a new batch each request) and POST
    /v1/evaluate of the same body, and the batches the evaluation counted after."""
    body = request_body()
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(base_url=base, timeout=60) as client:
        eid = client.post("/v1/evaluations", json={}).json()["id"]
        if use_wrk():
            post = run_wrk(f"{base}/v1/evaluate", wrk_script(body, Path(tmp)), 32, seconds)
            put = run_wrk(f"{base}/v1/evaluations", put_script(eid, body, Path(tmp)), 32, seconds)
        else:
            numbers = itertools.count()
            post = run_httpx(f"{base}/v1/evaluate", body, 32, seconds)
            put = run_httpx(
                lambda: f"{base}/v1/evaluations/{eid}/batches/b{next(numbers)}",
                body,
                32,
                seconds,
                method="PUT",
                expect=201,
            )
        counted = client.get(f"/v1/evaluations/{eid}").json()["n_batches"]
    return put, post, counted


def storages(pg_url: str | None) -> list[tuple[str, str | None]]:
    """The storages to measure: SQLite, and PostgreSQL at ``pg_url`` when it answers."""
    return [("SQLite", None)] + ([] if pg_url is None else [("PostgreSQL", pg_url)])


def floor_ratio(url: str | None, floor: str | None, rounds: int, first: int) -> float:
    """PUT / evaluate of the large batch (see :func:`put_against_evaluate`) on a worker of
    its own: the service, or with its storing cut down as ``floor`` says (bench.floor)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        service(url, Path(tmp) / "data", floor=floor) as (base, _),
    ):
        (put, post), _ = put_against_evaluate(base, rounds, first)
    return put / post


def many_batches(base: str, pid: int, n: int) -> tuple[float, int, int]:
    """Feed ``n`` small batches; the median GET ms, and RSS after 500 and after all."""
    rng = np.random.default_rng(1)
    with httpx.Client(base_url=base, timeout=60) as client:
        eid = client.post(
            "/v1/evaluations", json={"metrics": ["accuracy", "auc"], "reports": ["per_class"]}
        ).json()["id"]
        early = 0
        for i in range(n):
            body = {
                "y_true": rng.integers(0, 10, 8).tolist(),
                "y_pred": rng.dirichlet(np.ones(10), 8).tolist(),
            }
            r = client.put(f"/v1/evaluations/{eid}/batches/b{i}", json=body)
            assert r.status_code == 201, r.text
            if i == min(500, n - 1):
                early = rss(pid)
        late = rss(pid)
        times = []
        for _ in range(30):
            start = time.perf_counter()
            r = client.get(f"/v1/evaluations/{eid}")
            times.append(time.perf_counter() - start)
            assert r.json()["n_batches"] == n
    return median_ms(times), early, late


def run(quick: bool = False, batches: int = 10_000) -> str:
    # The machine drifts: within one run, the ratio of 100 rounds in a row differs by up
    # to ~0.07 from that of the next 100; a median over 400 moves less.
    rounds = 20 if quick else 400
    first = 20 if quick else FIRST_ROUNDS
    n = 1000 if quick else batches
    seconds = 5.0 if quick else 15.0
    lines = [
        "| storage | PUT 256×1000 ms | evaluate ms | PUT / evaluate | first "
        f"{first} rounds: PUT / evaluate | GET of {n} batches ms | RSS after 500 → {n} "
        "batches MiB | growth per batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    alone = [
        "",
        "A PUT's storing alone, in process: Store.put_batch of the same batch (hashed and",
        "evaluated once), one put after each pause of an evaluate's median time above;",
        "against the PUT's time over evaluate's in the rounds. And the machine's durable",
        "commit alone: one row inserted and committed on a connection set up as the",
        "store's, one after each such pause; its share of evaluate's time (the goal",
        "leaves 30% for the whole of a PUT's extra work).",
        "",
        f"| storage | PUT − evaluate ms | storing ms | storing, first {first} puts ms | "
        "one-row commit ms | commit / evaluate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    floors = [
        "",
        "Where a PUT's time over evaluate's goes: PUT / evaluate of the same batch and rounds",
        "with the service's storing cut down (see bench/floor.py): nothing stored; one row",
        "(a number and the batch's hash) committed, the least a durable acknowledgement",
        "costs, and nothing else kept; the service (from the first table).",
        "",
        "| storage | nothing stored | one-row commit only | the service |",
        "|---|---:|---:|---:|",
    ]
    small = [
        "",
        "Small batches (32×10 JSON), "
        + ("wrk -c32" if use_wrk() else "32 httpx clients (no wrk: slower than the server)")
        + ", one worker: PUT with a new batch id each",
        "request against POST /v1/evaluate of the same body (target ≥ 0.5×).",
        "",
        "| storage | PUT req/s | evaluate req/s | PUT / evaluate | PUT p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    with postgres_schema() as pg_url:
        for name, url in storages(pg_url):
            with (
                tempfile.TemporaryDirectory() as tmp,
                service(url, Path(tmp) / "data") as (
                    base,
                    pid,
                ),
            ):
                (put, post), started = put_against_evaluate(base, rounds, first)
                get, early, late = many_batches(base, pid, n)
                puts, posts, counted = small_throughput(base, seconds)
            cut = [floor_ratio(url, floor, rounds, first) for floor in ("skip", "row")]
            floors.append(f"| {name} | {cut[0]:.2f}× | {cut[1]:.2f}× | {put / post:.2f}× |")
            with tempfile.TemporaryDirectory() as tmp:
                store_first, store = store_alone(url, Path(tmp), post / 1000, rounds, first)
            with tempfile.TemporaryDirectory() as tmp:
                commit = commit_alone(url, Path(tmp), post / 1000, rounds)
            alone.append(
                f"| {name} | {put - post:.2f} | {store:.2f} | {store_first:.2f} | "
                f"{commit:.2f} | {commit / post:.0%} |"
            )
            per_batch = (late - early) / max(n - 500, 1)
            lines.append(
                f"| {name} | {put:.1f} | {post:.1f} | {put / post:.2f}× | "
                f"{started[0] / started[1]:.2f}× | {get:.1f} | "
                f"{early / MiB:.0f} → {late / MiB:.0f} | {per_batch / 1024:.2f} KiB |"
            )
            # Every acknowledged PUT is counted (wrk stops counting at its deadline,
            # so the evaluation may hold a few more than wrk saw answered).
            assert counted >= puts.requests - puts.errors, (counted, puts)
            p99 = f"{puts.p99_ms:.1f}" if puts.p99_ms is not None else "–"
            small.append(
                f"| {name} | {puts.requests_per_s:,.0f} | {posts.requests_per_s:,.0f} | "
                f"{puts.requests_per_s / posts.requests_per_s:.2f}× | {p99} | "
                f"{puts.errors + posts.errors} |"
            )
    return "\n".join(lines + floors + alone + small)


def floor_pairs(pairs: int, quick: bool = False) -> str:
    """``pairs`` times, on each storage: PUT / evaluate of the large batch on a worker whose
    store commits one row and keeps nothing else (:mod:`bench.floor`), then on the
    service, the same rounds each (the first table's)."""
    rounds, first = (20, 20) if quick else (400, FIRST_ROUNDS)
    lines = [
        f"PUT / evaluate, {rounds} rounds after {first}: a store that commits one row and "
        "keeps nothing else, then the service",
        "",
        "| pair | storage | one-row commit only | the service |",
        "|---|---|---:|---:|",
    ]
    with postgres_schema() as pg_url:
        for pair in range(1, pairs + 1):
            for name, url in storages(pg_url):
                row, served = (floor_ratio(url, floor, rounds, first) for floor in ("row", None))
                lines.append(f"| {pair} | {name} | {row:.2f}× | {served:.2f}× |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and batches")
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument(
        "--floor-pairs",
        type=int,
        metavar="N",
        help="only N pairs of runs: the one-row store (bench/floor.py), then the service",
    )
    args = parser.parse_args()
    if args.floor_pairs:
        print(floor_pairs(args.floor_pairs, args.quick))
    else:
        print(run(args.quick, args.batches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
