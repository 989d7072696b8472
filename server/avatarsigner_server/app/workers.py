"""`avatar-signer serve --workers N` (or WORKERS=N): N server processes on one port.

One process runs one asyncio loop on one core, so a machine with more cores serves more
calls with more processes. The supervisor (the process you start) owns no gRPC server; it
reads as one sequence:

    start:    check GRPC_PORT is free (nobody else may share it), start N workers, each
              `avatar-signer serve` binding the port with SO_REUSEPORT (the kernel spreads
              connections over them); wait until every one has started. A worker that
              dies first fails the start-up: the rest are stopped, exit status 2.
    run:      wait for SIGTERM or SIGINT (SIGHUP is passed on: every worker reloads), and
              watch the workers. A worker that dies while serving is not restarted: the
              others are drained and the supervisor exits 1, so the orchestrator restarts
              the whole pod with a known state. A worker that hangs is killed (SIGKILL) and
              then handled as one that died.
    shutdown: forward the signal to every worker; each drains on its own (NOT_SERVING,
              refuse new calls, finish in-flight ones within SHUTDOWN_GRACE_SECONDS);
              exit 0 once all have exited 0.

A worker tells the supervisor it has started (listening; health then says SERVING while
its credentials are usable) by writing one byte to a pipe whose descriptor it finds in
AVATAR_SIGNER_WORKER ("<index>:<fd>"); that variable is what makes a process a worker
rather than a supervisor. Each worker serves its own Prometheus metrics on
METRICS_PORT + index (scrape them all; with METRICS_PORT=0 each picks a free port).

The heartbeat: a hung worker still holds its share of the port, and the kernel keeps
handing it connections whose calls then wait out their deadlines (a stopped process, a
blocked event loop). So after the ready byte the pipe stays open, and the worker's event
loop writes a byte to it every WORKER_HEARTBEAT_SECONDS (0.5 s; never blocking: when the
pipe is full the byte is skipped). The supervisor reads every pipe; a worker silent for
more than WORKER_HEARTBEAT_TIMEOUT_SECONDS (default 5) is logged at ERROR ("worker hung;
killing it", with its index, pid and how long it was silent), killed with SIGKILL (the only
signal a stopped process obeys) and handled as a worker that died. Silence is counted
from the last byte, in looks of at most 0.2 s, so a stopped worker is found between the
timeout minus 0.5 s and the timeout plus 0.2 s after it stopped. Time the supervisor itself
was not running (the whole pod paused) counts as one heartbeat period at most. The
heartbeat proves the event loop runs, which every call needs; it does not prove the S3
credentials work (that is health's job).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType

from ..settings import Settings, host_port
from ..settings.network import WORKER_HEARTBEAT_SECONDS
from ..telemetry import logs
from .server import StartupError

WORKER_ENV = "AVATAR_SIGNER_WORKER"
START_TIMEOUT_SECONDS = 60.0
# After the grace period a worker that still runs is killed; this is the slack for exiting.
EXIT_SLACK_SECONDS = 10.0
# How often the supervisor wakes to look at its workers (exits, silence, signals).
WATCH_SECONDS = 0.2
EXIT_WORKER_DIED = 1
_PR_SET_PDEATHSIG = 1


def worker_ready_notifier(environ: Mapping[str, str]) -> Callable[[int], None] | None:
    """In a worker: the callback that tells the supervisor it has started; else None.

    Called on the worker's event loop once it serves; from then on that loop writes a
    heartbeat byte to the same pipe every WORKER_HEARTBEAT_SECONDS (see the module docstring).
    """
    value = environ.get(WORKER_ENV)
    if value is None:
        return None
    _, _, fd_text = value.partition(":")
    fd = int(fd_text)

    def ready(port: int) -> None:
        del port
        os.write(fd, b"1")
        os.set_blocking(fd, False)  # a full pipe skips a beat, never stalls the loop
        _beat_every(asyncio.get_running_loop(), fd, WORKER_HEARTBEAT_SECONDS)

    return ready


def _beat_every(loop: asyncio.AbstractEventLoop, fd: int, seconds: float) -> None:
    """Write one byte to fd every `seconds` on loop (the ready byte was the first) until the
    reader is gone."""

    def beat() -> None:
        try:
            os.write(fd, b".")
        except BlockingIOError:
            pass  # the supervisor has not read the earlier beats yet: it knows we live
        except OSError:  # the supervisor is gone (it closed the pipe): nobody listens
            os.close(fd)
            return
        loop.call_later(seconds, beat)

    loop.call_later(seconds, beat)


def is_worker(environ: Mapping[str, str]) -> bool:
    return WORKER_ENV in environ


def check_port_free(host: str, port: int, setting: str = "GRPC_PORT") -> None:
    """StartupError unless host:port can be bound without SO_REUSEPORT, i.e. nobody holds it.

    The workers bind with SO_REUSEPORT, which would let them join another group of
    workers on the same port silently; this probe keeps "port in use" a loud error.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        raise StartupError(f"GRPC_HOST: cannot resolve {host!r}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC does: a closed connection in TIME_WAIT does not make the port busy.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRNOTAVAIL:
                    continue  # e.g. no IPv6 on this host: gRPC skips it too
                raise StartupError(
                    f"{setting}: cannot listen on {host_port(host, port)} (in use or not allowed)"
                ) from None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker gets SIGTERM (and drains) if the supervisor is killed."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    # The read end of the worker's pipe: the ready byte, then heartbeats; -1 once closed.
    pipe_fd: int
    ready: bool = False
    # When the last byte was read: seconds on the supervisor's watch clock (see
    # _wait_for_signal_or_death).
    last_beat: float = 0.0


class Supervisor:
    """Starts, watches and drains the worker processes (see the module docstring)."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self._environ = dict(environ)
        self._workers: list[_Worker] = []
        self._stop_signal: int | None = None

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self._stop_signal is None:
            self._stop_signal = signum

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP: every worker re-reads its files (see AvatarSignerServer.reload).

        Only ready workers: one still starting has no handler yet (SIGHUP would kill it) and
        reads its files as it starts anyway.
        """
        del frame
        for worker in self._workers:
            if worker.ready and worker.process.poll() is None:
                worker.process.send_signal(signum)

    def _install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_reload)

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers, serve until a signal, drain; the exit status."""
        self._install_signal_handlers()
        check_port_free(self.settings.grpc_host, self.settings.grpc_port)
        if self.settings.health_port:  # shared by the workers too, so just as loud when taken
            check_port_free(self.settings.grpc_host, self.settings.health_port, "HEALTH_PORT")
        started = time.monotonic()
        try:
            return self._start_and_watch(started)
        finally:
            for worker in self._workers:
                self._close_pipe(worker)

    def _start_and_watch(self, started: float) -> int:
        try:
            self._start_workers()
            self._wait_until_serving(started + START_TIMEOUT_SECONDS)
        except StartupError:
            self._stop_all(signal.SIGTERM)
            raise
        if self._stop_signal is None:
            logs.log.info(
                "workers serving",
                extra={
                    "address": host_port(self.settings.grpc_host, self.settings.grpc_port),
                    "workers": len(self._workers),
                    "pids": [w.process.pid for w in self._workers],
                    "start_seconds": round(time.monotonic() - started, 3),
                },
            )
        died = self._wait_for_signal_or_death()
        return self._stop_all(self._stop_signal or signal.SIGTERM, died)

    def _start_workers(self) -> None:
        for index in range(self.settings.workers):
            read_fd, write_fd = os.pipe()
            metrics_port = self.settings.metrics_port
            env = {
                **self._environ,
                "WORKERS": str(self.settings.workers),
                # Each worker counts its own calls: worker i serves METRICS_PORT + i.
                "METRICS_PORT": str(metrics_port + index if metrics_port else 0),
                WORKER_ENV: f"{index}:{write_fd}",
            }
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    pass_fds=(write_fd,),
                    preexec_fn=_die_with_parent,
                )
            finally:
                os.close(write_fd)  # the worker holds it now: EOF here means it died
            self._workers.append(_Worker(index, process, read_fd))

    def _wait_until_serving(self, deadline: float) -> None:
        """Until each worker wrote its byte; EOF first means it died (StartupError).

        The pipe of a worker that has started stays open: its heartbeats come next.
        """
        with selectors.DefaultSelector() as selector:
            for each in self._workers:
                selector.register(each.pipe_fd, selectors.EVENT_READ, each)
            while selector.get_map() and self._stop_signal is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StartupError(
                        f"WORKERS: not all {len(self._workers)} workers were serving "
                        f"after {START_TIMEOUT_SECONDS:g} s"
                    )
                for key, _ in selector.select(min(remaining, WATCH_SECONDS)):
                    worker: _Worker = key.data
                    selector.unregister(worker.pipe_fd)
                    if not os.read(worker.pipe_fd, 1):
                        self._close_pipe(worker)
                        code = worker.process.wait()
                        raise StartupError(
                            f"WORKERS: worker {worker.index + 1} of {len(self._workers)} "
                            f"exited with status {code} before serving"
                        )
                    worker.ready = True

    def _wait_for_signal_or_death(self) -> _Worker | None:
        """Until a stop signal (None), or a worker that died or hung (killed): that worker.

        Silence is counted on the supervisor's own clock of time spent watching: each look
        adds the time since the previous one, but at most one heartbeat period, so a pause
        of the supervisor itself (the whole pod stopped or throttled, Ctrl-Z in a terminal)
        is not taken for a hung worker.
        """
        timeout = self.settings.worker_heartbeat_timeout_seconds
        watched = 0.0
        looked = time.monotonic()
        with selectors.DefaultSelector() as selector:
            for worker in self._workers:
                worker.last_beat = watched
                if worker.pipe_fd >= 0:
                    selector.register(worker.pipe_fd, selectors.EVENT_READ, worker)
            while self._stop_signal is None:
                events = selector.select(WATCH_SECONDS)
                now = time.monotonic()
                watched += min(now - looked, WORKER_HEARTBEAT_SECONDS)
                looked = now
                for key, _ in events:
                    worker = key.data
                    if os.read(worker.pipe_fd, 4096):
                        worker.last_beat = watched
                    else:  # EOF: the worker closed its end, it is exiting; poll() tells
                        selector.unregister(worker.pipe_fd)
                        self._close_pipe(worker)
                for worker in self._workers:
                    if worker.process.poll() is not None:
                        return worker
                    if watched - worker.last_beat > timeout:
                        self._kill_hung(worker, watched - worker.last_beat)
                        return worker
        return None

    def _kill_hung(self, worker: _Worker, silent: float) -> None:
        """SIGKILL a silent worker (a stopped process obeys no other signal); reap it."""
        logs.log.error(
            "worker hung; killing it",
            extra={
                "worker": worker.index + 1,
                "pid": worker.process.pid,
                "silent_seconds": round(silent, 2),
                "timeout_seconds": self.settings.worker_heartbeat_timeout_seconds,
            },
        )
        worker.process.kill()
        try:
            worker.process.wait(EXIT_SLACK_SECONDS)
        except subprocess.TimeoutExpired:
            pass  # e.g. stuck in the kernel; _stop_all waits for it again

    @staticmethod
    def _close_pipe(worker: _Worker) -> None:
        if worker.pipe_fd >= 0:
            os.close(worker.pipe_fd)
            worker.pipe_fd = -1

    def _stop_all(self, signum: int, died: _Worker | None = None) -> int:
        """Forward signum to every live worker, wait for them to drain; the exit status."""
        if died is not None:
            logs.log.error(
                "worker exited unexpectedly; stopping the others",
                extra={"worker": died.index + 1, "status": died.process.returncode},
            )
        logs.log.info(
            "stopping workers",
            extra={"signal": signal.Signals(signum).name, "workers": len(self._workers)},
        )
        for worker in self._workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signum)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + EXIT_SLACK_SECONDS
        clean = died is None
        for worker in self._workers:
            try:
                code = worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                code = worker.process.wait()
            # A worker still starting up when the signal came may die of it: that is clean.
            clean = clean and (code == 0 or (not worker.ready and code == -signum))
        logs.log.info("workers stopped", extra={"clean": clean})
        return 0 if clean else EXIT_WORKER_DIED


def supervise(settings: Settings, environ: Mapping[str, str]) -> int:
    """Run settings.workers worker processes until SIGTERM/SIGINT; the exit status."""
    return Supervisor(settings, environ).run()
