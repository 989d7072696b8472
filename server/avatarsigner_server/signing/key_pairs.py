"""What a signer signs with: one AWS key pair, and where a signer asks for it.

The signing core defines the shape; the `credentials` package provides the sources (static
keys, key files, role sessions) that fill it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class Credentials:
    """One AWS key pair, optionally temporary. Secrets never appear in repr()."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None  # None: never expires


def covers(creds: Credentials | None, valid_until: datetime) -> bool:
    """True when `creds` exist and are still valid at `valid_until`."""
    return creds is not None and (creds.expires_at is None or creds.expires_at >= valid_until)


class CredentialSource(Protocol):
    def get(self, valid_until: datetime) -> Credentials:
        """Credentials usable until at least `valid_until`, or CredentialsUnavailable."""
        ...
