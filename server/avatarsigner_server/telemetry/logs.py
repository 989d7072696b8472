"""Structured logging: JSON lines on stderr, written so that a slow reader never stops us.

The audit lines (one per decision: see `telemetry.audit`) are written by `telemetry.audit`
on the `avatarsigner.audit` logger, through this formatter. Never the URL (its query string
is a bearer credential), a signature, a secret or a token. With tracing on, every line
written while a call is traced carries its `trace_id` (32 hex digits), added by a filter
in the thread that logs it.

How lines reach stderr (`JsonLinesHandler`, one per process, installed by
`configure_logging`):

- The caller's thread (the event loop) formats the record into its JSON lines and appends
  them to a bounded buffer of BUFFER_LINES lines, under a lock held for a few operations per
  line. It never writes, flushes or waits on stderr. Formatting happens there, on the
  caller, on purpose: the line holds the record's fields as they were when it was logged
  (nothing mutable is kept for later), its size is known for batching, and a line that is
  going to be dropped is not formatted at all.
- A writer thread drains the buffer in arrival order, in writes of whole lines of at most
  PIPE_BUF bytes each. Worker processes share the supervisor's stderr; a pipe keeps a write
  of up to PIPE_BUF bytes in one piece, so lines from two workers never splice, while a
  busy process still needs one write per dozen lines or so. (A single line longer than
  PIPE_BUF is written alone.) Only the writer thread waits when stderr's reader is slow.
  While fewer than LINGER_LINES wait, it lets them gather for up to LINGER_SECONDS
  (20 ms) before writing: each wake-up of the writer takes the GIL from the event loop, and
  waking once per line, one line per call, cost a server about 110 µs of CPU per call
  against about 50 µs with the linger. `flush()` cuts the linger short.
- When the buffer is full, lines are dropped and counted instead of waiting. Each line has
  a class; a new line evicts the oldest queued line of the lowest class below its own, and
  is itself dropped only when no lower line is queued. Lowest first:

      other    every line that is not an audit line
      audit    every other audit line: downloads, viewer cookies, refusals, deletions
      upload   audit lines for uploads (upload URL signed, upload confirmed): dropped last

  The counts are the metric `avatarsigner_log_lines_dropped_total{class}`, and once the
  writer can write again it writes one WARNING line, "log lines dropped", with the counts
  since the previous such line (at most one a second while lines are still being dropped).
- `flush()` waits until everything queued is written, for at most CLOSE_SECONDS (a stalled
  reader must not hang a shutdown). The server flushes after it has stopped, and
  `logging.shutdown()` flushes at every normal interpreter exit, so a normal exit loses no
  line. Once a flush has given up, later ones (logging.shutdown's flush, then close) return
  at once until the writer gets a write through: a process exits CLOSE_SECONDS after its
  stderr stalled, not once per flush.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

LOGGER_NAME = "avatarsigner"
log = logging.getLogger(LOGGER_NAME)

# Lines that may wait for the writer thread (about 300 bytes each: some 6 MB at most). At
# a few thousand lines a second that is several seconds of a stalled reader before any
# line is dropped.
BUFFER_LINES = 20_000
# The longest a flush (at shutdown, at exit) waits for a slow reader.
CLOSE_SECONDS = 5.0
# While lines keep being dropped, at most one "log lines dropped" line this often.
NOTICE_SECONDS = 1.0
DROPPED_MESSAGE = "log lines dropped: stderr was not read fast enough"
PIPE_BUF = select.PIPE_BUF

# The classes of lines, in the order they are dropped (see the module docstring).
OTHER, AUDIT, UPLOAD = "other", "audit", "upload"
LINE_CLASSES = (OTHER, AUDIT, UPLOAD)
_LOWER = {name: LINE_CLASSES[:index] for index, name in enumerate(LINE_CLASSES)}
# An `extra` key naming a record's class (default OTHER); never printed.
CLASS = "line_class"

# LogRecord attributes that are not "extra" fields (and the class, which is not printed).
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", CLASS}
# json.dumps(line, default=str, ensure_ascii=False), without building an encoder per line.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


# An `extra` key holding a list of dicts: the record stands for several events (the URLs of
# one batch) and renders as one line per item, each the shared fields plus the item's own.
EACH = "each"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any `extra` fields.

    A record with `extra={EACH: [...]}` renders one such line per item (queued together,
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


# The writer lets lines gather for up to LINGER_SECONDS while fewer than LINGER_LINES wait,
# so at a steady trickle (one line per call) it wakes, and takes the GIL from the event
# loop, a few dozen times a second rather than once per line.
LINGER_SECONDS = 0.02
LINGER_LINES = 64


class JsonLinesHandler(logging.Handler):
    """Queues each record's lines for a writer thread; never writes or waits on the caller.

    See the module docstring for the buffer, the classes and the drop policy. fd: where the
    lines go (2: stderr); capacity: how many lines may wait for the writer.
    """

    def __init__(self, fd: int = 2, capacity: int = BUFFER_LINES) -> None:
        super().__init__()
        self._fd = fd
        self._capacity = capacity
        # One queue per class, each in arrival order; `seq` orders the lines across them.
        self._queues: dict[str, deque[tuple[int, bytes]]] = {c: deque() for c in LINE_CLASSES}
        self._queued = 0  # lines in the queues
        self._writing = 0  # lines the writer has taken and not yet written
        self._seq = 0
        self._cond = threading.Condition(threading.Lock())
        self._dropped = dict.fromkeys(LINE_CLASSES, 0)
        self._reported = dict.fromkeys(LINE_CLASSES, 0)  # the counts the last notice covered
        self._last_notice = -math.inf
        self._closed = False
        self._flushing = 0  # callers waiting in flush(): no lingering for them
        self._writes = 0  # writes the writer has finished
        self._gave_up_at = -1  # _writes when a flush timed out with a write in progress
        self._writer = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._writer.start()

    def dropped(self) -> dict[str, int]:
        """Lines dropped so far, by class (every class present, 0 when none)."""
        with self._cond:
            return dict(self._dropped)

    def queued(self) -> int:
        """Lines waiting for the writer (not counting the batch it is writing)."""
        with self._cond:
            return self._queued

    # -- the caller's side: a short lock, never I/O ------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        line_class = getattr(record, CLASS, OTHER)
        if line_class not in self._dropped:
            line_class = OTHER
        each = getattr(record, EACH, None)
        count = len(each) if isinstance(each, list) and each else 1
        with self._cond:
            if self._closed or not self._has_room(line_class):
                self._drop(line_class, count)  # not even formatted
                return
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - never raise into the caller, never print there
            with self._cond:
                self._drop(line_class, count)
            return
        lines = [f"{line}\n".encode("utf-8", "replace") for line in text.split("\n")]
        with self._cond:
            idle = not self._queued  # the writer may be waiting for a first line
            queue = self._queues[line_class]
            for data in lines:
                if self._queued >= self._capacity and not self._evict_below(line_class):
                    self._dropped[line_class] += 1
                    continue
                self._seq += 1
                queue.append((self._seq, data))
                self._queued += 1
            if idle or self._queued >= LINGER_LINES:
                self._cond.notify()

    def _has_room(self, line_class: str) -> bool:
        """A line of this class can be queued (there is room, or a lower line to evict)."""
        if self._queued < self._capacity:
            return True
        return any(self._queues[lower] for lower in _LOWER[line_class])

    def _evict_below(self, line_class: str) -> bool:
        """Drop the oldest queued line of the lowest class below line_class, if any."""
        for lower in _LOWER[line_class]:
            if self._queues[lower]:
                self._queues[lower].popleft()
                self._queued -= 1
                self._dropped[lower] += 1
                return True
        return False

    def _drop(self, line_class: str, count: int) -> None:
        self._dropped[line_class] += count
        self._cond.notify()  # the writer reports it

    # -- the writer thread --------------------------------------------------------------------

    def _unreported(self) -> bool:
        return self._dropped != self._reported

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._queued or self._unreported() or self._closed):
                    self._cond.wait()
                if self._queued < LINGER_LINES and not (self._closed or self._flushing):
                    self._cond.wait(LINGER_SECONDS)  # more lines per write and per wake-up
                if self._closed and not (self._queued or self._unreported()):
                    return
                notice = None
                now = time.monotonic()
                if self._unreported() and (
                    not self._queued or now - self._last_notice >= NOTICE_SECONDS
                ):
                    notice = {c: self._dropped[c] - self._reported[c] for c in LINE_CLASSES}
                    self._reported = dict(self._dropped)
                    self._last_notice = now
                batch, classes = self._take_batch()
                self._writing = len(batch)
            try:
                if notice is not None:
                    self._write(self._notice_line(notice))
                lost = bool(batch) and not self._write(b"".join(batch))
            except Exception:  # noqa: BLE001 - the writer must outlive any surprise
                lost = bool(batch)
            with self._cond:
                self._writing = 0
                self._writes += 1
                if lost:  # stderr is gone (closed, broken): nothing more can be said
                    for line_class, count in classes.items():
                        self._dropped[line_class] += count
                    self._reported = dict(self._dropped)
                self._cond.notify_all()  # flush() waits for this

    def _take_batch(self) -> tuple[list[bytes], dict[str, int]]:
        """Whole lines in arrival order, at most PIPE_BUF bytes (one line if it is longer)."""
        batch: list[bytes] = []
        classes = dict.fromkeys(LINE_CLASSES, 0)
        size = 0
        while True:
            queue, line_class = None, OTHER
            for name, candidate in self._queues.items():
                if candidate and (queue is None or candidate[0][0] < queue[0][0]):
                    queue, line_class = candidate, name
            if queue is None:
                break
            data = queue[0][1]
            if batch and size + len(data) > PIPE_BUF:
                break
            queue.popleft()
            batch.append(data)
            classes[line_class] += 1
            size += len(data)
        self._queued -= len(batch)
        return batch, classes

    def _notice_line(self, counts: dict[str, int]) -> bytes:
        record = logging.makeLogRecord(
            {
                "name": LOGGER_NAME,
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": DROPPED_MESSAGE,
                "dropped": counts,
                "dropped_lines": sum(counts.values()),
            }
        )
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - the counts stay in the metric
            return b""
        return f"{text}\n".encode()

    def _write(self, data: bytes) -> bool:
        """All of data to the fd (blocking this thread only); False if the fd refuses it."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:  # a non-blocking fd: wait until it takes more
                select.select([], [self._fd], [], 1.0)
                continue
            except OSError:
                return False
            view = view[written:]
        return True

    # -- flushing and closing -----------------------------------------------------------------

    def flush(self, timeout: float = CLOSE_SECONDS) -> bool:  # type: ignore[override]
        """Wait until every queued line (and the drop notice) is written, at most `timeout`
        seconds (a stalled reader must not hang a shutdown); True if all were. After a
        flush timed out, returns False at once while the writer is still in that write."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._writing and self._gave_up_at == self._writes:
                return False  # still stuck where the last flush gave up: no second wait
            self._flushing += 1
            self._cond.notify_all()  # a lingering writer writes now
            try:
                while (self._queued or self._writing or self._unreported()) and (
                    self._writer.is_alive()
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        if self._writing:
                            self._gave_up_at = self._writes
                        return False
                    self._cond.wait(remaining)
                return not (self._queued or self._writing)
            finally:
                self._flushing -= 1

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Flush (at most `timeout` s), then stop the writer; later records are dropped."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._writer.join(0.1)
        super().close()


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


_handler: JsonLinesHandler | None = None


def configure_logging(
    level: str = "INFO", fd: int = 2, trace_ids: Callable[[], str | None] | None = None
) -> None:
    """Send every avatarsigner log line to stderr (or fd) as JSON, through one
    JsonLinesHandler (a handler configured before is flushed and closed).

    `trace_ids` (tracing.current_trace_id, when tracing is on) puts the current trace id
    on each line; without it, no line pays for looking one up.
    """
    global _handler
    previous, _handler = _handler, JsonLinesHandler(fd)
    _handler.setFormatter(JsonFormatter())
    if trace_ids is not None:
        _handler.addFilter(TraceIds(trace_ids))
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [_handler]
    root.setLevel(level)
    root.propagate = False
    if previous is not None:
        previous.close()
    # The JSON lines never show thread or process fields, so don't look them up for every
    # record (the logging HOWTO's "Optimization" knobs; about 2 µs of a ~16 µs audit line).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Nor the caller's source file and line: skips a stack walk per record (same HOWTO).
    logging._srcfile = None


def flush_logs(timeout: float = CLOSE_SECONDS) -> bool:
    """Wait (at most timeout s) until every line logged so far is written; True if all were."""
    return True if _handler is None else _handler.flush(timeout)


def dropped_lines() -> dict[str, int]:
    """This process's log lines dropped so far, by class (see the module docstring)."""
    return dict.fromkeys(LINE_CLASSES, 0) if _handler is None else _handler.dropped()
