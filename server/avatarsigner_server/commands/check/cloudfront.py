"""`avatar-signer check`, CloudFront rows: the key, and what it signs, against its public half.

With CLOUDFRONT_URL set, after the bucket's rows:

    the CloudFront key file holds a key CloudFront accepts, and the id is well formed;
    a download URL, made by the service's own CloudFront signer, verifies with the key's
      public half: the canned policy rebuilt from the URL, its key pair id, its expiry, the
      hash it names;
    viewer cookies, made by the service's own cookie signer, verify the same way, and their
      policy grants exactly <CLOUDFRONT_URL>/<prefix>*/avatar until their expiry;
    the distribution itself: SKIP, always. This command cannot reach CloudFront: whether the
      distribution's key group holds this public key under this id, reaches the bucket
      through Origin Access Control and serves these URLs can only be seen by fetching
      through it, with a real avatar.

Nothing printed holds key material, a signature or a signed URL.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qsl, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ...credentials.cloudfront_key import read_key_pair
from ...credentials.key_files import KeyFileError
from ...settings import Settings
from ...settings.cloudfront import CloudFrontSettings
from ...signing.clock import Clock
from ...signing.cloudfront import HashAlgorithm, epoch_seconds, policy
from ...signing.cloudfront_viewers import (
    CloudFrontDownloadSigner,
    CloudFrontKeyPair,
    ViewerCookieSigner,
)
from ...signing.object_keys import ObjectKeys
from .report import FAIL, PASS, SKIP, Result

TTL_SECONDS = 120
_FROM_URL_SAFE = str.maketrans("-_~", "+=/")
UNREACHABLE = (
    "not checked: this command cannot reach CloudFront. Whether the distribution's trusted "
    "key group holds this public key under {id}, reaches the bucket through Origin Access "
    "Control and serves these URLs shows only when an avatar is fetched through it"
)


class _Pair:
    """A key source holding one pair (what the signers ask for)."""

    def __init__(self, pair: CloudFrontKeyPair) -> None:
        self._pair = pair

    def current(self) -> CloudFrontKeyPair:
        return self._pair


def _signature_verifies(
    pair: CloudFrontKeyPair, message: bytes, signature: str, algorithm: str
) -> bool:
    digest: hashes.HashAlgorithm = (
        hashes.SHA256() if algorithm == HashAlgorithm.SHA256 else hashes.SHA1()  # noqa: S303
    )
    public = pair.key.private_key.public_key()
    try:
        raw = base64.b64decode(signature.translate(_FROM_URL_SAFE), validate=True)
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(raw, message, padding.PKCS1v15(), digest)
        else:
            public.verify(raw, message, ec.ECDSA(digest))
    except (InvalidSignature, ValueError):
        return False
    return True


def _url_problem(pair: CloudFrontKeyPair, signed: str, resource: str, expires: int) -> str | None:
    """Why CloudFront would refuse this signed URL, judged with the public key; or None."""
    base, _, query = signed.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    if base != resource or urlsplit(signed).query.split("&")[0] != f"Expires={expires}":
        return "the URL is not the object's URL followed by its signature"
    if params.get("Key-Pair-Id") != pair.key_pair_id:
        return f"the URL names key pair id {params.get('Key-Pair-Id')}, not {pair.key_pair_id}"
    algorithm = params.get("Hash-Algorithm", HashAlgorithm.SHA1)
    if not _signature_verifies(pair, policy(base, expires), params["Signature"], algorithm):
        return "the signature does not verify with the key's public half"
    return None


def _cookies_problem(
    pair: CloudFrontKeyPair, cookies: dict[str, str], resource: str, expires: int
) -> str | None:
    """Why CloudFront would refuse these cookies for `resource`, judged with the public key."""
    try:
        statement = base64.b64decode(
            cookies["CloudFront-Policy"].translate(_FROM_URL_SAFE), validate=True
        )
        (granted,) = json.loads(statement)["Statement"]
        until = granted["Condition"]["DateLessThan"]["AWS:EpochTime"]
    except (KeyError, ValueError, TypeError):
        return "CloudFront-Policy is not a policy statement"
    if granted["Resource"] != resource or until != expires:
        return f"the policy grants {granted['Resource']} until {until}, not {resource}"
    if cookies.get("CloudFront-Key-Pair-Id") != pair.key_pair_id:
        return f"CloudFront-Key-Pair-Id is not {pair.key_pair_id}"
    algorithm = cookies.get("CloudFront-Hash-Algorithm", HashAlgorithm.SHA1)
    if not _signature_verifies(pair, statement, cookies["CloudFront-Signature"], algorithm):
        return "the signature does not verify with the key's public half"
    return None


def _signed_rows(
    cloudfront: CloudFrontSettings, keys: ObjectKeys, pair: CloudFrontKeyPair, clock: Clock
) -> list[Result]:
    source = _Pair(pair)
    algorithm = cloudfront.hash_algorithm
    key = keys.canary_key()
    url = CloudFrontDownloadSigner(source, cloudfront.url, algorithm, clock).sign(
        key, ttl_seconds=TTL_SECONDS
    )
    problem = _url_problem(pair, url.url, f"{cloudfront.url}/{key}", epoch_seconds(url.expires_at))
    rows = [
        Result(
            "CloudFront URL verifies with the public key",
            FAIL if problem else PASS,
            problem or f"canned policy for {cloudfront.url}/{key}, {algorithm}, "
            f"expires {url.expires_at:%Y-%m-%d %H:%M:%SZ}",
        )
    ]
    signer = ViewerCookieSigner(
        source, cloudfront.url, keys, algorithm, clock, domain=cloudfront.cookie_domain
    )
    cookies = signer.sign(ttl_seconds=TTL_SECONDS)
    problem = _cookies_problem(
        pair, cookies.cookies, signer.resource, epoch_seconds(cookies.expires_at)
    )
    rows.append(
        Result(
            "CloudFront cookies verify with the public key",
            FAIL if problem else PASS,
            problem or f"custom policy for {signer.resource}, {algorithm}",
        )
    )
    return rows


def run(settings: Settings, clock: Clock) -> list[Result]:
    """The CloudFront rows (none when CloudFront is off)."""
    cloudfront = settings.cloudfront
    if cloudfront is None:
        return []
    try:
        pair = read_key_pair(cloudfront)
    except KeyFileError as error:
        return [Result("CloudFront key file", FAIL, str(error))]
    source = cloudfront.key_pair_id_file or "CLOUDFRONT_KEY_PAIR_ID"
    rows = [
        Result(
            "CloudFront key file",
            PASS,
            f"{pair.key.kind} from {cloudfront.private_key_file}, key pair id "
            f"{pair.key_pair_id} (from {source})",
        )
    ]
    rows += _signed_rows(cloudfront, ObjectKeys(settings.key_prefix), pair, clock)
    rows.append(Result("CloudFront serves them", SKIP, UNREACHABLE.format(id=pair.key_pair_id)))
    return rows

