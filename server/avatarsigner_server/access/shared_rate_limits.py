"""Token buckets shared by every process and replica, kept in Redis or Valkey.

The buckets behave exactly like the per-process ones (`take(key, cost)` returns 0.0 when
the tokens were taken, else the seconds until they will be; a call costing more than the
burst is admitted only by a full bucket and leaves it in debt), but the state lives in one
store, so a limit of N is N across all processes and replicas.

Each check is one round trip: EVALSHA of `TAKE_SCRIPT`, which reads the bucket, refills it
by the store's own clock (`TIME`; hosts with skewed clocks don't matter), takes or refuses
and writes it back with an expiry at the moment it would be full again, when a missing key
means the same thing as a full bucket. Scripts that call TIME before writing need effects
replication: Redis >= 5 and every Valkey have it (Redis 7 has nothing else).

When the store is down or slow, a check gives up after `timeout` seconds and the store is
skipped for `retry_after` seconds (so an outage costs one timeout per window, not one per
call); meanwhile the failure mode decides:

    open    the check goes to the per-process buckets given as `fallback` (today's limits)
    closed  the check raises StoreUnavailable (the caller is answered UNAVAILABLE)

`SharedRateLimiter` keeps the service's limits (RateLimiter's) in such buckets: each
limit that is on costs one round trip per check, a limit that is off costs nothing.

Every check the store did not decide is reported to `on_unreachable(reason)` (a metric
counter), and logged as a WARNING at most once per `warn_every` seconds; one INFO line says
when the store answers again. Nothing logged or raised carries the store's password.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Literal, NoReturn, Protocol

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import Unavailable
from ..settings.access import RateLimits
from ..settings.rate_limit_store import (
    DEFAULT_TIMEOUT_SECONDS,
    FAILURE_MODES,
    FailureMode,
    RateLimitStoreSettings,
    StoreAddress,
)
from ..telemetry.call_context import Call
from .rate_limits import UPLOAD_RPCS, Buckets, RateLimiter, check_caller, check_upload_user

# Why a check was not decided by the store: the values of the metric's `reason` label.
Reason = Literal["timeout", "connection", "error", "skipped"]
OnUnreachable = Callable[[Reason], None]
Monotonic = Callable[[], float]

DEFAULT_RETRY_AFTER_SECONDS = 1.0
DEFAULT_MAX_CONNECTIONS = 32
WARN_EVERY_SECONDS = 60.0
KEY_PREFIX = "avatarsigner:ratelimit:"

log = logging.getLogger("avatarsigner.rate_limits")

# KEYS[1] the bucket; ARGV[1] rate (tokens per second), ARGV[2] burst, ARGV[3] cost.
# Returns the seconds to wait as a string ("0": taken); a Lua number would be truncated.
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(saved[1])
local at = tonumber(saved[2])
if tokens == nil or at == nil then
  tokens, at = burst, now
end
-- A clock that stepped back (failover to a host running behind) refills nothing.
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local needed = math.min(cost, burst)
local wait = 0
if tokens >= needed then
  tokens = tokens - cost
else
  wait = (needed - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
-- Gone when it would be full again: a missing key is a full bucket.
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) / rate * 1000)))
return tostring(wait)
"""

_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


class Limit(Protocol):
    """A token bucket's shape (the settings' RateLimit): `rate` per second, `burst` at most."""

    @property
    def rate(self) -> float: ...

    @property
    def burst(self) -> int: ...


class LocalBuckets(Protocol):
    """The per-process buckets used when the store is unreachable in open mode."""

    def take(self, key: str, cost: float = 1.0) -> float: ...


class StoreUnavailable(Exception):
    """The store did not decide a check (closed mode; or `check()`).

    str() is safe to send to a caller. `reason` is one of Reason; `detail`, for operators,
    is the error's type name (from `check()`, with the server's own error text when the
    store answered with an error) and never holds the store's address or password.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__("rate limits cannot be checked right now; retry later")
        self.reason = reason
        self.detail = detail


class _Outage:
    """What the store's failures look like from outside: a hook, throttled WARNINGs."""

    def __init__(
        self, address: StoreAddress, on_unreachable: OnUnreachable | None, warn_every: float
    ) -> None:
        self._address = address
        self._hook = on_unreachable
        self._warn_every = warn_every
        self._warned_at: float | None = None
        self._unwarned = 0  # checks not decided since the last WARNING
        self.failed_checks = 0  # since the store last answered

    def check_failed(self, reason: Reason, detail: str, now: float) -> None:
        self.failed_checks += 1
        self._unwarned += 1
        if self._hook is not None:
            self._hook(reason)
        if self._warned_at is None or now - self._warned_at >= self._warn_every:
            log.warning(
                "rate limit store %s unreachable (%s: %s): %d check(s) not decided by it",
                self._address,
                reason,
                detail,
                self._unwarned,
                extra={"store_reason": reason, "checks": self._unwarned},
            )
            self._warned_at, self._unwarned = now, 0

    def answered(self) -> None:
        if self.failed_checks:
            log.info(
                "rate limit store %s answers again after %d check(s) it did not decide",
                self._address,
                self.failed_checks,
            )
            self.failed_checks, self._warned_at, self._unwarned = 0, None, 0


class SharedStore:
    """The connection pool to the store holding every shared bucket, and its failure policy.

    One per serving process, used from its event loop only. `on_unreachable` is called on
    that loop for every check the store did not decide: it must be cheap and not raise (a
    metric counter's inc). The store is asked again `retry_after` seconds after a failure,
    so it is back in use at most `retry_after + timeout` seconds after it returns.
    """

    @classmethod
    def from_settings(
        cls, settings: RateLimitStoreSettings, on_unreachable: OnUnreachable | None = None
    ) -> SharedStore:
        """The store RATE_LIMIT_REDIS_* describe (no connection is made until the first check)."""
        return cls(
            settings.url,
            failure=settings.failure,
            timeout=settings.timeout_seconds,
            password=settings.password,
            ca_file=settings.ca_file,
            on_unreachable=on_unreachable,
        )

    def __init__(
        self,
        url: str,
        *,
        failure: FailureMode = "open",
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retry_after: float = DEFAULT_RETRY_AFTER_SECONDS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        password: str | None = None,
        ca_file: str | None = None,
        on_unreachable: OnUnreachable | None = None,
        warn_every: float = WARN_EVERY_SECONDS,
        key_prefix: str = KEY_PREFIX,
        clock: Monotonic = time.monotonic,
    ) -> None:
        if failure not in FAILURE_MODES:
            raise ValueError(f"failure mode must be one of {', '.join(FAILURE_MODES)}")
        if not 0 < timeout <= 10:
            raise ValueError("timeout must be more than 0 and at most 10 seconds")
        if retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.address = StoreAddress.parse(url)
        self.failure: FailureMode = failure
        self.timeout = timeout
        self.retry_after = retry_after
        self._key_prefix = key_prefix
        self._clock = clock
        self._skip_until = float("-inf")
        self._outage = _Outage(self.address, on_unreachable, warn_every)
        options: dict[str, object] = {}
        if self.address.tls and ca_file:
            options["ssl_ca_certs"] = ca_file
        if password is not None:  # the URL's own password, when it has one, wins
            options["password"] = password
        # One attempt per check (redis-py retries up to 10 times by default); waiting for a
        # free connection, connecting and reading each give up within the timeout.
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            **options,
        )
        self._redis = Redis(connection_pool=self._pool)
        self._take = self._redis.register_script(TAKE_SCRIPT)

    @property
    def reachable(self) -> bool:
        """False from a check the store did not decide until the next one it does."""
        return self._outage.failed_checks == 0

    def buckets(self, name: str, limit: Limit, fallback: LocalBuckets) -> SharedBuckets:
        """The shared buckets of one limit (`name`, e.g. "upload_per_user", is in their keys)."""
        if not _NAME.fullmatch(name):
            raise ValueError("a bucket name is 1-40 of a-z 0-9 _, starting with a letter")
        return SharedBuckets(self, f"{self._key_prefix}{name}:", limit, fallback)

    async def take(self, key: str, limit: Limit, cost: float) -> float:
        """The script's answer for `key`, or StoreUnavailable within the timeout."""
        if self._clock() < self._skip_until:
            self._failed("skipped", "waiting to retry the store")
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._take(keys=[key], args=[repr(limit.rate), limit.burst, cost])
        except (OSError, RedisError) as error:  # TimeoutError is an OSError
            self._failed(_reason(error), type(error).__name__, backoff=True)
        self._outage.answered()
        return float(reply)

    async def check(self) -> str:
        """One real check on a throwaway key; the server's name and version (`check` prints it).

        Raises StoreUnavailable when the store cannot run the script (unreachable, a wrong
        password, a server too old for TIME in a script).
        """
        try:
            async with asyncio.timeout(self.timeout):
                await self._take(keys=[f"{self._key_prefix}check"], args=["1.0", 1, 0])
                info = await self._redis.info("server")
        except (OSError, RedisError) as error:
            reason = _reason(error)
            # Operators read this (not callers): the server's own words help, e.g. NOPERM.
            detail = type(error).__name__ + (f": {error}" if reason == "error" else "")
            raise StoreUnavailable(reason, detail) from None
        name = "valkey" if "valkey_version" in info else "redis"
        return f"{name} {info.get(f'{name}_version', info.get('redis_version', '?'))}"

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._pool.aclose()

    def _failed(self, reason: Reason, detail: str, *, backoff: bool = False) -> NoReturn:
        now = self._clock()
        if backoff:
            self._skip_until = now + self.retry_after
        self._outage.check_failed(reason, detail, now)
        raise StoreUnavailable(reason, detail) from None


def _reason(error: OSError | RedisError) -> Reason:
    """The metric's word for a failed check."""
    if isinstance(error, TimeoutError | RedisTimeoutError):
        return "timeout"
    if isinstance(error, AuthenticationError):  # a ConnectionError, but a settings problem
        return "error"
    if isinstance(error, RedisConnectionError | OSError):
        return "connection"
    return "error"


class SharedBuckets:
    """One limit's buckets in the store: `await take(key, cost)`, as Buckets.take."""

    def __init__(
        self, store: SharedStore, key_prefix: str, limit: Limit, fallback: LocalBuckets
    ) -> None:
        if not limit.rate > 0 or limit.burst < 1:
            raise ValueError("a shared limit needs a rate above 0 and a burst of at least 1")
        self.limit = limit
        self._store = store
        self._key_prefix = key_prefix
        self._fallback = fallback

    async def take(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens from key's bucket: 0.0 if taken, else seconds until they are.

        When the store does not answer: the per-process bucket's answer (open), or
        StoreUnavailable (closed).
        """
        try:
            return await self._store.take(self._key_prefix + key, self.limit, cost)
        except StoreUnavailable:
            if self._store.failure == "closed":
                raise
        return self._fallback.take(key, cost)


class SharedRateLimiter:
    """The service's limits (as RateLimiter) with their buckets in the store.

    A limit that is off costs nothing (None: no round trip); each limit that is on is one
    round trip per check. The per-process buckets are the fallback in open mode; in closed
    mode a check the store did not decide is UNAVAILABLE (reason
    `rate_limit_store_unavailable`, RetryInfo: when the store is asked again).
    """

    def __init__(
        self, limits: RateLimits, store: SharedStore, clock: Monotonic = time.monotonic
    ) -> None:
        local = RateLimiter(limits, clock)

        def shared(name: str, fallback: Buckets | None) -> SharedBuckets | None:
            return None if fallback is None else store.buckets(name, fallback.limit, fallback)

        self.store = store
        self._upload_per_caller = shared("upload_per_caller", local.upload_per_caller)
        self._upload_per_user = shared("upload_per_user", local.upload_per_user)
        self._download_per_caller = shared("download_per_caller", local.download_per_caller)

    def admit_caller(self, caller: str, rpc: str, cost: int) -> Awaitable[None] | None:
        """None when this kind of call has no caller limit; else the check to await."""
        buckets = self._upload_per_caller if rpc in UPLOAD_RPCS else self._download_per_caller
        if buckets is None:
            return None
        return self._admit_caller(buckets, caller, rpc, cost)

    def admit_upload_user(self, call: Call, user_id: str) -> Awaitable[None] | None:
        """None without a per-user upload limit; else the check to await."""
        if self._upload_per_user is None:
            return None
        return self._admit_upload_user(self._upload_per_user, user_id)

    async def _admit_caller(
        self, buckets: SharedBuckets, caller: str, rpc: str, cost: int
    ) -> None:
        check_caller(await self._take(buckets, caller, cost), caller, rpc)

    async def _admit_upload_user(self, buckets: SharedBuckets, user_id: str) -> None:
        check_upload_user(await self._take(buckets, user_id, 1))

    async def _take(self, buckets: SharedBuckets, key: str, cost: float) -> float:
        try:
            return await buckets.take(key, cost)
        except StoreUnavailable as error:  # closed mode
            raise Unavailable(
                "RATE_LIMIT_STORE_UNAVAILABLE", str(error), max(self.store.retry_after, 0.001)
            ) from None
