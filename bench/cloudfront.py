"""CloudFront URL signing, in this process: µs per URL, ours vs botocore's CloudFrontSigner.

    .venv/bin/python bench/cloudfront.py

Contenders sign canned-policy URLs for distinct avatar URLs with one expiry. botocore is
given the same cryptography RSA key (PKCS#1 v1.5, SHA-1), the signer its docs describe.
"cached" is our signer with a cache, asked for 100 URLs again and again within one expiry
(one reuse window): the steady state of a feed page whose URLs were signed once.

Timings are interleaved rounds (every contender once per round) and the median round is
kept, so load from elsewhere on the machine hits all contenders alike. Prints ratios; no
figure here is asserted anywhere.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from avatarsigner_server.signing.cloudfront import (
    CloudFrontSigner,
    HashAlgorithm,
    load_private_key,
)
from botocore.signers import CloudFrontSigner as BotocoreCloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

ROUNDS = 7
ROUND_SECONDS = 0.15
KEY_PAIR_ID = "K2JCJMDEHXQW5F"
EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)
URLS = [f"https://avatars.example.com/profiles/user{n:05d}/avatar" for n in range(1000)]
FEED = URLS[:100]


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def contenders() -> dict[str, Callable[[str], str]]:
    """name -> sign(url); the first is the baseline every ratio is relative to."""
    rsa_key = rsa.generate_private_key(65537, 2048)
    rsa_pem, ec_pem = _pem(rsa_key), _pem(ec.generate_private_key(ec.SECP256R1()))
    sha1 = hashes.SHA1()  # noqa: S303 - what CloudFront and botocore use by default
    botocore = BotocoreCloudFrontSigner(
        KEY_PAIR_ID, lambda message: rsa_key.sign(message, padding.PKCS1v15(), sha1)
    )
    ours_rsa = CloudFrontSigner(load_private_key(rsa_pem), KEY_PAIR_ID)
    ours_rsa_256 = CloudFrontSigner(load_private_key(rsa_pem), KEY_PAIR_ID, HashAlgorithm.SHA256)
    ours_ec = CloudFrontSigner(load_private_key(ec_pem), KEY_PAIR_ID)
    cached = CloudFrontSigner(load_private_key(rsa_pem), KEY_PAIR_ID, cache_size=len(FEED))
    feed = itertools.cycle(FEED)
    for url in FEED:  # the window's first page signs; every later one is served from cache
        cached.signed_url(url, EXPIRES)
    return {
        "botocore RSA-2048 SHA-1": lambda url: str(
            botocore.generate_presigned_url(url, date_less_than=EXPIRES)
        ),
        "ours RSA-2048 SHA-1": lambda url: ours_rsa.signed_url(url, EXPIRES),
        "ours RSA-2048 SHA-256": lambda url: ours_rsa_256.signed_url(url, EXPIRES),
        "ours ECDSA P-256 SHA-1": lambda url: ours_ec.signed_url(url, EXPIRES),
        "ours RSA-2048, cached (100 URLs, one window)": lambda _: cached.signed_url(
            next(feed), EXPIRES
        ),
    }


def _round(sign: Callable[[str], str], urls: itertools.cycle[str]) -> float:
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


def main() -> None:
    figures = measure()
    baseline = next(iter(figures.values()))
    width = max(map(len, figures))
    print(f"{'CloudFront signed URL':<{width}}  {'µs/URL':>9}  {'vs botocore':>11}")
    for name, micros in figures.items():
        print(f"{name:<{width}}  {micros:9.1f}  {baseline / micros:10.2f}x")


if __name__ == "__main__":
    main()
