"""`avatar-signer serve --workers N` (or WORKERS=N): N server processes on one port.

One process runs one asyncio loop on one core, so a machine with more cores serves more
calls with more processes. The supervisor (the process you start) owns no gRPC server; it
reads as one sequence:

    start:    check GRPC_PORT is free (nobody else may share it), start N workers, each
              `avatar-signer serve` binding the port with SO_REUSEPORT (the kernel spreads
              connections over them); wait until every one has started. A worker that
              dies first fails the start-up: the rest are stopped, exit status 2.
    run:      wait for SIGTERM or SIGINT (SIGHUP is passed on: every worker reloads). A
              worker that dies while serving is not restarted: the others are drained and
              the supervisor exits 1, so the orchestrator restarts the whole pod with a
              known state.
    shutdown: forward the signal to every worker; each drains on its own (NOT_SERVING,
              serve on for SHUTDOWN_DRAIN_SECONDS, refuse new calls, finish in-flight
              ones within SHUTDOWN_GRACE_SECONDS: app.server);
              exit 0 once all have exited 0.

A worker tells the supervisor it has started (listening; health then says SERVING while
its credentials are usable) by writing one byte to a pipe whose descriptor it finds in
AVATAR_SIGNER_WORKER ("<index>:<fd>"); that variable is what makes a process a worker
rather than a supervisor. Each worker serves its own Prometheus metrics on
METRICS_PORT + index (scrape them all; with METRICS_PORT=0 each picks a free port).
"""

from __future__ import annotations

import ctypes
import errno
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType

from ..settings import Settings, host_port
from ..telemetry import logs
from .server import REFUSE_SECONDS, StartupError

WORKER_ENV = "AVATAR_SIGNER_WORKER"
START_TIMEOUT_SECONDS = 60.0
# After the grace period a worker that still runs is killed; this is the slack for exiting.
EXIT_SLACK_SECONDS = 10.0
EXIT_WORKER_DIED = 1
_PR_SET_PDEATHSIG = 1


def worker_ready_notifier(environ: Mapping[str, str]) -> Callable[[int], None] | None:
    """In a worker: the callback that tells the supervisor it has started; else None."""
    value = environ.get(WORKER_ENV)
    if value is None:
        return None
    _, _, fd_text = value.partition(":")
    ready_fd = int(fd_text)

    def ready(port: int) -> None:
        del port
        try:
            os.write(ready_fd, b"1")
        finally:
            os.close(ready_fd)

    return ready


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
    ready_fd: int
    ready: bool = False


class Supervisor:
    """Starts, watches and drains the worker processes (see the module docstring)."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self._environ = dict(environ)
        self._workers: list[_Worker] = []
        self._stop_signal: int | None = None
        self._wake = threading.Event()

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self._stop_signal is None:
            self._stop_signal = signum
        self._wake.set()

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
        """Until each worker wrote its byte; EOF first means it died (StartupError)."""
        with selectors.DefaultSelector() as selector:
            for each in self._workers:
                selector.register(each.ready_fd, selectors.EVENT_READ, each)
            try:
                while selector.get_map() and self._stop_signal is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise StartupError(
                            f"WORKERS: not all {len(self._workers)} workers were serving "
                            f"after {START_TIMEOUT_SECONDS:g} s"
                        )
                    for key, _ in selector.select(min(remaining, 0.5)):
                        worker: _Worker = key.data
                        selector.unregister(worker.ready_fd)
                        got = os.read(worker.ready_fd, 1)
                        os.close(worker.ready_fd)
                        if not got:
                            code = worker.process.wait()
                            raise StartupError(
                                f"WORKERS: worker {worker.index + 1} of {len(self._workers)} "
                                f"exited with status {code} before serving"
                            )
                        worker.ready = True
            finally:
                for key in list(selector.get_map().values()):
                    selector.unregister(key.fd)
                    os.close(key.fd)

    def _wait_for_signal_or_death(self) -> _Worker | None:
        while self._stop_signal is None:
            for worker in self._workers:
                if worker.process.poll() is not None:
                    return worker
            self._wake.wait(0.2)
        return None

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
        deadline += self.settings.serving.drain_seconds + REFUSE_SECONDS
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
