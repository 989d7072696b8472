"""`make run`: the web page it prints first serves, the bucket lets only that page's origin
upload, every command it prints works as pasted, and Ctrl-C stops everything."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class _Run:
    """dev/run.py as `make run` starts it, and the lines it printed up to its tour's end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "dev" / "run.py"),
                "--port",
                str(free_port()),
                "--web-port",
                str(free_port()),
                "--workdir",
                str(workdir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=os.environ | {"METRICS_PORT": "0"},  # tests must not need 9464 free
        )
        self.lines = _read_tour(self.process, time.monotonic() + 90)

    def stop(self) -> None:
        if self.process.poll() is None:  # a failed test: still stop the S3 and the server
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Run]:
    run = _Run(tmp_path_factory.mktemp("make-run") / "run")
    try:
        yield run
    finally:
        run.stop()


def test_the_first_line_is_the_web_page_which_serves_the_sign_in_page(make_run: _Run) -> None:
    first = make_run.lines[0]
    match = re.fullmatch(r"Open (http://127\.0\.0\.1:\d+)/ in a browser: .*", first)
    assert match, make_run.lines
    origin = match.group(1)
    with urllib.request.urlopen(f"{origin}/", timeout=10) as response:  # follows to /signin
        assert response.url == f"{origin}/signin"
        page = response.read().decode()
    assert "<h1>Sign in</h1>" in page
    with urllib.request.urlopen(f"{origin}/vendor/uppy/uppy.min.mjs", timeout=10) as response:
        assert response.status == 200  # the Uppy page has its bundle


def _origins(run: _Run) -> tuple[str, str]:
    """The page's origin and the S3 endpoint, as printed."""
    printed = "\n".join(run.lines)
    page = re.search(r"^Open (http://[\d.:]+)/ ", printed, re.M)
    s3 = re.search(r"S3 at (http://[\d.:]+),", printed)
    assert page and s3, run.lines
    return page.group(1), s3.group(1)


def test_the_bucket_lets_only_the_pages_origin_upload(make_run: _Run) -> None:
    """The CORS rule is on the bucket: SeaweedFS without one would answer every origin."""
    origin, s3 = _origins(make_run)
    foreign = origin.rsplit(":", 1)[0] + ":1"
    assert _preflight(f"{s3}/avatars/uploads/alice/x", origin) == (200, origin)
    assert _preflight(f"{s3}/avatars/uploads/alice/x", foreign) == (403, None)


def test_a_person_can_upload_through_the_page(make_run: _Run) -> None:
    """What the profile page does, step by step, against what `make run` started: the app
    (open service, no token), the PUT from the page's origin, the confirm, the download."""
    origin, _ = _origins(make_run)
    sample = (make_run.workdir / "sample-avatar.png").read_bytes()
    app = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())

    def api(path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Origin": origin}
        request = urllib.request.Request(f"{origin}{path}", data=data, headers=headers)
        with app.open(request, timeout=10) as response:
            return json.loads(response.read())

    api("/api/signin", {"user": "dora"})
    checksum = base64.b64encode(hashlib.sha256(sample).digest()).decode()
    signed = api(
        "/api/upload-url",
        {"content_type": "image/png", "content_length": len(sample), "checksum_sha256": checksum},
    )
    headers = {k: v for k, v in signed["headers"].items() if k.lower() != "content-length"}
    put = urllib.request.Request(
        signed["url"], data=sample, method="PUT", headers=headers | {"Origin": origin}
    )
    with urllib.request.urlopen(put, timeout=10) as response:
        assert response.headers["Access-Control-Allow-Origin"] == origin
    confirmed = api("/api/confirm", {"upload_id": signed["upload_id"]})
    assert (confirmed["width"], confirmed["height"]) == (48, 48)
    with urllib.request.urlopen(api("/api/avatar-url")["url"], timeout=10) as response:
        assert response.read() == sample


def _preflight(url: str, origin: str) -> tuple[int, str | None]:
    request = urllib.request.Request(
        url,
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type,if-none-match,x-amz-checksum-sha256",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Access-Control-Allow-Origin")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get("Access-Control-Allow-Origin")


def test_make_run_prints_commands_that_work_as_pasted(make_run: _Run, tmp_path: Path) -> None:
    lines = make_run.lines
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


def test_ctrl_c_stops_everything(make_run: _Run) -> None:
    """Last in this module: it stops the run the tests above used."""
    make_run.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, stderr = make_run.process.communicate(timeout=60)
    assert make_run.process.returncode == 0, stderr
    assert '"msg": "stopped"' in stderr
    assert "Traceback" not in stderr
    leftover = subprocess.run(
        ["pgrep", "-f", str(make_run.workdir)], capture_output=True, text=True
    )
    assert leftover.stdout.strip() == "", "a process of make run outlived it"
    assert not list(make_run.workdir.glob("run-*")), "the run's S3 data and env file remain"
    origin = _origins(make_run)[0]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{origin}/signin", timeout=5)  # the web app stopped too
