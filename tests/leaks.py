"""The suite-wide secret check: no avatarsigner log line may carry a secret.

`conftest.py` attaches a `Collector` to the `avatarsigner` logger (level DEBUG, so every
line is produced) and, after each test, fails it if a line produced during the test holds:

- a value the tests registered with `remember()`: S3 secret keys, bearer tokens, end-user
  JWTs, HS256 secrets (the helpers that make them register them);
- anything shaped like a credential, whoever made it: a presigned URL's query parameters
  (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token), a 64-hex-digit run (a SigV4
  signature or a token's SHA-256), a JWT (two base64url JSON segments), a bearer token, a
  CloudFront signature or policy (signed URLs, viewer cookies), a PEM private key.

Lines are formatted with the service's own JsonFormatter, so `extra` fields are checked as
they would be printed. Subprocess tests pass their stderr to `find()` themselves.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

from avatarsigner_server.telemetry.logs import JsonFormatter

SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("presigned URL parameter", re.compile(r"x-amz-(signature|credential|security-token)", re.I)),
    (
        "64 hex digits (a signature or a token hash)",
        re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])", re.I),
    ),
    ("JWT", re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]*\.")),
    ("bearer token", re.compile(r"bearer\s+[A-Za-z0-9._~+/-]{8,}", re.I)),
    (
        "CloudFront signature or policy (a signed URL or viewer cookie)",
        re.compile(r"(?:[?&]Signature=|CloudFront-(?:Signature|Policy)\W+)[A-Za-z0-9~_-]{40,}"),
    ),
    ("PEM private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
)

_known: set[str] = set()
_known_lock = threading.Lock()
_known_pattern: re.Pattern[str] | None = None


def remember(*secrets: str) -> None:
    """Register values no log line may contain (shorter than 8 characters: ignored)."""
    global _known_pattern
    with _known_lock:
        before = len(_known)
        _known.update(s for s in secrets if len(s) >= 8)
        if len(_known) != before:
            _known_pattern = None


def _known_secrets() -> re.Pattern[str] | None:
    global _known_pattern
    with _known_lock:
        if _known_pattern is None and _known:
            alternatives = sorted(_known, key=len, reverse=True)
            _known_pattern = re.compile("|".join(re.escape(s) for s in alternatives))
        return _known_pattern


def find(lines: Iterable[str]) -> list[str]:
    """'<what>: <line, shortened>' for every line that leaks."""
    known = _known_secrets()
    found = []
    for line in lines:
        if known is not None and known.search(line):
            found.append(f"a secret the tests made: {line[:160]}")
            continue
        for what, pattern in SHAPES:
            if pattern.search(line):
                found.append(f"{what}: {line[:160]}")
                break
    return found


class Collector(logging.Handler):
    """Keeps every formatted line; `take()` returns and forgets them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self._lines: list[str] = []
        self._lines_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a line we cannot format is reported, not lost
            line = f"unformattable record from {record.name}: {record.msg!r} {record.args!r}"
        with self._lines_lock:
            self._lines.append(line)

    def peek(self) -> list[str]:
        with self._lines_lock:
            return list(self._lines)

    def take(self) -> list[str]:
        with self._lines_lock:
            lines, self._lines = self._lines, []
        return lines
