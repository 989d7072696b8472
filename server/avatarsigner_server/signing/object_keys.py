"""The object-key rule: which user ids are acceptable and which object keys each maps to.

This module is the only place the rule lives. Callers never choose a key: the service
derives every key from a validated user id, so one user id names exactly its own objects
and no input can reach another user's (no slashes, no dot segments, no encoded characters,
ASCII only):

    <prefix><user_id>/avatar                          the avatar download URLs read
    <staging prefix><user_id>/<upload_id>             a staged upload (verified mode)
    <prefix>.avatar-signer/confirmed/<user_id>/<id>   marks an upload as confirmed
    <prefix>.avatar-signer/deleted/<user_id>          when the avatar was last deleted
    <prefix>.avatar-signer-check/canary               `avatar-signer check`'s canary

User ids cannot start with ".", so no user id maps to the reserved keys.
"""

from __future__ import annotations

import re

USER_ID_RULE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# fullmatch without the anchors: `$` alone would accept a trailing newline.
_USER_ID = re.compile(USER_ID_RULE.removeprefix("^").removesuffix("$"))
_PREFIX = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]*/)*")
AVATAR_NAME = "avatar"
DEFAULT_PREFIX = "profiles/"
DEFAULT_STAGING_PREFIX = "uploads/"
# Segments no user id can produce (user ids cannot start with ".").
RESERVED_SEGMENT = ".avatar-signer-check"
STATE_SEGMENT = ".avatar-signer"


def is_valid_user_id(user_id: str) -> bool:
    """True when user_id follows USER_ID_RULE."""
    return _USER_ID.fullmatch(user_id) is not None


def is_valid_prefix(prefix: str) -> bool:
    """A key prefix is empty or `seg/seg/.../`, each segment starting alphanumeric."""
    return _PREFIX.fullmatch(prefix) is not None


def prefixes_overlap(first: str, second: str) -> bool:
    """True when one prefix contains the other (or either is empty: it contains all)."""
    return first.startswith(second) or second.startswith(first)


def _checked(user_id: str) -> str:
    if not is_valid_user_id(user_id):
        raise ValueError(f"user_id must match {USER_ID_RULE}")
    return user_id


class ObjectKeys:
    """Maps validated user ids to S3 object keys: avatars under `prefix` (default
    `profiles/`), staged uploads under `staging_prefix` (default `uploads/`)."""

    def __init__(
        self, prefix: str = DEFAULT_PREFIX, staging_prefix: str = DEFAULT_STAGING_PREFIX
    ) -> None:
        if not is_valid_prefix(prefix) or not is_valid_prefix(staging_prefix):
            raise ValueError("key prefixes must be empty or segments ending in '/'")
        self.prefix = prefix
        self.staging_prefix = staging_prefix

    def key_for(self, user_id: str) -> str:
        """The avatar's object key for user_id. Raises ValueError for an invalid id."""
        return self._avatar(_checked(user_id))

    def key_template(self, placeholder: str = "{user_id}") -> str:
        """The avatar key with `placeholder` where the user id goes (for clients)."""
        return self._avatar(placeholder)

    def avatar_pattern(self) -> str:
        """Every avatar key and nothing else under the prefix (not the check's canary, not
        confirmation markers), with `*` for the user id: a wildcard pattern as CloudFront
        policies and S3 ARNs read it (user ids have no '/', so only avatars end so)."""
        return self._avatar("*")

    def _avatar(self, user_id: str) -> str:
        return f"{self.prefix}{user_id}/{AVATAR_NAME}"

    def staging_key(self, user_id: str, upload_id: str) -> str:
        """Where an upload URL for user_id writes in verified mode (upload_id: minted)."""
        return f"{self.staging_prefix}{_checked(user_id)}/{upload_id}"

    def confirmed_key(self, user_id: str, upload_id: str) -> str:
        """The marker of a confirmed upload; it holds what ConfirmUpload answered."""
        return f"{self.prefix}{STATE_SEGMENT}/confirmed/{_checked(user_id)}/{upload_id}"

    def deleted_key(self, user_id: str) -> str:
        """The tombstone of the user's last deletion; it holds when, in Unix milliseconds."""
        return f"{self.prefix}{STATE_SEGMENT}/deleted/{_checked(user_id)}"

    def state_prefix(self) -> str:
        """Where the service keeps its markers and tombstones (a lifecycle rule expires
        them once no staged upload they speak of can still exist)."""
        return f"{self.prefix}{STATE_SEGMENT}/"

    def canary_key(self) -> str:
        """The reserved key `avatar-signer check` writes to; no user id maps to it."""
        return f"{self.prefix}{RESERVED_SEGMENT}/canary"

    def probe_key(self) -> str:
        """The key the service GETs to learn whether a key pair works (nobody writes it)."""
        return f"{self.prefix}{RESERVED_SEGMENT}/probe"

    def staging_canary_key(self, run: str) -> str:
        """A fresh staging canary per `check` run: upload URLs write a key only once."""
        return f"{self.staging_prefix}{RESERVED_SEGMENT}/{run}"
