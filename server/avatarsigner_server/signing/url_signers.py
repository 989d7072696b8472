"""The two URL signers. Each holds one identity's credentials and can sign one method.

`UploadSigner` is built from the uploader's credential source and only produces PUT URLs;
`DownloadSigner` is built from the reader's and only produces GET URLs. Each fixes its
method as a class constant and nothing passes a method in, so no code path can ask one
for the other's method. Both sign with
`sigv4.presign`: pure computation, no network call.

Neither lets a URL's holder choose what a viewer receives. S3 stores some request headers
with an object and replays them on every GET; an upload URL signs each of them with a
fixed value (`OBJECT_HEADERS`, which the uploader must send as they are), and a download
URL signs `response-*` overrides for the two that could hurt a viewer of an object stored
some other way (`DownloadSigner.OVERRIDES`). The stored Content-Type needs neither: the
upload URL signs it from the allowlist.

URLs address the bucket on the regional virtual-hosted endpoint
(`https://<bucket>.s3.<region>.amazonaws.com/<key>`), never the global one, or path-style
on S3_ENDPOINT_URL for S3-compatible servers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Protocol
from urllib.parse import urlsplit

from ..errors import CredentialsUnavailable
from . import sigv4
from .clock import Clock, utc_now_to_the_second
from .key_pairs import Credentials, CredentialSource


@dataclass(frozen=True, slots=True)
class SignedUrl:
    """A presigned URL, when it stops working, and the headers the request must carry."""

    url: str
    expires_at: datetime
    headers: Mapping[str, str]
    access_key_id: str


# The headers S3 stores with an object, unless they are signed, and replays to every viewer
# (Content-Type aside, which the upload URL signs from the allowlist). Each is signed into
# every upload URL with this value, so the uploader sends exactly these and nothing else
# reaches a viewer: no `Content-Encoding: gzip` on a PNG (a decompression bomb for every
# client), no `Content-Disposition: attachment; filename="x.html"`, no year-long public
# caching. The values are what an image without them would mean: shown inline, bytes as
# stored, no language; `private` keeps a bearer URL's response out of shared caches, and
# `max-age=0` makes Expires moot (RFC 9111 5.3) and caches revalidate. Whatever writes an
# avatar object (a verifier copying an upload into place, too) writes exactly these.
OBJECT_HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "Cache-Control": "private, max-age=0",
        "Content-Disposition": "inline",
        "Content-Encoding": "identity",
        "Content-Language": "und",
        "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
    }
)
_SIGNED_OBJECT_HEADERS = {name.lower(): value for name, value in OBJECT_HEADERS.items()}


class DownloadUrls(Protocol):
    """What the download RPCs sign with: S3 presigned GETs (DownloadSigner) or CloudFront
    signed URLs (cloudfront_viewers.CloudFrontDownloadSigner). The choice is made once, when
    the service is built."""

    def sign(self, key: str, *, ttl_seconds: int) -> SignedUrl:
        """A URL that fetches the object at `key` until `expires_at` (now + ttl or earlier
        in a reuse window), or a ServiceError."""
        ...


def window_start(now: datetime, window: int, ttl_seconds: int) -> datetime | None:
    """The signing time everyone shares within a reuse window, or None when reuse is off.

    Windows of `window` seconds start at the Unix epoch. A ttl not longer than the window
    would hand out URLs that are dead (or nearly) on arrival, so reuse applies only when
    0 < window < ttl.
    """
    if not 0 < window < ttl_seconds:
        return None
    second = int(now.timestamp())
    return datetime.fromtimestamp(second - second % window, UTC)


class BucketEndpoint:
    """Where the bucket's objects live: origin, Host header and path for a key."""

    def __init__(self, bucket: str, region: str, endpoint_url: str | None = None) -> None:
        if endpoint_url:
            self.origin = endpoint_url.rstrip("/")
            self._path_prefix = f"/{bucket}/"
        else:
            self.origin = f"https://{bucket}.s3.{region}.amazonaws.com"
            self._path_prefix = "/"
        parts = urlsplit(self.origin)
        self.host = sigv4.host_header(parts.scheme, parts.hostname or "", parts.port)

    def path(self, key: str) -> str:
        return self._path_prefix + sigv4.encode_key_path(key)


def presign_request(
    creds: Credentials,
    endpoint: BucketEndpoint,
    region: str,
    *,
    method: str,
    key: str,
    signed_at: datetime,
    expires_in: int,
    headers: Mapping[str, str] | None = None,
    query: tuple[tuple[str, str], ...] = (),
) -> str:
    """A presigned request for `key` in the bucket ("" for the bucket itself): the one place
    SigV4 is applied to a bucket's object, for URLs handed out and for the service's own."""
    return sigv4.presign(
        method=method,
        origin=endpoint.origin,
        host=endpoint.host,
        path=endpoint.path(key),
        access_key_id=creds.access_key_id,
        secret_access_key=creds.secret_access_key,
        session_token=creds.session_token,
        region=region,
        signed_at=signed_at,
        expires_in=expires_in,
        headers=headers,
        query=query,
    )


class _Signer:
    """What the two signers share. Each subclass fixes METHOD; nothing passes a method in."""

    METHOD: str

    def __init__(
        self,
        credentials: CredentialSource,
        endpoint: BucketEndpoint,
        region: str,
        clock: Clock = utc_now_to_the_second,
    ) -> None:
        self._credentials = credentials
        self._endpoint = endpoint
        self._region = region
        self._clock = clock
        # Under load most URLs share a second and a ttl: keep the last expiry computed.
        self._last_expiry: tuple[datetime, int, datetime] | None = None

    def _expiry(self, signed_at: datetime, ttl_seconds: int) -> datetime:
        last = self._last_expiry
        if last is not None and last[0] == signed_at and last[1] == ttl_seconds:
            return last[2]
        expires_at = signed_at + timedelta(seconds=ttl_seconds)
        self._last_expiry = (signed_at, ttl_seconds, expires_at)
        return expires_at

    def _presign(
        self,
        key: str,
        ttl_seconds: int,
        *,
        signed_headers: Mapping[str, str] | None = None,
        send_headers: Mapping[str, str] | None = None,
        query: tuple[tuple[str, str], ...] = (),
        signed_at: datetime | None = None,
    ) -> SignedUrl:
        if signed_at is None:
            signed_at = self._clock()
            if signed_at.microsecond:  # SigV4 dates have whole seconds
                signed_at = signed_at.replace(microsecond=0)
        expires_at = self._expiry(signed_at, ttl_seconds)
        creds = self._credentials.get(expires_at)
        if creds.expires_at is not None and creds.expires_at < expires_at:
            # Honest expiry, whatever the source: a URL never outlives its credentials.
            raise CredentialsUnavailable(
                "the signing credentials expire before the URL would; ask for a shorter ttl"
            )
        url = presign_request(
            creds,
            self._endpoint,
            self._region,
            method=self.METHOD,
            key=key,
            signed_at=signed_at,
            expires_in=ttl_seconds,
            headers=signed_headers,
            query=query,
        )
        return SignedUrl(url, expires_at, send_headers or {}, creds.access_key_id)


class UploadSigner(_Signer):
    """PUT URLs with the uploader's credentials, bound to type, length and checksum."""

    METHOD = "PUT"
    # What an upload URL signs besides host (and the uploader must send): type, length,
    # when given the SHA-256 of the bytes, for a staged upload `If-None-Match: *` (so the
    # URL writes its key at most once), and the fixed OBJECT_HEADERS.
    HEADERS = (
        "content-type",
        "content-length",
        "x-amz-checksum-sha256",
        "if-none-match",
        *_SIGNED_OBJECT_HEADERS,
    )
    # Of HEADERS, those a browser sets itself and never lets a page set (forbidden request
    # headers in the Fetch standard): it sends the body's length as Content-Length.
    SET_BY_BROWSER = ("content-length",)
    # Of HEADERS, those a web page sets on its request (in HEADERS' order): the bucket's
    # CORS rule allows exactly these.
    HEADERS_A_BROWSER_MAY_SET = tuple(
        sorted(set(HEADERS) - set(SET_BY_BROWSER), key=HEADERS.index)
    )

    def sign(
        self,
        key: str,
        *,
        content_type: str,
        content_length: int,
        checksum_sha256: str | None,
        ttl_seconds: int,
        write_once: bool = False,
    ) -> SignedUrl:
        """A PUT URL for key; the returned headers are exactly what the uploader sends."""
        length = str(content_length)
        send = {"Content-Type": content_type, "Content-Length": length, **OBJECT_HEADERS}
        sign = {"content-type": content_type, "content-length": length, **_SIGNED_OBJECT_HEADERS}
        if checksum_sha256:
            send["x-amz-checksum-sha256"] = sign["x-amz-checksum-sha256"] = checksum_sha256
        if write_once:
            send["If-None-Match"] = sign["if-none-match"] = "*"
        return self._presign(key, ttl_seconds, signed_headers=sign, send_headers=send)


class DownloadSigner(_Signer):
    """GET URLs with the reader's credentials.

    With `reuse_seconds` (DOWNLOAD_URL_REUSE_SECONDS) > 0, a URL is signed at the time
    rounded down to a window of that many seconds (windows start at the Unix epoch), so every
    caller asking for the same key and ttl within a window — on any worker or replica with the
    same credentials — gets the byte-identical URL, and browsers can cache the avatar. Signed
    into it is `response-cache-control: private, max-age=<ttl - window>`: the least remaining
    life any holder of that URL can see (one who got it at the window's last moment). The URL
    lives exactly `ttl` from the window's start, never longer than asked; `expires_at` is that
    true expiry. A ttl not longer than the window would hand out URLs that are dead (or
    nearly) on arrival, so such a request gets a fresh, unshared URL, as with reuse off.
    """

    METHOD = "GET"
    # Signed into every download URL: whatever an object carries (one stored before upload
    # URLs signed OBJECT_HEADERS, or written by other means), a viewer gets it inline and
    # without a content coding. S3 honours these overrides on signed GETs only, which
    # these are.
    OVERRIDES = (
        ("response-content-disposition", "inline"),
        ("response-content-encoding", "identity"),
    )

    def __init__(
        self,
        credentials: CredentialSource,
        endpoint: BucketEndpoint,
        region: str,
        clock: Clock = utc_now_to_the_second,
        reuse_seconds: int = 0,
    ) -> None:
        if reuse_seconds < 0:
            raise ValueError("reuse_seconds must be 0 (off) or positive")
        super().__init__(credentials, endpoint, region, clock)
        self._reuse = reuse_seconds

    def sign(self, key: str, *, ttl_seconds: int) -> SignedUrl:
        signed_at = window_start(self._clock(), self._reuse, ttl_seconds)
        if signed_at is None:
            return self._presign(key, ttl_seconds, query=self.OVERRIDES)
        cache_control = f"private, max-age={ttl_seconds - self._reuse}"
        return self._presign(
            key,
            ttl_seconds,
            query=(("response-cache-control", cache_control), *self.OVERRIDES),
            signed_at=signed_at,
        )
