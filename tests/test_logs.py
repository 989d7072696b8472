"""Logging that can never stop the service: a bounded buffer, a writer thread, drops by class.

The handler is tested on real pipes and files; the last test stalls the reader of a real
`avatar-signer serve --workers 2`'s stderr and keeps calling it.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import leaks
import pytest
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.app.workers import WORKER_ENV
from avatarsigner_server.telemetry import logs
from avatarsigner_server.telemetry.metrics import Metrics
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import FAKE_ENV, free_port, wait_serving

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


# --- the real service, its stderr's reader stalled ----------------------------------------------

STALL_SECONDS = 5.0
DEADLINE_SECONDS = 3.0  # a call or health check must be answered within this, stall or not
BATCH = 500


class _PausableReader:
    """Reads a pipe to EOF in a thread, except while paused (then the pipe fills up)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._go = threading.Event()
        self._go.set()
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._go.wait()
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                return
            with self._lock:
                self._chunks.append(chunk)

    def pause(self) -> None:
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", "replace")

    def wait_eof(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "stderr was never closed"


def _answered(call: Callable[[], object]) -> bool:
    """True if call() returns (within the deadline it sets)."""
    try:
        call()
    except grpc.RpcError:
        return False
    return True


def _channel(target: str) -> grpc.Channel:
    """A channel with a connection of its own (so calls over time reach both workers)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _probe(target: str, health_target: str) -> tuple[bool, bool, float]:
    """A CreateDownloadUrl and a health check, each on a new connection: (call answered,
    health answered, seconds the two took)."""
    started = time.monotonic()
    with _channel(target) as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        request = pb.CreateDownloadUrlRequest(user_id="probe")
        call = _answered(lambda: stub.CreateDownloadUrl(request, timeout=DEADLINE_SECONDS))
    with _channel(health_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest()
        checked = _answered(lambda: health.Check(check, timeout=DEADLINE_SECONDS))
    return call, checked, time.monotonic() - started


class _Load:
    """Threads calling as fast as they are answered until stopped (at most `limit` calls
    each): batches of BATCH downloads (BATCH audit lines each, with AUDIT_DOWNLOAD_IDS=true),
    and uploads, whose OK answers are counted."""

    def __init__(self, target: str, batchers: int = 3, limit: int = 5000) -> None:
        self.uploads_ok = 0
        self._target = target
        self._limit = limit
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(self._batch,)) for _ in range(batchers)
        ]
        self._threads.append(threading.Thread(target=self._run, args=(self._upload,)))
        for thread in self._threads:
            thread.start()

    def _batch(self, stub: pb_grpc.AvatarSignerStub) -> None:
        request = pb.BatchCreateDownloadUrlsRequest(user_ids=[f"user{i}" for i in range(BATCH)])
        _answered(lambda: stub.BatchCreateDownloadUrls(request, timeout=10))

    def _upload(self, stub: pb_grpc.AvatarSignerStub) -> None:
        request = pb.CreateUploadUrlRequest(  # a new user each time: no per-user limit
            user_id=f"uploader{self.uploads_ok}", content_type="image/png", content_length=9
        )
        if _answered(lambda: stub.CreateUploadUrl(request, timeout=10)):
            self.uploads_ok += 1  # one thread counts

    def _run(self, job: Callable[[pb_grpc.AvatarSignerStub], None]) -> None:
        with _channel(self._target) as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            for _ in range(self._limit):
                if self._stop.is_set():
                    return
                job(stub)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _scrape_dropped(address: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.labels["class"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "avatarsigner_log_lines_dropped"
        for sample in family.samples
    }


def _two_workers_on_a_pipe(port: int, **settings: str) -> tuple[subprocess.Popen[bytes], int]:
    """`serve` with two workers on `port` (AUDIT_DOWNLOAD_IDS=true: one line per URL, enough
    to fill any buffer), its stderr a pipe: (the supervisor, the pipe's read end)."""
    env = {k: v for k, v in os.environ.items() if k not in FAKE_ENV and k != WORKER_ENV}
    env |= FAKE_ENV | {"GRPC_PORT": str(port), "WORKERS": "2", "AUDIT_DOWNLOAD_IDS": "true"}
    read_fd, write_fd = os.pipe()
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
        env=env | settings,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_fd,
    )
    os.close(write_fd)
    return supervisor, read_fd


def _wait_until_both_serve(target: str, reader: _PausableReader) -> None:
    wait_serving(target, time.monotonic() + 30)
    deadline = time.monotonic() + 20
    while reader.text().count('"msg": "serving"') < 2:
        assert time.monotonic() < deadline, reader.text()
        time.sleep(0.05)


@pytest.mark.slow
def test_a_stalled_log_reader_stops_no_call_and_no_health_check() -> None:
    port, health_port = free_port(), free_port()
    supervisor, read_fd = _two_workers_on_a_pipe(
        port, HEALTH_PORT=str(health_port), METRICS_PORT="0", SHUTDOWN_GRACE_SECONDS="3"
    )
    target, health_target = f"127.0.0.1:{port}", f"127.0.0.1:{health_port}"
    reader = _PausableReader(read_fd)
    probes: list[tuple[bool, bool, float]] = []
    try:
        _wait_until_both_serve(target, reader)
        metrics = [
            json.loads(line)["metrics_address"]
            for line in reader.text().splitlines()
            if '"msg": "serving"' in line
        ]
        load = _Load(target)
        try:
            time.sleep(0.5)
            reader.pause()
            stalled_until = time.monotonic() + STALL_SECONDS
            while time.monotonic() < stalled_until:
                probes.append(_probe(target, health_target))
                time.sleep(0.2)
            reader.resume()
        finally:
            load.stop()
        time.sleep(1.0)  # the buffers drain
        dropped = [_scrape_dropped(address) for address in metrics]
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(30)
        reader.wait_eof(30)
    finally:
        reader.resume()
        supervisor.kill()
        supervisor.wait(30)
        os.close(read_fd)
    assert supervisor.returncode == 0

    # Every call and health check during the stall was answered within the deadline.
    assert [(call, health) for call, health, _ in probes] == [(True, True)] * len(probes), probes
    assert len(probes) >= 5

    # A line is never split: each of ours is one whole JSON object (a splice would leave a
    # head that does not parse and a tail ending in "}"); and none holds a secret.
    lines = reader.text().splitlines()
    ours = [line for line in lines if line.startswith("{") or line.endswith("}")]
    parsed = [json.loads(line) for line in ours]
    assert leaks.find(lines) == []

    # Lines were dropped, counted and reported; never an upload line.
    notices = [line for line in parsed if line["msg"] == logs.DROPPED_MESSAGE]
    assert notices and all(line["level"] == "WARNING" for line in notices)
    reported = {c: sum(n["dropped"][c] for n in notices) for c in logs.LINE_CLASSES}
    assert reported["audit"] > 0 and reported["upload"] == 0
    assert reported == {c: sum(d[c] for d in dropped) for c in logs.LINE_CLASSES}
    uploads = [
        line
        for line in parsed
        if line.get("rpc") == "CreateUploadUrl" and line["decision"] == "allowed"
    ]
    assert len(uploads) == load.uploads_ok > 0
    assert [line["msg"] for line in parsed].count("stopped") == 2


@pytest.mark.slow
def test_a_stalled_log_reader_at_shutdown_costs_one_close_wait_not_a_killed_worker() -> None:
    """stderr stops being read with lines still queued, then SIGTERM: each process gives its
    log CLOSE_SECONDS once (not once per flush at exit), so both workers exit in time, within
    SHUTDOWN_GRACE_SECONDS plus the supervisor's slack, and the supervisor exits 0."""
    port = free_port()
    # A worker is killed SHUTDOWN_GRACE_SECONDS + 10.5 s (11.5 s) after the signal.
    supervisor, read_fd = _two_workers_on_a_pipe(port, SHUTDOWN_GRACE_SECONDS="1")
    reader = _PausableReader(read_fd)
    try:
        _wait_until_both_serve(f"127.0.0.1:{port}", reader)
        reader.pause()
        request = pb.BatchCreateDownloadUrlsRequest(user_ids=[f"user{i}" for i in range(BATCH)])
        for _ in range(4):  # on connections of their own: both workers log
            with _channel(f"127.0.0.1:{port}") as channel:
                pb_grpc.AvatarSignerStub(channel).BatchCreateDownloadUrls(request, timeout=10)
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(40)
    finally:
        supervisor.kill()
        supervisor.wait(30)
        reader.resume()
        reader.wait_eof(30)
        os.close(read_fd)
    assert supervisor.returncode == 0, reader.text()[-2000:]
