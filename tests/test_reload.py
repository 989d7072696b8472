"""SIGHUP reloads the callers file without dropping calls; a bad file keeps the old one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import leaks
import pytest
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.app import server as app
from guarded import caller, code_of, write_callers
from servers import FAKE_ENV, ServerThread, access_control, free_port, settings_from
from test_metrics import scrape

STEADY = caller("profile-service", ["CreateDownloadUrl"])
ROTATING = caller("feed-service", ["CreateDownloadUrl"])


def test_reload_under_a_steady_stream_drops_no_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_callers(tmp_path / "callers.toml", [STEADY])
    running = ServerThread(settings_from(CALLERS_FILE=str(path)))
    codes: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        with running.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            while not stop.is_set():
                codes.append(code_of(stub, "CreateDownloadUrl", STEADY.metadata()))

    caplog.set_level(logging.INFO, logger="avatarsigner.callers")
    worker = threading.Thread(target=stream)
    worker.start()
    try:
        with running.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            for round_ in range(10):
                write_callers(path, [STEADY, ROTATING] if round_ % 2 == 0 else [STEADY])
                running.server.reload()
                expected = "OK" if round_ % 2 == 0 else "UNAUTHENTICATED"
                assert code_of(stub, "CreateDownloadUrl", ROTATING.metadata()) == expected
            path.write_text("[[caller]]\nname = 'broken'\n")  # no allow, no token
            running.server.reload()
            assert code_of(stub, "CreateDownloadUrl", STEADY.metadata()) == "OK"
    finally:
        stop.set()
        worker.join(10)
        running.stop()
    assert len(codes) > 10 and set(codes) == {"OK"}
    problems = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(problems) == 1 and "callers file not reloaded" in problems[0].getMessage()
    assert "CALLERS_FILE" in problems[0].problem  # type: ignore[attr-defined]


# -- the real process and the real signal --------------------------------------------------


class Serve:
    """`avatar-signer serve` in a subprocess; its stderr lines collected as they come."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        environ = {k: v for k, v in os.environ.items() if k not in FAKE_ENV}
        environ |= FAKE_ENV | {"GRPC_PORT": str(self.port)} | env
        self.process = subprocess.Popen(
            [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
            env=environ,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 20) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    parsed: dict[str, object] = json.loads(line)
                    return parsed
            assert self.process.poll() is None, "\n".join(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} in:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(15)
        finally:
            self.process.kill()
        self._reader.join(5)
        return code


@pytest.fixture
def serve_process() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for each in started:
        each.stop()


def test_a_changed_callers_file_is_reloaded_without_sighup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "FILE_CHECK_SECONDS", 0.1)
    path = write_callers(tmp_path / "callers.toml", [STEADY])
    running = ServerThread(settings_from(CALLERS_FILE=str(path)))
    try:
        with running.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            assert code_of(stub, "CreateDownloadUrl", ROTATING.metadata()) == "UNAUTHENTICATED"
            # As Kubernetes updates a mounted ConfigMap: a new file swapped in by rename.
            write_callers(tmp_path / "callers.new", [STEADY, ROTATING]).replace(path)
            deadline = time.monotonic() + 10
            while code_of(stub, "CreateDownloadUrl", ROTATING.metadata()) != "OK":
                assert time.monotonic() < deadline, "the changed file was not picked up"
                time.sleep(0.1)
            assert code_of(stub, "CreateDownloadUrl", STEADY.metadata()) == "OK"
            assert running.server.access.reloader.reload_if_changed() is False  # nothing new since
    finally:
        running.stop()


def test_sighup_reloads_the_callers_file_of_a_running_server(
    tmp_path: Path, serve_process: list[Serve]
) -> None:
    path = write_callers(tmp_path / "callers.toml", [STEADY])
    serve = Serve(CALLERS_FILE=str(path))
    serve_process.append(serve)
    serving = serve.wait_for('"msg": "serving"')
    assert serving["callers"] == ["profile-service"] and serving["tls"] == "off"
    with grpc.insecure_channel(f"127.0.0.1:{serve.port}") as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        assert code_of(stub, "CreateDownloadUrl", STEADY.metadata()) == "OK"
        assert code_of(stub, "CreateDownloadUrl", ROTATING.metadata()) == "UNAUTHENTICATED"

        write_callers(path, [STEADY, ROTATING])
        serve.process.send_signal(signal.SIGHUP)
        reloaded = serve.wait_for("callers file reloaded")
        assert reloaded["callers"] == ["profile-service", "feed-service"]
        assert code_of(stub, "CreateDownloadUrl", ROTATING.metadata()) == "OK"

        path.write_text("this is not toml [")
        serve.process.send_signal(signal.SIGHUP)
        problem = serve.wait_for("callers file not reloaded")
        assert problem["level"] == "ERROR" and "is not valid TOML" in str(problem["problem"])
        assert code_of(stub, "CreateDownloadUrl", ROTATING.metadata()) == "OK"
        assert code_of(stub, "CreateDownloadUrl", STEADY.metadata()) == "OK"

    assert serve.stop() == 0
    stderr = "\n".join(serve.lines)
    assert "Traceback" not in stderr
    # The one warning: token callers over plaintext (this test runs without TLS).
    warnings = [json.loads(line)["msg"] for line in serve.lines if '"WARNING"' in line]
    assert len(warnings) == 1 and "bearer tokens travel in cleartext" in warnings[0]
    assert leaks.find(serve.lines) == []
    assert sum('"decision": "allowed"' in line for line in serve.lines) == 4


def test_without_callers_file_start_up_warns(serve_process: list[Serve]) -> None:
    serve = Serve()
    serve_process.append(serve)
    serve.wait_for('"msg": "serving"')
    assert serve.stop() == 0
    warnings = [json.loads(line)["msg"] for line in serve.lines if '"WARNING"' in line]
    assert any("CALLERS_FILE is not set" in w for w in warnings)
    assert any("no TLS and no CALLERS_FILE" in w for w in warnings)


@pytest.mark.slow
def test_malformed_callers_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "callers.toml"
    path.write_text('[[caller]]\nname = "a"\ntoken_sha256 = "abc"\nallow = ["CreateUploadUrl"]\n')
    environ = {k: v for k, v in os.environ.items() if k not in FAKE_ENV}
    environ |= FAKE_ENV | {"CALLERS_FILE": str(path)}
    result = subprocess.run(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CALLERS_FILE" in lines[0] and "token_sha256" in lines[0]


def test_reloads_from_sighup_and_the_change_check_never_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_callers(tmp_path / "callers.toml", [STEADY])
    security = access_control(settings_from(CALLERS_FILE=str(path)))
    assert security.callers is not None
    active, most = [0], [0]
    original = security.callers.reload

    def slow_reload() -> bool:
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.2)
        active[0] -= 1
        return original()

    monkeypatch.setattr(security.callers, "reload", slow_reload)
    write_callers(path, [STEADY, ROTATING])
    threads = [threading.Thread(target=security.reloader.reload_if_changed)] + [
        threading.Thread(target=security.reloader.reload) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most[0] == 1
    assert [c.name for c in security.callers.table.callers] == ["profile-service", "feed-service"]


def _hash16(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def test_failed_reload_is_counted_and_the_version_in_force_is_a_metric(tmp_path: Path) -> None:
    """A removal with a typo must not pass unnoticed: the failure is a counter, and the
    version in force (fingerprint and load time) is a gauge an alert can compare."""
    path = write_callers(tmp_path / "callers.toml", [STEADY, ROTATING])
    first = _hash16(path)
    running = ServerThread(settings_from(CALLERS_FILE=str(path)))
    try:

        def files() -> dict[str, object]:
            metrics = scrape(running.server.metrics_port)
            return {
                "failures": metrics[
                    ("avatarsigner_config_reload_failures_total", (("file", "callers"),))
                ],
                "loaded_at": metrics[
                    ("avatarsigner_config_loaded_timestamp_seconds", (("file", "callers"),))
                ],
                "versions": {
                    dict(labels)["sha256"]
                    for (name, labels), _ in metrics.items()
                    if name == "avatarsigner_config_loaded_info"
                    and dict(labels)["file"] == "callers"
                },
            }

        at_start = files()
        assert at_start["failures"] == 0 and at_start["versions"] == {first}
        path.write_text(path.read_text() + "[[caller]\n")  # "removing" a caller, with a typo
        running.server.reload()
        failed = files()
        assert failed["failures"] == 1
        assert failed["versions"] == {first} and failed["loaded_at"] == at_start["loaded_at"]
        write_callers(path, [STEADY])
        running.server.reload()
        fixed = files()
        assert fixed["failures"] == 1 and fixed["versions"] == {_hash16(path)} != {first}
        assert fixed["loaded_at"] >= at_start["loaded_at"]  # type: ignore[operator]
    finally:
        running.stop()
