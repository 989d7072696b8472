"""Upload ids: what an upload URL promised, written into the id the service mints for it.

In verified mode every upload URL writes a staging object `uploads/<user_id>/<upload_id>`,
and ConfirmUpload must later know what that URL signed: the exact length, the SHA-256
when one was signed, and when the URL was minted. The service keeps no state, so the id
carries them:

    base64url( version (1) | minted at, Unix milliseconds (6) | content length (5)
               | nonce (16) [ | SHA-256 (32) ] )            38 or 80 characters

Nothing in it is secret, and it needs no signature of its own: the id is part of the
staging key the upload URL signs, so an id whose claims were edited names an object that
was never written (ConfirmUpload then finds nothing: NOT_UPLOADED). The 128-bit nonce
makes ids unguessable; the user id in the key binds the upload to its user.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

_VERSION = 1
_NONCE_BYTES = 16
_DIGEST_BYTES = 32
_FIXED = 1 + 6 + 5 + _NONCE_BYTES
MAX_CONTENT_LENGTH = (1 << 40) - 1
_SHAPE = re.compile(r"[A-Za-z0-9_-]{38}|[A-Za-z0-9_-]{80}")
RULE = "an upload id from CreateUploadUrl (38 or 80 of A-Z a-z 0-9 - _)"


@dataclass(frozen=True)
class UploadTicket:
    """What one upload URL promised: its length, its SHA-256 if signed, when it was made."""

    minted_at_ms: int
    content_length: int
    nonce: bytes
    sha256: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.nonce) != _NONCE_BYTES:
            raise ValueError(f"nonce must be {_NONCE_BYTES} bytes")
        if self.sha256 is not None and len(self.sha256) != _DIGEST_BYTES:
            raise ValueError(f"sha256 must be {_DIGEST_BYTES} bytes")
        if not 0 <= self.minted_at_ms < 1 << 48:
            raise ValueError("minted_at_ms is out of range")
        if not 1 <= self.content_length <= MAX_CONTENT_LENGTH:
            raise ValueError("content_length is out of range")

    @property
    def upload_id(self) -> str:
        raw = (
            bytes([_VERSION])
            + self.minted_at_ms.to_bytes(6, "big")
            + self.content_length.to_bytes(5, "big")
            + self.nonce
            + (self.sha256 or b"")
        )
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @property
    def sha256_base64(self) -> str | None:
        """The signed SHA-256 as checksum_sha256 writes it (standard base64), or None."""
        return None if self.sha256 is None else base64.b64encode(self.sha256).decode("ascii")


def parse(upload_id: str) -> UploadTicket | None:
    """The ticket an id carries, or None when it is not one the service could have made."""
    if not _SHAPE.fullmatch(upload_id):
        return None
    try:
        raw = base64.urlsafe_b64decode(upload_id + "=" * (-len(upload_id) % 4))
    except (binascii.Error, ValueError):
        return None
    if raw[0] != _VERSION or len(raw) not in (_FIXED, _FIXED + _DIGEST_BYTES):
        return None
    content_length = int.from_bytes(raw[7:12], "big")
    if content_length == 0:
        return None
    ticket = UploadTicket(
        minted_at_ms=int.from_bytes(raw[1:7], "big"),
        content_length=content_length,
        nonce=raw[12:_FIXED],
        sha256=raw[_FIXED:] or None,
    )
    # One spelling per ticket: base64 has others (non-zero padding bits) that decode alike.
    return ticket if ticket.upload_id == upload_id else None
