"""Bounded load for tests: many concurrent calls from one asyncio loop in a thread, each
outcome recorded with the moment it was sent.

    with Load(target, make_call, callers=32) as load:   # callers start at once
        ...                                             # signal, wait, look
    load.outcomes                                       # [(sent_at, code name)], monotonic

Every loop stops at `stop()` (or leaving the block), or when `max_calls` calls were sent;
nothing runs past `limit_seconds` either way.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import grpc
from avatarsigner import AsyncAvatarSignerClient, AvatarSignerError

# (client, caller index) -> one call
Call = Callable[[AsyncAvatarSignerClient, int], Awaitable[Any]]


class Load:
    def __init__(
        self,
        target: str,
        call: Call,
        *,
        callers: int,
        channels: int = 8,
        timeout: float = 5.0,
        max_calls: int = 200_000,
        limit_seconds: float = 60.0,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.outcomes: list[tuple[float, str]] = []
        self._target = target
        self._call = call
        self._callers = callers
        self._channels = channels
        self._timeout = timeout
        self._max_calls = max_calls
        self._limit = limit_seconds
        self._client_options = client_options or {}
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._started.wait(30), "the load did not start"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(self._limit + 30)

    def codes(self, since: float = float("-inf"), until: float = float("inf")) -> dict[str, int]:
        """Outcome counts of the calls sent in [since, until)."""
        counts: dict[str, int] = {}
        for sent, code in self.outcomes:
            if since <= sent < until:
                counts[code] = counts.get(code, 0) + 1
        return counts

    async def _run(self) -> None:
        clients = [
            AsyncAvatarSignerClient(self._target, timeout=self._timeout, **self._client_options)
            for _ in range(self._channels)
        ]
        end = time.monotonic() + self._limit
        sent = 0

        async def caller(index: int) -> None:
            nonlocal sent
            client = clients[index % len(clients)]
            while not self._stopping.is_set() and sent < self._max_calls:
                if time.monotonic() > end:
                    return
                sent += 1
                at = time.monotonic()
                try:
                    await self._call(client, index)
                    code = "OK"
                except AvatarSignerError as error:
                    code = error.code.name
                except grpc.RpcError as error:  # raw stubs
                    code = error.code().name
                self.outcomes.append((at, code))

        try:
            tasks = [asyncio.create_task(caller(i)) for i in range(self._callers)]
            self._started.set()
            await asyncio.gather(*tasks)
        finally:
            for client in clients:
                await client.close()
