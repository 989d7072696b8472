"""`avatar-signer serve --workers N`: N processes on one port, one supervisor.

Each test starts the real command in a subprocess on a free loopback port and talks to it
with ordinary gRPC clients; which processes listen on the port is read from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.app.workers import WORKER_ENV
from avatarsigner_server.settings import SettingsError
from avatarsigner_server.settings import load as load_settings
from servers import FAKE_ENV, free_port, wait_serving

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; SO_REUSEPORT")


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FAKE_ENV and k != WORKER_ENV}
    settings = {"GRPC_PORT": str(port), "METRICS_PORT": "0", "SHUTDOWN_GRACE_SECONDS": "3"}
    return env | FAKE_ENV | settings | extra


def _start(port: int, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve", *args],
        env=_env(port, **extra),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _listeners(port: int) -> set[int]:
    """PIDs of the processes holding a listening TCP socket on `port` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
        except OSError:
            continue
        if links & inodes:
            pids.add(int(proc.name))
    return pids


def _log_lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _log_line(stderr: str, msg: str) -> dict[str, object]:
    found = [line for line in _log_lines(stderr) if line["msg"] == msg]
    assert found, f"no {msg!r} line in:\n{stderr}"
    return found[0]


@pytest.fixture
def port() -> Iterator[int]:
    chosen = free_port()
    yield chosen
    assert _port_is_free(chosen), "a process still holds the port after the test"


# --- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "port"),
    [("0", "50051"), ("65", "50051"), ("two", "50051"), ("2", "0")],
    ids=["zero", "too-many", "word", "ephemeral-port"],
)
def test_bad_workers_setting_is_one_line_naming_workers(value: str, port: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(FAKE_ENV | {"WORKERS": value, "GRPC_PORT": port})
    assert str(raised.value).startswith("WORKERS: ")


def test_workers_metrics_ports_must_not_include_the_grpc_port() -> None:
    env = FAKE_ENV | {"WORKERS": "3", "METRICS_PORT": "9464", "GRPC_PORT": "9466"}
    with pytest.raises(SettingsError) as raised:
        load_settings(env)
    assert str(raised.value).startswith("METRICS_PORT: ")


def test_workers_default_to_one() -> None:
    assert load_settings(FAKE_ENV).workers == 1


@pytest.mark.parametrize("value", ["0.5", "601", "soon"], ids=["below-two-beats", "high", "word"])
def test_bad_heartbeat_timeout_is_one_line_naming_the_setting(value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(FAKE_ENV | {"WORKER_HEARTBEAT_TIMEOUT_SECONDS": value})
    assert str(raised.value).startswith("WORKER_HEARTBEAT_TIMEOUT_SECONDS: ")


def test_heartbeat_timeout_defaults_to_five_seconds() -> None:
    assert load_settings(FAKE_ENV).worker_heartbeat_timeout_seconds == 5.0
    env = FAKE_ENV | {"WORKER_HEARTBEAT_TIMEOUT_SECONDS": "2.5"}
    assert load_settings(env).worker_heartbeat_timeout_seconds == 2.5


@pytest.mark.slow
def test_workers_flag_is_checked_like_the_variable(port: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve", "--workers", "0"],
        env=_env(port),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("avatar-signer: configuration error: WORKERS: ")
    assert "Traceback" not in result.stderr


# --- serving and draining ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_two_workers_share_the_port_and_drain_on_signal(port: int, signum: int) -> None:
    supervisor = _start(port, "--workers", "2")
    try:
        wait_serving(f"127.0.0.1:{port}", time.monotonic() + 20)
        # Both workers (not the supervisor) listen on the one port.
        deadline = time.monotonic() + 10
        while len(_listeners(port)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _listeners(port)
        assert len(workers) == 2 and supervisor.pid not in workers
        # Many connections: the kernel spreads them over the workers; all calls succeed.
        for index in range(8):
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                reply = pb_grpc.AvatarSignerStub(channel).CreateDownloadUrl(
                    pb.CreateDownloadUrlRequest(user_id=f"user{index}"), timeout=5
                )
                assert reply.key == f"profiles/user{index}/avatar"
        supervisor.send_signal(signum)
        _, stderr = supervisor.communicate(timeout=20)
    finally:
        supervisor.kill()
    assert supervisor.returncode == 0, stderr
    assert set(_log_line(stderr, "workers serving")["pids"]) == workers  # type: ignore[arg-type]
    messages = [line["msg"] for line in _log_lines(stderr)]
    assert messages.count("serving") == 2
    assert messages.count("shutting down") == 2 and messages.count("stopped") == 2
    assert _log_line(stderr, "workers stopped")["clean"] is True
    assert "Traceback" not in stderr


def _two_free_ports() -> int:
    """A port p such that p and p + 1 are both free (for METRICS_PORT with two workers)."""
    for _ in range(50):
        first = free_port()
        if first < 65535 and _port_is_free(first + 1):
            return first
    raise AssertionError("no two consecutive free ports")


@pytest.mark.slow
def test_each_worker_serves_metrics_on_its_own_port_and_sighup_reaches_them(port: int) -> None:
    metrics = _two_free_ports()
    supervisor = _start(port, "--workers", "2", METRICS_PORT=str(metrics))
    try:
        wait_serving(f"127.0.0.1:{port}", time.monotonic() + 20)
        supervisor.send_signal(signal.SIGHUP)  # reload: nobody stops
        time.sleep(0.5)
        assert supervisor.poll() is None
        wait_serving(f"127.0.0.1:{port}", time.monotonic() + 5)
        supervisor.send_signal(signal.SIGTERM)
        _, stderr = supervisor.communicate(timeout=20)
    finally:
        supervisor.kill()
    assert supervisor.returncode == 0, stderr
    serving = [line for line in _log_lines(stderr) if line["msg"] == "serving"]
    assert sorted(str(line.get("metrics_address")) for line in serving) == [
        f"127.0.0.1:{metrics}",
        f"127.0.0.1:{metrics + 1}",
    ]


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in found.stdout.split()]


@pytest.mark.slow
def test_sighup_while_workers_start_does_not_kill_them(port: int) -> None:
    supervisor = _start(port, "--workers", "2")
    try:
        deadline = time.monotonic() + 10
        while not _children(supervisor.pid):  # the supervisor has spawned its workers,
            assert time.monotonic() < deadline
            time.sleep(0.01)
        supervisor.send_signal(signal.SIGHUP)  # which are still importing: no handler yet
        wait_serving(f"127.0.0.1:{port}", time.monotonic() + 20)
        assert supervisor.poll() is None
        supervisor.send_signal(signal.SIGTERM)
        _, stderr = supervisor.communicate(timeout=20)
    finally:
        supervisor.kill()
    assert supervisor.returncode == 0, stderr


@pytest.mark.slow
def test_busy_port_fails_loudly_in_workers_mode_too(port: int) -> None:
    # Even another group of reuse-port workers must not be joined silently.
    first = _start(port, "--workers", "2")
    try:
        wait_serving(f"127.0.0.1:{port}", time.monotonic() + 20)
        second = subprocess.run(
            [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve", "--workers", "2"],
            env=_env(port),
            capture_output=True,
            text=True,
            timeout=30,
        )
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=20)
    finally:
        first.kill()
    assert second.returncode == 2
    assert second.stderr == (
        f"avatar-signer: cannot start: GRPC_PORT: cannot listen on 127.0.0.1:{port} "
        "(in use or not allowed)\n"
    )


@pytest.mark.slow
def test_a_worker_dying_at_start_fails_the_start_up(port: int, tmp_path: Path) -> None:
    """Worker 2 exits before serving: the supervisor stops worker 1 and exits 2, one line."""
    (tmp_path / "sitecustomize.py").write_text(
        f"import os\nif os.environ.get({WORKER_ENV!r}, '').startswith('1:'):\n    os._exit(3)\n"
    )
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    supervisor = _start(port, "--workers", "2", PYTHONPATH=pythonpath)
    try:
        _, stderr = supervisor.communicate(timeout=30)
    finally:
        supervisor.kill()
    assert supervisor.returncode == 2
    assert (
        "avatar-signer: cannot start: WORKERS: worker 2 of 2 exited with status 3 before serving"
        in stderr.splitlines()
    )
    assert "Traceback" not in stderr
    assert "workers serving" not in stderr


@pytest.mark.slow
def test_a_worker_dying_while_serving_stops_the_rest_with_status_1(port: int) -> None:
    supervisor = _start(port, "--workers", "2")
    try:
        wait_serving(f"127.0.0.1:{port}", time.monotonic() + 20)
        deadline = time.monotonic() + 10
        while len(_listeners(port)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = min(_listeners(port))
        os.kill(victim, signal.SIGKILL)
        _, stderr = supervisor.communicate(timeout=20)
    finally:
        supervisor.kill()
    assert supervisor.returncode == 1
    died = _log_line(stderr, "worker exited unexpectedly; stopping the others")
    assert died["status"] == -signal.SIGKILL
    assert _log_line(stderr, "workers stopped")["clean"] is False
    assert "stopped" in [line["msg"] for line in _log_lines(stderr)]  # the survivor drained


@pytest.mark.slow
def test_workers_stop_when_the_supervisor_is_killed(port: int) -> None:
    supervisor = _start(port, "--workers", "2")
    try:
        wait_serving(f"127.0.0.1:{port}", time.monotonic() + 20)
        supervisor.kill()
        supervisor.communicate(timeout=10)
        deadline = time.monotonic() + 15
        while _listeners(port) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        supervisor.kill()
    assert not _listeners(port)


@pytest.mark.slow
def test_one_worker_is_a_plain_server_without_supervisor(port: int) -> None:
    server = _start(port, "--workers", "1")
    try:
        wait_serving(f"127.0.0.1:{port}", time.monotonic() + 20)
        assert _listeners(port) == {server.pid}
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=20)
    finally:
        server.kill()
    assert server.returncode == 0
    assert "workers serving" not in stderr


@pytest.mark.slow
def test_busy_health_port_fails_loudly_in_workers_mode(port: int) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        supervisor = _start(port, "--workers", "2", HEALTH_PORT=str(taken))
        _, stderr = supervisor.communicate(timeout=30)
    assert supervisor.returncode == 2
    assert "HEALTH_PORT" in stderr and "Traceback" not in stderr


# --- hung workers ----------------------------------------------------------------------------

HEARTBEAT_TIMEOUT = 2  # seconds; small, so a hang is found quickly and a false alarm shows


def _two_workers(port: int) -> set[int]:
    """Once the supervisor serves on `port`: the PIDs of its two workers."""
    wait_serving(f"127.0.0.1:{port}", time.monotonic() + 20)
    deadline = time.monotonic() + 10
    while len(_listeners(port)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _listeners(port)
    assert len(workers) == 2
    return workers


def _kill_all(supervisor: subprocess.Popen[str]) -> None:
    """SIGKILL a supervisor still running and its workers (a stopped process obeys nothing
    else); the workers first, while they are its children, so no reused PID is hit."""
    if supervisor.poll() is None:
        for pid in _children(supervisor.pid):
            os.kill(pid, signal.SIGKILL)
    supervisor.kill()


@contextlib.contextmanager
def _two_watched_workers(port: int, log: Path) -> Iterator[subprocess.Popen[str]]:
    """The supervisor of two workers with a short heartbeat timeout, stderr to `log` (a pipe
    nobody reads would stall busy workers' logs); killed with its workers if still running."""
    with log.open("w") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve", "--workers", "2"],
            env=_env(port, WORKER_HEARTBEAT_TIMEOUT_SECONDS=str(HEARTBEAT_TIMEOUT)),
            stdin=subprocess.DEVNULL,
            stderr=out,
            text=True,
        )
        try:
            yield supervisor
        finally:
            _kill_all(supervisor)


@pytest.mark.slow
def test_a_stopped_worker_is_found_killed_and_the_rest_drained_with_status_1(
    port: int, tmp_path: Path
) -> None:
    """SIGSTOP keeps a worker's share of the port (its callers wait out their deadlines);
    the supervisor notices the silence, SIGKILLs it, drains the other and exits 1."""
    log = tmp_path / "stderr.log"
    with _two_watched_workers(port, log) as supervisor:
        victim = min(_two_workers(port))
        os.kill(victim, signal.SIGSTOP)
        # Found within the timeout plus one look; 10 s more for the machine and the drain.
        supervisor.wait(timeout=HEARTBEAT_TIMEOUT + 10)
    stderr = log.read_text()
    assert supervisor.returncode == 1, stderr
    hung = _log_line(stderr, "worker hung; killing it")
    assert hung["level"] == "ERROR"
    assert hung["pid"] == victim
    assert hung["timeout_seconds"] == HEARTBEAT_TIMEOUT
    assert float(hung["silent_seconds"]) >= HEARTBEAT_TIMEOUT  # type: ignore[arg-type]  # rounded
    serving = _log_line(stderr, "workers serving")["pids"]
    assert isinstance(serving, list) and hung["worker"] == serving.index(victim) + 1
    died = _log_line(stderr, "worker exited unexpectedly; stopping the others")
    assert died["worker"] == hung["worker"] and died["status"] == -signal.SIGKILL
    assert _log_line(stderr, "workers stopped")["clean"] is False
    messages = [line["msg"] for line in _log_lines(stderr)]
    assert messages.count("stopped") == 1  # the other worker drained
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)  # killed and reaped


def _busy_calls(port: int, seconds: float) -> int:
    """Single and batch calls from 8 threads on their own connections for `seconds`
    (at most 4,000 calls, each must succeed); how many were made."""
    deadline = time.monotonic() + seconds

    def caller(index: int) -> int:
        ok = 0
        options = [("grpc.use_local_subchannel_pool", 1)]  # connections spread over workers
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            for call in range(500):
                if time.monotonic() > deadline:
                    break
                if call % 2:
                    ids = [f"user{index}-{call}-{n}" for n in range(100)]
                    request = pb.BatchCreateDownloadUrlsRequest(user_ids=ids)
                    stub.BatchCreateDownloadUrls(request, timeout=5)
                else:
                    stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="u"), timeout=5)
                ok += 1
        return ok

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(caller, range(8)))


@pytest.mark.slow
def test_busy_workers_are_not_taken_for_hung(port: int, tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with _two_watched_workers(port, log) as supervisor:
        _two_workers(port)
        assert _busy_calls(port, seconds=2 * HEARTBEAT_TIMEOUT) > 0
        assert supervisor.poll() is None
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=20)
    stderr = log.read_text()
    assert "worker hung" not in stderr
    assert supervisor.returncode == 0, stderr
    assert _log_line(stderr, "workers stopped")["clean"] is True


@pytest.mark.slow
def test_a_paused_pod_is_not_taken_for_a_hung_worker(port: int, tmp_path: Path) -> None:
    """Every process stopped longer than the timeout (Ctrl-Z, a frozen container), the
    supervisor resumed a moment before its workers: no worker is killed."""
    log = tmp_path / "stderr.log"
    with _two_watched_workers(port, log) as supervisor:
        workers = _two_workers(port)
        for pid in (*workers, supervisor.pid):
            os.kill(pid, signal.SIGSTOP)
        time.sleep(HEARTBEAT_TIMEOUT + 1)
        os.kill(supervisor.pid, signal.SIGCONT)
        time.sleep(0.2)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):  # the failure: already killed
                os.kill(pid, signal.SIGCONT)
        time.sleep(HEARTBEAT_TIMEOUT)
        supervisor.send_signal(signal.SIGTERM)  # (nothing, if it has exited already)
        supervisor.wait(timeout=20)
    stderr = log.read_text()
    assert "worker hung" not in stderr
    assert supervisor.returncode == 0, stderr
