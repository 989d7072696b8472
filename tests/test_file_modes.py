"""Files the service trusts must not be writable by others; secrets should not be readable
by everyone (real server: start-up, reload, and the `serve` process's warnings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.settings import SettingsError
from guarded import caller, code_of, write_callers
from servers import FAKE_ENV, ServerThread, free_port, serve_process, settings_from
from test_jwt import HS_SECRET, JWT_ENV, RSA_KEY, _jwk, _jwks

PROFILE = caller("profile-service", ["CreateDownloadUrl"])
INTRUDER = caller("intruder", ["CreateDownloadUrl"])


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646, 0o622], ids=lambda m: f"{m:04o}")
def test_callers_file_writable_by_others_is_refused_at_start_up(tmp_path: Path, mode: int) -> None:
    path = write_callers(tmp_path / "callers.toml", [PROFILE])
    path.chmod(mode)
    with pytest.raises(SettingsError) as caught:
        ServerThread(settings_from(CALLERS_FILE=str(path)))
    assert caught.value.name == "CALLERS_FILE"
    assert "writable" in str(caught.value)


@pytest.mark.parametrize("mode", [0o644, 0o444, 0o440, 0o400, 0o600], ids=lambda m: f"{m:04o}")
def test_callers_file_of_kubernetes_modes_is_accepted(tmp_path: Path, mode: int) -> None:
    path = write_callers(tmp_path / "callers.toml", [PROFILE])
    path.chmod(mode)
    ServerThread(settings_from(CALLERS_FILE=str(path))).stop()


def test_kubernetes_symlinked_file_is_judged_by_its_target(tmp_path: Path) -> None:
    """A ConfigMap volume: callers.toml -> ..data/callers.toml; the symlink's own mode is 0777."""
    data = tmp_path / "..data"
    data.mkdir()
    write_callers(data / "callers.toml", [PROFILE]).chmod(0o444)
    (tmp_path / "callers.toml").symlink_to(data / "callers.toml")
    ServerThread(settings_from(CALLERS_FILE=str(tmp_path / "callers.toml"))).stop()


def test_reload_refuses_a_callers_file_made_writable_by_others(tmp_path: Path) -> None:
    path = write_callers(tmp_path / "callers.toml", [PROFILE])
    running = ServerThread(settings_from(CALLERS_FILE=str(path)))
    try:
        write_callers(path, [PROFILE, INTRUDER])
        path.chmod(0o666)
        running.server.reload()
        with running.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            assert code_of(stub, "CreateDownloadUrl", INTRUDER.metadata()) == "UNAUTHENTICATED"
            assert code_of(stub, "CreateDownloadUrl", PROFILE.metadata()) == "OK"
    finally:
        running.stop()


def test_jwks_and_secret_files_writable_by_others_are_refused(tmp_path: Path) -> None:
    jwks = _jwks(tmp_path / "jwks.json", _jwk(RSA_KEY.public_key(), "rsa-1"))
    jwks.chmod(0o666)
    with pytest.raises(SettingsError) as caught:
        ServerThread(settings_from(END_USER_JWT_JWKS_FILE=str(jwks), **JWT_ENV))
    assert caught.value.name == "END_USER_JWT_JWKS_FILE"
    secret = tmp_path / "jwt-secret"
    secret.write_text(HS_SECRET)
    secret.chmod(0o620)
    with pytest.raises(SettingsError) as caught:
        ServerThread(settings_from(END_USER_JWT_SECRET_FILE=str(secret), **JWT_ENV))
    assert caught.value.name == "END_USER_JWT_SECRET_FILE"


@pytest.mark.slow
def test_world_readable_secret_file_is_a_start_up_warning(tmp_path: Path) -> None:
    key_file, secret_file = tmp_path / "key-id", tmp_path / "secret"
    key_file.write_text(FAKE_ENV["S3_UPLOAD_KEY"])
    secret_file.write_text(FAKE_ENV["S3_UPLOAD_SECRET"])
    secret_file.chmod(0o644)
    env = {
        **{k: v for k, v in FAKE_ENV.items() if not k.startswith("S3_UPLOAD_")},
        "S3_UPLOAD_KEY_FILE": str(key_file),
        "S3_UPLOAD_SECRET_FILE": str(secret_file),
    }
    log = tmp_path / "serve.log"
    with serve_process(env, free_port(), log):
        pass
    warnings = [line for line in log.read_text().splitlines() if '"WARNING"' in line]
    assert any("S3_UPLOAD_SECRET_FILE" in line and "readable" in line for line in warnings)
    assert not any("S3_READ" in line for line in warnings)
