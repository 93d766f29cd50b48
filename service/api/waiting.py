"""Futures that another thread completes, awaited on the event loop: many with one wakeup.

``asyncio.wrap_future`` wakes the loop once per future (``call_soon_threadsafe``, a write
to the loop's self-pipe). The store's commit thread completes a whole group of puts at
once, and each wakeup is a system call in that thread: it gives the interpreter lock
away and waits to get it back from the busy event loop, a wait per put. Here the futures
completed before the loop gets to them share one wakeup: the first one wakes the loop,
the others join the list it then goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class _Waker:
    """The futures of one event loop completed since it last looked, and whether a
    wakeup is on its way."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._done: list[tuple[Future[Any], asyncio.Future[Any]]] = []

    def completed(self, future: Future[Any], waiter: asyncio.Future[Any]) -> None:
        """In the completing thread: ``future`` is done; ``waiter`` is its twin on the loop."""
        with self._lock:
            self._done.append((future, waiter))
            wake = len(self._done) == 1
        if wake:
            # A closed loop (RuntimeError) has nobody awaiting these any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        """On the loop: hand each completed future's outcome to its twin."""
        with self._lock:
            done, self._done = self._done, []
        for future, waiter in done:
            if waiter.cancelled():
                continue
            error = future.exception()
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(future.result())


_wakers: dict[asyncio.AbstractEventLoop, _Waker] = {}
_wakers_lock = threading.Lock()


def _waker(loop: asyncio.AbstractEventLoop) -> _Waker:
    waker = _wakers.get(loop)
    if waker is None:
        with _wakers_lock:
            # Closed loops' wakers go (tests run many loops in one process).
            for old in [old for old in _wakers if old.is_closed()]:
                del _wakers[old]
            waker = _wakers.setdefault(loop, _Waker(loop))
    return waker


async def completion(future: Future[T]) -> T:
    """What ``future`` (completed by another thread) gives, awaited on the running loop."""
    if future.done():
        # Committed by the thread that handed it over (a pool thread that led the
        # commit): no wakeup, no turn of the loop.
        return future.result()
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()
    waker = _waker(loop)
    future.add_done_callback(lambda done: waker.completed(done, waiter))
    return await waiter
