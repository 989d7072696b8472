"""`avatar-signer check`: prove the least privilege against the real bucket, the CloudFront
key when one is configured, and that the shared rate-limit store answers when one is.

    least_privilege   the bucket checks, in order, with the service's own signers
    cloudfront        with CLOUDFRONT_URL: the key, and a URL and cookies it signs, verified
                      with its public half (CloudFront itself is out of reach: SKIP)
    rate_limit_store  one real check against RATE_LIMIT_REDIS_URL (a row only when set)
    advice            what to fix, in words, for each failure
    report            the PASS / FAIL / SKIP table
"""

from __future__ import annotations

from ...settings import Settings
from ...signing.clock import Clock, utc_now
from . import cloudfront, least_privilege
from .least_privilege import HELP, NOT_PROVEN, render
from .rate_limit_store import store_row
from .report import FAIL, PASS, SKIP, Result, failed

__all__ = ["FAIL", "HELP", "NOT_PROVEN", "PASS", "SKIP", "Result", "failed", "render", "run"]


def run(settings: Settings, clock: Clock = utc_now) -> list[Result]:
    """Every row: the bucket's checks (real HTTP), then CloudFront's when it is configured,
    then the store's when one is."""
    results = least_privilege.run(settings, clock) + cloudfront.run(settings, clock)
    row = store_row(settings)
    return results if row is None else [*results, row]
