"""CloudFront, in this process: µs per signed URL, and signatures per feed page in each mode.

    .venv/bin/python bench/cloudfront.py     prints both tables (bench/run.py puts the same
                                             figures in its one table)

µs per URL: contenders sign canned-policy URLs for distinct avatar URLs with one expiry.
botocore is given the same cryptography RSA key (PKCS#1 v1.5, SHA-1), the signer its docs
describe. "window" is the production download signer (CloudFrontDownloadSigner) with a
reuse window, asked for 100 avatars again and again within it: the steady state of a feed
page whose URLs were signed once. Timings are interleaved rounds (every contender once per
round) and the median round is kept, so load from elsewhere on the machine hits all
contenders alike.

Signatures per page: a feed service renders FEED_PAGES_PER_SECOND pages of 100 avatars,
each drawn at random from ACTIVE_USERS users, for two windows of REUSE_SECONDS; every
signature the service's own signers compute is counted (SigV4 for S3 URLs, RSA/ECDSA for
CloudFront). With cookies a page needs no signature: its URLs are plain; the viewer's
cookies cost one signature per CreateViewerCookies call (and calls in the same second share
one).

No figure here is asserted anywhere.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from unittest import mock

from avatarsigner_server.credentials.sources import StaticCredentials
from avatarsigner_server.signing import sigv4
from avatarsigner_server.signing.cloudfront import (
    CloudFrontSigner,
    HashAlgorithm,
    load_private_key,
)
from avatarsigner_server.signing.cloudfront_viewers import (
    CloudFrontDownloadSigner,
    CloudFrontKeyPair,
)
from avatarsigner_server.signing.key_pairs import Credentials
from avatarsigner_server.signing.url_signers import BucketEndpoint, DownloadSigner, DownloadUrls
from botocore.signers import CloudFrontSigner as BotocoreCloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

ROUNDS = 7
ROUND_SECONDS = 0.15
KEY_PAIR_ID = "K2JCJMDEHXQW5F"
ORIGIN = "https://avatars.example.com"
EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)
URLS = [f"{ORIGIN}/profiles/user{n:05d}/avatar" for n in range(1000)]
FEED = [f"profiles/user{n:05d}/avatar" for n in range(100)]
# The feed-page scenario (signatures per page).
REUSE_SECONDS = 60
ACTIVE_USERS = 5000
FEED_PAGES_PER_SECOND = 20
PAGE = 100


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class _OnePair:
    def __init__(self, key_pem: bytes) -> None:
        self._pair = CloudFrontKeyPair(load_private_key(key_pem), KEY_PAIR_ID)

    def current(self) -> CloudFrontKeyPair:
        return self._pair


def contenders() -> dict[str, Callable[[str], str]]:
    """name -> sign(url); the first is the baseline every ratio is relative to."""
    rsa_key = rsa.generate_private_key(65537, 2048)
    rsa_pem, ec_pem = pem(rsa_key), pem(ec.generate_private_key(ec.SECP256R1()))
    sha1 = hashes.SHA1()  # noqa: S303 - what CloudFront and botocore use by default
    botocore = BotocoreCloudFrontSigner(
        KEY_PAIR_ID, lambda message: rsa_key.sign(message, padding.PKCS1v15(), sha1)
    )
    ours_rsa = CloudFrontSigner(load_private_key(rsa_pem), KEY_PAIR_ID)
    ours_rsa_256 = CloudFrontSigner(load_private_key(rsa_pem), KEY_PAIR_ID, HashAlgorithm.SHA256)
    ours_ec = CloudFrontSigner(load_private_key(ec_pem), KEY_PAIR_ID)
    start = EXPIRES - timedelta(seconds=300)
    windowed = CloudFrontDownloadSigner(
        _OnePair(rsa_pem), ORIGIN, clock=lambda: start, reuse_seconds=REUSE_SECONDS
    )
    feed = itertools.cycle(FEED)
    for key in FEED:  # the window's first page signs; every later one is served from cache
        windowed.sign(key, ttl_seconds=300)
    return {
        "botocore RSA-2048 SHA-1": lambda url: str(
            botocore.generate_presigned_url(url, date_less_than=EXPIRES)
        ),
        "ours RSA-2048 SHA-1": lambda url: ours_rsa.signed_url(url, EXPIRES),
        "ours RSA-2048 SHA-256": lambda url: ours_rsa_256.signed_url(url, EXPIRES),
        "ours ECDSA P-256 SHA-1": lambda url: ours_ec.signed_url(url, EXPIRES),
        "ours RSA-2048, 60 s window (100 URLs asked again)": lambda _: (
            windowed.sign(next(feed), ttl_seconds=300).url
        ),
    }


def _round(sign: Callable[[str], str], urls: Iterator[str]) -> float:
    """µs per URL over about ROUND_SECONDS of signing."""
    calls, started = 0, time.perf_counter()
    deadline = started + ROUND_SECONDS
    while True:
        for _ in range(20):
            sign(next(urls))
        calls += 20
        now = time.perf_counter()
        if now >= deadline:
            return (now - started) / calls * 1e6


def measure() -> dict[str, float]:
    """Median µs per URL of each contender, rounds interleaved."""
    signers = contenders()
    urls = itertools.cycle(URLS)
    rounds: dict[str, list[float]] = {name: [] for name in signers}
    for _ in range(ROUNDS):
        for name, sign in signers.items():
            rounds[name].append(_round(sign, urls))
    return {name: statistics.median(values) for name, values in rounds.items()}


# --------------------------------------------------------------------------- signatures per page


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@contextmanager
def _counting() -> Iterator[list[int]]:
    """Counts SigV4 and CloudFront signatures computed inside the block."""
    count = [0]
    presign, signature = sigv4.presign, CloudFrontSigner.signature

    def counted_presign(*args: object, **kwargs: object) -> str:
        count[0] += 1
        return presign(*args, **kwargs)  # type: ignore[arg-type]

    def counted_signature(self: CloudFrontSigner, policy_bytes: bytes) -> str:
        count[0] += 1
        return signature(self, policy_bytes)

    with (
        mock.patch.object(sigv4, "presign", counted_presign),
        mock.patch.object(CloudFrontSigner, "signature", counted_signature),
    ):
        yield count


def _per_page(make: Callable[[_Clock], DownloadUrls], pages_per_second: int, seconds: int) -> float:
    """Signatures per page of PAGE avatars, pages at `pages_per_second` for `seconds`."""
    clock = _Clock(datetime(2030, 1, 1, tzinfo=UTC))  # a window boundary
    signer = make(clock)
    rng = random.Random(7)
    users = [f"profiles/user{n:05d}/avatar" for n in range(ACTIVE_USERS)]
    pages = 0
    with _counting() as count:
        for second in range(seconds):
            clock.now = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=second)
            for _ in range(pages_per_second):
                for key in rng.sample(users, PAGE):
                    signer.sign(key, ttl_seconds=300)
                pages += 1
    return count[0] / pages


def signatures_per_page() -> dict[str, float]:
    """Signatures a feed page of 100 avatars costs, per mode (see the module docstring)."""
    key_pem = pem(ec.generate_private_key(ec.SECP256R1()))  # counts do not depend on the type
    endpoint = BucketEndpoint("avatars", "eu-west-1")
    reader = StaticCredentials(Credentials("READERKEYID0000001", "reader-secret-00001"))
    two_windows = 2 * REUSE_SECONDS

    def s3(reuse: int) -> Callable[[_Clock], DownloadUrls]:
        return lambda clock: DownloadSigner(reader, endpoint, "eu-west-1", clock, reuse)

    def cloudfront(reuse: int) -> Callable[[_Clock], DownloadUrls]:
        return lambda clock: CloudFrontDownloadSigner(
            _OnePair(key_pem), ORIGIN, clock=clock, reuse_seconds=reuse
        )

    return {
        "S3 URLs": _per_page(s3(0), 2, 3),
        f"S3 URLs, {REUSE_SECONDS} s window": _per_page(s3(REUSE_SECONDS), 2, 3),
        "CloudFront URLs": _per_page(cloudfront(0), 2, 3),
        f"CloudFront URLs, {REUSE_SECONDS} s window": _per_page(
            cloudfront(REUSE_SECONDS), FEED_PAGES_PER_SECOND, two_windows
        ),
        "CloudFront cookies": 0.0,  # the page's URLs are plain: url_template, no signature
    }


def main() -> None:
    figures = measure()
    baseline = next(iter(figures.values()))
    width = max(map(len, figures))
    print(f"{'CloudFront signed URL':<{width}}  {'µs/URL':>9}  {'vs botocore':>11}")
    for name, micros in figures.items():
        print(f"{name:<{width}}  {micros:9.1f}  {baseline / micros:10.2f}x")
    print()
    print(
        f"Signatures per feed page of {PAGE} avatars ({FEED_PAGES_PER_SECOND} pages/s drawn "
        f"from {ACTIVE_USERS} users):"
    )
    for mode, count in signatures_per_page().items():
        print(f"  {mode:<32} {count:7.2f}")


if __name__ == "__main__":
    main()
