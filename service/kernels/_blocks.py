"""Row blocks: how the kernels walk a big ``(rows, classes)`` matrix.

A kernel handles one block of rows at a time, so its temporaries are one
block large (a few hundred KiB, cache-sized) instead of ``rows × classes``.
Big batches spread their blocks over a small thread pool: NumPy's ufuncs
release the GIL, so the blocks run on all cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

#: Elements per block: 64 Ki float32 values is 256 KiB, which fits in L2.
BLOCK_ELEMENTS = 1 << 16
#: Below this many elements a batch is computed on the calling thread alone.
PARALLEL_MIN_ELEMENTS = 1 << 20


def row_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Consecutive row slices covering ``range(n_rows)``, each about one block."""
    step = max(1, BLOCK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def threads() -> int:
    """Threads used for big batches (``LOSS_SERVICE_KERNEL_THREADS``, default: all cores)."""
    configured = os.environ.get("LOSS_SERVICE_KERNEL_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return os.cpu_count() or 1


@lru_cache(maxsize=1)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="loss-kernel")


def for_each_block(n_rows: int, n_cols: int, work: Callable[[slice], None]) -> None:
    """Run ``work(rows)`` on every row block, in parallel when the batch is big.

    ``work`` writes its results into preallocated output slices, so blocks are
    independent and their order does not matter.
    """
    blocks = list(row_blocks(n_rows, n_cols))
    n_threads = threads()
    if n_threads == 1 or len(blocks) == 1 or n_rows * n_cols < PARALLEL_MIN_ELEMENTS:
        for rows in blocks:
            work(rows)
        return
    # Group blocks into one contiguous chunk per thread: fewer tasks, same cache use.
    per = -(-len(blocks) // n_threads)
    chunks = [blocks[i : i + per] for i in range(0, len(blocks), per)]

    def run(chunk: list[slice]) -> None:
        for rows in chunk:
            work(rows)

    for future in [_pool(n_threads).submit(run, chunk) for chunk in chunks]:
        future.result()
