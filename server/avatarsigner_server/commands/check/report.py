"""The `check` command's table: rows of PASS / FAIL / SKIP, and how it is printed.

A SKIP says why a check means nothing here; it is never a pass. The exit status is 1 when
any row fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass(frozen=True)
class Result:
    """One row of the table."""

    check: str
    outcome: str
    detail: str


def failed(results: Sequence[Result]) -> bool:
    return any(r.outcome == FAIL for r in results)


def render(header: str, footer: str, results: Sequence[Result], out: TextIO) -> None:
    """The table between a header naming what was checked and a one-line verdict."""
    out.write(f"{header}\n\n")
    width = max(len(r.check) for r in results)
    out.write(f"{'RESULT':<6}  {'CHECK':<{width}}  DETAIL\n")
    for r in results:
        out.write(f"{r.outcome:<6}  {r.check:<{width}}  {r.detail}\n")
    counts = {o: sum(r.outcome == o for r in results) for o in (PASS, FAIL, SKIP)}
    verdict = "FAILED" if counts[FAIL] else "ok"
    out.write(
        f"\n{verdict}: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped"
        f" (a skip is not a pass). {footer}\n"
    )
