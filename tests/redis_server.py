"""A real redis-server (Debian's package) for the tests: 127.0.0.1, a free port, no disk.

`RedisServer.start(workdir)` runs `redis-server` with a config written into `workdir`
(no RDB snapshots, no AOF, DEBUG allowed from localhost for `DEBUG SLEEP`) and returns
once it answers PING. `stop()` kills it (as a crash would), `start_again()` brings it back
on the same port, `pause()`/`resume()` freeze it with SIGSTOP/SIGCONT: a store that
accepts connections and never answers.

The `redis_server` fixture (conftest.py) gives each test its own server through
`running()`; `redis_server_with_password` one with `requirepass`, the password registered
with `leaks.remember`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import leaks
import pytest
import redis
from servers import free_port

START_TIMEOUT = 10.0
MISSING = "redis-server not found: apt-get install redis-server"


class RedisServer:
    """One redis-server process on 127.0.0.1; `url` reaches it."""

    def __init__(self, workdir: Path, port: int, password: str | None = None) -> None:
        self.workdir = workdir
        self.port = port
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, workdir: Path, password: str | None = None) -> RedisServer:
        """A running server on a free port; RuntimeError(MISSING) without redis-server."""
        if shutil.which("redis-server") is None:
            raise RuntimeError(MISSING)
        for attempt in range(3):  # the free port may be taken before the server binds it
            server = cls(workdir, free_port(), password)
            try:
                server.start_again()
                return server
            except RuntimeError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def start_again(self) -> None:
        """Start (or restart, after stop()) on this server's port; empty, as after a crash."""
        assert self._process is None, "already running"
        config = self.workdir / "redis.conf"
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            "protected-mode yes",
            'save ""',
            "appendonly no",
            f"dir {self.workdir}",
            f"logfile {self.workdir / 'redis.log'}",
            "daemonize no",
            "enable-debug-command local",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        config.write_text("\n".join(lines) + "\n")
        self._process = subprocess.Popen(
            ["redis-server", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_ready(time.monotonic() + START_TIMEOUT)

    def stop(self) -> None:
        """SIGKILL: the store vanishes mid-run, connections and all."""
        if self._process is None:
            return
        self.resume()
        self._process.kill()
        self._process.wait(10)
        self._process = None

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGCONT)

    def client(self) -> redis.Redis:
        """A plain synchronous client, to look at (or slow down) the store from outside."""
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def _wait_until_ready(self, deadline: float) -> None:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"redis-server exited at start: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING: {self._log_tail()}")
            time.sleep(0.02)

    def _log_tail(self) -> str:
        path = self.workdir / "redis.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return " | ".join(lines[-3:]) or "(no log)"


def running(workdir: Path, password: str | None = None) -> Iterator[RedisServer]:
    """A server for the length of a fixture; the test fails (never skips) without the package."""
    try:
        server = RedisServer.start(workdir, password)
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def new_password() -> str:
    """A random password, registered so that no log line may carry it."""
    password = secrets.token_urlsafe(24)
    leaks.remember(password)
    return password
