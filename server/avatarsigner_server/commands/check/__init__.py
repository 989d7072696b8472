"""`avatar-signer check`: prove the least privilege against the real bucket, and that the
shared rate-limit store answers when one is configured.

    least_privilege   the bucket checks, in order, with the service's own signers
    rate_limit_store  one real check against RATE_LIMIT_REDIS_URL (a row only when set)
    advice            what to fix, in words, for each failure
    report            the PASS / FAIL / SKIP table
"""

from __future__ import annotations

from ...settings import Settings
from ...signing.clock import Clock, utc_now
from . import least_privilege
from .least_privilege import HELP, NOT_PROVEN, render
from .rate_limit_store import store_row
from .report import FAIL, PASS, SKIP, Result, failed

__all__ = ["FAIL", "HELP", "NOT_PROVEN", "PASS", "SKIP", "Result", "failed", "render", "run"]


def run(settings: Settings, clock: Clock = utc_now) -> list[Result]:
    """Every row: the bucket's checks, then the store's when one is configured."""
    results = least_privilege.run(settings, clock)
    row = store_row(settings)
    return results if row is None else [*results, row]
