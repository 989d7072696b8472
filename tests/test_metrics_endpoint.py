"""The metrics port costs a bounded amount whoever connects: a real `avatar-signer serve`
process, 2,000 idle connections, its threads and memory read from /proc.

Bounded in count (2,000 connections) and in time (each test waits at most a few read
timeouts); everything listens on 127.0.0.1.
"""

from __future__ import annotations

import select
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from avatarsigner_server.telemetry import metrics_http
from servers import FAKE_ENV, free_port, serve_process, settings_from

IDLE_CONNECTIONS = 2000
# What 2,000 idle connections may add to the server process, at most.
MAX_EXTRA_THREADS = 2
MAX_EXTRA_RSS_BYTES = 8 * 1024 * 1024


def _status(pid: int) -> dict[str, int]:
    """Threads and VmRSS (bytes) of a process, from /proc/<pid>/status."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "Threads":
            fields["threads"] = int(value)
        elif name == "VmRSS":
            fields["rss"] = int(value.split()[0]) * 1024
    return fields


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    metrics_port = free_port()
    env = {**FAKE_ENV, "METRICS_HOST": "127.0.0.1", "METRICS_PORT": str(metrics_port)}
    log = tmp_path_factory.mktemp("metrics") / "server.log"
    with serve_process(env, free_port(), log) as process:
        yield process, metrics_port


def _connect_idle(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sockets.append(sock)
    return sockets


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.slow
def test_idle_connections_grow_neither_threads_nor_memory(
    served: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = served
    _scrape(port)  # everything a scrape loads is loaded
    before = _status(process.pid)
    idle = _connect_idle(port, IDLE_CONNECTIONS)
    try:
        time.sleep(1.0)  # let the server accept them all
        during = _status(process.pid)
        # A scraper still gets through: it evicts the oldest idle connection.
        assert "process_resident_memory_bytes" in _scrape(port)
    finally:
        for sock in idle:
            sock.close()
    print(
        f"threads {before['threads']} -> {during['threads']}, "
        f"RSS {before['rss'] / 2**20:.1f} -> {during['rss'] / 2**20:.1f} MiB "
        f"with {IDLE_CONNECTIONS} idle connections"
    )
    assert during["threads"] - before["threads"] <= MAX_EXTRA_THREADS
    assert during["rss"] - before["rss"] <= MAX_EXTRA_RSS_BYTES


@pytest.mark.slow
def test_an_idle_connection_is_closed_after_the_read_timeout(
    served: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = served
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        readable, _, _ = select.select([sock], [], [], metrics_http.READ_TIMEOUT_SECONDS + 5)
        assert readable, "the server kept an idle connection past its read timeout"
        assert _closed_by_peer(sock)
    finally:
        sock.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET /other HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n", 400),
    ],
    ids=["metrics", "other-path", "post", "garbage", "oversized-head"],
)
def test_requests_get_one_strict_answer_and_the_connection_closes(
    served: tuple[subprocess.Popen[bytes], int], request_head: bytes, status: int
) -> None:
    _, port = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    assert b"\r\nConnection: close\r\n" in answer


def test_metrics_host_defaults_to_grpc_host_and_is_its_own_setting() -> None:
    assert settings_from(GRPC_HOST="127.0.0.1").metrics_host == "127.0.0.1"
    assert settings_from(GRPC_HOST="127.0.0.1", METRICS_HOST="::1").metrics_host == "::1"
    with pytest.raises(ValueError, match="METRICS_HOST"):
        settings_from(METRICS_HOST="not a host!")

