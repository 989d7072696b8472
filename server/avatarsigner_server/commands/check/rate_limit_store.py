"""`avatar-signer check`'s row for the shared rate-limit store, when RATE_LIMIT_REDIS_URL is set.

One real check, as the service makes it (the same address, password, TLS and timeout), on a
throwaway key: PASS names the server and its version and the address (never the password);
FAIL says what did not work and what to look at.
"""

from __future__ import annotations

import asyncio

from ...settings import Settings
from . import advice
from .report import FAIL, PASS, Result

NAME = "rate limit store answers"


def store_row(settings: Settings) -> Result | None:
    """The row, or None when no store is configured (limits per process)."""
    if settings.rate_limit_store is None:
        return None
    from ...access.shared_rate_limits import SharedStore, StoreUnavailable

    store = SharedStore.from_settings(settings.rate_limit_store)

    async def ask() -> str:
        try:
            return await store.check()
        finally:
            await store.aclose()

    try:
        version = asyncio.run(ask())
    except StoreUnavailable as error:
        why = advice.store_unreachable(store.address, error.reason, error.detail)
        return Result(NAME, FAIL, why)
    return Result(NAME, PASS, f"{version} at {store.address}, failure mode {store.failure}")
