"""CloudFront signed URLs and cookies: what our signer hands out is what CloudFront checks.

Three kinds of proof, none of which trusts the signer under test:

* differential: URLs byte-identical to botocore's CloudFrontSigner (RSA, SHA-1), and
  URLs and cookies identical to AWS's JavaScript signer (@aws-sdk/cloudfront-signer, run
  with Node) for RSA, whose PKCS#1 v1.5 signatures are deterministic;
* an edge model written from AWS's documented rules (tests/cloudfront_edge.py) that verifies with
  the PUBLIC key only: the canned policy's exact bytes rebuilt from the URL, the custom
  policy's JSON, expiry, key id, the hash named by Hash-Algorithm and the resource pattern;
  it must reject every tampered variant, so it is shown able to fail;
* refusals: every kind of key CloudFront cannot use stops with one line and no key bytes.

Keys are generated here, at test time; none is stored.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import cloudfront_edge as edge
import pytest
from avatarsigner_server.signing import cloudfront
from avatarsigner_server.signing.cloudfront import (
    CloudFrontKeyError,
    CloudFrontSigner,
    HashAlgorithm,
)
from botocore.signers import CloudFrontSigner as BotocoreCloudFrontSigner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

KEY_ID = edge.KEY_ID
ORIGIN = "https://avatars.example.com"
PROFILES = f"{ORIGIN}/profiles/*"
EXPIRES = datetime(2031, 5, 17, 8, 30, 12, tzinfo=UTC)
BEFORE = EXPIRES - timedelta(seconds=1)


# --------------------------------------------------------------------------- keys


def _pem(key: Any, fmt: serialization.PrivateFormat) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))


PKCS1 = serialization.PrivateFormat.TraditionalOpenSSL  # RSA: PKCS#1; EC: SEC 1
PKCS8 = serialization.PrivateFormat.PKCS8


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(65537, 2048) for _ in range(2)]


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_signer(rsa_keys: list[rsa.RSAPrivateKey]) -> CloudFrontSigner:
    return CloudFrontSigner(cloudfront.load_private_key(_pem(rsa_keys[0], PKCS1)), KEY_ID)


def _signer(key: Any, algorithm: HashAlgorithm = HashAlgorithm.SHA1, **kw: Any) -> CloudFrontSigner:
    return CloudFrontSigner(cloudfront.load_private_key(_pem(key, PKCS8)), KEY_ID, algorithm, **kw)


def _botocore(key: rsa.RSAPrivateKey) -> BotocoreCloudFrontSigner:
    sha1 = hashes.SHA1()  # noqa: S303 - what botocore documents for CloudFront
    return BotocoreCloudFrontSigner(
        KEY_ID, lambda message: key.sign(message, padding.PKCS1v15(), sha1)
    )


# --------------------------------------------------------------------------- cases


def _url_cases(count: int, seed: int) -> list[tuple[str, datetime]]:
    """Varied, valid CloudFront URLs (own query strings, ports, percent-escapes) and expiries
    (fractions of a second, zones other than UTC)."""
    rng = random.Random(seed)
    origins = [ORIGIN, "https://d111111abcdef8.cloudfront.net", "http://cdn.example.org:8080"]
    tokens = [*string.ascii_letters, *string.digits, "-", ".", "_", "~", "%20", "%C3%A9"]
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    cases = []
    for _ in range(count):
        segments = ["".join(rng.choices(tokens, k=rng.randint(1, 12))) for _ in range(3)]
        url = rng.choice(origins) + "/" + "/".join(segments[: rng.randint(1, 3)])
        if rng.random() < 0.4:
            url += "?size=large&v=" + str(rng.randint(0, 999))
        moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.randint(0, 15 * 365 * 86400), microseconds=rng.randint(0, 999_999)
        )
        cases.append((url, moment.astimezone(rng.choice(zones))))
    return cases


# --------------------------------------------------------------------------- differential


@pytest.mark.parametrize("fmt", [PKCS1, PKCS8], ids=["pkcs1", "pkcs8"])
def test_url_is_byte_identical_to_botocore(rsa_keys: list[rsa.RSAPrivateKey], fmt: Any) -> None:
    for index, key in enumerate(rsa_keys):
        ours = CloudFrontSigner(cloudfront.load_private_key(_pem(key, fmt)), KEY_ID)
        theirs = _botocore(key)
        for url, expires in _url_cases(40, seed=index):
            assert ours.signed_url(url, expires) == theirs.generate_presigned_url(
                url, date_less_than=expires
            )


def test_policy_bytes_match_botocore(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    theirs = _botocore(rsa_keys[0])
    for resource, expires in [*_url_cases(20, seed=7), (PROFILES, EXPIRES)]:
        expected = theirs.build_policy(resource, expires).encode()
        assert cloudfront.policy(resource, cloudfront.epoch_seconds(expires)) == expected


def test_canned_policy_is_the_documented_template() -> None:
    url = f"{ORIGIN}/profiles/u1/avatar?size=large"
    assert cloudfront.policy(url, 1767290400) == (edge.CANNED % (url, 1767290400)).encode()


def test_url_safe_base64_uses_cloudfront_alphabet() -> None:
    # 0xfb 0xff 0xbf is "+/+/" in standard base64; one byte more needs "==" padding.
    assert cloudfront.url_safe_b64(b"\xfb\xff\xbf") == "-~-~"
    assert cloudfront.url_safe_b64(b"\xfb\xff\xbf\xfb") == "-~-~-w__"
    data = bytes(range(256)) * 3
    assert cloudfront.url_safe_b64(data) == _botocore_b64(data)
    assert edge.from_cloudfront_b64(cloudfront.url_safe_b64(data)) == data


def _botocore_b64(data: bytes) -> str:
    encoded: bytes = BotocoreCloudFrontSigner(KEY_ID, lambda m: m)._url_b64encode(data)
    return encoded.decode()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(HashAlgorithm), ids=str)
def test_cookies_match_aws_javascript_signer(
    rsa_keys: list[rsa.RSAPrivateKey], algorithm: HashAlgorithm
) -> None:
    resources = [
        PROFILES,
        "https://d111111abcdef8.cloudfront.net/profiles/u?/avatar",
        "http*://a.example.com/*",
    ]
    expiries = [EXPIRES, datetime(2026, 7, 1, 12, 0, 0, 999_000, tzinfo=UTC)]
    cases = [(key, r, e) for key in rsa_keys for r in resources for e in expiries]
    answer = edge.aws_javascript_signer(
        {
            "cookies": [
                {
                    "privateKey": _pem(key, PKCS1).decode(),
                    "keyPairId": KEY_ID,
                    "resource": resource,
                    "expires": cloudfront.epoch_seconds(expires),
                    "algorithm": str(algorithm),
                }
                for key, resource, expires in cases
            ]
        }
    )
    assert len(answer["cookies"]) == len(cases)
    for (key, resource, expires), theirs in zip(cases, answer["cookies"], strict=True):
        ours = _signer(key, algorithm).signed_cookies(resource, expires)
        assert ours == theirs["cookies"]
        assert list(ours) == [
            "CloudFront-Policy",
            "CloudFront-Signature",
            "CloudFront-Key-Pair-Id",
            *(["CloudFront-Hash-Algorithm"] if algorithm is HashAlgorithm.SHA256 else []),
        ]
        assert edge.from_cloudfront_b64(ours["CloudFront-Policy"]) == theirs["policy"].encode()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(HashAlgorithm), ids=str)
def test_urls_match_aws_javascript_signer(
    rsa_keys: list[rsa.RSAPrivateKey], algorithm: HashAlgorithm
) -> None:
    key = rsa_keys[1]
    cases = [
        (f"{ORIGIN}/profiles/u{n}/avatar", EXPIRES + timedelta(seconds=n)) for n in range(5)
    ] + [(f"{ORIGIN}/profiles/u9/avatar?size=large", EXPIRES)]
    answer = edge.aws_javascript_signer(
        {
            "urls": [
                {
                    "privateKey": _pem(key, PKCS8).decode(),
                    "keyPairId": KEY_ID,
                    "url": url,
                    "expires": cloudfront.epoch_seconds(expires),
                    "algorithm": str(algorithm),
                }
                for url, expires in cases
            ]
        }
    )
    signer = _signer(key, algorithm)
    for (url, expires), theirs in zip(cases, answer["urls"], strict=True):
        ours = signer.signed_url(url, expires)
        # Same base and the same parameters; the JavaScript signer orders them differently.
        assert _split(ours) == _split(theirs)
        assert ("Hash-Algorithm" in ours) == (algorithm is HashAlgorithm.SHA256)


def _split(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts._replace(query="").geturl(), dict(parse_qsl(parts.query))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(HashAlgorithm), ids=str)
def test_ecdsa_signatures_verify_in_node_and_nodes_verify_here(
    ec_key: ec.EllipticCurvePrivateKey, algorithm: HashAlgorithm
) -> None:
    signer = _signer(ec_key, algorithm)
    public_pem = cloudfront.load_private_key(_pem(ec_key, PKCS8)).public_key_pem().decode()
    statement = cloudfront.policy(PROFILES, cloudfront.epoch_seconds(EXPIRES))
    ours = signer.signed_cookies(PROFILES, EXPIRES)
    check = {
        "publicKey": public_pem,
        "message": base64.b64encode(statement).decode(),
        "signature": ours["CloudFront-Signature"],
        "algorithm": str(algorithm),
    }
    tampered = {**check, "message": base64.b64encode(statement.replace(b"2", b"3")).decode()}
    answer = edge.aws_javascript_signer(
        {
            "verify": [check, tampered],
            "cookies": [
                {
                    "privateKey": _pem(ec_key, PKCS8).decode(),
                    "keyPairId": KEY_ID,
                    "resource": PROFILES,
                    "expires": cloudfront.epoch_seconds(EXPIRES),
                    "algorithm": str(algorithm),
                }
            ],
        }
    )
    assert answer["verify"] == [True, False]
    theirs = answer["cookies"][0]["cookies"]
    assert theirs["CloudFront-Policy"] == ours["CloudFront-Policy"]
    assert edge.accepts_cookies(
        theirs, f"{ORIGIN}/profiles/u1/avatar", ec_key.public_key(), BEFORE
    )


# --------------------------------------------------------------------------- the edge's view


def _all_signers(
    rsa_keys: list[rsa.RSAPrivateKey], ec_key: ec.EllipticCurvePrivateKey
) -> list[tuple[CloudFrontSigner, Any]]:
    return [
        (_signer(key, algorithm), key.public_key())
        for key in (rsa_keys[0], ec_key)
        for algorithm in HashAlgorithm
    ]


def test_signed_urls_verify_with_the_public_key(
    rsa_keys: list[rsa.RSAPrivateKey], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    for signer, public in _all_signers(rsa_keys, ec_key):
        for url, expires in _url_cases(5, seed=3):
            signed = signer.signed_url(url, expires)
            assert edge.accepts_url(signed, public, expires - timedelta(seconds=1))


def _tampered_urls(signed: str) -> dict[str, str]:
    expires = re.search(r"Expires=(\d+)", signed)
    assert expires
    later = str(int(expires.group(1)) + 3600)
    return {
        "other object": signed.replace("/profiles/u1/", "/profiles/u2/"),
        "later expiry": signed.replace(f"Expires={expires.group(1)}", f"Expires={later}"),
        "other key id": signed.replace(f"Key-Pair-Id={KEY_ID}", "Key-Pair-Id=K3OTHERKEY"),
        "hash removed": signed.replace("&Hash-Algorithm=SHA256", ""),
        "hash added": signed + ("" if "Hash-Algorithm" in signed else "&Hash-Algorithm=SHA256"),
    }


def test_edge_model_rejects_tampered_and_expired_urls(
    rsa_keys: list[rsa.RSAPrivateKey], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    url = f"{ORIGIN}/profiles/u1/avatar"
    for signer, public in _all_signers(rsa_keys, ec_key):
        signed = signer.signed_url(url, EXPIRES)
        assert edge.accepts_url(signed, public, BEFORE)
        assert not edge.accepts_url(signed, public, EXPIRES)  # DateLessThan is exclusive
        assert not edge.accepts_url(signed, rsa_keys[1].public_key(), BEFORE)
        for name, bad in _tampered_urls(signed).items():
            if bad != signed:
                assert not edge.accepts_url(bad, public, BEFORE), name


def test_cookies_grant_the_profiles_pattern_until_expiry(
    rsa_keys: list[rsa.RSAPrivateKey], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    for signer, public in _all_signers(rsa_keys, ec_key):
        cookies = signer.signed_cookies(PROFILES, EXPIRES)
        for allowed in ("profiles/u1/avatar", "profiles/a-b_c/avatar", "profiles/"):
            assert edge.accepts_cookies(cookies, f"{ORIGIN}/{allowed}", public, BEFORE)
        for denied in (
            f"{ORIGIN}/uploads/u1/avatar",
            f"{ORIGIN}/profile/u1/avatar",
            "http://avatars.example.com/profiles/u1/avatar",
            "https://evil.example.com/profiles/u1/avatar",
        ):
            assert not edge.accepts_cookies(cookies, denied, public, BEFORE), denied
        assert not edge.accepts_cookies(cookies, f"{ORIGIN}/profiles/u1/avatar", public, EXPIRES)


def test_cookie_policy_json_is_exactly_the_grant(rsa_signer: CloudFrontSigner) -> None:
    cookies = rsa_signer.signed_cookies(PROFILES, EXPIRES + timedelta(microseconds=999_999))
    statement = edge.from_cloudfront_b64(cookies["CloudFront-Policy"])
    assert json.loads(statement) == {
        "Statement": [
            {
                "Resource": PROFILES,
                "Condition": {"DateLessThan": {"AWS:EpochTime": int(EXPIRES.timestamp())}},
            }
        ]
    }
    assert not re.search(rb"\s", statement)
    assert cookies["CloudFront-Key-Pair-Id"] == KEY_ID
    assert "CloudFront-Hash-Algorithm" not in cookies


def test_tampered_cookies_are_rejected(rsa_signer: CloudFrontSigner, rsa_keys: Any) -> None:
    public = rsa_keys[0].public_key()
    url = f"{ORIGIN}/profiles/u1/avatar"
    cookies = rsa_signer.signed_cookies(PROFILES, EXPIRES)
    assert edge.accepts_cookies(cookies, url, public, BEFORE)
    wider = rsa_signer.signed_cookies(f"{ORIGIN}/*", EXPIRES)
    swapped_policy = {**cookies, "CloudFront-Policy": wider["CloudFront-Policy"]}
    sha256_claimed = {**cookies, "CloudFront-Hash-Algorithm": "SHA256"}
    for bad in (swapped_policy, sha256_claimed):
        assert not edge.accepts_cookies(bad, f"{ORIGIN}/other", public, BEFORE)
        assert not edge.accepts_cookies(bad, url, public, BEFORE)


# --------------------------------------------------------------------------- shape of a URL


def test_sha1_urls_carry_no_hash_algorithm(rsa_signer: CloudFrontSigner) -> None:
    signed = rsa_signer.signed_url(f"{ORIGIN}/profiles/u1/avatar", EXPIRES)
    assert re.fullmatch(
        rf"{re.escape(ORIGIN)}/profiles/u1/avatar\?Expires={int(EXPIRES.timestamp())}"
        rf"&Signature=[A-Za-z0-9~_-]+&Key-Pair-Id={KEY_ID}",
        signed,
    )


def test_sha256_urls_end_with_hash_algorithm(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signed = _signer(ec_key, HashAlgorithm.SHA256).signed_url(f"{ORIGIN}/a?b=c", EXPIRES)
    assert signed.startswith(f"{ORIGIN}/a?b=c&Expires=")
    assert signed.endswith(f"&Key-Pair-Id={KEY_ID}&Hash-Algorithm=SHA256")


def test_ecdsa_urls_are_shorter_than_rsa(
    rsa_signer: CloudFrontSigner, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    url = f"{ORIGIN}/profiles/u1/avatar"
    assert (
        len(_signer(ec_key).signed_url(url, EXPIRES))
        < len(rsa_signer.signed_url(url, EXPIRES)) - 200
    )


# --------------------------------------------------------------------------- caching


def _counting(signer: CloudFrontSigner) -> list[bytes]:
    """Every policy the signer really signs from now on (a cache hit signs nothing)."""
    signed: list[bytes] = []
    sign = signer._sign

    def counted(message: bytes) -> bytes:
        signed.append(message)
        return sign(message)

    signer._sign = counted  # type: ignore[method-assign]
    return signed


def test_cache_hands_out_the_same_url_within_an_expiry_second(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    url = f"{ORIGIN}/profiles/u1/avatar"
    cached = _signer(ec_key, cache_size=16)
    signed = _counting(cached)
    first = cached.signed_url(url, EXPIRES)
    assert cached.signed_url(url, EXPIRES + timedelta(microseconds=500)) == first
    assert cached.signed_url(url, EXPIRES.astimezone(timezone(timedelta(hours=2)))) == first
    assert len(signed) == 1
    assert cached.signed_url(url, EXPIRES + timedelta(seconds=1)) != first
    assert cached.signed_url(f"{ORIGIN}/profiles/u2/avatar", EXPIRES) != first
    assert len(signed) == 3
    cookies = cached.signed_cookies(PROFILES, EXPIRES)
    assert cached.signed_cookies(PROFILES, EXPIRES) == cookies
    assert len(signed) == 4
    cookies["CloudFront-Policy"] = "changed by a caller"
    assert cached.signed_cookies(PROFILES, EXPIRES)["CloudFront-Policy"] != "changed by a caller"


def test_cache_is_bounded(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cached = _signer(ec_key, cache_size=2)
    signed = _counting(cached)
    for n in (0, 1, 2, 0):
        cached.signed_url(f"{ORIGIN}/profiles/u{n}/avatar", EXPIRES)
    assert len(signed) == 4  # u0 was evicted by u2, so it is signed again


# --------------------------------------------------------------------------- deterministic


def test_every_signer_with_the_key_hands_out_the_same_url(
    rsa_keys: list[rsa.RSAPrivateKey], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """Two processes (two signers, no shared cache) give one URL: browsers cache by URL."""
    url = f"{ORIGIN}/profiles/u1/avatar"
    for key in (rsa_keys[0], ec_key):
        for algorithm in HashAlgorithm:
            assert _signer(key, algorithm).signed_url(url, EXPIRES) == _signer(
                key, algorithm
            ).signed_url(url, EXPIRES)


# RFC 6979, A.2.5: ECDSA on P-256, message "sample": the signature deterministic ECDSA gives.
RFC6979_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
RFC6979_SIGNATURES = {
    HashAlgorithm.SHA1: (
        0x61340C88C3AAEBEB4F6D667F672CA9759A6CCAA9FA8811313039EE4A35471D32,
        0x6D7F147DAC089441BB2E2FE8F7A3FA264B9C475098FDCF6E00D7C996E1B8B7EB,
    ),
    HashAlgorithm.SHA256: (
        0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
        0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8,
    ),
}


@pytest.mark.parametrize("algorithm", list(HashAlgorithm), ids=str)
def test_ecdsa_signatures_are_rfc6979_deterministic(algorithm: HashAlgorithm) -> None:
    key = ec.derive_private_key(RFC6979_KEY, ec.SECP256R1())
    signature = _signer(key, algorithm).signature(b"sample")
    signature_bytes = edge.from_cloudfront_b64(signature)
    assert decode_dss_signature(signature_bytes) == RFC6979_SIGNATURES[algorithm]


# --------------------------------------------------------------------------- keys accepted


def _ec_with_parameters_block(key: ec.EllipticCurvePrivateKey) -> bytes:
    # `openssl ecparam -genkey -name prime256v1` (without -noout) writes this block first.
    return b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n" + _pem(
        key, PKCS1
    )


def test_accepts_rsa_2048_and_ecdsa_p256_in_each_pem_form(
    rsa_keys: list[rsa.RSAPrivateKey], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    forms: list[tuple[bytes, Any, str]] = [
        (_pem(rsa_keys[0], PKCS1), rsa_keys[0], "RSA 2048"),
        (_pem(rsa_keys[0], PKCS8), rsa_keys[0], "RSA 2048"),
        (_pem(ec_key, PKCS1), ec_key, "ECDSA P-256"),
        (_pem(ec_key, PKCS8), ec_key, "ECDSA P-256"),
        (_ec_with_parameters_block(ec_key), ec_key, "ECDSA P-256"),
        (_pem(rsa_keys[0], PKCS1).replace(b"\n", b"\r\n"), rsa_keys[0], "RSA 2048"),
    ]
    for pem, original, kind in forms:
        loaded = cloudfront.load_private_key(pem)
        assert loaded.kind == kind
        public = serialization.load_pem_public_key(loaded.public_key_pem())
        assert public.public_numbers() == original.public_key().public_numbers()  # type: ignore[union-attr]


def test_key_repr_shows_no_key_material(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    loaded = cloudfront.load_private_key(_pem(rsa_keys[0], PKCS8))
    assert repr(loaded) == "CloudFrontKey(kind='RSA 2048')"


# --------------------------------------------------------------------------- keys refused


def _certificate(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudfront test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _encrypted(key: Any, fmt: serialization.PrivateFormat) -> bytes:
    algorithm = serialization.BestAvailableEncryption(b"correct horse")
    return bytes(key.private_bytes(serialization.Encoding.PEM, fmt, algorithm))


def _public(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _weak_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)  # noqa: S505 - made to be refused


BAD_KEYS: dict[str, tuple[Callable[[Any, Any], bytes], str]] = {
    "empty": (lambda r, e: b"", "empty"),
    "whitespace": (lambda r, e: b" \n\t\n", "empty"),
    "garbage": (lambda r, e: b"this is not a key at all", "not a PEM private key"),
    "truncated pem": (lambda r, e: _pem(r, PKCS8)[:300], "not a PEM private key"),
    "der not pem": (
        lambda r, e: r.private_bytes(
            serialization.Encoding.DER, PKCS8, serialization.NoEncryption()
        ),
        "not a PEM private key",
    ),
    "encrypted pkcs8": (lambda r, e: _encrypted(r, PKCS8), "encrypted"),
    "encrypted pkcs1": (lambda r, e: _encrypted(r, PKCS1), "encrypted"),
    "public key": (lambda r, e: _public(r), "public key"),
    "certificate": (lambda r, e: _certificate(e), "certificate"),
    "rsa 1024": (lambda r, e: _pem(_weak_rsa(), PKCS8), "RSA 1024"),
    "rsa 3072": (lambda r, e: _pem(rsa.generate_private_key(65537, 3072), PKCS1), "RSA 3072"),
    "ec p-384": (lambda r, e: _pem(ec.generate_private_key(ec.SECP384R1()), PKCS8), "secp384r1"),
    "ed25519": (lambda r, e: _pem(ed25519.Ed25519PrivateKey.generate(), PKCS8), "Ed25519"),
}


@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_refuses_keys_cloudfront_cannot_use(
    case: str, rsa_keys: list[rsa.RSAPrivateKey], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    make, reason = BAD_KEYS[case]
    pem = make(rsa_keys[0], ec_key)
    with pytest.raises(CloudFrontKeyError) as caught:
        cloudfront.load_private_key(pem)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert reason in message
    assert "\n" not in message and len(message) < 120
    # Nothing chained: a traceback shows this line and not the parser's complaint.
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    # No key material: no run of 12 characters from the PEM's body shows up in the message.
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    for start in range(0, max(len(body) - 12, 0), 6):
        assert body[start : start + 12].decode(errors="replace") not in message


@pytest.mark.parametrize(
    "key_pair_id", ["", "k2jcjmdehxqw5f", "K2JC JMDEH", "K2&Expires=1", "K2\n", "K2;Path=/"]
)
def test_refuses_malformed_key_pair_ids(
    key_pair_id: str, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    key = cloudfront.load_private_key(_pem(rsa_keys[0], PKCS8))
    with pytest.raises(CloudFrontKeyError, match="upper-case letters and digits"):
        CloudFrontSigner(key, key_pair_id)


# --------------------------------------------------------------------------- inputs refused


@pytest.mark.parametrize(
    "url",
    [
        "ftp://avatars.example.com/profiles/u1/avatar",
        "avatars.example.com/profiles/u1/avatar",
        f"{ORIGIN}/profiles/u 1/avatar",
        f"{ORIGIN}/profiles/ü/avatar",
        f"{ORIGIN}/profiles/u1/avatar#top",
        f"{ORIGIN}/profiles/u1/avatar?Expires=1",
        f"{ORIGIN}/profiles/u1/avatar?a=1&Signature=x",
        f"{ORIGIN}/profiles/u1/avatar?Key-Pair-Id=K2",
        "http*://avatars.example.com/profiles/u1/avatar",
    ],
)
def test_refuses_urls_cloudfront_would_not_match(url: str, rsa_signer: CloudFrontSigner) -> None:
    with pytest.raises(ValueError, match="CloudFront"):
        rsa_signer.signed_url(url, EXPIRES)


def test_refuses_naive_expiry(rsa_signer: CloudFrontSigner) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        rsa_signer.signed_url(f"{ORIGIN}/a", EXPIRES.replace(tzinfo=None))
    with pytest.raises(ValueError, match="timezone-aware"):
        rsa_signer.signed_cookies(PROFILES, EXPIRES.replace(tzinfo=None))


def test_refuses_a_negative_cache_size(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    with pytest.raises(ValueError, match="cache_size"):
        _signer(rsa_keys[0], cache_size=-1)
