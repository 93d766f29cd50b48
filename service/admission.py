"""Admission control: the memory a worker process commits to requests, and its budget.

Every request that carries a body holds a :class:`Reservation` on the worker's one
:class:`MemoryBudget` from before its body is read until its answer is computed:

1. before the first body byte is read, for the body it declares (``Content-Length``) and
   the parse of that body (a JSON body is parsed within :data:`JSON_PARSE_FACTOR` times
   its size); a chunked body reserves as its chunks arrive;
2. once the arrays are decoded (their shapes and dtypes known, nothing computed yet), for
   the request's working memory as :func:`working_bytes` estimates it.

A reservation that would take the budget past its limit is refused with a 503 and
``Retry-After`` (another request holds the memory; the same request may pass in a
moment); a request whose own estimate is over the per-request limit is refused with a
413 that says what to send instead (no retry would help). The budget counts bytes
the service promised, not the process's RSS: the two differ by the interpreter, the
libraries and allocator slack, which ``make hostile`` measures.

How a worker's memory is kept is set here too: glibc's allocator thresholds
(:func:`tune_allocator`, :func:`give_back_memory`) and the garbage collector's view of
what the worker built at start (:func:`freeze_startup_objects`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from service.errors import PayloadTooLarge, ServiceUnavailable

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
#: A JSON body's parse holds at most this many times the body's bytes (text, numbers as
#: float64, the parser's blocks); ``tests/test_admission.py`` checks it.
JSON_PARSE_FACTOR: Final = 3
#: Working memory no request goes below: the kernels' block buffers, the response.
BASE_WORKING_BYTES: Final = 8 * MiB
#: Bytes per element of the temporaries that the batch checks allocate over ``y_true``
#: and ``y_pred`` (boolean masks of the finiteness, range and encoding checks).
CHECK_BYTES_PER_ELEMENT: Final = 3

_BUDGET_ENV: Final = "LOSS_SERVICE_MAX_INFLIGHT_BYTES"
_REQUEST_ENV: Final = "LOSS_SERVICE_MAX_REQUEST_MEMORY_BYTES"


def mib(n: int) -> str:
    """``n`` bytes as MiB for a message: ``'64 MiB'``, ``'0.4 MiB'``."""
    value = n / MiB
    return f"{value:.0f} MiB" if value >= 10 or value == int(value) else f"{value:.1f} MiB"


class MemoryBudget:
    """The bytes a worker may hold for requests at once (thread-safe: reservations are
    taken on the event loop and grown in the thread pool)."""

    def __init__(self, limit: int, request_limit: int) -> None:
        self.limit = limit
        self.request_limit = request_limit
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> Reservation:
        """A reservation of ``nbytes`` (503 if the budget cannot hold it now)."""
        reservation = Reservation(self)
        reservation.resize(nbytes)
        return reservation

    def _take(self, delta: int, total: int) -> None:
        with self._lock:
            if delta > 0 and self.used + delta > self.limit:
                held = self.used
            else:
                self.used += delta
                return
        raise ServiceUnavailable.at(
            ("body",),
            f"The service is at its memory budget for requests in flight: this request "
            f"needs {mib(total)} and other requests hold {mib(held)} of {mib(self.limit)} "
            f"(setting {_BUDGET_ENV}). Expected: retry after the time in Retry-After, or "
            "send smaller batches.",
        )


class Reservation:
    """One request's share of the budget: grown or shrunk as its needs become known,
    given back by :meth:`release` (idempotent)."""

    __slots__ = ("_budget", "nbytes", "peak")

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.nbytes = 0
        self.peak = 0

    def resize(self, nbytes: int) -> None:
        """Hold ``nbytes`` from now on (503 if the budget cannot hold the growth)."""
        nbytes = max(0, nbytes)
        self._budget._take(nbytes - self.nbytes, nbytes)
        self.nbytes = nbytes
        self.peak = max(self.peak, nbytes)

    def grow(self, extra: int) -> None:
        self.resize(self.nbytes + extra)

    def require(self, working: int, held: int) -> None:
        """Hold ``held`` bytes (what is already in memory, e.g. the body) plus ``working``
        (the estimate of what the computation will allocate): 413 if ``working`` alone is
        over the per-request limit, 503 if the budget cannot hold the sum now."""
        limit = self._budget.request_limit
        if working > limit:
            raise PayloadTooLarge.at(
                ("body",),
                f"This request needs about {mib(working)} of working memory to compute, over "
                f"the per-request limit of {mib(limit)} (setting {_REQUEST_ENV}). Expected: "
                "smaller batches, or predictions in the dtype the computation uses (float32 "
                "by default, so nothing is converted), sent as typed arrays or with the "
                "binary encoding.",
            )
        self.resize(held + working)

    def release(self) -> None:
        if self.nbytes:
            self._budget._take(-self.nbytes, 0)
            self.nbytes = 0


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """What the estimate needs of one array: its element count, rows, dtype, and whether
    it is already laid out C-contiguous."""

    size: int
    rows: int
    dtype: np.dtype[Any]
    contiguous: bool = True

    @classmethod
    def of(cls, arr: NDArray[Any]) -> ArrayInfo:
        rows = int(arr.shape[0]) if arr.ndim else 1
        return cls(int(arr.size), rows, arr.dtype, bool(arr.flags.c_contiguous))


def working_bytes(arrays: Iterable[ArrayInfo], compute_itemsize: int) -> int:
    """An upper estimate of what computing on these decoded arrays allocates.

    Per array: a converted copy when its dtype is not the computation's (``uint8`` →
    ``float32`` is 4 bytes an element for a 1-byte input; integer labels become int64)
    or it is not contiguous, and the checks' boolean temporaries; plus per-row values
    (labels, per-sample losses, matches) and the kernels' block buffers.
    """
    total = BASE_WORKING_BYTES
    for arr in arrays:
        converted = arr.dtype.itemsize != compute_itemsize or arr.dtype.kind != "f"
        if converted or not arr.contiguous:
            total += arr.size * max(compute_itemsize, 8 if arr.dtype.kind in "iub" else 0)
        total += arr.size * CHECK_BYTES_PER_ELEMENT
        total += arr.rows * 8 * 4
    return total


_libc: ctypes.CDLL | None = None
#: glibc's ``mallopt`` parameter for the size from which allocations are their own
#: memory mappings (``M_MMAP_THRESHOLD`` in ``<malloc.h>``).
_M_MMAP_THRESHOLD: Final = -3
#: glibc's ``mallopt`` parameter for the free memory at a heap's top past which it is
#: given back to the system (``M_TRIM_THRESHOLD`` in ``<malloc.h>``).
_M_TRIM_THRESHOLD: Final = -1


def glibc_call(name: str) -> Any:
    """A function of the C library, or None where there is no such call (not glibc)."""
    global _libc
    if _libc is None:
        found = ctypes.util.find_library("c")
        if found is None:
            return None
        _libc = ctypes.CDLL(found)
    return getattr(_libc, name, None)


def tune_allocator(mmap_threshold: int, trim_threshold: int = 0) -> bool:
    """Make allocations of ``mmap_threshold`` bytes or more memory mappings of their own,
    returned to the system when freed, and let a heap keep up to ``trim_threshold`` bytes
    free at its top for the next request (0: leave the allocator as it is; with
    ``mmap_threshold`` 0, both are left to glibc).

    glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB):
    after a burst of large requests, their buffers would come from the threads' heaps,
    which stay at their high-water mark (measured: a worker at 315 MiB a minute after
    eight concurrent 24 MiB requests, against 83 MiB with the threshold fixed at 1 MiB).
    Fixing it fixes the trim threshold too, at 128 KiB: a heap then hands back whatever
    a request freed above that, and the next request of the same size maps it again and
    faults its pages in one by one (measured: ``POST /v1/evaluate`` of a 1 MB binary body,
    6.0 ms a request against 3.0–4.0 ms with 8 MiB kept). A request past
    ``trim_after_bytes`` still hands everything free back when it ends.
    Whether the thresholds took effect.
    """
    mallopt = glibc_call("mallopt")
    if mmap_threshold <= 0 or mallopt is None:
        return False
    if not mallopt(_M_MMAP_THRESHOLD, mmap_threshold):
        return False
    return trim_threshold <= 0 or bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def give_back_memory() -> bool:
    """Return freed heap memory to the operating system (glibc ``malloc_trim``); a
    no-op where the C library has no such call. Whether it did anything."""
    trim = glibc_call("malloc_trim")
    return False if trim is None else bool(trim(0))


def freeze_startup_objects() -> int:
    """Move every object alive now (the modules, the app, its routes and schemas: what a
    worker built while starting) out of the cyclic garbage collector's way, after one
    full collection (``gc.freeze``). Reference counting still frees them; the collector's
    full passes go over the objects made since instead of the whole heap (measured: a
    worker's full passes ~100 ms each, pausing every request, against ~7 ms). How many
    objects the collector now leaves aside."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
