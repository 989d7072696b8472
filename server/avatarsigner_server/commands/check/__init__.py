"""`avatar-signer check`: prove the least privilege against the real bucket.

    least_privilege  the checks, in order, with the service's own signers
    cloudfront       with CLOUDFRONT_URL: the key, and a URL and cookies it signs, verified
                     with its public half (CloudFront itself is out of reach: SKIP)
    advice           what to fix, in words, for each failure
    report           the PASS / FAIL / SKIP table
"""

from __future__ import annotations

from ...settings import Settings
from ...signing.clock import Clock, utc_now
from . import cloudfront, least_privilege
from .least_privilege import HELP, NOT_PROVEN, render
from .report import FAIL, PASS, SKIP, Result, failed


def run(settings: Settings, clock: Clock = utc_now) -> list[Result]:
    """Every check: the bucket's (real HTTP), then CloudFront's when it is configured."""
    return least_privilege.run(settings, clock) + cloudfront.run(settings, clock)


__all__ = ["FAIL", "HELP", "NOT_PROVEN", "PASS", "SKIP", "Result", "failed", "render", "run"]
