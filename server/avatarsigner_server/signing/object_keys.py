"""The object-key rule: which user ids are acceptable and which object key each maps to.

This module is the only place the rule lives. Callers never choose a key: the service
derives `<prefix><user_id>/avatar` from a validated user id, so one user id names exactly
one object and no input can reach another user's key (no slashes, no dot segments, no
encoded characters, ASCII only).
"""

from __future__ import annotations

import re

USER_ID_RULE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# fullmatch without the anchors: `$` alone would accept a trailing newline.
_USER_ID = re.compile(USER_ID_RULE.removeprefix("^").removesuffix("$"))
_PREFIX = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]*/)*")
AVATAR_NAME = "avatar"
DEFAULT_PREFIX = "profiles/"
# A key no user id can produce (user ids cannot start with "."): used by
# `avatar-signer check` for its canary object.
RESERVED_SEGMENT = ".avatar-signer-check"


def is_valid_user_id(user_id: str) -> bool:
    """True when user_id follows USER_ID_RULE."""
    return _USER_ID.fullmatch(user_id) is not None


def is_valid_prefix(prefix: str) -> bool:
    """A key prefix is empty or `seg/seg/.../`, each segment starting alphanumeric."""
    return _PREFIX.fullmatch(prefix) is not None


class ObjectKeys:
    """Maps validated user ids to S3 object keys under one prefix (default `profiles/`)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not is_valid_prefix(prefix):
            raise ValueError("key prefix must be empty or segments ending in '/'")
        self.prefix = prefix

    def key_for(self, user_id: str) -> str:
        """The object key for user_id. Raises ValueError for an invalid id."""
        if not is_valid_user_id(user_id):
            raise ValueError(f"user_id must match {USER_ID_RULE}")
        return self._key(user_id)

    def key_template(self, placeholder: str = "{user_id}") -> str:
        """The key with `placeholder` where the user id goes: how a client builds a key."""
        return self._key(placeholder)

    def _key(self, user_id: str) -> str:
        return f"{self.prefix}{user_id}/{AVATAR_NAME}"

    def canary_key(self) -> str:
        """The reserved key `avatar-signer check` writes to; no user id maps to it."""
        return f"{self.prefix}{RESERVED_SEGMENT}/canary"
