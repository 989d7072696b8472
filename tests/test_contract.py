"""The contract: committed stubs are fresh, buf lint is clean, manual calls work via grpcurl."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gen_protos
import pytest
from servers import ServerThread

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    generated = gen_protos.generate(tmp_path)
    assert generated, "protoc produced nothing"
    committed = ROOT / "client"
    for path in generated:
        relative = path.relative_to(tmp_path)
        assert (committed / relative).read_bytes() == path.read_bytes(), (
            f"{relative} is stale: run `make protos` and commit the result"
        )
    committed_files = {
        p.relative_to(committed)
        for p in committed.rglob("*")
        if p.name.endswith(gen_protos.GENERATED_SUFFIXES)
    }
    assert committed_files == {p.relative_to(tmp_path) for p in generated}


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is not installed (make install)"
    return path


@pytest.mark.slow
def test_buf_lint_is_clean() -> None:
    result = subprocess.run(
        [_tool("buf"), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _grpcurl(
    server: ServerThread, *after: str, data: object = None
) -> subprocess.CompletedProcess[str]:
    """grpcurl -plaintext [-d JSON] HOST:PORT AFTER..., exactly as a person types it."""
    options = [] if data is None else ["-d", json.dumps(data)]
    return subprocess.run(
        [_tool("grpcurl"), "-plaintext", *options, server.target, *after],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_reflection_lists_the_services_for_grpcurl(server: ServerThread) -> None:
    result = _grpcurl(server, "list")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= {
        "avatarsigner.v1.AvatarSigner",
        "grpc.health.v1.Health",
    }
    described = _grpcurl(server, "describe", "avatarsigner.v1.AvatarSigner")
    assert "rpc BatchCreateDownloadUrls" in described.stdout


@pytest.mark.slow
@pytest.mark.parametrize("service", ["", "avatarsigner.v1.AvatarSigner"])
def test_health_is_serving_for_grpcurl(server: ServerThread, service: str) -> None:
    result = _grpcurl(server, "grpc.health.v1.Health/Check", data={"service": service})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


@pytest.mark.slow
def test_grpcurl_call_with_json_body(server: ServerThread) -> None:
    body = {"user_id": "alice", "content_type": "image/png", "content_length": 10, "ttl": "60s"}
    result = _grpcurl(server, "avatarsigner.v1.AvatarSigner/CreateUploadUrl", data=body)
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["method"] == "PUT"
    assert response["key"] == f"uploads/alice/{response['upload_id']}"
    assert "X-Amz-Expires=60" in response["url"]


@pytest.mark.slow
def test_grpcurl_shows_field_violations(server: ServerThread) -> None:
    result = _grpcurl(
        server, "avatarsigner.v1.AvatarSigner/CreateDownloadUrl", data={"user_id": "../etc"}
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stdout + result.stderr
    assert "user_id" in result.stdout + result.stderr
