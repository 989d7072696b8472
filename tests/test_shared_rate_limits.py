"""Rate limits shared through a real redis-server: one limit across processes, outages.

Each test gets its own redis-server on 127.0.0.1 (the conftest.py fixture). Limiters run on
uvloop, the service's event loop; two `SharedStore`s with their own connection pools stand
for two processes, and one test uses two real OS processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import leaks
import pytest
import redis
import uvloop
from avatarsigner_server.access.rate_limits import Buckets
from avatarsigner_server.access.shared_rate_limits import (
    KEY_PREFIX,
    Reason,
    SharedBuckets,
    SharedStore,
    StoreUnavailable,
)
from avatarsigner_server.settings.access import RateLimit
from avatarsigner_server.settings.rate_limit_store import StoreAddress
from redis_server import RedisServer

T = TypeVar("T")
SLOW = RateLimit(rate=0.001, burst=5)  # no refill within a test: counts are exact
LOGGER = "avatarsigner.rate_limits"


def run(coro: Awaitable[T]) -> T:
    return uvloop.run(coro)  # type: ignore[arg-type]


def shared(
    store: SharedStore, limit: RateLimit = SLOW, name: str = "upload_per_user"
) -> SharedBuckets:
    return store.buckets(name, limit, Buckets(limit))


class Hook:
    """on_unreachable: the reasons reported, in order (what a metric counter would count)."""

    def __init__(self) -> None:
        self.reasons: list[Reason] = []

    def __call__(self, reason: Reason) -> None:
        self.reasons.append(reason)


class Clock:
    """The limiter's clock for back-off and warnings (buckets use the store's TIME)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store_for(server: RedisServer, **options: Any) -> SharedStore:
    return SharedStore(server.url, **options)


# -- one limit across processes -------------------------------------------------------------


def test_a_limit_of_n_admits_exactly_n_across_two_limiters(redis_server: RedisServer) -> None:
    async def scenario() -> list[float]:
        first, second = store_for(redis_server), store_for(redis_server)
        try:
            a, b = shared(first), shared(second)
            # 12 concurrent checks, interleaved between the two, for one user with burst 5.
            return await asyncio.gather(*(each.take("alice") for _ in range(6) for each in (a, b)))
        finally:
            await first.aclose()
            await second.aclose()

    waits = run(scenario())
    assert sum(1 for wait in waits if wait == 0.0) == SLOW.burst
    assert all(wait > 0 for wait in waits if wait != 0.0)


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from avatarsigner_server.access.shared_rate_limits import SharedStore

    class Limit:
        rate, burst = 0.001, 5

    class NoFallback:  # closed mode: an unreachable store raises instead
        def take(self, key, cost=1.0):
            raise AssertionError("fallback used")

    async def main():
        store = SharedStore(sys.argv[1], failure="closed", timeout=2.0)
        buckets = store.buckets("upload_per_user", Limit(), NoFallback())
        await store.check()
        print("ready", flush=True)
        sys.stdin.readline()
        waits = await asyncio.gather(*(buckets.take("alice") for _ in range(8)))
        print(sum(1 for wait in waits if wait == 0.0), flush=True)
        await store.aclose()

    asyncio.run(main())
    """
)


def test_two_processes_share_one_limit(redis_server: RedisServer) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, redis_server.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:  # both connected before either takes anything
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        admitted = [int(child.communicate(timeout=30)[0]) for child in children]
        assert [child.returncode for child in children] == [0, 0]
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert sum(admitted) == 5, admitted


# -- the same buckets as today, decided by the store ----------------------------------------


def test_shared_buckets_answer_as_the_per_process_ones(redis_server: RedisServer) -> None:
    # The store's clock runs on between the checks: each wait below is shorter by the time
    # since the bucket emptied, so a slow rate leaves room for a slow machine.
    limit = RateLimit(rate=0.01, burst=3)

    async def scenario() -> list[float]:
        store = store_for(redis_server)
        try:
            buckets = shared(store, limit)
            return [
                *[await buckets.take("alice") for _ in range(3)],
                await buckets.take("alice"),  # empty: 1 token takes 100 s
                await buckets.take("bob", 2),
                await buckets.take("bob", 2),  # refused: 1 token left, 1 more takes 100 s
                await buckets.take("bob", 1),  # the refusal spent nothing
                await buckets.take("carol", 50),  # a full bucket admits any cost, into debt
                await buckets.take("carol", 1),  # debt of 47 + 1 token at 0.01/s
            ]
        finally:
            await store.aclose()

    waits = run(scenario())
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(100.0, abs=1.0)
    assert waits[4] == 0.0
    assert waits[5] == pytest.approx(100.0, abs=1.0)
    assert waits[6] == 0.0
    assert waits[7] == 0.0
    assert waits[8] == pytest.approx(4800.0, abs=1.0)


def test_refill_follows_the_stores_clock(redis_server: RedisServer) -> None:
    limit = RateLimit(rate=10.0, burst=1)
    key = f"{KEY_PREFIX}upload_per_user:alice"
    client = redis_server.client()

    async def scenario() -> tuple[float, float, float]:
        store = store_for(redis_server)
        try:
            buckets = shared(store, limit)
            assert await buckets.take("alice") == 0.0
            wait = await buckets.take("alice")
            assert 0 < wait <= 0.1
            await asyncio.sleep(wait + 0.02)  # the store's clock moved on by the wait
            after_wait = await buckets.take("alice")
            # Saved as if by a clock an hour ahead (a failover to a host running fast):
            # when the store's clock is behind the bucket's, nothing is refilled...
            seconds, micros = client.time()
            client.hset(key, mapping={"tokens": 0, "at": seconds + micros / 1e6 + 3600})
            behind = await buckets.take("alice")
            # ...and the bucket is rebased on the store's clock, so it refills from now on.
            await asyncio.sleep(0.12)
            rebased = await buckets.take("alice")
            return after_wait, behind, rebased
        finally:
            await store.aclose()

    after_wait, behind, rebased = run(scenario())
    assert after_wait == 0.0
    assert behind == pytest.approx(0.1, abs=0.01)
    assert rebased == 0.0
    seconds, micros = client.time()
    assert abs(float(client.hget(key, "at") or 0) - (seconds + micros / 1e6)) < 1.0


def test_keys_expire_when_the_bucket_would_be_full_again(redis_server: RedisServer) -> None:
    limit = RateLimit(rate=4.0, burst=4)
    key = f"{KEY_PREFIX}upload_per_user:alice"
    client = redis_server.client()

    async def take_three() -> None:
        store = store_for(redis_server)
        try:
            buckets = shared(store, limit)
            for _ in range(3):
                assert await buckets.take("alice") == 0.0
        finally:
            await store.aclose()

    run(take_three())
    # 1 token left of 4: full again in 3 / 4 s = 750 ms; the key lives no longer than that.
    assert 0 < client.pttl(key) <= 750
    deadline = time.monotonic() + 5
    while client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.exists(key)
    assert client.dbsize() == 0


# -- the store down or slow -----------------------------------------------------------------


def test_open_mode_falls_back_per_process_while_the_store_is_down_then_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    hook, clock = Hook(), Clock()

    async def scenario() -> tuple[list[float], list[float], bool]:
        options = {"failure": "open", "retry_after": 1.0, "on_unreachable": hook, "clock": clock}
        first, second = store_for(redis_server, **options), store_for(redis_server, **options)
        try:
            a, b = shared(first), shared(second)
            # Several pooled connections each, all broken by the crash below.
            await asyncio.gather(*(each.take(f"user{n}") for n in range(4) for each in (a, b)))
            assert await a.take("alice") == 0.0  # shared: 4 tokens left for alice
            redis_server.stop()
            # Each process now has its own (full) bucket: 5 each, 10 together.
            down = [await each.take("alice") for each in (a, b) for _ in range(6)]
            reachable_while_down = first.reachable
            redis_server.start_again()  # empty, as after a crash
            clock.now += 1.0  # retry_after has passed: the next check asks the store
            up = [await each.take("alice") for each in (a, b) for _ in range(3)]
            assert first.reachable and second.reachable
            return down, up, reachable_while_down
        finally:
            await first.aclose()
            await second.aclose()

    with caplog.at_level(logging.INFO, LOGGER):
        down, up, reachable_while_down = run(scenario())
    assert down.count(0.0) == 2 * SLOW.burst  # per process, as without a store
    assert not reachable_while_down
    assert up.count(0.0) == SLOW.burst  # one shared bucket again (the crash emptied it)
    assert redis_server.client().exists(f"{KEY_PREFIX}upload_per_user:alice")
    # The first failed check of each store was a real one; the rest waited out retry_after.
    assert hook.reasons.count("connection") == 2
    assert set(hook.reasons) == {"connection", "skipped"} and len(hook.reasons) == 12
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per store, not one per check
    assert all("unreachable" in r.getMessage() for r in warnings)
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 2


def test_closed_mode_refuses_with_a_clear_error_then_recovers(redis_server: RedisServer) -> None:
    hook, clock = Hook(), Clock()

    async def scenario() -> tuple[list[StoreUnavailable], float]:
        store = store_for(
            redis_server, failure="closed", retry_after=1.0, on_unreachable=hook, clock=clock
        )
        try:
            buckets = shared(store)
            assert await buckets.take("alice") == 0.0
            redis_server.stop()
            errors = []
            for _ in range(3):
                with pytest.raises(StoreUnavailable) as caught:
                    await buckets.take("alice")
                errors.append(caught.value)
            redis_server.start_again()
            clock.now += 1.0
            return errors, await buckets.take("alice")
        finally:
            await store.aclose()

    errors, after = run(scenario())
    assert str(errors[0]) == "rate limits cannot be checked right now; retry later"
    assert [error.reason for error in errors] == ["connection", "skipped", "skipped"]
    assert hook.reasons == ["connection", "skipped", "skipped"]
    assert after == 0.0


def test_one_warning_a_minute_however_many_checks_fail(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    hook = Hook()

    async def scenario() -> None:
        store = store_for(redis_server, retry_after=0.0, on_unreachable=hook, clock=clock)
        try:
            buckets = shared(store)
            redis_server.stop()
            for _ in range(150):  # a check every second for 150 s
                assert await buckets.take("alice") >= 0.0
                clock.now += 1.0
        finally:
            await store.aclose()

    with caplog.at_level(logging.WARNING, LOGGER):
        run(scenario())
    assert len(hook.reasons) == 150
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [getattr(r, "checks", None) for r in warnings] == [1, 60, 60]  # at 0, 60, 120 s


class LoopLag:
    """Measures the longest gap between ticks of a 5 ms ticker on the running loop."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now


def _sleep_with_debug_command(server: RedisServer) -> Callable[[], None]:
    """The store busy for 5 s in DEBUG SLEEP (sent from another connection); undone by a kill."""
    sleeper = server.client()

    def sleep() -> None:
        with contextlib.suppress(redis.ConnectionError):  # the kill at the end cuts it short
            sleeper.execute_command("DEBUG", "SLEEP", "5")

    thread = threading.Thread(target=sleep, daemon=True)
    thread.start()
    probe = redis.Redis.from_url(server.url, socket_timeout=0.05)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until the store stops answering
        try:
            probe.ping()
        except redis.TimeoutError:
            break
        time.sleep(0.01)

    def undo() -> None:
        server.stop()
        thread.join(5)

    return undo


@pytest.mark.parametrize("how", ["paused", "debug_sleep"])
def test_a_slow_store_never_blocks_the_event_loop(redis_server: RedisServer, how: str) -> None:
    timeout, slack = 0.2, 0.5  # a bound for correctness on a busy machine, not a speed
    hook = Hook()

    async def scenario() -> tuple[list[float], float]:
        store = store_for(redis_server, timeout=timeout, retry_after=0.0, on_unreachable=hook)
        buckets = shared(store)
        try:
            assert await buckets.take("alice") == 0.0  # a pooled connection, then slowness
            if how == "paused":
                redis_server.pause()
                undo = redis_server.resume
            else:
                undo = _sleep_with_debug_command(redis_server)
            try:
                async with LoopLag() as lag:
                    durations = []
                    for _ in range(3):  # each one waits on the store (retry_after=0)
                        started = time.perf_counter()
                        assert await buckets.take("alice") == 0.0  # open: per process
                        durations.append(time.perf_counter() - started)
                return durations, lag.longest
            finally:
                undo()
        finally:
            await store.aclose()

    durations, longest_lag = run(scenario())
    assert hook.reasons == ["timeout"] * 3
    assert max(durations) < timeout + slack
    assert longest_lag < timeout + slack


# -- the address and the password -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://cache:6379", "must be a redis:// or rediss:// URL"),
        ("unix:///run/redis.sock", "must be a redis:// or rediss:// URL"),
        ("redis://:hunter2hunter2@", "must name a host"),
        ("redis://cache:port", "has a port that is not a number"),
        ("redis://cache:6379/0?socket_timeout=30", "must not have a query"),
        ("redis://cache:6379/zero", "may only have a database number"),
    ],
    ids=["http", "unix", "no-host", "bad-port", "query", "bad-db"],
)
def test_a_bad_store_url_is_refused_without_echoing_it(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        StoreAddress.parse(url)
    assert "hunter2" not in str(caught.value) and "cache" not in str(caught.value)


def test_the_password_is_in_no_log_line_or_error(redis_server_with_password: RedisServer) -> None:
    server = redis_server_with_password
    assert server.password is not None
    wrong_password = "wrong-" + server.password
    leaks.remember(wrong_password)  # the suite-wide check fails a test whose log line has it
    wrong = server.url.replace(server.password, wrong_password)

    async def scenario() -> tuple[str, StoreUnavailable, StoreUnavailable, StoreUnavailable]:
        good, bad = SharedStore(server.url), SharedStore(wrong, failure="closed")
        try:
            version = await good.check()
            with pytest.raises(StoreUnavailable) as refused:
                await shared(bad).take("alice")
            with pytest.raises(StoreUnavailable) as checked:
                await bad.check()
            server.stop()
            with pytest.raises(StoreUnavailable) as down:
                await good.check()
            return version, refused.value, checked.value, down.value
        finally:
            await good.aclose()
            await bad.aclose()

    version, refused, checked, down = run(scenario())
    assert version.startswith(("redis ", "valkey "))
    assert (refused.reason, refused.detail) == ("error", "AuthenticationError")
    assert checked.reason == "error" and checked.detail.startswith("AuthenticationError: ")
    assert down.reason == "connection"
    assert str(StoreAddress.parse(server.url)) == f"redis://127.0.0.1:{server.port}/0"
    for error in (refused, checked, down):
        for text in (str(error), error.detail):
            assert server.password not in text and wrong_password not in text
