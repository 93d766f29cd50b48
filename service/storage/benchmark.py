"""What exact totals and the store cost: ``python -m service.storage.benchmark [SIZE] [BATCHES]``.

Prints, for statistics of ``SIZE`` elements (default 10**6) over ``BATCHES``
batches (default 20): the cost of turning a float64 batch into an exact sum,
of adding it, of reading the total back as float64 (correct rounding), of
encoding and decoding the totals, and the bytes stored per element; then a
put and a read through a :class:`~service.storage.store.Store` on a temporary
SQLite file (``--no-store`` skips that). Each figure is the best of its
repetitions, since the machine may be busy.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from service.storage.blobs import decode_totals, encode_totals
from service.storage.exact import ExactTotals, FixedSum
from service.storage.store import Store


def _weighted_losses(rng: np.random.Generator, size: int) -> np.ndarray:
    # Exponential values times weights: sums of these need 4 limbs.
    values: np.ndarray = rng.exponential(1.0, size) * rng.uniform(0.1, 2.0, size)
    return values


def bench_exact(size: int, batches: int) -> None:
    rng = np.random.default_rng(0)
    total = FixedSum.zeros((size,))
    naive = np.zeros(size)
    convert = add = float("inf")
    for _ in range(batches):
        part = _weighted_losses(rng, size)
        naive += part
        start = time.perf_counter()
        exact = FixedSum.from_floats(part)
        convert = min(convert, time.perf_counter() - start)
        start = time.perf_counter()
        total.add(exact)
        add = min(add, time.perf_counter() - start)
    totals = ExactTotals({"sum": total})
    read = encode = decode = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        floats = total.to_floats()
        read = min(read, time.perf_counter() - start)
        start = time.perf_counter()
        blob = encode_totals(totals)
        encode = min(encode, time.perf_counter() - start)
        start = time.perf_counter()
        decode_totals(blob)
        decode = min(decode, time.perf_counter() - start)
    print(
        f"exact sums, {size} elements, {batches} batches, {total.limbs.shape[0]} limbs: "
        f"float64 → exact {convert * 1e3:.1f} ms, add {add * 1e3:.1f} ms, "
        f"read (rounded to float64) {read * 1e3:.1f} ms, encode {encode * 1e3:.1f} ms, "
        f"decode {decode * 1e3:.1f} ms, {len(blob) / size:.1f} bytes/element stored; "
        f"max |exact - sequential np.add| = {float(np.max(np.abs(floats - naive))):.3g}"
    )


def bench_store(size: int, batches: int) -> None:
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as directory:
        store = Store.open(None, Path(directory))
        try:
            evaluation = store.create_evaluation(None, {}, {})
            put = read = float("inf")
            for number in range(batches):
                stats = {"loss_sum": _weighted_losses(rng, size), "count": np.ones(size, np.int64)}
                digest = hashlib.sha256(str(number).encode()).digest()
                start = time.perf_counter()
                store.put_batch(None, evaluation.id, f"b{number}", digest, stats, {}, size)
                put = min(put, time.perf_counter() - start)
            for _ in range(5):
                start = time.perf_counter()
                store.get_totals(None, evaluation.id)
                read = min(read, time.perf_counter() - start)
        finally:
            store.dispose()
    print(
        f"SQLite store, a float and a count statistic of {size} elements: "
        f"put_batch {put * 1e3:.1f} ms, get_totals {read * 1e3:.1f} ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.storage.benchmark")
    parser.add_argument("size", nargs="?", type=int, default=10**6)
    parser.add_argument("batches", nargs="?", type=int, default=20)
    parser.add_argument("--no-store", action="store_true", help="skip the store's figures")
    args = parser.parse_args(argv)
    bench_exact(args.size, args.batches)
    if not args.no_store:
        bench_store(args.size, min(args.batches, 10))


if __name__ == "__main__":
    main()
