"""Logging that can never stop the service: a bounded buffer, a writer thread, drops by class.

The handler is tested on real pipes and files.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from avatarsigner_server.telemetry import logs
from avatarsigner_server.telemetry.metrics import Metrics

PAD = "p" * 200  # about 300 bytes a line, as an audit line


class _Recording(logs.JsonLinesHandler):
    """Keeps what each write() call was given (the writer thread's batches)."""

    def __init__(self, fd: int, capacity: int = logs.BUFFER_LINES) -> None:
        self.writes: list[bytes] = []
        super().__init__(fd, capacity)

    def _write(self, data: bytes) -> bool:
        self.writes.append(bytes(data))
        return super()._write(data)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own (not under avatarsigner: the suite's collector is not involved)."""
    made = logging.getLogger(f"test_logs.{time.monotonic_ns()}")
    made.propagate = False
    made.setLevel(logging.INFO)
    yield made
    for handler in list(made.handlers):
        made.removeHandler(handler)
        if isinstance(handler, logs.JsonLinesHandler):
            handler.close(1.0)


def _attach(logger: logging.Logger, handler: logs.JsonLinesHandler) -> logs.JsonLinesHandler:
    handler.setFormatter(logs.JsonFormatter())
    logger.addHandler(handler)
    return handler


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: the next write to it blocks until it is read."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        while True:
            os.write(write_fd, b"\n" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(write_fd, True)
    return read_fd, write_fd


def _read_all(read_fd: int, handler: logs.JsonLinesHandler) -> list[str]:
    """Read the pipe while the handler flushes; the non-empty lines read."""
    chunks: list[bytes] = []
    done = threading.Event()

    def drain() -> None:
        os.set_blocking(read_fd, False)
        while True:
            ready, _, _ = select.select([read_fd], [], [], 0.05)
            if ready:
                chunks.append(os.read(read_fd, 1 << 16))
            elif done.is_set():
                return

    reader = threading.Thread(target=drain)
    reader.start()
    assert handler.flush(10)
    done.set()
    reader.join(10)
    return [line for line in b"".join(chunks).decode().split("\n") if line]


# --- whole lines, each write at most PIPE_BUF ------------------------------------------------


def test_a_batch_is_written_in_whole_lines_of_at_most_pipe_buf_bytes(
    logger: logging.Logger, tmp_path: Path
) -> None:
    items = [
        {"user_id": f"user-{i:04d}", "key": f"profiles/user-{i:04d}/avatar"} for i in range(1000)
    ]
    with (tmp_path / "log").open("wb") as out:
        handler = _attach(logger, _Recording(out.fileno()))
        logger.info("allowed", extra={logs.EACH: items, logs.CLASS: logs.AUDIT})
        handler.close(10)
    writes = handler.writes
    assert len(writes) > 1  # not one write per line, not one huge write
    assert len(writes) < len(items) / 5
    for data in writes:
        assert len(data) <= select.PIPE_BUF  # atomic on a pipe shared by workers
        assert data.endswith(b"\n")
    lines = (tmp_path / "log").read_text().splitlines()
    assert [json.loads(line)["user_id"] for line in lines] == [i["user_id"] for i in items]
    assert not any(logs.CLASS in line for line in lines)  # the class is never printed


# --- a stalled reader: nothing waits, the lowest class goes first ------------------------------


def test_a_stalled_reader_never_blocks_the_caller_and_upload_lines_go_last(
    logger: logging.Logger,
) -> None:
    read_fd, write_fd = _full_pipe()
    try:
        handler = _attach(logger, logs.JsonLinesHandler(write_fd, capacity=4))
        logger.info("first")  # the writer takes it and blocks on the full pipe
        deadline = time.monotonic() + 10
        while handler.queued():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        done = threading.Event()

        def log_many() -> None:
            for line_class in ("other", "other", "audit", "audit"):
                logger.info(line_class, extra={logs.CLASS: line_class, "pad": PAD})
            for index in range(5):  # each evicts the oldest lower line; the 5th has none
                logger.info("upload", extra={logs.CLASS: logs.UPLOAD, "index": index})
            for _ in range(1000):  # no room and nothing lower: dropped, not formatted
                logger.info("other", extra={"pad": PAD})
            done.set()

        caller = threading.Thread(target=log_many, daemon=True)
        caller.start()
        assert done.wait(10), "logging waited for the stalled reader"
        assert handler.dropped() == {"other": 1002, "audit": 2, "upload": 1}
        lines = _read_all(read_fd, handler)  # the reader is back
        handler.close(1)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    parsed = [json.loads(line) for line in lines]
    assert [(p["msg"], p.get("index")) for p in parsed if p["level"] == "INFO"] == [
        ("first", None),
        ("upload", 0),
        ("upload", 1),
        ("upload", 2),
        ("upload", 3),
    ]
    (notice,) = [p for p in parsed if p["level"] == "WARNING"]
    assert notice["msg"] == logs.DROPPED_MESSAGE
    assert notice["dropped"] == {"other": 1002, "audit": 2, "upload": 1}
    assert notice["dropped_lines"] == 1005


def test_dropped_lines_are_a_metric_by_class(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_fd, write_fd = _full_pipe()
    try:
        handler = _attach(logger, logs.JsonLinesHandler(write_fd, capacity=1))
        monkeypatch.setattr(logs, "_handler", handler)
        for line_class in ("other", "other", "audit", "audit", "audit", "upload"):
            logger.info(line_class, extra={logs.CLASS: line_class})
        dropped = handler.dropped()
        samples = {
            sample.labels["class"]: sample.value
            for family in Metrics().registry.collect()
            if family.name == "avatarsigner_log_lines_dropped"
            for sample in family.samples
        }
        _read_all(read_fd, handler)
        handler.close(1)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert sum(dropped.values()) >= 4 and dropped["upload"] == 0
    assert samples == dropped


# --- nothing lost on a normal exit -----------------------------------------------------------

EXITING = textwrap.dedent(
    """
    import logging, sys
    from avatarsigner_server.telemetry import logs
    logs.configure_logging("INFO")
    audit = logging.getLogger("avatarsigner.audit")
    for index in range(int(sys.argv[1])):
        audit.info("allowed", extra={"index": index, "pad": "p" * 200})
    logs.log.info("done")
    print("logged", flush=True)
    """
)


@pytest.mark.slow
def test_a_normal_exit_writes_every_line_logged() -> None:
    """The child logs more than its stderr pipe holds, then exits while nobody reads: its
    lines are still queued, and the exit waits until they are read."""
    count = 15_000  # fewer than BUFFER_LINES: none is dropped
    child = subprocess.Popen(
        [sys.executable, "-c", EXITING, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "logged\n"
        time.sleep(0.5)  # the child is exiting, its stderr unread
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, stderr[-2000:]
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert [line["index"] for line in lines[:-1]] == list(range(count))
    assert lines[-1]["msg"] == "done"
