"""A second language: the Node example (grpc-js + proto-loader on our .proto) round-trips."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import run as make_run
from servers import ServerThread

pytestmark = pytest.mark.slow  # starts the service and other programs as processes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node"


def _node(*args: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "Node.js is required (Node 20)"
    assert (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run make install (npm ci)"
    return subprocess.run(
        [node, str(EXAMPLE / "upload_and_fetch.js"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_node_client_uploads_and_fetches_back(s3_server: ServerThread, tmp_path: Path) -> None:
    """Direct mode: the upload is the avatar."""
    image = tmp_path / "avatar.png"
    image.write_bytes(make_run.sample_png(20, 20))
    user = "node-" + uuid.uuid4().hex[:8]
    result = _node("--target", s3_server.target, "--user", user, "--file", str(image))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "key": f"profiles/{user}/avatar",
        "bytes": image.stat().st_size,
        "same": True,
        "confirmed": None,
    }
    assert "X-Amz-Signature" not in result.stdout + result.stderr


def test_node_client_confirms_a_verified_upload(
    verified_server: ServerThread, tmp_path: Path
) -> None:
    image = tmp_path / "avatar.png"
    image.write_bytes(make_run.sample_png(24, 12))
    user = "node-" + uuid.uuid4().hex[:8]
    result = _node("--target", verified_server.target, "--user", user, "--file", str(image))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert (printed["key"], printed["same"]) == (f"profiles/{user}/avatar", True)
    assert (printed["confirmed"]["width"], printed["confirmed"]["height"]) == (24, 12)


def test_node_client_reports_invalid_argument(s3_server: ServerThread, tmp_path: Path) -> None:
    image = tmp_path / "avatar.png"
    image.write_bytes(make_run.sample_png(4, 4))
    result = _node("--target", s3_server.target, "--user", "../etc", "--file", str(image))
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "user_id" in result.stderr
