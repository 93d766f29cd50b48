"""``completion``: futures completed by another thread, awaited on the event loop, the
ones completed together delivered by one wakeup."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

import pytest

from service.api.waiting import completion


def _count_wakeups(loop: asyncio.AbstractEventLoop) -> list[None]:
    """A list that gets an item each time another thread wakes ``loop``."""
    wakeups: list[None] = []
    schedule = loop.call_soon_threadsafe

    def counted(*args: Any, **kwargs: Any) -> Any:
        wakeups.append(None)
        return schedule(*args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    return wakeups


def test_futures_completed_together_wake_the_loop_once() -> None:
    async def main() -> tuple[list[Any], int]:
        wakeups = _count_wakeups(asyncio.get_running_loop())
        futures: list[Future[int]] = [Future() for _ in range(10)]
        waiters = [asyncio.ensure_future(completion(f)) for f in futures]
        await asyncio.sleep(0)  # every waiter is registered

        def complete() -> None:
            for n, future in enumerate(futures):
                if n == 3:
                    future.set_exception(ValueError("the disk is full"))
                else:
                    future.set_result(n)

        # The loop is held while another thread completes them all, as a busy loop is.
        worker = threading.Thread(target=complete)
        worker.start()
        worker.join()
        got = await asyncio.gather(*waiters, return_exceptions=True)
        return got, len(wakeups)

    got, wakeups = asyncio.run(main())
    assert wakeups == 1
    assert got[:3] == [0, 1, 2] and got[4:] == [4, 5, 6, 7, 8, 9]
    assert isinstance(got[3], ValueError) and str(got[3]) == "the disk is full"


def test_completions_apart_each_reach_their_waiter() -> None:
    async def main() -> list[int]:
        results = []
        for n in range(3):
            future: Future[int] = Future()
            threading.Timer(0.01, future.set_result, args=(n,)).start()
            results.append(await completion(future))
        return results

    assert asyncio.run(main()) == [0, 1, 2]


def test_a_cancelled_waiter_does_not_stop_the_others() -> None:
    async def main() -> int:
        first: Future[int] = Future()
        second: Future[int] = Future()
        cancelled = asyncio.ensure_future(completion(first))
        waiting = asyncio.ensure_future(completion(second))
        await asyncio.sleep(0)
        cancelled.cancel()
        first.set_result(1)
        second.set_result(2)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return await waiting

    assert asyncio.run(main()) == 2


def test_a_future_already_done_is_answered_without_a_wakeup() -> None:
    async def main() -> tuple[int, Exception | None, int]:
        wakeups = _count_wakeups(asyncio.get_running_loop())
        done: Future[int] = Future()
        done.set_result(7)
        failed: Future[int] = Future()
        failed.set_exception(ValueError("the disk is full"))
        error = None
        try:
            await completion(failed)
        except ValueError as raised:
            error = raised
        return await completion(done), error, len(wakeups)

    value, error, wakeups = asyncio.run(main())
    assert value == 7 and isinstance(error, ValueError) and wakeups == 0
