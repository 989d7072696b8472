"""What a rate-limit check costs when the buckets are shared through a local redis-server.

    python bench/shared_limits.py

Starts Debian's redis-server on 127.0.0.1 (no persistence) and times, on uvloop, in
interleaved rounds (median round kept):

    per-process      Buckets.take: today's check, no store
    shared           SharedBuckets.take: one EVALSHA round trip, one check at a time
    PING             the same client's PING: the round trip without the script
    shared, 8 at once  eight checks in flight on one loop (pool of 8 connections)

Wall time per check is the round trip a call waits; CPU time (this process only, the
store's own CPU is not counted) is what the server pays for it per call.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvloop
from avatarsigner_server.access.rate_limits import Buckets
from avatarsigner_server.access.shared_rate_limits import SharedStore
from avatarsigner_server.settings.access import RateLimit

ROUNDS = 9
CHECKS = 2_000
LIMIT = RateLimit(rate=1_000_000.0, burst=1_000_000)  # never refuses: every check is alike
USERS = [f"user{n:05d}" for n in range(1000)]


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free 127.0.0.1 port; its URL."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found: apt-get install redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        options = {"bind": "127.0.0.1", "port": str(port), "save": "", "appendonly": "no"}
        argv = ["redis-server", "--dir", workdir]
        for name, value in options.items():
            argv += [f"--{name}", value]
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), 0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("redis-server did not start") from None
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.kill()
            server.wait()


Check = Callable[[int], Awaitable[object]]


async def timed(check: Check, in_flight: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per check over CHECKS checks, `in_flight` at a time."""

    async def worker(offset: int) -> None:
        for n in range(offset, CHECKS, in_flight):
            await check(n)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(offset) for offset in range(in_flight)))
    return (
        (time.perf_counter() - wall) / CHECKS * 1e6,
        (time.process_time() - cpu) / CHECKS * 1e6,
    )


@dataclass(frozen=True)
class CheckCosts:
    """Which server answered, and {contender: (wall µs, CPU µs) per check, median round}."""

    server: str
    per_check: dict[str, tuple[float, float]]


async def measure(url: str, rounds: int = ROUNDS) -> CheckCosts:
    """The cost of each contender's check (bench/run.py reports it in its table)."""
    store = SharedStore(url, max_connections=8)
    shared = store.buckets("upload_per_user", LIMIT, Buckets(LIMIT))
    local = Buckets(LIMIT)
    redis = store._redis  # the same pool's client, for a bare round trip

    async def local_take(n: int) -> object:
        return local.take(USERS[n % 1000])

    async def shared_take(n: int) -> object:
        return await shared.take(USERS[n % 1000])

    async def ping(n: int) -> object:
        return await redis.ping()

    contenders: dict[str, tuple[Check, int]] = {
        "per-process": (local_take, 1),
        "shared": (shared_take, 1),
        "PING": (ping, 1),
        "shared, 8 at once": (shared_take, 8),
    }
    version = await store.check()
    for check, in_flight in contenders.values():  # warm up: connections, script loaded
        await timed(check, in_flight)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (check, in_flight) in contenders.items():
            results[name].append(await timed(check, in_flight))
    await store.aclose()
    assert store.reachable, "a check failed during the run"
    medians = {
        name: (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
        )
        for name, runs in results.items()
    }
    return CheckCosts(version, medians)


def main() -> int:
    with redis_server() as url:
        costs = uvloop.run(measure(url))
    print(costs.server, "on 127.0.0.1")
    print(f"per check (median of {ROUNDS} rounds of {CHECKS:,}):   wall µs    CPU µs")
    for name, (wall, cpu) in costs.per_check.items():
        print(f"  {name:<20} {wall:10.1f} {cpu:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
