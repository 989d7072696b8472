"""Credential sources: one per identity, key files that rotate, roles renewed ahead of expiry,
and URLs that never outlive the credentials that signed them.

Role assumption runs against moto's STS in-process (what is judged is the refresh logic,
not a URL), with a clock the test controls: moto's own clock is pinned to it, so session
expiry moves with the test's time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import leaks
import moto.sts.models
import pytest
import seaweed_s3
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.credentials.key_files import FileCredentials
from avatarsigner_server.credentials.roles import RoleCredentials, default_sts_client
from avatarsigner_server.credentials.sources import StaticCredentials
from avatarsigner_server.credentials.watcher import CredentialWatcher, check_sources
from avatarsigner_server.errors import CredentialsUnavailable
from avatarsigner_server.settings import Settings, SettingsError
from avatarsigner_server.settings import load as load_settings
from avatarsigner_server.settings.identities import AssumedRole, KeyPairFiles
from avatarsigner_server.signing.key_pairs import Credentials
from avatarsigner_server.signing.url_signers import (
    BucketEndpoint,
    DownloadSigner,
    SignedUrl,
    UploadSigner,
)
from botocore.exceptions import EndpointConnectionError
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from moto import mock_aws
from s3http import request
from servers import FAKE_ENV, ServerThread, settings_from

UPLOAD_ROLE = "arn:aws:iam::123456789012:role/avatar-uploader"
READ_ROLE = "arn:aws:iam::123456789012:role/avatar-reader"
STATIC_KEYS = ("S3_UPLOAD_KEY", "S3_UPLOAD_SECRET", "S3_READ_KEY", "S3_READ_SECRET")


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(FAKE_ENV)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _without_upload_keys(**changes: str | None) -> dict[str, str]:
    return _env(S3_UPLOAD_KEY=None, S3_UPLOAD_SECRET=None, **changes)


class SecretVolume:
    """A directory laid out as kubelet lays out a Secret volume, and its atomic update.

    `NAME -> ..data/NAME`, `..data -> ..<version>/`; an update writes a new version
    directory, points `..data_tmp` at it, renames that over `..data`, then removes the old
    version, exactly the order of kubelet's AtomicWriter.
    """

    def __init__(self, root: Path, files: Mapping[str, str]) -> None:
        self.root = root
        self.root.mkdir(parents=True)
        self._version: Path | None = None
        self.update(files)
        for name in files:
            os.symlink(f"..data/{name}", root / name)

    def update(self, files: Mapping[str, str]) -> None:
        version = self.root / f"..version_{uuid.uuid4().hex}"
        version.mkdir()
        for name, value in files.items():
            (version / name).write_text(value)
        os.symlink(version.name, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", self.root / "..data")
        if self._version is not None:
            for child in self._version.iterdir():
                child.unlink()
            self._version.rmdir()
        self._version = version

    def path(self, name: str) -> Path:
        return self.root / name


def _volume(tmp_path: Path, key: str, secret: str) -> SecretVolume:
    return SecretVolume(tmp_path / "uploader", {"access-key-id": key, "secret-access-key": secret})


def _key_files(volume: SecretVolume) -> KeyPairFiles:
    return KeyPairFiles(
        volume.path("access-key-id"),
        volume.path("secret-access-key"),
        "S3_UPLOAD_KEY_FILE",
        "S3_UPLOAD_SECRET_FILE",
    )


def _file_env(volume: SecretVolume) -> dict[str, str]:
    return _without_upload_keys(
        S3_UPLOAD_KEY_FILE=str(volume.path("access-key-id")),
        S3_UPLOAD_SECRET_FILE=str(volume.path("secret-access-key")),
    )


class Captured(logging.Handler):
    """Every record of the avatarsigner.credentials logger, whatever logging's setup."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, level: int = logging.WARNING) -> list[str]:
        return [
            record.getMessage() + " " + repr(vars(record))
            for record in self.records
            if record.levelno >= level
        ]


@pytest.fixture
def credential_log() -> Iterator[Captured]:
    handler = Captured()
    logger = logging.getLogger("avatarsigner.credentials")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# --- start-up: exactly one source per identity ----------------------------------------------


def _start_up(env: dict[str, str]) -> Settings:
    """What `serve` does before anything runs: the settings, then every key file read."""
    settings = load_settings(env)
    check_sources(settings)
    return settings


def test_static_keys_stay_the_default_source() -> None:
    settings = _start_up(FAKE_ENV)
    assert settings.uploader == Credentials(FAKE_ENV["S3_UPLOAD_KEY"], FAKE_ENV["S3_UPLOAD_SECRET"])


def test_key_files_are_read_at_start_up(tmp_path: Path) -> None:
    volume = _volume(tmp_path, "FILEKEY0001", "file-secret-0001")
    settings = _start_up(_file_env(volume))
    assert settings.uploader == _key_files(volume)
    assert isinstance(settings.reader, Credentials)


def test_role_arn_is_a_source() -> None:
    settings = _start_up(
        _without_upload_keys(S3_UPLOAD_ROLE_ARN=UPLOAD_ROLE, S3_ROLE_DURATION_SECONDS="2700")
    )
    assert settings.uploader == AssumedRole(UPLOAD_ROLE, "S3_UPLOAD_ROLE_ARN", 2700)


# (id, changes to FAKE_ENV, every variable the one-line error must name)
AMBIGUOUS = [
    ("key-and-key-file", {"S3_UPLOAD_KEY_FILE": "/k"}, ["S3_UPLOAD_KEY", "S3_UPLOAD_KEY_FILE"]),
    ("secret-and-role", {"S3_READ_ROLE_ARN": READ_ROLE}, ["S3_READ_KEY", "S3_READ_ROLE_ARN"]),
    (
        "files-and-role",
        {
            "S3_UPLOAD_KEY": None,
            "S3_UPLOAD_SECRET": None,
            "S3_UPLOAD_SECRET_FILE": "/s",
            "S3_UPLOAD_ROLE_ARN": UPLOAD_ROLE,
        },
        ["S3_UPLOAD_SECRET_FILE", "S3_UPLOAD_ROLE_ARN"],
    ),
]


@pytest.mark.parametrize(
    ("changes", "named"), [c[1:] for c in AMBIGUOUS], ids=[c[0] for c in AMBIGUOUS]
)
def test_two_sources_for_one_identity_stop_start_up(
    changes: dict[str, str | None], named: list[str]
) -> None:
    with pytest.raises(SettingsError) as caught:
        _start_up(_env(**changes))
    message = str(caught.value)
    assert "\n" not in message
    for name in named:
        assert name in caught.value.name
    assert message.startswith(caught.value.name + ": set only one credential source")


def _files(tmp_path: Path, key: str, secret: str) -> dict[str, str]:
    (tmp_path / "key").write_text(key)
    (tmp_path / "secret").write_text(secret)
    return {
        "S3_UPLOAD_KEY_FILE": str(tmp_path / "key"),
        "S3_UPLOAD_SECRET_FILE": str(tmp_path / "secret"),
    }


def _missing_files(tmp_path: Path) -> dict[str, str]:
    return {
        "S3_UPLOAD_KEY_FILE": str(tmp_path / "nope"),
        "S3_UPLOAD_SECRET_FILE": str(tmp_path / "nope2"),
    }


PASTED_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
BAD_SOURCES = [
    ("key-file-only", lambda p: {"S3_UPLOAD_KEY_FILE": str(p / "key")}, "S3_UPLOAD_SECRET_FILE"),
    ("key-file-missing", _missing_files, "S3_UPLOAD_KEY_FILE"),
    ("secret-file-empty", lambda p: _files(p, "FILEKEY0001", "\n"), "S3_UPLOAD_SECRET_FILE"),
    (
        "key-file-holds-a-secret",
        lambda p: _files(p, PASTED_SECRET, "file-secret-0001"),
        "S3_UPLOAD_KEY_FILE",
    ),
    ("role-arn-garbage", lambda p: {"S3_UPLOAD_ROLE_ARN": "avatar-up"}, "S3_UPLOAD_ROLE_ARN"),
    (
        "role-arn-of-a-user",
        lambda p: {"S3_UPLOAD_ROLE_ARN": "arn:aws:iam::123456789012:user/u"},
        "S3_UPLOAD_ROLE_ARN",
    ),
    (
        "role-duration-too-short",
        lambda p: {"S3_UPLOAD_ROLE_ARN": UPLOAD_ROLE, "S3_ROLE_DURATION_SECONDS": "60"},
        "S3_ROLE_DURATION_SECONDS",
    ),
    ("nothing-set", lambda p: {}, "S3_UPLOAD_KEY"),
]


@pytest.mark.parametrize(
    ("make", "named"), [c[1:] for c in BAD_SOURCES], ids=[c[0] for c in BAD_SOURCES]
)
def test_bad_source_names_its_variable(tmp_path: Path, make: Any, named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        _start_up(_without_upload_keys(**make(tmp_path)))
    assert caught.value.name == named
    assert "\n" not in str(caught.value)
    assert "file-secret-0001" not in str(caught.value)
    assert PASTED_SECRET not in str(caught.value)


def test_uploader_and_reader_must_be_two_identities(tmp_path: Path) -> None:
    same_role = _env(
        **dict.fromkeys(STATIC_KEYS),
        S3_UPLOAD_ROLE_ARN=UPLOAD_ROLE,
        S3_READ_ROLE_ARN=UPLOAD_ROLE,
    )
    with pytest.raises(SettingsError) as caught:
        _start_up(same_role)
    assert caught.value.name == "S3_READ_ROLE_ARN"

    # The reader's key id, read from a file, is the uploader's (from the environment).
    (tmp_path / "key").write_text(FAKE_ENV["S3_UPLOAD_KEY"])
    (tmp_path / "secret").write_text("another-secret-001")
    same_key = _env(
        S3_READ_KEY=None,
        S3_READ_SECRET=None,
        S3_READ_KEY_FILE=str(tmp_path / "key"),
        S3_READ_SECRET_FILE=str(tmp_path / "secret"),
    )
    with pytest.raises(SettingsError) as caught:
        _start_up(same_key)
    assert caught.value.name == "S3_READ_KEY_FILE"
    assert "S3_UPLOAD_KEY" in str(caught.value)


@pytest.mark.slow
def test_serve_refuses_ambiguous_sources_with_one_line(tmp_path: Path) -> None:
    env = _env(S3_UPLOAD_ROLE_ARN=UPLOAD_ROLE)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_"))}
    result = subprocess.run(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "S3_UPLOAD_KEY" in line and "S3_UPLOAD_ROLE_ARN" in line
    assert FAKE_ENV["S3_UPLOAD_SECRET"] not in result.stderr


# --- key files ------------------------------------------------------------------------------


def test_rotated_files_are_adopted_on_the_next_stable_check(
    tmp_path: Path, credential_log: Captured
) -> None:
    volume = _volume(tmp_path, "OLDKEY00001", "old-secret-0001")
    source = FileCredentials(_key_files(volume), "uploader")
    assert source.current() == Credentials("OLDKEY00001", "old-secret-0001")

    volume.update({"access-key-id": "NEWKEY00001", "secret-access-key": "new-secret-0001"})
    source.refresh()  # seen once: not yet trusted to be complete
    assert source.current() == Credentials("OLDKEY00001", "old-secret-0001")
    source.refresh()  # unchanged since: adopted
    assert source.current() == Credentials("NEWKEY00001", "new-secret-0001")
    assert not credential_log.text()
    assert any("rotated" in line for line in credential_log.text(logging.INFO))


def test_empty_file_never_replaces_a_good_pair(tmp_path: Path, credential_log: Captured) -> None:
    volume = _volume(tmp_path, "OLDKEY00001", "old-secret-0001")
    source = FileCredentials(_key_files(volume), "uploader")
    volume.update({"access-key-id": "NEWKEY00001", "secret-access-key": ""})
    for _ in range(3):
        source.refresh()
    assert source.current() == Credentials("OLDKEY00001", "old-secret-0001")
    (warning,) = credential_log.text()  # once, not once per check
    assert "S3_UPLOAD_SECRET_FILE" in warning and "empty" in warning
    assert "keeping the previous key pair" in warning
    assert "old-secret-0001" not in warning and "NEWKEY00001" not in warning


def test_half_written_file_is_not_adopted_mid_write(tmp_path: Path) -> None:
    key, secret = tmp_path / "key", tmp_path / "secret"
    key.write_text("OLDKEY00001")
    secret.write_text("old-secret-0001")
    files = KeyPairFiles(key, secret, "S3_UPLOAD_KEY_FILE", "S3_UPLOAD_SECRET_FILE")
    source = FileCredentials(files, "uploader")

    # Edited in place, by a tool that writes the secret in two steps.
    key.write_text("NEWKEY00001")
    secret.write_text("new-secret-")
    source.refresh()
    assert source.current() == Credentials("OLDKEY00001", "old-secret-0001")
    with secret.open("a") as stream:
        stream.write("0001")
    source.refresh()
    assert source.current() == Credentials("OLDKEY00001", "old-secret-0001")
    source.refresh()
    assert source.current() == Credentials("NEWKEY00001", "new-secret-0001")


def test_removed_files_keep_the_pair_and_warn(tmp_path: Path, credential_log: Captured) -> None:
    volume = _volume(tmp_path, "OLDKEY00001", "old-secret-0001")
    source = FileCredentials(_key_files(volume), "uploader")
    volume.path("access-key-id").unlink()
    source.refresh()
    assert source.get(datetime.now(UTC)) == Credentials("OLDKEY00001", "old-secret-0001")
    (warning,) = credential_log.text()
    assert "S3_UPLOAD_KEY_FILE" in warning and "cannot read" in warning


def test_no_usable_files_means_failed_precondition(tmp_path: Path) -> None:
    key, secret = tmp_path / "key", tmp_path / "secret"
    key.write_text("")
    secret.write_text("")
    files = KeyPairFiles(key, secret, "S3_UPLOAD_KEY_FILE", "S3_UPLOAD_SECRET_FILE")
    source = FileCredentials(files)
    with pytest.raises(CredentialsUnavailable) as caught:
        source.get(datetime.now(UTC))
    assert "S3_UPLOAD_KEY_FILE" in caught.value.message


# --- file rotation on a running server, under a steady stream of calls --------------------


@dataclass
class Call:
    key_id: str | None
    error: grpc.StatusCode | None


def _key_id(url: str) -> str:
    return parse_qs(urlsplit(url).query)["X-Amz-Credential"][0].split("/")[0]


def _reader_from_files(
    tmp_path: Path, s3: Any, uploader: Any, reader: Any
) -> tuple[SecretVolume, dict[str, str]]:
    """The real S3's settings with the reader's pair in a Secret volume: (volume, env)."""
    from conftest import s3_env

    volume = SecretVolume(
        tmp_path / "reader",
        {"access-key-id": reader.access_key_id, "secret-access-key": reader.secret_access_key},
    )
    env = s3_env(s3, uploader, reader)
    del env["S3_READ_KEY"], env["S3_READ_SECRET"]
    env["S3_READ_KEY_FILE"] = str(volume.path("access-key-id"))
    env["S3_READ_SECRET_FILE"] = str(volume.path("secret-access-key"))
    return volume, env


@pytest.mark.slow  # waits out real file rotations
def test_server_switches_to_rotated_files_without_a_failed_call(
    tmp_path: Path, credential_log: Captured, local_s3: Any
) -> None:
    """On the real S3, which proves each rotated pair before it is adopted."""
    import threading
    import time

    s3, uploader, reader = local_s3
    rotated = s3.create_identity(
        f"avatar-reader-next-{uuid.uuid4().hex[:8]}", seaweed_s3.reader_policy(s3.bucket)
    )
    # The reader's Secret volume (downloads: no per-user rate limit to get in the way).
    volume, env = _reader_from_files(tmp_path, s3, uploader, reader)
    server = ServerThread(settings_from(env))
    calls: list[Call] = []
    stop = threading.Event()

    def stream() -> None:
        with server.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            while not stop.is_set():
                try:
                    reply = stub.CreateDownloadUrl(
                        pb.CreateDownloadUrlRequest(user_id="alice"), timeout=5
                    )
                    calls.append(Call(_key_id(reply.url), None))
                except grpc.RpcError as error:
                    calls.append(Call(None, error.code()))
                time.sleep(0.005)

    caller = threading.Thread(target=stream)
    caller.start()
    third = s3.create_identity(
        f"avatar-reader-third-{uuid.uuid4().hex[:8]}", seaweed_s3.reader_policy(s3.bucket)
    )
    leaks.remember(rotated.secret_access_key, third.secret_access_key)

    def wait_for(key_id: str) -> float:
        started = time.monotonic()
        while time.monotonic() - started < 15 and calls[-1].key_id != key_id:
            time.sleep(0.05)
        return time.monotonic() - started

    try:
        time.sleep(0.5)
        volume.update(
            {"access-key-id": rotated.access_key_id, "secret-access-key": rotated.secret_access_key}
        )
        switch_seconds = wait_for(rotated.access_key_id)
        switched = len(calls)

        # The key id file changed ahead of its secret, for 3 s: S3 refuses that pair, so it
        # never replaces the working one.
        volume.update(
            {"access-key-id": third.access_key_id, "secret-access-key": rotated.secret_access_key}
        )
        time.sleep(3)
        # Then a secret left half-written for 3 s (it looks like a secret): refused too.
        volume.update(
            {
                "access-key-id": third.access_key_id,
                "secret-access-key": third.secret_access_key[:20],
            }
        )
        time.sleep(3)
        mismatched_seen = {c.key_id for c in calls[switched:]}
        # Written whole: proven, adopted.
        volume.update(
            {"access-key-id": third.access_key_id, "secret-access-key": third.secret_access_key}
        )
        third_seconds = wait_for(third.access_key_id)
        third_at = len(calls)

        # A broken update (empty secret) is ignored with a warning; calls go on.
        volume.update({"access-key-id": "BADKEY00001", "secret-access-key": ""})
        time.sleep(2.5)
        with server.channel() as channel:
            final = pb_grpc.AvatarSignerStub(channel).CreateDownloadUrl(
                pb.CreateDownloadUrlRequest(user_id="alice")
            )
    finally:
        stop.set()
        caller.join(10)
        server.stop()

    assert [c.error for c in calls if c.error is not None] == []
    assert switch_seconds < 10, f"took {switch_seconds:.1f} s"
    assert third_seconds < 10, f"took {third_seconds:.1f} s"
    assert mismatched_seen == {rotated.access_key_id}, "adopted a pair S3 refuses"
    ids = [c.key_id for c in calls]
    first_new = ids.index(rotated.access_key_id)
    assert set(ids[:first_new]) == {reader.access_key_id}
    assert set(ids[third_at:]) == {third.access_key_id}, "went back, or took the broken pair"
    assert len(calls) - third_at > 50, "the stream kept going after the broken update"
    assert any("empty" in w and "S3_READ_SECRET_FILE" in w for w in credential_log.text())
    assert any("S3 refuses the key pair" in w for w in credential_log.text())
    # What was signed last, S3 accepts (404: no avatar, the signature is good).
    assert request("GET", final.url).status == 404

# --- role assumption (moto's STS, the test's clock) -----------------------------------------


class Clock:
    """Stands still unless advanced, or (running) follows real time plus what was advanced."""

    def __init__(self) -> None:
        self._start = datetime.now(UTC).replace(microsecond=0)
        self._offset = timedelta(0)
        self.running = False

    @property
    def now(self) -> datetime:
        elapsed = datetime.now(UTC) - self._start if self.running else timedelta(0)
        return self._start + self._offset + elapsed

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self._offset += timedelta(seconds=seconds)


class Sts:
    """moto's STS client, which the test can take down (as a network failure would)."""

    def __init__(self, region: str = "eu-west-1") -> None:
        self._client = default_sts_client(region)()
        self.down = False
        self.calls = 0

    def assume_role(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.down:
            raise EndpointConnectionError(endpoint_url="https://sts.eu-west-1.amazonaws.com")
        return self._client.assume_role(**kwargs)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """The test's clock, which moto's STS also reads for session expiry."""
    test_clock = Clock()
    with mock_aws():
        monkeypatch.setattr(moto.sts.models, "utcnow", lambda: test_clock.now.replace(tzinfo=None))
        yield test_clock


def _role(
    clock: Clock,
    sts: Sts,
    *,
    duration: int = 3600,
    refresh_before: int = 660,
    min_retry: float = 5,
) -> RoleCredentials:
    return RoleCredentials(
        AssumedRole(READ_ROLE, "S3_READ_ROLE_ARN", duration),
        identity="reader",
        sts=lambda: sts,
        refresh_before=timedelta(seconds=refresh_before),
        clock=clock,
        min_retry=timedelta(seconds=min_retry),
    )


def test_role_session_is_renewed_ahead_of_expiry(clock: Clock) -> None:
    sts = Sts()
    source = _role(clock, sts, duration=3600, refresh_before=660)
    source.refresh()
    first = source.current()
    assert first is not None and first.session_token
    assert first.expires_at == clock.now + timedelta(seconds=3600)

    clock.advance(3600 - 660 - 1)  # just outside the refresh margin
    source.refresh()
    assert source.current() == first and sts.calls == 1

    clock.advance(2)  # inside it: renewed while the old session is still valid
    source.refresh()
    second = source.current()
    assert second is not None and second.access_key_id != first.access_key_id
    assert second.expires_at == clock.now + timedelta(seconds=3600)
    assert first.expires_at is not None and first.expires_at > clock.now


def test_expires_at_is_never_beyond_the_credentials(clock: Clock) -> None:
    sts = Sts()
    # A margin that covers the longest ttl used (600 s + 60 s), as config requires.
    source = _role(clock, sts, duration=1800, refresh_before=660)
    endpoint = BucketEndpoint("avatars", "eu-west-1")
    downloads = DownloadSigner(source, endpoint, "eu-west-1", clock)
    uploads = UploadSigner(source, endpoint, "eu-west-1", clock)
    sessions = set()
    for _ in range(80):  # through several sessions, renewed as the watcher does
        clock.advance(60)
        source.refresh()
        signs: list[Callable[[], SignedUrl]] = [
            lambda: downloads.sign("profiles/alice/avatar", ttl_seconds=300),
            lambda: uploads.sign(
                "profiles/alice/avatar",
                content_type="image/png",
                content_length=10,
                checksum_sha256=None,
                ttl_seconds=600,
            ),
        ]
        for sign in signs:
            signed = sign()
            creds = source.current()
            assert creds is not None and creds.expires_at is not None
            assert signed.expires_at <= creds.expires_at
            assert signed.access_key_id == creds.access_key_id
            query = parse_qs(urlsplit(signed.url).query)
            assert query["X-Amz-Security-Token"] == [creds.session_token]
            sessions.add(creds.access_key_id)
    assert len(sessions) >= 4  # 80 x 60 s through sessions renewed every 1140 s


def test_request_path_never_calls_sts(clock: Clock) -> None:
    sts = Sts()
    source = _role(clock, sts, duration=900, refresh_before=60)
    source.refresh()
    first = source.current()
    assert first is not None and sts.calls == 1
    clock.advance(600)  # 300 s left: not yet in the refresh margin
    with pytest.raises(CredentialsUnavailable) as caught:
        source.get(clock.now + timedelta(seconds=400))  # a URL the session cannot cover
    assert "at most 300 s" in caught.value.message
    assert sts.calls == 1  # refused at once: STS is only ever called by the watcher
    assert source.get(clock.now + timedelta(seconds=200)) is first
    clock.advance(250)  # now inside the margin: the watcher's refresh renews it
    source.refresh()
    assert sts.calls == 2
    renewed = source.get(clock.now + timedelta(seconds=400))
    assert renewed.access_key_id != first.access_key_id


def test_ttl_no_session_can_cover_is_failed_precondition(clock: Clock) -> None:
    sts = Sts()
    source = _role(clock, sts, duration=900, refresh_before=60)
    with pytest.raises(CredentialsUnavailable) as caught:
        source.get(clock.now + timedelta(seconds=901))
    assert "shorter ttl" in caught.value.message
    assert sts.calls == 0  # no point asking STS

    # A fresh session that still falls short is not asked for again and again.
    source.refresh()
    clock.advance(1)
    for _ in range(5):
        with pytest.raises(CredentialsUnavailable) as caught:
            source.get(clock.now + timedelta(seconds=900))
    assert sts.calls == 1
    assert "at most 899 s" in caught.value.message


def test_sts_outage_keeps_the_old_session_while_it_covers(
    clock: Clock, credential_log: Captured
) -> None:
    sts = Sts()
    source = _role(clock, sts, duration=900, refresh_before=300, min_retry=5)
    source.refresh()
    first = source.current()
    assert first is not None
    sts.down = True
    clock.advance(700)  # 200 s left, inside the margin
    source.refresh()
    assert source.current() == first
    assert source.get(clock.now + timedelta(seconds=100)) == first
    clock.advance(10)  # past the back-off: still, the request path leaves STS to the watcher
    calls = sts.calls
    with pytest.raises(CredentialsUnavailable) as caught:
        source.get(clock.now + timedelta(seconds=300))
    assert sts.calls == calls
    assert "at most 190 s" in caught.value.message
    assert first.secret_access_key not in caught.value.message
    (warning,) = credential_log.text()
    assert "EndpointConnectionError" in warning
    assert first.session_token is not None and first.session_token not in warning

    sts.down = False
    clock.advance(10)  # past the back-off
    source.refresh()
    renewed = source.current()
    assert renewed is not None and renewed.access_key_id != first.access_key_id


# --- on a running server ------------------------------------------------------------------


def _role_settings(**extra: str) -> Settings:
    env = _env(
        **dict.fromkeys(STATIC_KEYS),
        S3_UPLOAD_ROLE_ARN=UPLOAD_ROLE,
        S3_READ_ROLE_ARN=READ_ROLE,
        S3_ROLE_DURATION_SECONDS="900",
        # A 900 s session covers URLs up to 390 s with room to renew (config's rule).
        UPLOAD_TTL_SECONDS="300",
        UPLOAD_MAX_TTL_SECONDS="390",
        DOWNLOAD_MAX_TTL_SECONDS="390",
        **extra,
    )
    return load_settings(env)


def test_server_signs_with_role_sessions_and_refuses_uncoverable_ttl(clock: Clock) -> None:
    # The server's own wiring (build_credentials) with the default STS client, in moto.
    server = ServerThread(_role_settings(), clock=clock)
    try:
        with server.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            reply = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice"))
            query = parse_qs(urlsplit(reply.url).query)
            assert query["X-Amz-Credential"][0].startswith("ASIA")
            assert "X-Amz-Security-Token" in query

            # STS stops answering and the session runs down: a URL it can no longer cover
            # is FAILED_PRECONDITION, never a URL that dies early.
            reader: Any = server.server.credentials["reader"]
            reader._sts_factory = _broken_sts
            reader._sts = None
            clock.advance(900 - 200)
            with pytest.raises(grpc.RpcError) as caught:
                stub.CreateDownloadUrl(
                    pb.CreateDownloadUrlRequest(
                        user_id="alice", ttl=duration_pb2.Duration(seconds=300)
                    )
                )
            error: Any = caught.value
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "reader" in error.details() and "at most" in error.details()
            assert query["X-Amz-Security-Token"][0] not in error.details()
            # A URL the session still covers is fine.
            stub.CreateDownloadUrl(
                pb.CreateDownloadUrlRequest(user_id="alice", ttl=duration_pb2.Duration(seconds=60))
            )
    finally:
        server.stop()


def _broken_sts() -> Any:
    raise ConnectionError("STS is unreachable")


def _health(channel: grpc.Channel) -> set[int]:
    stub = health_pb2_grpc.HealthStub(channel)
    return {
        stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        for name in ("", "avatarsigner.v1.AvatarSigner")
    }


def test_health_is_not_serving_while_an_identity_has_no_credentials(clock: Clock) -> None:
    import time

    clock.running = True  # the back-off between STS attempts runs in real time here
    sts = Sts()
    sts.down = True
    watcher = CredentialWatcher(
        {
            "uploader": StaticCredentials(
                Credentials(FAKE_ENV["S3_UPLOAD_KEY"], FAKE_ENV["S3_UPLOAD_SECRET"]), "uploader"
            ),
            "reader": _role(clock, sts, duration=900, refresh_before=300, min_retry=0.05),
            "verifier": StaticCredentials(
                Credentials(FAKE_ENV["S3_VERIFY_KEY"], FAKE_ENV["S3_VERIFY_SECRET"]), "verifier"
            ),
        },
        needed={
            "uploader": timedelta(seconds=600),
            "reader": timedelta(seconds=300),
            "verifier": timedelta(seconds=60),
        },
        clock=clock,
        period=0.1,
    )
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    server = ServerThread(settings_from(FAKE_ENV), credentials=watcher)
    try:
        with server.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            assert _health(channel) == {not_serving}
            with pytest.raises(grpc.RpcError) as caught:
                stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice"))
            error: Any = caught.value
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "EndpointConnectionError" in error.details()

            sts.down = False  # STS is back: within a few checks the service is usable
            deadline = time.monotonic() + 5
            while _health(channel) != {serving} and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _health(channel) == {serving}
            assert stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice")).url

            sts.down = True  # STS gone again and the session runs out: NOT_SERVING
            clock.advance(900 - 299)
            deadline = time.monotonic() + 5
            while _health(channel) != {not_serving} and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _health(channel) == {not_serving}
    finally:
        server.stop()


def test_rotated_key_files_sign_urls_the_real_s3_accepts(tmp_path: Path, local_s3: Any) -> None:
    """Rotation from one real reader key to another: S3 accepts the URLs before and after."""
    import time

    from s3http import request

    s3, uploader, reader = local_s3
    rotated = s3.create_identity(
        f"avatar-reader-rotated-{uuid.uuid4().hex[:8]}", seaweed_s3.reader_policy(s3.bucket)
    )
    key = f"profiles/rot-{uuid.uuid4().hex[:8]}/avatar"
    endpoint = BucketEndpoint(s3.bucket, s3.region, s3.endpoint_url)
    put = UploadSigner(
        StaticCredentials(Credentials(uploader.access_key_id, uploader.secret_access_key)),
        endpoint,
        s3.region,
    ).sign(key, content_type="image/png", content_length=4, checksum_sha256=None, ttl_seconds=60)
    assert request("PUT", put.url, b"\x89PNG", dict(put.headers)).status == 200

    volume, env = _reader_from_files(tmp_path, s3, uploader, reader)
    server = ServerThread(settings_from(env))
    user = key.split("/")[1]
    try:
        with server.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            before = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id=user)).url
            volume.update(
                {
                    "access-key-id": rotated.access_key_id,
                    "secret-access-key": rotated.secret_access_key,
                }
            )
            deadline = time.monotonic() + 5
            after = before
            while _key_id(after) != rotated.access_key_id and time.monotonic() < deadline:
                time.sleep(0.1)
                after = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id=user)).url
    finally:
        server.stop()
    assert _key_id(before) == reader.access_key_id
    assert _key_id(after) == rotated.access_key_id
    for url in (before, after):
        reply = request("GET", url)
        assert (reply.status, reply.body) == (200, b"\x89PNG")


def test_a_revoked_key_in_force_shows_in_health_and_metrics(
    local_s3: Any, credential_log: Captured
) -> None:
    """The reader's key is deleted in IAM while the server runs: within a probe period health
    says NOT_SERVING and avatarsigner_credentials_valid{identity="reader"} is 0, instead of
    signing URLs S3 will refuse."""
    import time

    from conftest import s3_env
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from test_metrics import scrape

    s3, uploader, _ = local_s3
    doomed = s3.create_identity(
        f"avatar-reader-doomed-{uuid.uuid4().hex[:8]}", seaweed_s3.reader_policy(s3.bucket)
    )
    leaks.remember(doomed.secret_access_key)
    server = ServerThread(
        settings_from(s3_env(s3, uploader, doomed), CREDENTIALS_PROBE_SECONDS="0.5")
    )
    serving = health_pb2.HealthCheckResponse.SERVING

    def status() -> int:
        with server.channel() as channel:
            request = health_pb2.HealthCheckRequest()
            return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)

    valid = ("avatarsigner_credentials_valid", (("identity", "reader"),))
    try:
        time.sleep(1.5)  # a probe or two with the key in force
        assert status() == serving
        assert scrape(server.server.metrics_port)[valid] == 1
        s3.client("iam").delete_access_key(UserName=doomed.name, AccessKeyId=doomed.access_key_id)
        deadline = time.monotonic() + 10
        while status() == serving and time.monotonic() < deadline:
            time.sleep(0.1)
        after = status()
        metric = scrape(server.server.metrics_port)[valid]
    finally:
        server.stop()
    assert after == health_pb2.HealthCheckResponse.NOT_SERVING
    assert metric == 0
    assert any("S3 refuses the reader's key pair in force" in w for w in credential_log.text())


def test_a_revoked_key_replaced_by_a_rotated_one_serves_again_at_once(
    tmp_path: Path, local_s3: Any
) -> None:
    """The reader's key is revoked, S3 refuses it (NOT_SERVING), and the Secret is rotated
    to a new key: once S3 has accepted the new pair and it is in force, health says SERVING
    and avatarsigner_credentials_valid is 1 again, without waiting for the next probe (an
    hour away here)."""
    import time

    from test_metrics import scrape

    s3, uploader, _ = local_s3
    policy = seaweed_s3.reader_policy(s3.bucket)
    doomed = s3.create_identity(f"avatar-reader-doomed-{uuid.uuid4().hex[:8]}", policy)
    fresh = s3.create_identity(f"avatar-reader-fresh-{uuid.uuid4().hex[:8]}", policy)
    leaks.remember(doomed.secret_access_key)
    leaks.remember(fresh.secret_access_key)
    volume, env = _reader_from_files(tmp_path, s3, uploader, doomed)
    server = ServerThread(settings_from(env, CREDENTIALS_PROBE_SECONDS="3600"))
    valid = ("avatarsigner_credentials_valid", (("identity", "reader"),))

    def health_within(seconds: float, wanted: int) -> set[int]:
        """Health of "" and the service once both are `wanted`, or when time is up."""
        deadline = time.monotonic() + seconds
        with server.channel() as channel:
            while (status := _health(channel)) != {wanted} and time.monotonic() < deadline:
                time.sleep(0.1)
        return status

    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        assert health_within(5, serving) == {serving}
        s3.client("iam").delete_access_key(UserName=doomed.name, AccessKeyId=doomed.access_key_id)
        server.server.credentials.probe()  # the probe of the hour, now
        assert health_within(10, not_serving) == {not_serving}
        volume.update(
            {"access-key-id": fresh.access_key_id, "secret-access-key": fresh.secret_access_key}
        )
        with server.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # adopted once stable and accepted by S3
                current = server.server.credentials["reader"].current()
                if current is not None and current.access_key_id == fresh.access_key_id:
                    break
                time.sleep(0.1)
            after = health_within(5, serving)
            metric = scrape(server.server.metrics_port)[valid]
            url = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice")).url
    finally:
        server.stop()
    assert _key_id(url) == fresh.access_key_id
    assert after == {serving}
    assert metric == 1


def test_rotation_never_makes_two_identities_one(tmp_path: Path) -> None:
    """The start-up rule holds after rotation: a reader rotated to the uploader's key id is
    refused (whatever S3 would say) and the reader's pair stays."""
    from avatarsigner_server.credentials.proofs import Proof, Verdict
    from avatarsigner_server.credentials.watcher import build_watcher

    volume = _volume(tmp_path, "READERKEY0001", "reader-secret-0001")
    env = _env(
        S3_READ_KEY=None,
        S3_READ_SECRET=None,
        S3_READ_KEY_FILE=str(volume.path("access-key-id")),
        S3_READ_SECRET_FILE=str(volume.path("secret-access-key")),
    )
    asked: list[str] = []

    def s3_accepts_everything(identity: str, creds: Credentials) -> Proof:
        asked.append(creds.access_key_id)
        return Proof(Verdict.VALID, "200")

    watcher = build_watcher(load_settings(env), prover=s3_accepts_everything)
    volume.update({"access-key-id": FAKE_ENV["S3_UPLOAD_KEY"], "secret-access-key": "x" * 20})
    for _ in range(3):  # seen changed, seen stable (then vetted and refused), again
        watcher.refresh_all()
    assert watcher["reader"].current().access_key_id == "READERKEY0001"  # type: ignore[union-attr]
    assert FAKE_ENV["S3_UPLOAD_KEY"] not in asked  # refused before S3 was asked
    volume.update({"access-key-id": "READERKEY0002", "secret-access-key": "y" * 20})
    watcher.refresh_all()
    watcher.refresh_all()
    assert watcher["reader"].current().access_key_id == "READERKEY0002"  # type: ignore[union-attr]
