"""CloudFront for the tests: a model of its edge, and AWS's JavaScript signer to compare with.

It decides whether CloudFront would serve a signed URL, or a URL to a viewer sending signed
cookies, using only the PUBLIC key the distribution's key group holds (under `key_pair_id`):
the canned policy's exact bytes rebuilt from the URL, the custom policy's JSON, the expiry
(DateLessThan is exclusive), the key id, the hash named by Hash-Algorithm, CloudFront's
URL-safe base64 and the resource pattern. It shares no code with the signer under test.

`aws_javascript_signer` runs npm @aws-sdk/cloudfront-signer (tests/node_cloudfront) with Node.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

KEY_ID = "K2JCJMDEHXQW5F"
NODE_DIR = Path(__file__).resolve().parent / "node_cloudfront"
SHA = {"SHA1": hashes.SHA1(), "SHA256": hashes.SHA256()}  # noqa: S303

# From AWS's CloudFront Developer Guide: the canned policy CloudFront rebuilds from a signed
# URL ("Create a signed URL using a canned policy"), written out here, not borrowed.
CANNED = '{"Statement":[{"Resource":"%s","Condition":{"DateLessThan":{"AWS:EpochTime":%d}}}]}'
FROM_CLOUDFRONT_B64 = str.maketrans("-_~", "+=/")


def from_cloudfront_b64(text: str) -> bytes:
    assert re.fullmatch(r"[A-Za-z0-9~_-]+", text), "not CloudFront's URL-safe base64"
    return base64.b64decode(text.translate(FROM_CLOUDFRONT_B64), validate=True)


def signature_ok(public: Any, message: bytes, signature: bytes, algorithm: str) -> bool:
    digest = SHA[algorithm]
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, message, padding.PKCS1v15(), digest)
        else:
            decode_dss_signature(signature)  # ECDSA signatures travel as ASN.1 DER
            public.verify(signature, message, ec.ECDSA(digest))
    except (InvalidSignature, ValueError):
        return False
    return True


def accepts_url(signed: str, public: Any, now: datetime, key_pair_id: str = KEY_ID) -> bool:
    """Would CloudFront (key group holding `public` as key_pair_id) serve this signed URL now?"""
    base, _, query = signed.partition("?")
    raw = query.split("&")  # compared as sent: no decoding
    names = [item.partition("=")[0] for item in raw]
    tail = ["Expires", "Signature", "Key-Pair-Id"]
    if names[-1] == "Hash-Algorithm":
        tail.append("Hash-Algorithm")
    if names[-len(tail) :] != tail:
        return False
    params = dict(item.partition("=")[::2] for item in raw[-len(tail) :])
    own = "&".join(raw[: -len(tail)])
    resource = f"{base}?{own}" if own else base
    expires = int(params["Expires"])
    statement = (CANNED % (resource, expires)).encode()
    return (
        params["Key-Pair-Id"] == key_pair_id
        and int(now.timestamp()) < expires
        and signature_ok(
            public,
            statement,
            from_cloudfront_b64(params["Signature"]),
            params.get("Hash-Algorithm", "SHA1"),
        )
    )


def matches(pattern: str, url: str) -> bool:
    """AWS's wildcards in a policy's Resource: '*' any run of characters, '?' exactly one."""
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, url, flags=re.DOTALL) is not None


def accepts_cookies(
    cookies: Mapping[str, str], url: str, public: Any, now: datetime, key_pair_id: str = KEY_ID
) -> bool:
    """Would CloudFront serve `url` to a viewer sending these signed cookies now?"""
    statement = from_cloudfront_b64(cookies["CloudFront-Policy"])
    if re.search(rb"\s", statement):  # AWS: the policy statement has no whitespace
        return False
    (only,) = json.loads(statement)["Statement"]
    condition = only["Condition"]
    if set(only) != {"Resource", "Condition"} or set(condition) != {"DateLessThan"}:
        return False
    return (
        cookies["CloudFront-Key-Pair-Id"] == key_pair_id
        and matches(only["Resource"], url)
        and int(now.timestamp()) < condition["DateLessThan"]["AWS:EpochTime"]
        and signature_ok(
            public,
            statement,
            from_cloudfront_b64(cookies["CloudFront-Signature"]),
            cookies.get("CloudFront-Hash-Algorithm", "SHA1"),
        )
    )


def aws_javascript_signer(request: Mapping[str, Any]) -> dict[str, Any]:
    """Sign (and verify) with AWS's JavaScript signer; see node_cloudfront/crosscheck.js."""
    node = shutil.which("node")
    assert node, "Node.js is required (Node 20)"
    signer_package = NODE_DIR / "node_modules" / "@aws-sdk" / "cloudfront-signer"
    assert signer_package.is_dir(), "run make install (npm ci in tests/node_cloudfront)"
    result = subprocess.run(
        [node, str(NODE_DIR / "crosscheck.js")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer
