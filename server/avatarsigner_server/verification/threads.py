"""Blocking work (S3 requests, image decoding) in threads of its own, a bounded number.

`BoundedThreads(n, name)` runs at most `n` jobs at once, each in one of its own `n` threads
(never the event loop's default executor, which the server's own work shares: re-reading
the callers file, refreshing credentials). A job waits for a thread until a little before
its deadline, then is refused BUSY (RESOURCE_EXHAUSTED, worth a retry); once running, it
keeps its thread until it ends, even past the caller's deadline (DEADLINE_EXCEEDED), so a
stalled S3 or a slow decode never holds more than `n` threads. Jobs run in a copy of the
call's context: their trace steps are children of the RPC's span.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..errors import DeadlineExceeded, Overloaded

T = TypeVar("T")


class BoundedThreads:
    """At most `concurrency` jobs at once, in as many threads of their own."""

    def __init__(self, concurrency: int, name: str) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix=name)

    async def run(self, budget: float, job: Callable[[], T], *, busy: str, late: str) -> T:
        """`job()`'s result within `budget` seconds; Overloaded (BUSY, message `busy`)
        when no thread was free in time, DeadlineExceeded (message `late`) when it ran
        longer (it then goes on in its thread)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # Give up waiting a little before the deadline, so the caller hears BUSY
            # (worth a retry elsewhere) rather than a bare deadline.
            await asyncio.wait_for(self._slots.acquire(), budget - min(0.25, budget / 4))
        except TimeoutError:
            raise Overloaded("BUSY", busy) from None
        try:
            context = contextvars.copy_context()
            work = loop.run_in_executor(self._executor, context.run, job)
        except BaseException:
            self._slots.release()
            raise
        work.add_done_callback(lambda _: self._slots.release())
        try:
            return await asyncio.wait_for(
                asyncio.shield(work), max(0.0, budget - (loop.time() - started))
            )
        except TimeoutError:
            raise DeadlineExceeded(late) from None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
