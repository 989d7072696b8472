"""Structured logging: JSON lines on stderr.

The audit lines (one per decision, including the one line per signed URL) are written by
`telemetry.audit` on the `avatarsigner.audit` logger, through this formatter. Never the URL (its
query string is a bearer credential), a signature, a secret or a token. With tracing on,
every line written while a call is traced carries its `trace_id` (32 hex digits).
"""

from __future__ import annotations

import json
import logging
import select
import sys
from collections.abc import Callable
from datetime import UTC, datetime

LOGGER_NAME = "avatarsigner"
log = logging.getLogger(LOGGER_NAME)

# LogRecord attributes that are not "extra" fields.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# json.dumps(line, default=str, ensure_ascii=False), without building an encoder per line.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


# An `extra` key holding a list of dicts: the record stands for several events (the URLs of
# one batch) and renders as one line per item, each the shared fields plus the item's own.
EACH = "each"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any `extra` fields.

    A record with `extra={EACH: [...]}` renders one such line per item (written together,
    at the cost of one record).
    """

    _second: tuple[int, str] = (-1, "")

    def _timestamp(self, created: float) -> str:
        """ISO 8601 UTC with milliseconds; the part up to the second is built once a second."""
        second = int(created)
        if second != self._second[0]:
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, text)
        return f"{self._second[1]}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": self._timestamp(record.created),
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
        each = line.pop(EACH, None)
        if not isinstance(each, list):
            return _ENCODER.encode(line)
        if len(each) == 1:
            line.update(each[0])
            return _ENCODER.encode(line)
        # The shared fields encoded once; each item's fields appended to a copy of them.
        shared = _ENCODER.encode(line)[:-1]
        return "\n".join(
            f"{shared}, {_ENCODER.encode(item)[1:]}" if item else f"{shared}}}" for item in each
        )


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes a record's lines in writes of whole lines, each at most PIPE_BUF bytes.

    Worker processes share the supervisor's stderr: a pipe keeps a write of up to PIPE_BUF
    bytes in one piece, so lines from two workers never splice, while a batch's lines still
    cost a few writes rather than one each.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            chunk: list[str] = []
            size = 0
            for line in self.format(record).split("\n"):
                length = len(line.encode("utf-8")) + 1
                if chunk and size + length > select.PIPE_BUF:
                    self._write("".join(chunk))
                    chunk, size = [], 0
                chunk.append(line + "\n")
                size += length
            if chunk:
                self._write("".join(chunk))
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging must never take the service down
            self.handleError(record)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class TraceIds(logging.Filter):
    """Adds `trace_id` to each record logged inside a traced call.

    A filter, so it runs in the thread (and the context) that logs the record, wherever
    the record is formatted and written later.
    """

    def __init__(self, current: Callable[[], str | None]) -> None:
        super().__init__()
        self._current = current

    def filter(self, record: logging.LogRecord) -> bool:
        trace_id = self._current()
        if trace_id is not None:
            record.trace_id = trace_id
        return True


def configure_logging(
    level: str = "INFO", trace_ids: Callable[[], str | None] | None = None
) -> None:
    """Send every avatarsigner log line to stderr as JSON.

    `trace_ids` (tracing.current_trace_id, when tracing is on) puts the current trace id
    on each line; without it, no line pays for looking one up.
    """
    handler = JsonLinesHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    if trace_ids is not None:
        handler.addFilter(TraceIds(trace_ids))
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # The JSON lines never show thread or process fields, so don't look them up for every
    # record (the logging HOWTO's "Optimization" knobs; about 2 µs of a ~16 µs audit line).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Nor the caller's source file and line: skips a stack walk per record (same HOWTO).
    logging._srcfile = None
