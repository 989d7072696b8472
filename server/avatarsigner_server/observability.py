"""Structured logging: JSON lines on stderr.

`signed_url()` writes the one line per signed URL: operation, user_id, key, expires_at.
Never the URL (its query string is a bearer credential), a signature, a secret or a token.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

LOGGER_NAME = "avatarsigner"
log = logging.getLogger(LOGGER_NAME)
_url_log = logging.getLogger(f"{LOGGER_NAME}.urls")

# LogRecord attributes that are not "extra" fields.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD:
                line[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: a traceback could carry values from the request.
            line["exc_type"] = record.exc_info[0].__name__
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    """Send every avatarsigner log line to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def signed_url(operation: str, user_id: str, key: str, expires_at: datetime) -> None:
    """The audit line for one signed URL."""
    _url_log.info(
        "signed url",
        extra={
            "operation": operation,
            "user_id": user_id,
            "key": key,
            "expires_at": expires_at.isoformat(),
        },
    )
