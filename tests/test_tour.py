"""`make run`: every command it prints works as pasted, and Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import free_port

pytestmark = pytest.mark.slow  # starts the service and other programs as processes

ROOT = Path(__file__).resolve().parent.parent


def _read_tour(process: subprocess.Popen[str], deadline: float) -> list[str]:
    """Read stdout until the last tour command is printed; return the printed lines."""
    assert process.stdout is not None
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.rstrip().endswith("avatar-signer check)"):  # the last command
            return lines
    raise AssertionError("make run did not print its tour:\n" + "\n".join(lines))


def test_make_run_prints_commands_that_work_as_pasted(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "dev" / "run.py"),
            "--port",
            str(port),
            "--workdir",
            str(tmp_path / "run"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=os.environ | {"METRICS_PORT": "0"},  # tests must not need 9464 free
    )
    try:
        lines = _read_tour(process, time.monotonic() + 90)
        start = next(i for i, line in enumerate(lines) if line.startswith("# 1."))
        commands = [line for line in lines[start:] if line and not line.startswith("#")]
        assert len(commands) >= 15, lines
        script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
        # A clean shell, as a person's terminal would be: no venv activated.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
        result = subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "avatarsigner.v1.AvatarSigner" in result.stdout
        assert '"status": "SERVING"' in result.stdout
        assert result.stdout.count("uploaded") == 2  # the avatar and the fake
        assert '"key": "profiles/alice/avatar"' in result.stdout  # confirmed
        assert "second PUT: 412" in result.stdout  # the upload URL writes once
        assert "same bytes" in result.stdout
        assert "NOT_AN_IMAGE" in result.stderr  # grpcurl prints the error details there
        assert "refused, as it should be" in result.stdout
        assert '"key": "profiles/bob/avatar"' in result.stdout  # the client confirmed too
        assert "0 failed" in result.stdout  # avatar-signer check: the three-way split holds

        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # a failed assertion: still stop the S3 and the server
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, stderr
    assert '"msg": "stopped"' in stderr
    assert "Traceback" not in stderr
    leftover = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "run")], capture_output=True, text=True
    )
    assert leftover.stdout.strip() == "", "a process of make run outlived it"
    assert not list((tmp_path / "run").glob("run-*")), "the run's S3 data and env file remain"
