"""Whether a key pair works, as S3 itself says: the verdict a credential source acts on.

A source asks before it adopts a rotated pair from files (a half-written secret, or a key
id changed ahead of its secret, is refused by S3 and never replaces a working pair), and the
watcher asks now and then about the pair in force (a revoked key shows in health and
metrics instead of signing dead URLs). The question itself (one signed request to S3) is
asked by the layer that talks to S3 (storage.probes); this module only names the answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ..signing.key_pairs import Credentials


class Verdict(StrEnum):
    VALID = "valid"
    """S3 accepted the signature (an authorization refusal still means the pair is real)."""
    INVALID = "invalid"
    """S3 refused the key pair itself: unknown key id, wrong secret, expired token."""
    UNKNOWN = "unknown"
    """No answer, or a server error: ask again later; change nothing meanwhile."""


@dataclass(frozen=True)
class Proof:
    verdict: Verdict
    detail: str  # a fixed word or an S3 error code; never a secret


#: Asks S3 whether `identity`'s key pair `creds` works. Blocking (a worker thread).
Prover = Callable[[str, Credentials], Proof]

#: What a source calls to vet a new pair before adopting it (identity bound in).
Vet = Callable[[Credentials], Proof]
