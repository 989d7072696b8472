"""Rate limits as token buckets: per caller for each kind of RPC, per user for changes to
an avatar (upload URLs and deletions share one bucket per user; deletions by a caller that
runs account deletion take from no user's bucket).

A bucket holds at most `burst` tokens and gains `rate` tokens per second; a call takes its
cost (1, or one per URL for a batch) or is refused with the time until enough tokens are
back, which becomes google.rpc.RetryInfo. A call costing more than the burst is admitted
only by a full bucket and leaves it in debt, so the long-run rate stays `rate` whatever the
batch size (a batch of 1000 at 1/s waits 1000 s before the next call). Buckets are keyed by
caller name or user id and kept in a bounded LRU (an evicted bucket starts full again:
the worst case is a little leniency for a key idle long enough to fall out). The clock is
a parameter; everything runs on the server's event loop, so no lock is needed.

These buckets live in one process. With a store configured (RATE_LIMIT_REDIS_URL), the
same limits are kept in it by `shared_rate_limits.SharedRateLimiter`, one limit across all
processes and replicas, with these buckets as the fallback while the store is unreachable.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..errors import RateLimited
from ..settings.access import RateLimit, RateLimits
from ..telemetry.call_context import Call

Monotonic = Callable[[], float]
MAX_KEYS = 100_000


class Buckets:
    """One token bucket per key, all with the same rate and burst."""

    def __init__(
        self, limit: RateLimit, clock: Monotonic = time.monotonic, max_keys: int = MAX_KEYS
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        # key -> (tokens, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens from key's bucket: 0.0 if taken, else seconds until they are."""
        now = self._clock()
        needed = min(cost, self.limit.burst)  # a full bucket admits any cost, going into debt
        tokens, then = self._buckets.pop(key, (float(self.limit.burst), now))
        tokens = min(self.limit.burst, tokens + (now - then) * self.limit.rate)
        wait = 0.0
        if tokens >= needed:
            tokens -= cost
        else:
            wait = (needed - tokens) / self.limit.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait


# What an admission returns: None when it was decided at once (the per-process buckets),
# or an awaitable that decides it (the shared store: one round trip). Callers await it only
# when there is one, so the per-process path stays synchronous.
Admission = Awaitable[None] | None
# Calls that change an avatar share the caller's upload bucket: a confirmation costs a
# decode, a deletion three requests to S3. Every other call (download URLs, viewer cookies)
# takes from the caller's download bucket.
UPLOAD_RPCS = frozenset({"CreateUploadUrl", "ConfirmUpload", "DeleteAvatar"})


class Limiter(Protocol):
    """The service's limits, per process (RateLimiter) or shared (SharedRateLimiter)."""

    def admit_caller(self, caller: str, rpc: str, cost: int) -> Admission: ...

    def admit_upload_user(self, call: Call, user_id: str) -> Admission: ...


def check_caller(wait: float, caller: str, rpc: str) -> None:
    """RateLimited when a bucket of the caller's said to wait (`wait` > 0)."""
    if wait:
        what = (
            "uploads and deletions" if rpc in UPLOAD_RPCS else "download URLs and viewer cookies"
        )
        raise RateLimited(
            f"rate limit: caller {caller} asked for too many {what}; retry later",
            "rate_limited_caller",
            wait,
        )


def check_upload_user(wait: float) -> None:
    """RateLimited when the user's upload bucket (uploads and deletions) said to wait."""
    if wait:
        raise RateLimited(
            "rate limit: too many uploads or deletions for this user; retry later",
            "rate_limited_user",
            wait,
        )


class RateLimiter:
    """The three limits of the service, from RateLimits (a None limit is no limit).

    Buckets in this process: every admission is decided at once (returns None).
    """

    UPLOAD_RPCS = UPLOAD_RPCS

    def __init__(self, limits: RateLimits, clock: Monotonic = time.monotonic) -> None:
        def buckets(limit: RateLimit | None) -> Buckets | None:
            return None if limit is None else Buckets(limit, clock)

        self.upload_per_caller = buckets(limits.upload_per_caller)
        self.upload_per_user = buckets(limits.upload_per_user)
        self.download_per_caller = buckets(limits.download_per_caller)

    def admit_caller(self, caller: str, rpc: str, cost: int) -> None:
        """RateLimited when this caller has used up its calls of this kind for now."""
        buckets = self.upload_per_caller if rpc in UPLOAD_RPCS else self.download_per_caller
        if buckets is not None:
            check_caller(buckets.take(caller, cost), caller, rpc)

    def admit_upload_user(self, call: Call, user_id: str) -> None:
        """RateLimited when user_id's avatar has changed too often (upload URLs and
        deletions, from any caller) for now."""
        if self.upload_per_user is not None:
            check_upload_user(self.upload_per_user.take(user_id))
