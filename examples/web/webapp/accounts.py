"""Who is signed in, who the feed shows, and the demo identity provider.

A real profile service has a user database and an identity provider (OIDC, SAML...).
This demo keeps the users it has seen in memory, and when `DEMO_IDP_JWT_*` is set it
issues the token your identity provider would have issued at sign-in, so the app has an
end-user token to forward to AvatarSigner.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .settings import DemoIdentityProvider

#: The feed shows at most this many users (BatchCreateDownloadUrls takes up to 1000).
FEED_LIMIT = 100


@dataclass
class Account:
    user_id: str
    #: The `version` ConfirmUpload answered with: the app then knows who has an avatar
    #: (and which one). None: not confirmed while this process ran.
    avatar_version: str | None = None


class Directory:
    """Users in the order they were last seen, most recent first (thread-safe)."""

    def __init__(self, always: tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._accounts: OrderedDict[str, Account] = OrderedDict()
        self._always = always

    def seen(self, user_id: str) -> Account:
        with self._lock:
            account = self._accounts.pop(user_id, None) or Account(user_id)
            self._accounts[user_id] = account
            self._accounts.move_to_end(user_id, last=False)
            return account

    def feed(self, limit: int = FEED_LIMIT) -> list[str]:
        with self._lock:
            users = list(dict.fromkeys([*self._accounts, *self._always]))
        return users[:limit]

    def confirmed(self, user_id: str, version: str) -> None:
        self.seen(user_id).avatar_version = version

    def removed(self, user_id: str) -> None:
        """The user took their photo down: still in the feed, with the default picture."""
        self.seen(user_id).avatar_version = None


def issue_token(provider: DemoIdentityProvider, user_id: str, now: float | None = None) -> str:
    """The HS256 token an identity provider would issue to `user_id` at sign-in."""
    import jwt  # PyJWT; needed only with the demo identity provider

    issued = int(time.time() if now is None else now)
    claims = {
        "iss": provider.issuer,
        "aud": provider.audience,
        "sub": user_id,
        "iat": issued,
        "exp": issued + provider.ttl_seconds,
    }
    return jwt.encode(claims, provider.secret, algorithm="HS256")


def token_expired(token: str, now: float | None = None) -> bool:
    """Whether the token's `exp` has passed (read without verifying: it is our own)."""
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    return int(claims.get("exp", 0)) <= (time.time() if now is None else now)
