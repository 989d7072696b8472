"""CLOUDFRONT_* settings: what turns CloudFront on, and every way start-up refuses it.

Start-up is what `serve` does before anything runs (settings, then every key file read); a
problem is one line naming the variable, never key material, and `serve` exits with 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import leaks
import pytest
from avatarsigner_server.app import wiring
from avatarsigner_server.commands.check import cloudfront as check_cloudfront
from avatarsigner_server.credentials.watcher import check_sources
from avatarsigner_server.settings import Settings, SettingsError
from avatarsigner_server.settings import load as load_settings
from avatarsigner_server.signing.cloudfront import (
    CloudFrontSigner,
    HashAlgorithm,
    load_private_key,
)
from avatarsigner_server.signing.cloudfront_viewers import CloudFrontKeyPair
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from servers import FAKE_ENV

ORIGIN = "https://avatars.example.com"
KEY_ID = "K2JCJMDEHXQW5F"


def _pem(key: Any, encryption: Any = None) -> bytes:
    data = bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            encryption or serialization.NoEncryption(),
        )
    )
    leaks.remember(*(line.decode() for line in data.splitlines() if not line.startswith(b"-")))
    return data


@pytest.fixture(scope="module")
def good_pem() -> bytes:
    return _pem(rsa.generate_private_key(65537, 2048))


def _env(tmp_path: Path, pem: bytes, **changes: str | None) -> dict[str, str]:
    key_file = tmp_path / "cloudfront.pem"
    key_file.write_bytes(pem)
    env: dict[str, str | None] = {
        **FAKE_ENV,
        "CLOUDFRONT_URL": ORIGIN,
        "CLOUDFRONT_KEY_PAIR_ID": KEY_ID,
        "CLOUDFRONT_PRIVATE_KEY_FILE": str(key_file),
        **changes,
    }
    return {name: value for name, value in env.items() if value is not None}


def _start_up(env: dict[str, str]) -> Settings:
    settings = load_settings(env)
    check_sources(settings)
    return settings


def test_cloudfront_is_off_by_default() -> None:
    assert _start_up(dict(FAKE_ENV)).cloudfront is None


def test_configured_cloudfront_and_its_defaults(tmp_path: Path, good_pem: bytes) -> None:
    cloudfront = _start_up(_env(tmp_path, good_pem, CLOUDFRONT_URL="https://Avatars.Example.com/"))
    assert cloudfront.cloudfront is not None
    settings = cloudfront.cloudfront
    assert settings.url == ORIGIN
    assert settings.key_pair_id == KEY_ID and settings.key_pair_id_file is None
    assert settings.hash_algorithm is HashAlgorithm.SHA1
    assert (settings.cookie_ttl.default, settings.cookie_ttl.maximum) == (3600, 43200)
    assert settings.cookie_domain is None


def test_the_id_may_come_from_a_file_and_sha256_is_a_choice(
    tmp_path: Path, good_pem: bytes
) -> None:
    id_file = tmp_path / "id"
    id_file.write_text(f"{KEY_ID}\n")
    env = _env(
        tmp_path,
        good_pem,
        CLOUDFRONT_KEY_PAIR_ID=None,
        CLOUDFRONT_KEY_PAIR_ID_FILE=str(id_file),
        CLOUDFRONT_HASH_ALGORITHM="sha256",
        CLOUDFRONT_COOKIE_DOMAIN=".Example.com",
    )
    settings = _start_up(env).cloudfront
    assert settings is not None
    assert settings.key_pair_id_file == id_file
    assert settings.hash_algorithm is HashAlgorithm.SHA256
    assert settings.cookie_domain == "example.com"


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _weak() -> bytes:
    return _pem(rsa.generate_private_key(65537, 1024))  # noqa: S505 - made to be refused


# (case, changes made from the working environment, the variable the one line names, a word
# of the problem). Values are callables of tmp_path so files can be made.
Change = Callable[[Path], dict[str, str | None]]
REFUSED: list[tuple[str, Change, str, str]] = [
    (
        "id-missing",
        lambda p: {"CLOUDFRONT_KEY_PAIR_ID": None},
        "CLOUDFRONT_KEY_PAIR_ID",
        "required",
    ),
    (
        "id-malformed",
        lambda p: {"CLOUDFRONT_KEY_PAIR_ID": "k2-lower"},
        "CLOUDFRONT_KEY_PAIR_ID",
        "upper-case",
    ),
    (
        "id-twice",
        lambda p: {"CLOUDFRONT_KEY_PAIR_ID_FILE": _write(p, "id", KEY_ID.encode())},
        "CLOUDFRONT_KEY_PAIR_ID_FILE",
        "not both",
    ),
    (
        "id-file-malformed",
        lambda p: {
            "CLOUDFRONT_KEY_PAIR_ID": None,
            "CLOUDFRONT_KEY_PAIR_ID_FILE": _write(p, "id", b"not an id"),
        },
        "CLOUDFRONT_KEY_PAIR_ID_FILE",
        "upper-case",
    ),
    (
        "key-missing",
        lambda p: {"CLOUDFRONT_PRIVATE_KEY_FILE": None},
        "CLOUDFRONT_PRIVATE_KEY_FILE",
        "required",
    ),
    (
        "key-not-a-file",
        lambda p: {"CLOUDFRONT_PRIVATE_KEY_FILE": str(p / "nowhere.pem")},
        "CLOUDFRONT_PRIVATE_KEY_FILE",
        "not a readable file",
    ),
    (
        "key-empty",
        lambda p: {"CLOUDFRONT_PRIVATE_KEY_FILE": _write(p, "k.pem", b"\n")},
        "CLOUDFRONT_PRIVATE_KEY_FILE",
        "empty",
    ),
    (
        "key-garbage",
        lambda p: {"CLOUDFRONT_PRIVATE_KEY_FILE": _write(p, "k.pem", b"not a key")},
        "CLOUDFRONT_PRIVATE_KEY_FILE",
        "not a PEM private key",
    ),
    (
        "key-rsa-1024",
        lambda p: {"CLOUDFRONT_PRIVATE_KEY_FILE": _write(p, "k.pem", _weak())},
        "CLOUDFRONT_PRIVATE_KEY_FILE",
        "RSA 1024",
    ),
    (
        "key-ed25519",
        lambda p: {
            "CLOUDFRONT_PRIVATE_KEY_FILE": _write(
                p, "k.pem", _pem(ed25519.Ed25519PrivateKey.generate())
            )
        },
        "CLOUDFRONT_PRIVATE_KEY_FILE",
        "Ed25519",
    ),
    (
        "key-p384",
        lambda p: {
            "CLOUDFRONT_PRIVATE_KEY_FILE": _write(
                p, "k.pem", _pem(ec.generate_private_key(ec.SECP384R1()))
            )
        },
        "CLOUDFRONT_PRIVATE_KEY_FILE",
        "secp384r1",
    ),
    (
        "key-encrypted",
        lambda p: {
            "CLOUDFRONT_PRIVATE_KEY_FILE": _write(
                p,
                "k.pem",
                _pem(
                    ec.generate_private_key(ec.SECP256R1()),
                    serialization.BestAvailableEncryption(b"correct horse"),
                ),
            )
        },
        "CLOUDFRONT_PRIVATE_KEY_FILE",
        "encrypted",
    ),
    (
        "url-http",
        lambda p: {"CLOUDFRONT_URL": "http://avatars.example.com"},
        "CLOUDFRONT_URL",
        "https",
    ),
    ("url-path", lambda p: {"CLOUDFRONT_URL": f"{ORIGIN}/profiles"}, "CLOUDFRONT_URL", "no path"),
    (
        "url-port",
        lambda p: {"CLOUDFRONT_URL": f"{ORIGIN}:8443"},
        "CLOUDFRONT_URL",
        "https://<host>",
    ),
    (
        "url-one-label",
        lambda p: {"CLOUDFRONT_URL": "https://localhost"},
        "CLOUDFRONT_URL",
        "https://<host>",
    ),
    (
        "hash-md5",
        lambda p: {"CLOUDFRONT_HASH_ALGORITHM": "MD5"},
        "CLOUDFRONT_HASH_ALGORITHM",
        "SHA256",
    ),
    (
        "cookie-ttl-over-max",
        lambda p: {
            "CLOUDFRONT_COOKIE_TTL_SECONDS": "7200",
            "CLOUDFRONT_COOKIE_MAX_TTL_SECONDS": "3600",
        },
        "CLOUDFRONT_COOKIE_TTL_SECONDS",
        "CLOUDFRONT_COOKIE_MAX_TTL_SECONDS",
    ),
    (
        "cookie-domain-elsewhere",
        lambda p: {"CLOUDFRONT_COOKIE_DOMAIN": "example.org"},
        "CLOUDFRONT_COOKIE_DOMAIN",
        "parent domain",
    ),
    (
        "cookie-domain-ip",
        lambda p: {"CLOUDFRONT_COOKIE_DOMAIN": "192.0.2.1"},
        "CLOUDFRONT_COOKIE_DOMAIN",
        "IP address",
    ),
    (
        "id-without-url",
        lambda p: {"CLOUDFRONT_URL": None},
        "CLOUDFRONT_KEY_PAIR_ID",
        "CLOUDFRONT_URL is not",
    ),
]


@pytest.mark.parametrize(
    ("change", "variable", "problem"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_start_up_refuses_with_one_line_naming_the_variable(
    tmp_path: Path, good_pem: bytes, change: Change, variable: str, problem: str
) -> None:
    env = _env(tmp_path, good_pem, **change(tmp_path))
    with pytest.raises(SettingsError) as caught:
        _start_up(env)
    message = str(caught.value)
    assert caught.value.name == variable, message
    assert problem in message
    assert "\n" not in message and len(message) < 300
    assert leaks.find([message]) == []


@pytest.mark.slow
def test_serve_with_a_bad_key_exits_2_with_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path, _weak())
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "CLOUDFRONT_"))
    }
    result = subprocess.run(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("avatar-signer: configuration error: CLOUDFRONT_PRIVATE_KEY_FILE: ")
    assert "RSA 1024" in line
    assert leaks.find([line]) == []


# --------------------------------------------------------------------------- avatar-signer check


def _check_rows(settings: Settings) -> dict[str, Any]:
    return {row.check: row for row in check_cloudfront.run(settings, lambda: NOW)}


NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256"])
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_check_verifies_the_key_and_what_it_signs_and_skips_cloudfront(
    tmp_path: Path, kind: str, algorithm: str
) -> None:
    key = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    env = _env(tmp_path, _pem(key), CLOUDFRONT_HASH_ALGORITHM=algorithm)
    rows = _check_rows(_start_up(env))
    assert {name: row.outcome for name, row in rows.items()} == {
        "CloudFront key file": "PASS",
        "CloudFront URL verifies with the public key": "PASS",
        "CloudFront cookies verify with the public key": "PASS",
        "CloudFront serves them": "SKIP",
    }
    assert "cannot reach CloudFront" in rows["CloudFront serves them"].detail
    assert KEY_ID in rows["CloudFront key file"].detail
    cookies_row = rows["CloudFront cookies verify with the public key"]
    assert f"{ORIGIN}/profiles/*/avatar" in cookies_row.detail
    assert leaks.find([row.detail for row in rows.values()]) == []


def test_check_fails_a_key_file_broken_after_start_up(tmp_path: Path, good_pem: bytes) -> None:
    settings = _start_up(_env(tmp_path, good_pem))
    (tmp_path / "cloudfront.pem").write_bytes(b"")
    (row,) = _check_rows(settings).values()
    assert (row.check, row.outcome) == ("CloudFront key file", "FAIL")
    assert "CLOUDFRONT_PRIVATE_KEY_FILE" in row.detail and "empty" in row.detail


def test_check_judges_with_the_public_half(tmp_path: Path) -> None:
    """What the rows rest on: another key's signature, or a wider grant, is refused."""
    ours, theirs = (load_private_key(_pem(rsa.generate_private_key(65537, 2048))) for _ in "ab")
    pair = CloudFrontKeyPair(ours, KEY_ID)
    url, expires = f"{ORIGIN}/profiles/a/avatar", NOW + timedelta(seconds=60)
    stamp = int(expires.timestamp())
    good = CloudFrontSigner(ours, KEY_ID).signed_url(url, expires)
    forged = CloudFrontSigner(theirs, KEY_ID).signed_url(url, expires)
    assert check_cloudfront._url_problem(pair, good, url, stamp) is None
    assert "does not verify" in (check_cloudfront._url_problem(pair, forged, url, stamp) or "")
    grant = f"{ORIGIN}/profiles/*/avatar"
    wider = CloudFrontSigner(ours, KEY_ID).signed_cookies(f"{ORIGIN}/*", expires)
    problem = check_cloudfront._cookies_problem(pair, wider, grant, stamp)
    assert problem is not None and "grants" in problem
    cookies = CloudFrontSigner(theirs, KEY_ID).signed_cookies(grant, expires)
    assert "does not verify" in (
        check_cloudfront._cookies_problem(pair, cookies, grant, stamp) or ""
    )


def test_deleted_avatars_may_live_on_at_the_edge_for_its_maximum_ttl(
    tmp_path: Path, good_pem: bytes
) -> None:
    """DeleteAvatar's cached_copies_expire_within: the edge's copy, then the browser's."""
    assert wiring.cached_copies_seconds(_start_up(dict(FAKE_ENV))) == 1200  # S3: the max ttl
    with_cloudfront = _start_up(_env(tmp_path, good_pem))
    assert wiring.cached_copies_seconds(with_cloudfront) == 3600 + 300
