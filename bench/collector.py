"""The garbage collector's full passes, with and without what a worker built while
starting left out of them (setting ``gc_freeze``).

    python -m bench.collector [--quick]

Starts two ``loss-service serve`` workers on SQLite (temporary data directories): one
as shipped, one with ``LOSS_SERVICE_GC_FREEZE=false``. Rounds interleave them; in each,
wrk -c32 (32 httpx clients where wrk is not installed) sends small batches (32×10 JSON)
to each worker: ``POST /v1/evaluate``, then ``PUT`` with a new batch id each request
into an evaluation of its own. A full pass goes over every object the collector
tracks: over a worker's whole heap (~160,000 objects after its start) it pauses every
request in flight, and shows in the tail of the latencies. Prints each worker's median
round (requests per second, p50 and p99 ms) and the shipped worker's over the other's.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench import ratio, table
from bench.streaming import put_script, service, use_wrk
from bench.throughput import Load, request_body, run_httpx, run_wrk, wrk_script

#: The two workers: the setting's environment of each.
WORKERS = {"frozen": {}, "not frozen": {"LOSS_SERVICE_GC_FREEZE": "false"}}
REQUESTS = ("evaluate", "PUT")


def _median(loads: list[Load]) -> Load:
    """The round with the median rate (the lower middle one of an even count)."""
    ordered = sorted(loads, key=lambda load: load.requests_per_s)
    return ordered[(len(ordered) - 1) // 2]


def run(quick: bool = False) -> str:
    seconds, rounds = (3.0, 1) if quick else (5.0, 4)
    body = request_body()
    loads: dict[tuple[str, str], list[Load]] = {
        (worker, request): [] for worker in WORKERS for request in REQUESTS
    }
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        bases: dict[str, str] = {}
        for i, (worker, settings) in enumerate(WORKERS.items()):
            bases[worker] = stack.enter_context(service(None, tmp / f"data{i}", settings))[0]
        runs = itertools.count()

        def load(worker: str, request: str, duration: float) -> Load:
            base = bases[worker]
            if request == "evaluate":
                if use_wrk():
                    return run_wrk(f"{base}/v1/evaluate", wrk_script(body, tmp), 32, duration)
                return run_httpx(f"{base}/v1/evaluate", body, 32, duration)
            # Each run's batches go to an evaluation of its own (wrk's ids start again).
            with httpx.Client(base_url=base, timeout=60) as client:
                eid = client.post("/v1/evaluations", json={}).json()["id"]
            if use_wrk():
                directory = tmp / f"run{next(runs)}"
                directory.mkdir()
                script = put_script(eid, body, directory)
                return run_wrk(f"{base}/v1/evaluations", script, 32, duration)
            numbers = itertools.count()
            return run_httpx(
                lambda: f"{base}/v1/evaluations/{eid}/batches/b{next(numbers)}",
                body,
                32,
                duration,
                method="PUT",
                expect=201,
            )

        for worker, request in loads:  # warm-up
            load(worker, request, 1.0)
        for _ in range(rounds):
            for worker, request in loads:
                loads[(worker, request)].append(load(worker, request, seconds))
    median = {key: _median(runs) for key, runs in loads.items()}
    rows = []
    for (worker, request), m in median.items():
        rows.append(
            [
                request,
                worker,
                f"{m.requests_per_s:,.0f}",
                "-" if m.p50_ms is None else f"{m.p50_ms:.1f}",
                "-" if m.p99_ms is None else f"{m.p99_ms:.1f}",
                str(sum(run.errors for run in loads[(worker, request)])),
            ]
        )
    verdict = []
    for request in REQUESTS:
        frozen, other = median[("frozen", request)], median[("not frozen", request)]
        p99 = (
            "-"
            if frozen.p99_ms is None or other.p99_ms is None
            else ratio(frozen.p99_ms / other.p99_ms)
        )
        rate = ratio(frozen.requests_per_s / other.requests_per_s)
        verdict.append(f"{request}, frozen / not frozen: req/s {rate}, p99 {p99}")
    generator = "wrk -t1 -c32" if use_wrk() else "32 httpx clients (no wrk: slower than the server)"
    return "\n".join(
        [
            f"load: {generator}, {rounds} interleaved round(s) of {seconds:g} s after a 1 s "
            "warm-up, the median round shown; 32×10 JSON batches, SQLite, one worker each.",
            table(["request", "worker", "req/s", "p50 ms", "p99 ms", "errors"], rows),
            *verdict,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of 3 s")
    args = parser.parse_args()
    print(run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
