"""The clocks the signers and credential sources read, as plain functions of no argument.

A `Clock` is passed in wherever time matters, so tests pin it; these are the real ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


_second_cache: tuple[int, datetime] = (0, datetime.fromtimestamp(0, UTC))


def utc_now_to_the_second() -> datetime:
    """Now in UTC, truncated to the whole second: the signers' clock.

    SigV4 dates carry no fraction, so a signature needs no more; the datetime is built once
    per second because it is on every signature's path.
    """
    global _second_cache
    second = int(time.time())
    if second != _second_cache[0]:
        _second_cache = (second, datetime.fromtimestamp(second, UTC))
    return _second_cache[1]
