"""``python -m bench [--quick] [--only PART]``: run the benchmarks and print their tables
(see bench/README.md); ``PART``: kernels, endpoints, throughput, streaming, collector or
pictures."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence

from bench import header, machine

PARTS = ("kernels", "endpoints", "throughput", "streaming", "collector", "pictures")


def _runner(name: str) -> Callable[[bool], str]:
    module = importlib.import_module(f"bench.{name}")
    run: Callable[[bool], str] = module.run
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer shapes, runs and seconds")
    parser.add_argument(
        "--only", choices=PARTS, action="append", help="run only this part (repeatable)"
    )
    args = parser.parse_args(argv)
    parts = args.only or list(PARTS)
    print(machine(), flush=True)
    print(f"mode: {'quick' if args.quick else 'full'}", flush=True)
    for name in parts:
        started = time.perf_counter()
        print(header(name), flush=True)
        print(_runner(name)(args.quick), flush=True)
        print(f"({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
