"""AWS Signature Version 4 for S3 presigned (query-string) URLs.

Reads like the specification, as small pure functions:

    canonical request -> string to sign -> signing key -> signature

Nothing here reads a clock, the environment or a global: the time and the credentials are
parameters, so tests pin a timestamp and compare bytes with botocore's S3SigV4QueryAuth
(the output is byte-identical for the same inputs). The derived signing key is cached per
(secret, date, region, service), so a URL costs one SHA-256 hash and one HMAC.

Hot path (a URL in about 3 µs): everything that is the same for many URLs is computed once
and cached by its inputs: the signing key and its HMAC pads, the X-Amz-Date of a second,
the authentication query parameters of a (credential, second, ttl, headers) combination.
Caches are keyed by every input they depend on, so they can never change a result.

Reference: https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from functools import lru_cache
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_UNRESERVED = "-_.~"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def percent_encode(value: str) -> str:
    """URI-encode everything but unreserved characters (RFC 3986), as SigV4 requires."""
    return quote(value, safe=_UNRESERVED)


_NEEDS_NO_ENCODING = re.compile(r"[A-Za-z0-9._~/-]*")


def encode_key_path(key: str) -> str:
    """URI-encode an object key for the URL path; '/' separates segments and stays."""
    if _NEEDS_NO_ENCODING.fullmatch(key):  # every key this service derives: skip the work
        return key
    return quote(key, safe="/~")


def amz_date(moment: datetime) -> str:
    """The X-Amz-Date form of a UTC moment: 20130524T000000Z (cached: one per second)."""
    # Keyed by the zone too: equal instants in two zones have different wall-clock fields.
    return _wall_clock(moment, moment.tzinfo)


@lru_cache(maxsize=16)
def _wall_clock(moment: datetime, zone: tzinfo | None) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def host_header(scheme: str, hostname: str, port: int | None) -> str:
    """The Host value S3 verifies: lowercase, without the scheme's default port."""
    host = hostname.lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return host


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """(canonical header block, signed header list) for lowercase-named headers."""
    names = sorted(headers)
    block = "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in names)
    return block, ";".join(names)


def canonical_query(pairs: Sequence[tuple[str, str]]) -> str:
    """Already-encoded (name, value) pairs, sorted, joined as SigV4 requires."""
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_request(
    method: str, path: str, query: str, header_block: str, signed_headers: str
) -> str:
    """The canonical request of a presigned S3 URL (the payload is never hashed)."""
    return f"{method}\n{path}\n{query}\n{header_block}\n{signed_headers}\n{UNSIGNED_PAYLOAD}"


def string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


@lru_cache(maxsize=64)
def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """kSigning = HMAC chain over date, region, service and 'aws4_request' (cached)."""
    key = ("AWS4" + secret_access_key).encode("utf-8")
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


@lru_cache(maxsize=64)
def _hmac_pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 states after the inner and outer HMAC pads of key (RFC 2104), computed once."""
    block = (
        key.ljust(64, b"\0") if len(key) <= 64 else hashlib.sha256(key).digest().ljust(64, b"\0")
    )
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in block))
    outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in block))
    return inner, outer


def signature(key: bytes, to_sign: str) -> str:
    """Hex HMAC-SHA256 of to_sign; equal to hmac.new(key, ..., sha256).hexdigest()."""
    inner_pad, outer_pad = _hmac_pads(key)
    inner = inner_pad.copy()
    inner.update(to_sign.encode("utf-8"))
    outer = outer_pad.copy()
    outer.update(inner.digest())
    return outer.hexdigest()


@lru_cache(maxsize=256)
def _host_only_headers(host: str) -> tuple[str, str]:
    return canonical_headers({"host": host})


@lru_cache(maxsize=1024)
def _query_strings(
    query: tuple[tuple[str, str], ...],
    access_key_id: str,
    scope: str,
    timestamp: str,
    expires_in: int,
    signed_headers: str,
    session_token: str | None,
) -> tuple[str, str]:
    """(canonical query string, the URL's query string before the signature)."""
    pairs = [(percent_encode(name), percent_encode(value)) for name, value in query]
    pairs += [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", percent_encode(f"{access_key_id}/{scope}")),
        ("X-Amz-Date", timestamp),
        ("X-Amz-Expires", str(expires_in)),
        ("X-Amz-SignedHeaders", percent_encode(signed_headers)),
    ]
    if session_token is not None:
        pairs.append(("X-Amz-Security-Token", percent_encode(session_token)))
    return canonical_query(pairs), "&".join(f"{name}={value}" for name, value in pairs)


def presign(
    *,
    method: str,
    origin: str,
    host: str,
    path: str,
    access_key_id: str,
    secret_access_key: str,
    session_token: str | None,
    region: str,
    signed_at: datetime,
    expires_in: int,
    headers: Mapping[str, str] | None = None,
    query: Sequence[tuple[str, str]] = (),
    service: str = "s3",
) -> str:
    """Return a presigned URL.

    origin: "scheme://netloc" the URL starts with; host: the Host header value S3 will
    see (see host_header); path: the already-encoded absolute path; headers: extra headers
    the client must send (lowercase names), signed together with host; query: operation
    parameters (unencoded), placed before the authentication parameters as botocore does.
    """
    timestamp = amz_date(signed_at)
    date = timestamp[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    if headers:
        header_block, signed_headers = canonical_headers({"host": host, **headers})
    else:
        header_block, signed_headers = _host_only_headers(host)
    canonical_query_string, query_string = _query_strings(
        tuple(query), access_key_id, scope, timestamp, expires_in, signed_headers, session_token
    )
    canonical = canonical_request(
        method, path, canonical_query_string, header_block, signed_headers
    )
    key = signing_key(secret_access_key, date, region, service)
    sig = signature(key, string_to_sign(timestamp, scope, canonical))
    return f"{origin}{path}?{query_string}&X-Amz-Signature={sig}"
