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
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench import ratio, table
from bench.streaming import service, small_throughput, use_wrk
from bench.throughput import Load, median_round

#: The two workers: the setting's environment of each.
WORKERS = {"frozen": {}, "not frozen": {"LOSS_SERVICE_GC_FREEZE": "false"}}
REQUESTS = ("evaluate", "PUT")


def run(quick: bool = False) -> str:
    seconds, rounds = (3.0, 1) if quick else (5.0, 4)
    loads: dict[tuple[str, str], list[Load]] = {
        (worker, request): [] for worker in WORKERS for request in REQUESTS
    }
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        bases = {
            worker: stack.enter_context(service(None, tmp / f"data{i}", settings))[0]
            for i, (worker, settings) in enumerate(WORKERS.items())
        }
        for base in bases.values():  # warm-up
            small_throughput(base, 1.0)
        for _ in range(rounds):
            for worker, base in bases.items():
                # Evaluate, then PUT (into an evaluation of its own each time).
                put, post, _ = small_throughput(base, seconds)
                loads[(worker, "evaluate")].append(post)
                loads[(worker, "PUT")].append(put)
    median = {key: median_round(runs) for key, runs in loads.items()}
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
