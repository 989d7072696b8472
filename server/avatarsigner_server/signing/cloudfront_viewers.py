"""What viewers get through CloudFront: a signed URL per avatar, or cookies for all of them.

    CloudFrontKeyPair         the private key and the id CloudFront knows its public half by
    CloudFrontKeySource       where the signers ask for the pair in force (the credentials
                              package keeps it fresh from CLOUDFRONT_PRIVATE_KEY_FILE)
    CurrentSigner             the core's CloudFrontSigner for the pair in force; a rotated
                              key gets a new signer, and with it an empty cache
    CloudFrontDownloadSigner  object key -> canned-policy URL under CLOUDFRONT_URL, with
                              the same ttl and reuse-window rules as S3 URLs (DownloadUrls)
    ViewerCookieSigner        ttl -> the custom-policy cookies that grant every avatar,
                              <CLOUDFRONT_URL>/<prefix>*/avatar, as values and Set-Cookie
                              headers

Pure, like the rest of `signing`: the clock and the key source are passed in.

Cost. An RSA-2048 signature costs hundreds of µs, so with a reuse window the signer keeps
the window's URLs (up to `WINDOW_CACHE_SIZE`): a feed page asked for again within the
window costs no signature. Signatures are deterministic for both key types (RSA PKCS#1
v1.5, RFC 6979 ECDSA), so a URL signed again (past the cache's bound), or signed by
another replica, is the same URL. Cookies are cached per expiry second: at any call rate,
at most one cookie signature per second per ttl.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import MappingProxyType
from typing import Protocol

from .clock import Clock, utc_now_to_the_second
from .cloudfront import CloudFrontKey, CloudFrontSigner, HashAlgorithm
from .object_keys import ObjectKeys
from .sigv4 import encode_key_path
from .url_signers import SignedUrl, window_start

#: URLs kept per process within a reuse window (about 0.8 KB each, RSA or ECDSA).
WINDOW_CACHE_SIZE = 10_000
#: Cookie sets kept: one per (ttl, expiry second); a few suffice.
COOKIE_CACHE_SIZE = 64
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
#: The attributes every viewer cookie carries (see ViewerCookieSigner).
COOKIE_ATTRIBUTES = "Secure; HttpOnly; SameSite=Strict"


@dataclass(frozen=True, slots=True)
class CloudFrontKeyPair:
    """A private key CloudFront accepts and the id of its public half in the key group."""

    key: CloudFrontKey = field(repr=False)
    key_pair_id: str


class CloudFrontKeySource(Protocol):
    def current(self) -> CloudFrontKeyPair:
        """The key pair in force (no I/O)."""
        ...


class CurrentSigner:
    """The CloudFrontSigner for the source's key pair in force, rebuilt when it rotates."""

    def __init__(
        self, source: CloudFrontKeySource, hash_algorithm: HashAlgorithm, cache_size: int
    ) -> None:
        self._source = source
        self._hash_algorithm = hash_algorithm
        self._cache_size = cache_size
        self._pair: CloudFrontKeyPair | None = None
        self._signer: CloudFrontSigner | None = None

    def get(self) -> CloudFrontSigner:
        pair = self._source.current()
        signer = self._signer
        if pair is not self._pair or signer is None:
            signer = CloudFrontSigner(
                pair.key, pair.key_pair_id, self._hash_algorithm, self._cache_size
            )
            self._pair, self._signer = pair, signer
        return signer


def _to_the_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0) if moment.microsecond else moment


class CloudFrontDownloadSigner:
    """Canned-policy CloudFront URLs for object keys: `<origin>/<key>?Expires=...`.

    The same rules as S3 download URLs: the URL lives `ttl` seconds from its signing time;
    with `reuse_seconds` (DOWNLOAD_URL_REUSE_SECONDS) the signing time is the start of the
    window (`window_start`), so everyone asking for one avatar and ttl within a window gets
    the byte-identical URL, and `expires_at` is still its true expiry.

    With a window, the window's URLs are kept (by key and ttl) until the window ends: the
    first WINDOW_CACHE_SIZE distinct ones cost one signature each per window, later ones
    one per call (the same URL: signatures are deterministic). A rotated key empties it.
    """

    def __init__(
        self,
        source: CloudFrontKeySource,
        origin: str,
        hash_algorithm: HashAlgorithm = HashAlgorithm.SHA1,
        clock: Clock = utc_now_to_the_second,
        reuse_seconds: int = 0,
    ) -> None:
        if reuse_seconds < 0:
            raise ValueError("reuse_seconds must be 0 (off) or positive")
        self._origin = origin.rstrip("/")
        self._clock = clock
        self._reuse = reuse_seconds
        self._signer = CurrentSigner(source, hash_algorithm, 0)
        # The window (its start) and the signer the cached URLs belong to, and the URLs.
        self._cached_for: tuple[datetime, CloudFrontSigner] | None = None
        self._cached: dict[tuple[str, int], SignedUrl] = {}

    def sign(self, key: str, *, ttl_seconds: int) -> SignedUrl:
        now = self._clock()
        signer = self._signer.get()
        signed_at = window_start(now, self._reuse, ttl_seconds)
        if signed_at is None:
            return self._sign(signer, key, _to_the_second(now), ttl_seconds)
        if self._cached_for != (signed_at, signer):
            self._cached_for, self._cached = (signed_at, signer), {}
        cached = self._cached.get((key, ttl_seconds))
        if cached is None:
            cached = self._sign(signer, key, signed_at, ttl_seconds)
            if len(self._cached) < WINDOW_CACHE_SIZE:
                self._cached[(key, ttl_seconds)] = cached
        return cached

    def _sign(
        self, signer: CloudFrontSigner, key: str, signed_at: datetime, ttl_seconds: int
    ) -> SignedUrl:
        expires_at = signed_at + timedelta(seconds=ttl_seconds)
        url = signer.signed_url(f"{self._origin}/{encode_key_path(key)}", expires_at)
        return SignedUrl(url, expires_at, _NO_HEADERS, signer.key_pair_id)


@dataclass(frozen=True)
class ViewerCookies:
    """Cookies that let a browser fetch every avatar through CloudFront until `expires_at`.

    `cookies` (name -> value) and `set_cookie` (ready-made header values) are bearer
    credentials for every avatar: left out of repr.
    """

    cookies: dict[str, str] = field(repr=False)
    set_cookie: tuple[str, ...] = field(repr=False)
    resource: str
    expires_at: datetime
    url_template: str


class ViewerCookieSigner:
    """Custom-policy cookies granting `<origin>/<key prefix>*/avatar` until now + ttl.

    Set-Cookie attributes, each chosen for a bearer credential that only CloudFront reads:

        Domain    CLOUDFRONT_COOKIE_DOMAIN when set (a parent of the distribution's host
                  shared with the web app, e.g. example.com for app.example.com and
                  avatars.example.com); unset, the cookie is host-only, for a web app that
                  CloudFront serves from the same host
        Path      /<key prefix> (/profiles/): sent with avatar requests only, never to the
                  rest of a site on the same host
        Expires   the policy's own expiry, so the browser drops the cookies when CloudFront
                  would refuse them (absolute: a response replayed later cannot extend it)
        Secure    sent over HTTPS only
        HttpOnly  no script reads them: an XSS on the web app cannot steal the grant
        SameSite  Strict: images on the app's own site get them (same-site requests), other
                  sites' pages and links never do
    """

    def __init__(
        self,
        source: CloudFrontKeySource,
        origin: str,
        keys: ObjectKeys,
        hash_algorithm: HashAlgorithm = HashAlgorithm.SHA1,
        clock: Clock = utc_now_to_the_second,
        domain: str | None = None,
    ) -> None:
        origin = origin.rstrip("/")
        # Every avatar and nothing else (not the check's canary, not confirmation markers).
        self.resource = f"{origin}/{keys.avatar_pattern()}"
        # Prefixes and user ids are URL-safe characters only: nothing to encode.
        self.url_template = f"{origin}/{keys.key_template()}"
        self._clock = clock
        self._signer = CurrentSigner(source, hash_algorithm, COOKIE_CACHE_SIZE)
        scope = f"; Domain={domain}" if domain else ""
        self._attributes = f"{scope}; Path=/{keys.prefix}; Expires=%s; {COOKIE_ATTRIBUTES}"

    def sign(self, *, ttl_seconds: int) -> ViewerCookies:
        expires_at = _to_the_second(self._clock()) + timedelta(seconds=ttl_seconds)
        cookies = self._signer.get().signed_cookies(self.resource, expires_at)
        attributes = self._attributes % format_datetime(expires_at.astimezone(UTC), usegmt=True)
        return ViewerCookies(
            cookies=cookies,
            set_cookie=tuple(f"{name}={value}{attributes}" for name, value in cookies.items()),
            resource=self.resource,
            expires_at=expires_at,
            url_template=self.url_template,
        )
