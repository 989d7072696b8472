"""Where each identity's credentials come from.

A signer asks its `CredentialSource` for credentials that stay valid until a given moment;
a source that cannot promise that raises `CredentialsUnavailable`. Static keys (the seed's
environment variables) never expire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from .errors import CredentialsUnavailable


@dataclass(frozen=True)
class Credentials:
    """One AWS key pair, optionally temporary. Secrets never appear in repr()."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None  # None: never expires


class CredentialSource(Protocol):
    def get(self, valid_until: datetime) -> Credentials:
        """Credentials usable until at least `valid_until`, or CredentialsUnavailable."""
        ...


class StaticCredentials:
    """A fixed key pair (from the environment)."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def get(self, valid_until: datetime) -> Credentials:
        expires_at = self._credentials.expires_at
        if expires_at is not None and expires_at < valid_until:
            raise CredentialsUnavailable(
                "the signing credentials expire before the requested URL would; "
                "ask for a shorter ttl"
            )
        return self._credentials
