"""Row blocks: how the kernels walk a big ``(rows, classes)`` matrix.

A kernel handles one block of rows at a time, so its temporaries are one
block large (cache-sized) instead of ``rows × classes``. Big batches spread
their blocks over a small thread pool: NumPy's ufuncs release the GIL, so the
blocks run on all cores.

The helpers below are the kernels' building blocks:

* :func:`scratch` lends each thread running blocks its working buffers,
  reused from block to block and call to call, so a block's elementwise work
  runs in place (``out=``) without allocating;
* :func:`row_sums`, :func:`row_dots` and :func:`row_max` reduce each row of a
  block. NumPy's ``sum(axis=1)`` runs a pairwise sum per row, one short inner
  loop each: slow for narrow rows (2 ns per element at 10 columns), and
  ``max(axis=1)`` is worse. These pick by width: a product with a column of
  ones (BLAS ``gemv``, in calls small enough that OpenBLAS does not start its
  own threads), or chunked BLAS dot products; a column loop for the maxima.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from itertools import count, pairwise
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: Elements per block: 512 Ki values, 2 MiB of float32, so that the few buffers a block
#: needs per thread stay in the L2 and L3 caches. Bigger blocks mean fewer NumPy calls per
#: element: each costs a microsecond or so of Python, under the GIL, which threads share.
#: (Measured on 2 cores, 4096x1000 float32: 64 Ki-value blocks took 1.5 to 2x as long.)
BLOCK_ELEMENTS = 1 << 19
#: Below this many elements a batch is computed on the calling thread alone.
PARALLEL_MIN_ELEMENTS = 1 << 18
#: Buffers up to this many elements are kept for the next call.
KEEP_ELEMENTS = 1 << 20
#: Rows up to this wide are summed by a product with a vector of ones (BLAS ``gemv``).
NARROW_COLUMNS = 32
#: ... in calls of at most this many elements, which OpenBLAS runs on the calling thread.
GEMV_ELEMENTS = 1 << 17
#: Wider rows are summed by BLAS dot products over chunks of this many columns.
DOT_CHUNK = 1024

Floats = NDArray[np.floating]


def row_blocks(n_rows: int, n_cols: int, parts: int = 1) -> Iterator[slice]:
    """Consecutive row slices covering ``range(n_rows)``, each at most about one block.

    The rows are split evenly (sizes differ by one at most), for ``parts``
    threads into a multiple of ``parts`` slices, two per thread at least (when
    there are that many rows): equal shares, with some slack for a thread
    that starts late.
    """
    rows_per_block = max(1, BLOCK_ELEMENTS // max(1, n_cols))
    n_blocks = -(-n_rows // rows_per_block)
    if parts > 1:
        n_blocks = max(n_blocks, 2 * parts)
    n_blocks = max(1, min(n_rows, -(-n_blocks // parts) * parts))
    bounds = [i * n_rows // n_blocks for i in range(n_blocks + 1)]
    for start, stop in pairwise(bounds):
        if stop > start:
            yield slice(start, stop)


#: The environment variable that sets the kernel thread count where no count was given by
#: :func:`set_threads` (read each time big batches run: the benchmarks change it).
THREADS_ENV = "LOSS_SERVICE_KERNEL_THREADS"
#: The last value of the environment variable read by :func:`threads`, and its count.
_threads_seen: tuple[str | None, int] = (None, 0)
#: The count given by :func:`set_threads` (the service's setting ``kernel_threads``).
_threads_set: int | None = None


def set_threads(n: int | None) -> None:
    """Use ``n`` threads for big batches (``None``: as :data:`THREADS_ENV` says, else every
    core). The service sets it from its setting ``kernel_threads``."""
    global _threads_set
    if n is not None and n < 1:
        raise ValueError(f"kernels run on at least one thread; received {n}")
    _threads_set = n


@lru_cache(maxsize=1)
def _cores() -> int:
    """The machine's cores, counted once per process: ``os.cpu_count()`` reads
    ``/sys`` (a system call or three, 10 to 80 µs on a busy machine) each time."""
    return os.cpu_count() or 1


def threads() -> int:
    """Threads used for big batches: as :func:`set_threads` set, else
    ``LOSS_SERVICE_KERNEL_THREADS``, else all cores.

    The setting is read on each call (so that a change takes effect), the count computed
    again only when it changed.
    """
    global _threads_seen
    if _threads_set is not None:
        return _threads_set
    configured = os.environ.get(THREADS_ENV, "")
    seen, n = _threads_seen
    if configured != seen:
        n = int(configured) if configured.isdigit() and int(configured) > 0 else _cores()
        _threads_seen = (configured, n)
    return n


@lru_cache(maxsize=1)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="loss-kernel")


def for_each_block(n_rows: int, n_cols: int, work: Callable[[slice], None]) -> None:
    """Run ``work(rows)`` on every row block, in parallel when the batch is big.

    ``work`` writes its results into preallocated output slices, so blocks are
    independent and their order does not matter. Each thread running blocks
    holds one set of :func:`scratch` buffers for the whole call.
    """
    if n_rows * n_cols < PARALLEL_MIN_ELEMENTS and n_rows * max(1, n_cols) <= BLOCK_ELEMENTS:
        # One block, on this thread (every small request): no block list, no thread count.
        if n_rows:
            with _buffers():
                work(slice(0, n_rows))
        return
    configured = threads()
    n_threads = configured if n_rows * n_cols >= PARALLEL_MIN_ELEMENTS else 1
    blocks = list(row_blocks(n_rows, n_cols, n_threads))
    n_threads = min(n_threads, len(blocks))
    if n_threads == 1:
        with _buffers():
            for rows in blocks:
                work(rows)
        return
    # Every thread, the calling one too, takes the next block nobody has taken
    # (``next`` on a ``count`` is atomic under the GIL), and the call returns
    # once every block is done. On shared cores, a helper thread that does not
    # get a core in time takes fewer blocks, or none, instead of the whole call
    # waiting for a fixed share.
    taken, finished = count(), count(1)
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        with _buffers():
            for i in taken:
                if i >= len(blocks):
                    return
                try:
                    work(blocks[i])
                except BaseException as error:  # re-raised by the calling thread
                    errors.append(error)
                if next(finished) == len(blocks):
                    done.set()

    pool = _pool(configured - 1)
    for _ in range(n_threads - 1):
        pool.submit(run)
    run()
    done.wait()
    if errors:
        raise errors[0]


# ---- working buffers ----------------------------------------------------------------------

Buffers = dict[tuple[int, np.dtype[Any]], Floats]

_local = threading.local()
#: Buffer sets not in use, kept for the next call: as many as threads ran blocks at once.
_idle: list[Buffers] = []
_idle_lock = threading.Lock()


def _lend() -> Buffers | None:
    """An idle buffer set, if any (``list.pop`` is atomic under the GIL)."""
    try:
        return _idle.pop()
    except IndexError:
        return None


def _give_back(lent: Buffers, reused: bool) -> None:
    """Return a buffer set lent to a thread: one that was taken from the idle sets goes
    back (their number does not grow); a new one is kept while fewer sets are idle than
    threads may run blocks at once."""
    if reused:
        _idle.append(lent)
        return
    with _idle_lock:
        if len(_idle) < threads() + 1:
            _idle.append(lent)


@contextmanager
def _buffers() -> Iterator[None]:
    """Lends the calling thread a set of scratch buffers while it runs blocks."""
    lent = _lend()
    reused = lent is not None
    if lent is None:
        lent = {}
    _local.buffers = lent
    try:
        yield
    finally:
        _local.buffers = None
        _give_back(lent, reused)


def scratch(shape: tuple[int, int], dtype: np.dtype[Any], slot: int = 0) -> Floats:
    """A ``shape`` working buffer of ``dtype`` for one block; its contents are garbage.

    Inside :func:`for_each_block`, the same ``slot`` returns the same memory
    for every block a thread runs (and to later calls), so a kernel must be
    done with one block's buffer before the next block; buffers needed at the
    same time take distinct slots. Buffers live in a few sets lent to the
    threads running blocks, never more sets than threads have run at once: a
    thread pool serving requests does not keep one per thread.
    """
    size = shape[0] * shape[1]
    buffers: Buffers | None = getattr(_local, "buffers", None)
    key = (slot, dtype)
    buf = None if buffers is None else buffers.get(key)
    if buf is None or buf.size < size:
        # One row of headroom: the blocks of a call differ by one row at most, so the
        # first block's buffer serves them all.
        buf = np.empty(size + shape[1], dtype=dtype)
        if buffers is not None and buf.size <= KEEP_ELEMENTS:
            buffers[key] = buf
    return buf[:size].reshape(shape)


# ---- row reductions -------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _ones(n: int, dtype: np.dtype[Any]) -> Floats:
    ones = np.ones(n, dtype=dtype)
    ones.flags.writeable = False
    return ones


def row_sums(a: Floats) -> Floats:
    """``a.sum(axis=1)`` of a 2-D float array, in its dtype, faster.

    Narrow rows (up to :data:`NARROW_COLUMNS`) are a matrix-vector product
    with ones; wider rows dot products with ones (BLAS ``dot``, several SIMD
    accumulators per row), in chunks of :data:`DOT_CHUNK` columns whose sums
    are added in float64. Each term goes through a few dozen float32
    additions at most, so for the nonnegative terms the kernels add, the sums
    are within about 1e-7 (float32) of the exact ones, as ``np.sum``'s
    pairwise sums are, at any width.
    """
    c = a.shape[1]
    if c <= NARROW_COLUMNS:
        return row_products(a, _ones(c, a.dtype).reshape(c, 1))[:, 0]
    return _chunked_dots(a, _ones(c, a.dtype))


def row_dots(a: Floats, b: Floats, buf: Floats) -> Floats:
    """``(a * b).sum(axis=1)`` for two ``(rows, classes)`` arrays, summed as :func:`row_sums`.

    ``buf`` is a scratch array of the same shape, used for narrow rows (it
    may be ``a`` or ``b`` itself when that one is no longer needed).
    """
    if a.shape[1] <= NARROW_COLUMNS:
        return row_sums(np.multiply(a, b, out=buf))
    return _chunked_dots(a, b)


def _chunked_dots(a: Floats, b: Floats) -> Floats:
    """Row dot products of ``a`` with ``b`` (a row or a matrix), chunked by ``DOT_CHUNK``.

    Each chunk is one BLAS dot product; the chunks' dot products are added in
    float64, so that a row's largest term does not absorb whole chunks of
    smaller ones (as a float32 running sum of 32 chunks would).
    """
    n, c = a.shape
    if c <= DOT_CHUNK:
        dots: Floats = np.vecdot(a, b)
        return dots
    q, k = divmod(c, DOT_CHUNK)
    whole = q * DOT_CHUNK
    # (rows, q, DOT_CHUNK) views of the first q chunks of each row (copies if rows are strided)
    chunks = a[:, :whole].reshape(n, q, DOT_CHUNK)
    other = b[:DOT_CHUNK] if b.ndim == 1 else b[:, :whole].reshape(n, q, DOT_CHUNK)
    total = np.add.reduce(np.vecdot(chunks, other), axis=1, dtype=np.float64)
    if k:
        total += np.vecdot(a[:, whole:], b[..., whole:])
    dots = total.astype(a.dtype, copy=False)
    return dots


def row_products(a: Floats, matrix: Floats) -> Floats:
    """``a @ matrix`` for narrow rows, in BLAS calls OpenBLAS keeps on the calling thread."""
    n, c = a.shape
    step = max(1, GEMV_ELEMENTS // c)
    if n <= step:
        product: Floats = np.matmul(a, matrix)
        return product
    product = np.empty((n, matrix.shape[1]), dtype=np.result_type(a, matrix))
    for start in range(0, n, step):
        np.matmul(a[start : start + step], matrix, out=product[start : start + step])
    return product


def row_max(a: Floats) -> Floats:
    """``a.max(axis=1)``; narrow rows go column by column (one vector op per column)."""
    c = a.shape[1]
    if c > NARROW_COLUMNS:
        top: Floats = np.maximum.reduce(a, axis=1)
        return top
    top = a[:, 0].copy()
    for j in range(1, c):
        np.maximum(top, a[:, j], out=top)
    return top
