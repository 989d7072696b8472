"""Rate limits as token buckets: per caller for each kind of RPC, per user for changes to
an avatar (upload URLs and deletions share one bucket per user).

A bucket holds at most `burst` tokens and gains `rate` tokens per second; a call takes its
cost (1, or one per URL for a batch) or is refused with the time until enough tokens are
back, which becomes google.rpc.RetryInfo. A call costing more than the burst is admitted
only by a full bucket and leaves it in debt, so the long-run rate stays `rate` whatever the
batch size (a batch of 1000 at 1/s waits 1000 s before the next call). Buckets are keyed by
caller name or user id and kept in a bounded LRU (an evicted bucket starts full again:
the worst case is a little leniency for a key idle long enough to fall out). The clock is
a parameter; everything runs on the server's event loop, so no lock is needed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

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


class RateLimiter:
    """The three limits of the service, from RateLimits (a None limit is no limit)."""

    # Calls that change an avatar share the caller's upload bucket: a confirmation costs a
    # decode, a deletion three requests to S3.
    UPLOAD_RPCS = frozenset({"CreateUploadUrl", "ConfirmUpload", "DeleteAvatar"})

    def __init__(self, limits: RateLimits, clock: Monotonic = time.monotonic) -> None:
        def buckets(limit: RateLimit | None) -> Buckets | None:
            return None if limit is None else Buckets(limit, clock)

        self._upload_per_caller = buckets(limits.upload_per_caller)
        self._upload_per_user = buckets(limits.upload_per_user)
        self._download_per_caller = buckets(limits.download_per_caller)

    def admit_caller(self, caller: str, rpc: str, cost: int) -> None:
        """RateLimited when this caller has used up its calls of this kind for now."""
        if rpc in self.UPLOAD_RPCS:
            buckets, what = self._upload_per_caller, "uploads and deletions"
        else:
            buckets, what = self._download_per_caller, "download URLs"
        if buckets is None:
            return
        wait = buckets.take(caller, cost)
        if wait:
            raise RateLimited(
                f"rate limit: caller {caller} asked for too many {what}; retry later",
                "rate_limited_caller",
                wait,
            )

    def admit_upload_user(self, call: Call, user_id: str) -> None:
        """RateLimited when user_id's avatar has changed too often (upload URLs and
        deletions, from any caller) for now."""
        if self._upload_per_user is None:
            return
        wait = self._upload_per_user.take(user_id)
        if wait:
            raise RateLimited(
                "rate limit: too many uploads or deletions for this user; retry later",
                "rate_limited_user",
                wait,
            )
