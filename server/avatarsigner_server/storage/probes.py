"""Does a key pair work? One signed GET of a key nobody writes, and S3's answer.

S3 checks the signature before the policy: an unknown key id (InvalidAccessKeyId), a wrong
secret (SignatureDoesNotMatch) or a dead session token is refused as such, while a real
pair gets 404, or 403 AccessDenied when its policy does not cover the key, which still
proves the pair. No answer, or a server error, proves nothing either way.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ..credentials.proofs import Proof, Prover, Verdict
from ..signing.key_pairs import Credentials
from ..signing.url_signers import BucketEndpoint, presign_request
from .s3_http import send

PROBE_TIMEOUT_SECONDS = 5.0
# S3's words for a key pair (not a policy) it will not accept.
_REFUSED_PAIR = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
    }
)


def prover(endpoint: BucketEndpoint, region: str, probe_key: str) -> Prover:
    """Proves pairs with a GET of `probe_key` (a reserved key no user id can produce)."""

    def prove(identity: str, creds: Credentials) -> Proof:
        signed_at = datetime.now(UTC).replace(microsecond=0)
        url = presign_request(
            creds, endpoint, region, method="GET", key=probe_key, signed_at=signed_at,
            expires_in=60,
        )  # fmt: skip
        reply = send("GET", url, max_body=4096, timeout=PROBE_TIMEOUT_SECONDS)
        if reply.status == 0 or reply.status >= 500:
            return Proof(Verdict.UNKNOWN, str(reply))
        if reply.code in _REFUSED_PAIR:
            return Proof(Verdict.INVALID, reply.code)
        return Proof(Verdict.VALID, str(reply))

    return prove
