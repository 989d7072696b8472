"""CloudFront signed URLs (canned policy) and signed cookies (custom policy): the pure core.

Nothing here reads a file, a clock or the environment: the PEM bytes, the key pair id and
every expiry are parameters, so a test pins them and compares bytes with botocore's
`CloudFrontSigner` (URLs) and npm `@aws-sdk/cloudfront-signer` (cookies).

    PEM bytes -> load_private_key -> CloudFrontKey
    (resource, expiry) -> policy -> signature -> URL-safe base64 -> URL or cookies

What CloudFront accepts, and so what this module accepts:

* Keys: RSA 2048 or ECDSA P-256 (prime256v1), nothing else. Unencrypted PEM: PKCS#1
  (``BEGIN RSA PRIVATE KEY``), PKCS#8 (``BEGIN PRIVATE KEY``), and for EC keys also SEC 1
  (``BEGIN EC PRIVATE KEY``, what ``openssl ecparam -genkey`` writes).
* Hash: SHA-1 (the default and, until 2026, the only one) or SHA-256. With SHA-256 a URL
  ends in ``&Hash-Algorithm=SHA256`` and the cookies include
  ``CloudFront-Hash-Algorithm=SHA256``. With SHA-1 nothing is added: a URL is then
  byte-identical to botocore's ``CloudFrontSigner.generate_presigned_url``.
* Signature over the policy bytes: RSA PKCS#1 v1.5; ECDSA as ASN.1 DER
  (SEQUENCE {r, s}), what OpenSSL, Java's ``SHA1withECDSA``, Node's ``crypto.sign`` and the
  AWS SDKs for Ruby and Java produce. Then base64 with ``+``->``-``, ``=``->``_``,
  ``/``->``~``. ECDSA nonces are derived from the key and the message (RFC 6979), so, as
  with RSA, one key signs one policy to one signature: every process holding the key hands
  out the byte-identical URL for the same URL and expiry (browsers cache by the whole URL).
  Verifiers cannot tell: a deterministic signature is an ordinary ECDSA signature.
* Policy: ``{"Statement":[{"Resource":R,"Condition":{"DateLessThan":{"AWS:EpochTime":N}}}]}``
  without whitespace. Resource = the URL itself is the canned policy: it is signed, never
  sent; the URL carries ``Expires=N`` and CloudFront rebuilds the policy from the URL.
  Resource = a pattern (``*`` any run of characters, ``?`` exactly one) is a custom policy,
  sent base64'd as the ``CloudFront-Policy`` cookie.

Cost: an RSA-2048 signature takes hundreds of microseconds, an ECDSA P-256 one tens, while
the rest of a URL takes a few. Everything the result depends on is an argument, so a
signer built with ``cache_size`` keeps recent results keyed by (url or resource, expiry in
whole seconds): callers that round expiries to a window get byte-identical URLs and pay
one signature per URL per window.

Sources:
- https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/private-content-creating-signed-url-canned-policy.html
  (canned policy bytes, parameter order, ``Hash-Algorithm=SHA256``)
- https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/private-content-setting-signed-cookie-custom-policy.html
  (the three cookies, the optional ``CloudFront-Hash-Algorithm``, wildcards)
- https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/PrivateCFSignatureCodeAndExamples.html
  (SHA-1 or SHA-256; with SHA-256 add ``Hash-Algorithm=SHA256``)
- https://docs.aws.amazon.com/cloudfront/latest/APIReference/API_PublicKey.html
  ("signed URLs and signed cookies with RSA 2048 or ECDSA 256 key signatures")
- https://aws.amazon.com/about-aws/whats-new/2025/09/amazon-cloudfront-ecdsa-signed-urls/ and
  https://aws.amazon.com/about-aws/whats-new/2026/04/amazon-cloudfront-sha-256-signed-urls/
- the AWS SDK for Ruby's ``Aws::CloudFront::Signer`` (RSA or prime256v1 EC keys, DER
  ECDSA signatures from OpenSSL, ``Hash-Algorithm`` only for SHA256) and the AWS SDK for
  Java v2's ``CloudFrontUtilities`` (``SHA1withRSA`` / ``SHA1withECDSA``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    padding,
    rsa,
    x448,
    x25519,
)

RSA_KEY_BITS = 2048
ACCEPTED_KEYS = "RSA 2048 or ECDSA P-256"
# The parameters a signed URL adds; a URL to sign must not carry them already.
SIGNING_PARAMETERS = ("Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm")
COOKIE_POLICY = "CloudFront-Policy"
COOKIE_SIGNATURE = "CloudFront-Signature"
COOKIE_KEY_PAIR_ID = "CloudFront-Key-Pair-Id"
COOKIE_HASH_ALGORITHM = "CloudFront-Hash-Algorithm"

# Key types PEM can hold that CloudFront does not accept, named in the refusal.
_OTHER_KEYS: tuple[tuple[type, str], ...] = (
    (ed25519.Ed25519PrivateKey, "Ed25519"),
    (ed448.Ed448PrivateKey, "Ed448"),
    (x25519.X25519PrivateKey, "X25519"),
    (x448.X448PrivateKey, "X448"),
    (dsa.DSAPrivateKey, "DSA"),
)
_URL_SAFE = bytes.maketrans(b"+=/", b"-_~")
_KEY_PAIR_ID = re.compile(r"[A-Z0-9]{1,128}")
# Printable ASCII without space: CloudFront compares the URL as sent, percent-encoded.
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_SIGNING_PARAMETER = re.compile(
    r"[?&](?:" + "|".join(re.escape(name) for name in SIGNING_PARAMETERS) + r")="
)


class HashAlgorithm(StrEnum):
    """The hash CloudFront verifies a signature with; the value is what the URL says."""

    SHA1 = "SHA1"
    SHA256 = "SHA256"


class CloudFrontKeyError(ValueError):
    """A private key or key pair id CloudFront cannot use. One line, never key material."""


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class CloudFrontKey:
    """A private key CloudFront accepts, and which kind it is ("RSA 2048", "ECDSA P-256")."""

    private_key: PrivateKey = field(repr=False)
    kind: str

    def public_key_pem(self) -> bytes:
        """The public half as SubjectPublicKeyInfo PEM: what CloudFront's key group holds."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def load_private_key(pem: bytes) -> CloudFrontKey:
    """An RSA 2048 or ECDSA P-256 key from unencrypted PEM, or CloudFrontKeyError."""
    if not pem.strip():
        raise CloudFrontKeyError("the private key is empty")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # cryptography's word for "encrypted and no password given"
        raise CloudFrontKeyError(
            "the private key is encrypted; give it unencrypted (PKCS#1 or PKCS#8 PEM)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CloudFrontKeyError(_not_a_private_key(pem)) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size != RSA_KEY_BITS:
            raise CloudFrontKeyError(
                f"the private key is RSA {key.key_size}; CloudFront accepts {ACCEPTED_KEYS}"
            )
        return CloudFrontKey(key, f"RSA {RSA_KEY_BITS}")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise CloudFrontKeyError(
                f"the private key is ECDSA on {key.curve.name}; CloudFront accepts {ACCEPTED_KEYS}"
            )
        return CloudFrontKey(key, "ECDSA P-256")
    kind = next((name for cls, name in _OTHER_KEYS if isinstance(key, cls)), "another type")
    raise CloudFrontKeyError(f"the private key is {kind}; CloudFront accepts {ACCEPTED_KEYS}")


def _not_a_private_key(pem: bytes) -> str:
    """Why PEM bytes that failed to load as a private key are not one (no key material)."""
    try:
        serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        pass
    else:
        return "the file holds a public key; CloudFront signing needs the private key"
    if b"-----BEGIN CERTIFICATE-----" in pem:
        return "the file holds a certificate; CloudFront signing needs the private key"
    return f"not a PEM private key (PKCS#1 or PKCS#8, {ACCEPTED_KEYS})"


def check_key_pair_id(key_pair_id: str) -> str:
    """The id of the public key in the distribution's key group, or CloudFrontKeyError."""
    if not _KEY_PAIR_ID.fullmatch(key_pair_id):
        raise CloudFrontKeyError(
            "a CloudFront key pair id is upper-case letters and digits, like K2JCJMDEHXQW5F"
        )
    return key_pair_id


def url_safe_b64(data: bytes) -> str:
    """Base64 in CloudFront's URL-safe alphabet: '+' -> '-', '=' -> '_', '/' -> '~'."""
    return base64.b64encode(data).translate(_URL_SAFE).decode("ascii")


def epoch_seconds(moment: datetime) -> int:
    """Whole Unix seconds of a timezone-aware moment (fractions dropped, as botocore does)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("expires_at must be timezone-aware")
    return int(moment.timestamp())


def policy(resource: str, expires_at: int) -> bytes:
    """The policy statement CloudFront verifies: resource, valid while now < expires_at.

    With the URL itself as resource these are the canned policy's exact bytes (what
    botocore's build_policy produces); with a wildcard pattern, a custom policy.
    """
    # json.dumps on the string alone escapes it exactly as json.dumps on the whole document.
    return (
        f'{{"Statement":[{{"Resource":{json.dumps(resource)},'
        f'"Condition":{{"DateLessThan":{{"AWS:EpochTime":{expires_at}}}}}}}]}}'
    ).encode("ascii")


def _check_url(url: str, *, wildcards: bool) -> None:
    if not url.startswith(("https://", "http://") + (("http*://",) if wildcards else ())):
        raise ValueError("a CloudFront URL must start with https:// or http://")
    if not _VISIBLE_ASCII.fullmatch(url) or "#" in url:
        raise ValueError(
            "a CloudFront URL must be percent-encoded ASCII without spaces or a fragment"
        )
    if not wildcards and _SIGNING_PARAMETER.search(url):
        raise ValueError("the URL already has a CloudFront signing parameter")


class CloudFrontSigner:
    """Signs with one CloudFront key: canned-policy URLs and custom-policy cookies.

    `cache_size` > 0 keeps that many recent URLs (and as many cookie sets) keyed by
    (url or resource, expiry second); results never depend on anything else, so the cache
    cannot change an answer. Safe to share between threads.
    """

    def __init__(
        self,
        key: CloudFrontKey,
        key_pair_id: str,
        hash_algorithm: HashAlgorithm = HashAlgorithm.SHA1,
        cache_size: int = 0,
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be 0 (off) or positive")
        self.key_pair_id = check_key_pair_id(key_pair_id)
        self.hash_algorithm = HashAlgorithm(hash_algorithm)
        self._sign = _signing_function(key.private_key, self.hash_algorithm)
        suffix = f"&Key-Pair-Id={self.key_pair_id}"
        if self.hash_algorithm is not HashAlgorithm.SHA1:
            suffix += f"&Hash-Algorithm={self.hash_algorithm}"
        self._url_suffix = suffix
        self._url: Callable[[str, int], str] = self._signed_url
        self._cookies: Callable[[str, int], tuple[tuple[str, str], ...]] = self._signed_cookies
        if cache_size:
            self._url = lru_cache(maxsize=cache_size)(self._signed_url)
            self._cookies = lru_cache(maxsize=cache_size)(self._signed_cookies)

    def signature(self, policy_bytes: bytes) -> str:
        """The policy's signature in CloudFront's URL-safe base64."""
        return url_safe_b64(self._sign(policy_bytes))

    def signed_url(self, url: str, expires_at: datetime) -> str:
        """`url` with a canned-policy signature valid until `expires_at` (exclusive).

        For SHA-1 byte-identical to botocore's generate_presigned_url(url, date_less_than=
        expires_at); for SHA-256 the same with ``&Hash-Algorithm=SHA256`` at the end.
        """
        return self._url(url, epoch_seconds(expires_at))

    def signed_cookies(self, resource: str, expires_at: datetime) -> dict[str, str]:
        """The cookies that grant `resource` (a URL pattern such as
        ``https://avatars.example.com/profiles/*``) until `expires_at` (exclusive):
        CloudFront-Policy, CloudFront-Signature, CloudFront-Key-Pair-Id and, unless SHA-1,
        CloudFront-Hash-Algorithm, in that order, as name -> value.
        """
        return dict(self._cookies(resource, epoch_seconds(expires_at)))

    def _signed_url(self, url: str, expires: int) -> str:
        _check_url(url, wildcards=False)
        signature = self.signature(policy(url, expires))
        separator = "&" if "?" in url else "?"
        return f"{url}{separator}Expires={expires}&Signature={signature}{self._url_suffix}"

    def _signed_cookies(self, resource: str, expires: int) -> tuple[tuple[str, str], ...]:
        _check_url(resource, wildcards=True)
        statement = policy(resource, expires)
        cookies: tuple[tuple[str, str], ...] = (
            (COOKIE_POLICY, url_safe_b64(statement)),
            (COOKIE_SIGNATURE, self.signature(statement)),
            (COOKIE_KEY_PAIR_ID, self.key_pair_id),
        )
        if self.hash_algorithm is not HashAlgorithm.SHA1:
            cookies += ((COOKIE_HASH_ALGORITHM, str(self.hash_algorithm)),)
        return cookies


def _signing_function(key: PrivateKey, hash_algorithm: HashAlgorithm) -> Callable[[bytes], bytes]:
    """message -> raw signature bytes for this key type and hash (DER for ECDSA)."""
    # SHA-1 is CloudFront's default and what botocore signs with; SHA256 is opt-in.
    digest: hashes.HashAlgorithm = (
        hashes.SHA256() if hash_algorithm is HashAlgorithm.SHA256 else hashes.SHA1()  # noqa: S303
    )
    if isinstance(key, rsa.RSAPrivateKey):
        rsa_key, pkcs1v15 = key, padding.PKCS1v15()
        return lambda message: rsa_key.sign(message, pkcs1v15, digest)
    ec_key, ecdsa = key, ec.ECDSA(digest, deterministic_signing=True)
    return lambda message: ec_key.sign(message, ecdsa)
