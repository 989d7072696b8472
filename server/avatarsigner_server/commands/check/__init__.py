"""`avatar-signer check`: prove the least privilege against the real bucket.

    least_privilege  the checks, in order, with the service's own signers
    advice           what to fix, in words, for each failure
    report           the PASS / FAIL / SKIP table
"""

from __future__ import annotations

from .least_privilege import HELP, NOT_PROVEN, render, run
from .report import FAIL, PASS, SKIP, Result, failed

__all__ = ["FAIL", "HELP", "NOT_PROVEN", "PASS", "SKIP", "Result", "failed", "render", "run"]
