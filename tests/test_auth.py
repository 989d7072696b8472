"""Callers: who may call which RPC, proved by a bearer token (real server, real metadata)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.access import callers
from avatarsigner_server.settings import SettingsError
from avatarsigner_server.telemetry import logs as observability
from doc_examples import callers_file_example
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from guarded import ALL_RPCS, CallerSpec, caller, code_of, new_token, write_callers
from servers import ServerThread, access_control, settings_from

PROFILE = caller("profile-service", ["CreateUploadUrl", "CreateDownloadUrl"])
FEED = caller("feed-service", ["CreateDownloadUrl", "BatchCreateDownloadUrls"])
CALLERS = (PROFILE, FEED)


@pytest.fixture
def callers_file(tmp_path: Path) -> Path:
    return write_callers(tmp_path / "callers.toml", CALLERS)


@pytest.fixture
def guarded(callers_file: Path) -> Iterator[ServerThread]:
    running = ServerThread(settings_from(CALLERS_FILE=str(callers_file)))
    yield running
    running.stop()


@pytest.fixture
def stub(guarded: ServerThread) -> Iterator[pb_grpc.AvatarSignerStub]:
    with guarded.channel() as channel:
        yield pb_grpc.AvatarSignerStub(channel)


RIGHTS = [
    pytest.param(
        who, rpc, "OK" if rpc in who.allow else "PERMISSION_DENIED", id=f"{who.name}-{rpc}"
    )
    for who in CALLERS
    for rpc in ALL_RPCS
]


@pytest.mark.parametrize(("who", "rpc", "expected"), RIGHTS)
def test_each_caller_may_call_exactly_its_allowed_rpcs(
    stub: pb_grpc.AvatarSignerStub, who: CallerSpec, rpc: str, expected: str
) -> None:
    assert code_of(stub, rpc, who.metadata()) == expected


REFUSED = [
    ("no-credentials", ()),
    ("wrong-token", (("authorization", f"Bearer {new_token()}"),)),
    ("basic-scheme", (("authorization", "Basic dXNlcjpwYXNz"),)),
    ("bearer-without-token", (("authorization", "Bearer "),)),
    ("token-hash-as-token", (("authorization", f"Bearer {PROFILE.token_sha256}"),)),
]


@pytest.mark.parametrize(("case", "metadata"), REFUSED, ids=[c for c, _ in REFUSED])
@pytest.mark.parametrize("rpc", ALL_RPCS)
def test_unknown_or_missing_credentials_are_unauthenticated(
    stub: pb_grpc.AvatarSignerStub, case: str, metadata: tuple[tuple[str, str], ...], rpc: str
) -> None:
    assert code_of(stub, rpc, metadata) == "UNAUTHENTICATED"


def test_revoked_token_is_refused_after_reload(
    guarded: ServerThread, stub: pb_grpc.AvatarSignerStub, callers_file: Path
) -> None:
    assert code_of(stub, "CreateDownloadUrl", FEED.metadata()) == "OK"
    write_callers(callers_file, [PROFILE])  # feed-service's token revoked
    guarded.server.reload()
    assert code_of(stub, "CreateDownloadUrl", FEED.metadata()) == "UNAUTHENTICATED"
    assert code_of(stub, "CreateDownloadUrl", PROFILE.metadata()) == "OK"


def test_health_and_reflection_stay_open(guarded: ServerThread) -> None:
    with guarded.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "avatarsigner.v1.AvatarSigner"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert "avatarsigner.v1.AvatarSigner" in names


def test_audit_line_per_decision_with_request_id_and_reason(
    stub: pb_grpc.AvatarSignerStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="avatarsigner.audit")
    code_of(stub, "CreateDownloadUrl", PROFILE.metadata(**{"x-request-id": "req-1"}))
    code_of(stub, "BatchCreateDownloadUrls", PROFILE.metadata(**{"x-request-id": "req-2"}))
    code_of(stub, "CreateDownloadUrl", (("authorization", f"Bearer {new_token()}"),))
    formatter = observability.JsonFormatter()
    lines = [
        json.loads(line)
        for record in caplog.records
        if record.name == "avatarsigner.audit"
        for line in formatter.format(record).splitlines()
    ]
    allowed, denied, unknown = lines
    assert allowed["decision"] == "allowed" and allowed["request_id"] == "req-1"
    assert (allowed["caller"], allowed["auth"], allowed["rpc"]) == (
        "profile-service",
        "token",
        "CreateDownloadUrl",
    )
    # One line for the download call: how many URLs and for how long, not which users.
    assert (allowed["count"], allowed["ttl_seconds"]) == (1, 300)
    assert "user_id" not in allowed and "key" not in allowed
    assert allowed["expires_at"].endswith("+00:00")
    assert denied["decision"] == "denied" and denied["request_id"] == "req-2"
    assert (denied["caller"], denied["reason"], denied["code"]) == (
        "profile-service",
        "rpc_not_allowed",
        "PERMISSION_DENIED",
    )
    assert unknown["caller"] is None and unknown["reason"] == "unknown_token"
    assert len(unknown["request_id"]) == 32  # none given: one was made


def test_without_callers_file_everyone_is_allowed_and_startup_warns() -> None:
    security = access_control(settings_from())
    warnings = security.startup_warnings()
    assert any("CALLERS_FILE is not set" in w for w in warnings)
    assert any("no TLS and no CALLERS_FILE" in w for w in warnings)
    running = ServerThread(settings_from())
    try:
        with running.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            assert {code_of(stub, rpc, ()) for rpc in ALL_RPCS} == {"OK"}
    finally:
        running.stop()


# -- the file itself -----------------------------------------------------------------------

HASH = "ab" * 32


def _table(**fields: str) -> str:
    """One [[caller]] table; values are TOML as written (strings quoted by the caller)."""
    return "[[caller]]\n" + "".join(f"{key} = {value}\n" for key, value in fields.items())


NAME, TOKEN, ALLOW = '"a"', f'"{HASH}"', '["CreateDownloadUrl"]'
GOOD = _table(name=NAME, token_sha256=TOKEN, allow=ALLOW)
BAD_FILES = [
    ("not-toml", "[[caller]\nname = 'a'", "is not valid TOML"),
    ("no-callers", "", "defines no [[caller]] tables"),
    ("unknown-top-level-key", GOOD + "[other]\nx = 1\n", "unknown top-level key"),
    ("caller-not-array", GOOD.replace("[[caller]]", "[caller]"), "defines no [[caller]]"),
    ("unknown-key-typo", GOOD + 'alow = ["CreateUploadUrl"]\n', "'alow'"),
    ("name-missing", _table(token_sha256=TOKEN, allow=ALLOW), "name must be"),
    ("name-with-space", _table(name='"a b"', token_sha256=TOKEN, allow=ALLOW), "name must be"),
    (
        "raw-token-not-hash",
        _table(name=NAME, token_sha256='"s3cr3t-t0ken-value"', allow=ALLOW),
        "never the token",
    ),
    ("no-token-no-identity", _table(name=NAME, allow=ALLOW), "needs token_sha256 or tls_identity"),
    ("allow-missing", _table(name=NAME, token_sha256=TOKEN), "allow must be"),
    ("allow-empty", _table(name=NAME, token_sha256=TOKEN, allow="[]"), "allow must be"),
    (
        "allow-unknown-rpc",
        _table(name=NAME, token_sha256=TOKEN, allow='["EraseAvatar"]'),
        "'EraseAvatar' is not an RPC",
    ),
    (
        "duplicate-name",
        GOOD + _table(name=NAME, token_sha256=f'"{"cd" * 32}"', allow=ALLOW),
        "name is the same",
    ),
    ("duplicate-token", GOOD + _table(name='"b"', token_sha256=TOKEN, allow=ALLOW), "token_sha256"),
    (
        "identity-with-space",
        _table(name=NAME, tls_identity='"spiffe://x y"', allow=ALLOW),
        "tls_identity must be",
    ),
    (
        "identity-neither-uri-nor-dns-name",
        _table(name=NAME, tls_identity='"profile service"', allow=ALLOW),
        "tls_identity must be",
    ),
    (
        "same-dns-identity-in-another-case",
        _table(name=NAME, tls_identity='"a.example"', allow=ALLOW)
        + _table(name='"other"', tls_identity='"A.Example"', allow=ALLOW),
        "tls_identity is the same",
    ),
]


@pytest.mark.parametrize(("case", "text", "problem"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_malformed_callers_file_is_one_line_naming_it(
    tmp_path: Path, case: str, text: str, problem: str
) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        callers.load(str(path))
    message = str(caught.value)
    assert message.startswith("CALLERS_FILE: ") and problem in message
    assert "\n" not in message
    assert "s3cr3t-t0ken-value" not in message and HASH not in message


def test_missing_callers_file_is_a_settings_error() -> None:
    with pytest.raises(SettingsError) as caught:
        settings_from(CALLERS_FILE="/nonexistent/callers.toml")
    assert caught.value.name == "CALLERS_FILE"


def test_the_documented_example_is_a_valid_callers_file(tmp_path: Path) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(callers_file_example())
    table = callers.load(str(path))
    assert [c.name for c in table.callers] == [
        "profile-service",
        "feed-service",
        "thumbnailer",
        "account-deletion",
    ]
    (profile,) = table.by_certificate([("uri", "spiffe://cluster.local/ns/app/sa/profile")])
    assert profile is table.callers[0]
    assert profile.allow == {
        "CreateUploadUrl",
        "ConfirmUpload",
        "CreateDownloadUrl",
        "DeleteAvatar",
    }
    assert [c.account_deletion for c in table.callers] == [False, False, False, True]
    assert table.by_token("example-profile-service-token") is profile


def test_account_deletion_needs_delete_avatar_in_allow(tmp_path: Path) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(
        '[[caller]]\nname = "eraser"\n'
        f'token_sha256 = "{"a" * 64}"\nallow = ["CreateDownloadUrl"]\naccount_deletion = true\n'
    )
    with pytest.raises(SettingsError) as caught:
        callers.load(str(path))
    assert "account_deletion needs DeleteAvatar in allow" in str(caught.value)
