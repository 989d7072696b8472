"""End-user binding: an upload URL needs the end user's own token (real server, real JWTs).

Each hostile token is sent through gRPC to a real server and must be refused with the
right code: UNAUTHENTICATED for a token that does not verify, PERMISSION_DENIED for a valid
token of another user. The audit line's reason says which check refused it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import leaks
import pytest
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server import errors
from avatarsigner_server.access import end_users as enduser
from avatarsigner_server.settings import SettingsError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from servers import ServerThread, access_control, settings_from

ISSUER = "https://id.example.com/"
AUDIENCE = "avatar-signer"
HS_SECRET = "an-hs256-secret-of-more-than-32-bytes!!"
leaks.remember(HS_SECRET)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def _jwk(public_key: Any, kid: str) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public_key))
    else:
        entry = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public_key))
    return {**entry, "kid": kid, "use": "sig"}


def _jwks(path: Path, *keys: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**override: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
    }
    values.update(override)
    return {k: v for k, v in values.items() if v is not None}


def signed(key: Any, algorithm: str, kid: str | None, **override: Any) -> str:
    headers = {"kid": kid} if kid else None
    token = jwt.encode(claims(**override), key, algorithm=algorithm, headers=headers)
    leaks.remember(token)
    return token


def handmade(header: dict[str, Any], secret: bytes | None, **override: Any) -> str:
    """A token PyJWT would refuse to make: alg none, or HS256 keyed with a public key."""
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims(**override)).encode())
    signature = b"" if secret is None else hmac.new(secret, head.encode(), hashlib.sha256).digest()
    token = head + "." + _b64(signature)
    leaks.remember(token)
    return token


def rs256(**override: Any) -> str:
    return signed(RSA_KEY, "RS256", "rsa-1", **override)


def _swap_payload(token: str, payload: dict[str, Any]) -> str:
    """The token with its claims replaced (a longer life) and the signature kept."""
    header, _, signature = token.split(".")
    forged = f"{header}.{_b64(json.dumps(payload).encode())}.{signature}"
    leaks.remember(forged)
    return forged


@pytest.fixture(scope="module")
def jwks_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jwks")
    return _jwks(
        folder / "jwks.json", _jwk(RSA_KEY.public_key(), "rsa-1"), _jwk(EC_KEY.public_key(), "ec-1")
    )


JWT_ENV = {
    "END_USER_JWT_ISSUER": ISSUER,
    "END_USER_JWT_AUDIENCE": AUDIENCE,
    "UPLOADS_PER_USER_PER_SECOND": "0",  # the table uploads for alice many times
}


@pytest.fixture(scope="module")
def jwks_stub(jwks_file: Path) -> Iterator[pb_grpc.AvatarSignerStub]:
    running = ServerThread(settings_from(END_USER_JWT_JWKS_FILE=str(jwks_file), **JWT_ENV))
    with running.channel() as channel:
        yield pb_grpc.AvatarSignerStub(channel)
    running.stop()


@pytest.fixture(scope="module")
def hs_stub() -> Iterator[pb_grpc.AvatarSignerStub]:
    running = ServerThread(settings_from(END_USER_JWT_SECRET=HS_SECRET, **JWT_ENV))
    with running.channel() as channel:
        yield pb_grpc.AvatarSignerStub(channel)
    running.stop()


def upload(
    stub: pb_grpc.AvatarSignerStub, token: str | None, user_id: str = "alice"
) -> tuple[str, str | None]:
    """(status code name, audit reason) of one CreateUploadUrl call carrying `token`."""
    request = pb.CreateUploadUrlRequest(user_id=user_id, content_type="image/png", content_length=9)
    metadata = () if token is None else (("x-end-user-token", token),)
    logger = logging.getLogger("avatarsigner.audit")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        stub.CreateUploadUrl(request, metadata=metadata, timeout=10)
        code = "OK"
    except grpc.RpcError as error:
        code = error.code().name
    finally:
        logger.removeHandler(handler)
    reason = getattr(records[-1], "reason", None) if records else None
    return code, reason


now = int(time.time())
JWKS_TABLE = [
    ("valid-rs256", lambda: rs256(), "OK", "signed"),
    ("valid-es256", lambda: signed(EC_KEY, "ES256", "ec-1"), "OK", "signed"),
    ("expired-within-leeway", lambda: rs256(exp=int(time.time()) - 10), "OK", "signed"),
    (
        "expired",
        lambda: rs256(exp=int(time.time()) - 120),
        "UNAUTHENTICATED",
        "end_user_token_expired",
    ),
    (
        "not-yet-valid",
        lambda: rs256(nbf=int(time.time()) + 120),
        "UNAUTHENTICATED",
        "end_user_token_not_yet_valid",
    ),
    (
        "wrong-issuer",
        lambda: rs256(iss="https://evil.example.com/"),
        "UNAUTHENTICATED",
        "end_user_token_wrong_issuer",
    ),
    (
        "wrong-audience",
        lambda: rs256(aud="another-service"),
        "UNAUTHENTICATED",
        "end_user_token_wrong_audience",
    ),
    (
        "wrong-key-same-kid",
        lambda: signed(OTHER_RSA_KEY, "RS256", "rsa-1"),
        "UNAUTHENTICATED",
        "end_user_token_bad_signature",
    ),
    (
        "unknown-kid",
        lambda: signed(OTHER_RSA_KEY, "RS256", "rsa-2"),
        "UNAUTHENTICATED",
        "end_user_token_unknown_key",
    ),
    (
        "alg-none",
        lambda: handmade({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, None),
        "UNAUTHENTICATED",
        "end_user_token_algorithm",
    ),
    (
        "hs256-keyed-with-rsa-public-key",
        lambda: handmade({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, RSA_PUBLIC_PEM),
        "UNAUTHENTICATED",
        "end_user_token_algorithm",
    ),
    (
        "es256-claiming-the-rsa-kid",
        lambda: signed(EC_KEY, "ES256", "rsa-1"),
        "UNAUTHENTICATED",
        "end_user_token_algorithm",
    ),
    (
        "missing-sub",
        lambda: rs256(sub=None),
        "UNAUTHENTICATED",
        "end_user_token_missing_claim",
    ),
    (
        "missing-exp",
        lambda: rs256(exp=None),
        "UNAUTHENTICATED",
        "end_user_token_missing_claim",
    ),
    ("sub-mismatch", lambda: rs256(sub="mallory"), "PERMISSION_DENIED", "end_user_mismatch"),
    ("malformed-garbage", lambda: "not-a-jwt", "UNAUTHENTICATED", "end_user_token_malformed"),
    ("malformed-three-parts", lambda: "a.b.c", "UNAUTHENTICATED", "end_user_token_malformed"),
    ("truncated", lambda: rs256()[:40], "UNAUTHENTICATED", "end_user_token_malformed"),
    (
        "kid-not-a-string",
        lambda: handmade({"alg": "RS256", "typ": "JWT", "kid": [1]}, None),
        "UNAUTHENTICATED",
        "end_user_token_malformed",
    ),
    (
        "unknown-critical-header",
        lambda: handmade({"alg": "RS256", "typ": "JWT", "kid": "rsa-1", "crit": ["x"]}, None),
        "UNAUTHENTICATED",
        "end_user_token_malformed",
    ),
    (
        "crit-not-a-list",
        lambda: handmade({"alg": "RS256", "typ": "JWT", "kid": "rsa-1", "crit": "x"}, None),
        "UNAUTHENTICATED",
        "end_user_token_malformed",
    ),
    (
        "tampered-payload",
        lambda: _swap_payload(rs256(), claims(sub="alice", exp=int(time.time()) + 86400)),
        "UNAUTHENTICATED",
        "end_user_token_bad_signature",
    ),
    ("missing", lambda: None, "UNAUTHENTICATED", "end_user_token_missing"),
]


@pytest.mark.parametrize(
    ("case", "make", "code", "reason"), JWKS_TABLE, ids=[row[0] for row in JWKS_TABLE]
)
def test_end_user_token_table_jwks(
    jwks_stub: pb_grpc.AvatarSignerStub, case: str, make: Any, code: str, reason: str
) -> None:
    assert upload(jwks_stub, make()) == (code, reason)


HS_TABLE = [
    ("valid-hs256", lambda: signed(HS_SECRET, "HS256", None), "OK"),
    ("rs256-to-hs-server", lambda: rs256(), "UNAUTHENTICATED"),
    ("wrong-secret", lambda: signed("x" * 40, "HS256", None), "UNAUTHENTICATED"),
    ("alg-none", lambda: handmade({"alg": "none", "typ": "JWT"}, None), "UNAUTHENTICATED"),
    ("expired", lambda: signed(HS_SECRET, "HS256", None, exp=now - 3600), "UNAUTHENTICATED"),
    ("sub-mismatch", lambda: signed(HS_SECRET, "HS256", None, sub="bob"), "PERMISSION_DENIED"),
]


@pytest.mark.parametrize(("case", "make", "code"), HS_TABLE, ids=[row[0] for row in HS_TABLE])
def test_end_user_token_table_hs256(
    hs_stub: pb_grpc.AvatarSignerStub, case: str, make: Any, code: str
) -> None:
    assert upload(hs_stub, make())[0] == code


def test_downloads_need_no_end_user_token(jwks_stub: pb_grpc.AvatarSignerStub) -> None:
    response = jwks_stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="bob"), timeout=10)
    assert response.key == "profiles/bob/avatar"


def test_refused_tokens_do_not_use_up_the_users_upload_budget() -> None:
    """The token is checked before the per-user bucket: nobody can exhaust alice's uploads."""
    env = {**JWT_ENV, "UPLOADS_PER_USER_PER_SECOND": "0.001", "UPLOADS_PER_USER_BURST": "1"}
    running = ServerThread(settings_from(END_USER_JWT_SECRET=HS_SECRET, **env))
    try:
        with running.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            forged = signed("y" * 40, "HS256", None)
            assert [upload(stub, forged)[0] for _ in range(3)] == ["UNAUTHENTICATED"] * 3
            assert upload(stub, signed(HS_SECRET, "HS256", None))[0] == "OK"
            assert upload(stub, signed(HS_SECRET, "HS256", None)) == (
                "RESOURCE_EXHAUSTED",
                "rate_limited_user",
            )
    finally:
        running.stop()


def test_jwks_reload_rotates_keys_and_keeps_them_when_the_file_is_bad(tmp_path: Path) -> None:
    path = _jwks(tmp_path / "jwks.json", _jwk(RSA_KEY.public_key(), "rsa-1"))
    running = ServerThread(settings_from(END_USER_JWT_JWKS_FILE=str(path), **JWT_ENV))
    try:
        with running.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            assert upload(stub, rs256())[0] == "OK"
            _jwks(path, _jwk(OTHER_RSA_KEY.public_key(), "rsa-2"))
            running.server.reload()
            assert upload(stub, signed(OTHER_RSA_KEY, "RS256", "rsa-2"))[0] == "OK"
            assert upload(stub, rs256())[1] == "end_user_token_unknown_key"
            path.write_text("{not json")
            running.server.reload()
            assert upload(stub, signed(OTHER_RSA_KEY, "RS256", "rsa-2"))[0] == "OK"
    finally:
        running.stop()


def test_hs256_secret_from_a_file_verifies_and_rotates(tmp_path: Path) -> None:
    """END_USER_JWT_SECRET_FILE: the secret as a Kubernetes Secret volume holds it."""
    secret_file = tmp_path / "jwt-secret"
    secret_file.write_text(HS_SECRET + "\n")
    running = ServerThread(settings_from(END_USER_JWT_SECRET_FILE=str(secret_file), **JWT_ENV))
    try:
        with running.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            assert upload(stub, signed(HS_SECRET, "HS256", None))[0] == "OK"
            assert upload(stub, signed("x" * 40, "HS256", None))[0] == "UNAUTHENTICATED"
            rotated = "a-rotated-hs256-secret-of-32-bytes-or-more"
            leaks.remember(rotated)
            secret_file.write_text(rotated)
            running.server.reload()
            assert upload(stub, signed(rotated, "HS256", None))[0] == "OK"
            assert upload(stub, signed(HS_SECRET, "HS256", None))[0] == "UNAUTHENTICATED"
            secret_file.write_text("short")  # a bad file keeps the secret in force
            running.server.reload()
            assert upload(stub, signed(rotated, "HS256", None))[0] == "OK"
    finally:
        running.stop()


def test_short_secret_file_is_one_line_naming_it(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt-secret"
    secret_file.write_text("too-short\n")
    with pytest.raises(SettingsError) as caught:
        access_control(settings_from(END_USER_JWT_SECRET_FILE=str(secret_file), **JWT_ENV))
    assert caught.value.name == "END_USER_JWT_SECRET_FILE"
    assert "too-short" not in str(caught.value) and "\n" not in str(caught.value)


# -- settings ------------------------------------------------------------------------------

RSA_JWK = _jwk(RSA_KEY.public_key(), "rsa-1")
BAD_JWKS = [
    ("not-json", "{", "is not JSON"),
    ("no-keys", json.dumps({"keys": []}), "at least one key"),
    ("symmetric-key", json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), "only RSA"),
    (
        "private-key",
        json.dumps({"keys": [{**RSA_JWK, "d": "AQAB"}]}),
        "private key material",
    ),
    ("alg-mismatch", json.dumps({"keys": [{**RSA_JWK, "alg": "HS256"}]}), "does not fit"),
    ("encryption-key", json.dumps({"keys": [{**RSA_JWK, "use": "enc"}]}), "use must be 'sig'"),
    (
        "several-keys-without-kid",
        json.dumps({"keys": [{**RSA_JWK, "kid": None}, _jwk(EC_KEY.public_key(), "ec")]}),
        "needs a kid",
    ),
    ("repeated-kid", json.dumps({"keys": [RSA_JWK, RSA_JWK]}), "repeats kid"),
]


@pytest.mark.parametrize(("case", "text", "problem"), BAD_JWKS, ids=[row[0] for row in BAD_JWKS])
def test_bad_jwks_file_is_one_line_naming_it(
    tmp_path: Path, case: str, text: str, problem: str
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(text.replace(', "kid": null', ""))
    with pytest.raises(SettingsError) as caught:
        enduser.load_jwks(str(path))
    assert caught.value.name == "END_USER_JWT_JWKS_FILE"
    assert problem in str(caught.value) and "\n" not in str(caught.value)


_HS = {"END_USER_JWT_SECRET": HS_SECRET}
SETTINGS_ERRORS = [
    ("secret-too-short", {"END_USER_JWT_SECRET": "too-short"}, "END_USER_JWT_SECRET"),
    ("no-audience", {**_HS, "END_USER_JWT_ISSUER": ISSUER}, "END_USER_JWT_AUDIENCE"),
    ("no-issuer", {**_HS, "END_USER_JWT_AUDIENCE": "a"}, "END_USER_JWT_ISSUER"),
    ("issuer-without-key", {"END_USER_JWT_ISSUER": ISSUER}, "END_USER_JWT_ISSUER"),
    (
        "both-key-sources",
        {**JWT_ENV, **_HS, "END_USER_JWT_JWKS_FILE": "{jwks}"},
        "END_USER_JWT_JWKS_FILE",
    ),
    (
        "secret-and-secret-file",
        {**JWT_ENV, **_HS, "END_USER_JWT_SECRET_FILE": "{jwks}"},
        "END_USER_JWT_SECRET_FILE",
    ),
    (
        "secret-file-missing",
        {**JWT_ENV, "END_USER_JWT_SECRET_FILE": "/nonexistent/secret"},
        "END_USER_JWT_SECRET_FILE",
    ),
    (
        "leeway-too-long",
        {**JWT_ENV, **_HS, "END_USER_JWT_LEEWAY_SECONDS": "3600"},
        "END_USER_JWT_LEEWAY_SECONDS",
    ),
]


@pytest.mark.parametrize(
    ("case", "env", "named"), SETTINGS_ERRORS, ids=[row[0] for row in SETTINGS_ERRORS]
)
def test_end_user_settings_errors_name_the_variable(
    jwks_file: Path, case: str, env: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_from(**{k: v.format(jwks=jwks_file) for k, v in env.items()})
    assert caught.value.name == named
    assert HS_SECRET not in str(caught.value) and "too-short" not in str(caught.value)


def test_settings_repr_hides_the_hs256_secret() -> None:
    settings = settings_from(END_USER_JWT_SECRET=HS_SECRET, **JWT_ENV)
    assert settings.access.end_user is not None
    assert HS_SECRET not in repr(settings) and HS_SECRET not in str(settings.access)


def test_oversized_token_is_refused_before_parsing() -> None:
    """gRPC itself limits metadata to about 8 KiB; the verifier does not rely on it."""
    settings = settings_from(END_USER_JWT_SECRET=HS_SECRET, **JWT_ENV).access.end_user
    assert settings is not None
    verifier = enduser.EndUserVerifier(settings)
    with pytest.raises(errors.Unauthenticated) as caught:
        verifier.subject("e" * (enduser.MAX_TOKEN_BYTES + 1))
    assert caught.value.reason == "end_user_token_malformed"


def test_python_client_forwards_the_end_user_token() -> None:
    from avatarsigner import AvatarSignerClient, AvatarSignerError

    running = ServerThread(settings_from(END_USER_JWT_SECRET=HS_SECRET, **JWT_ENV))
    try:
        with AvatarSignerClient(running.target) as client:
            token = signed(HS_SECRET, "HS256", None, sub="alice")
            upload = client.create_upload_url("alice", "image/png", 9, end_user_token=token)
            assert upload.key.startswith("uploads/alice/")
            with pytest.raises(AvatarSignerError) as missing:
                client.create_upload_url("alice", "image/png", 9)
            assert missing.value.code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(AvatarSignerError) as other:
                client.create_upload_url("bob", "image/png", 9, end_user_token=token)
            assert other.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert token not in str(other.value)
    finally:
        running.stop()
