"""The credential sources every identity can have, and the one that never changes.

A signer asks its source for credentials that stay valid until a given moment (the URL's
expiry); a source that cannot promise that raises `CredentialsUnavailable`
(FAILED_PRECONDITION), so a URL never outlives the credentials that signed it.

    StaticCredentials  <PREFIX>_KEY / <PREFIX>_SECRET. Never expire.
    FileCredentials    <PREFIX>_KEY_FILE / <PREFIX>_SECRET_FILE (key_files.py)
    RoleCredentials    <PREFIX>_ROLE_ARN, STS sessions renewed ahead of expiry (roles.py)

`get()` is on the request path and never does I/O; `refresh()` is the blocking part, run
by the watcher (watcher.py) in a worker thread.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from ..signing.key_pairs import Credentials, CredentialSource


class ManagedSource(CredentialSource, Protocol):
    """A source the watcher keeps fresh."""

    identity: str

    def refresh(self) -> None:
        """Blocking: reload or renew when due. Never raises; problems are logged."""
        ...

    def current(self) -> Credentials | None:
        """The credentials in use now (no I/O), or None when there are none."""
        ...


class StaticCredentials:
    """A fixed key pair (from the environment)."""

    def __init__(self, credentials: Credentials, identity: str = "signer") -> None:
        self._credentials = credentials
        self.identity = identity

    def get(self, valid_until: datetime) -> Credentials:
        # Environment keys never expire; the signer still checks every URL's expiry.
        return self._credentials

    def refresh(self) -> None:
        return None

    def current(self) -> Credentials | None:
        return self._credentials
