"""Where each S3 identity's credentials come from: exactly one source per identity.

    environment  <PREFIX>_KEY and <PREFIX>_SECRET (static keys, never expire)
    files        <PREFIX>_KEY_FILE and <PREFIX>_SECRET_FILE (a Kubernetes Secret volume)
    role         <PREFIX>_ROLE_ARN, assumed through STS with the process's base credentials

The uploader's prefix is S3_UPLOAD, the reader's S3_READ, the verifier's S3_VERIFY (only
in verified mode, where it reads staged uploads and publishes verified avatars; it signs
no URL). This module only says which source each identity uses, and checks the values it
can check without I/O; the `credentials` package reads the files, assumes the roles and
keeps them fresh. The rules a key id, a secret and a role ARN follow live here, once, for
both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..signing.key_pairs import Credentials
from .env import Env, SettingsError

#: A role session may be requested for 15 minutes to 12 hours (chained roles: 1 hour).
ROLE_MIN_SECONDS = 900
ROLE_MAX_SECONDS = 43200
DEFAULT_ROLE_SECONDS = 3600

#: identity -> the prefix of its variables
PREFIXES = {"uploader": "S3_UPLOAD", "reader": "S3_READ", "verifier": "S3_VERIFY"}

_ACCESS_KEY_ID = re.compile(r"[A-Za-z0-9]{3,128}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")


# --- the rules a key pair and a role ARN follow -------------------------------------------


def access_key_id_problem(access_key_id: str) -> str | None:
    """Why this is not an access key id, or None. Never echoes the value."""
    if not _ACCESS_KEY_ID.fullmatch(access_key_id):
        return "must be an access key id (3-128 letters and digits)"
    return None


def secret_problem(secret: str) -> str | None:
    """Why this is not a secret access key, or None. Never echoes the value."""
    if len(secret) < 8 or any(c.isspace() for c in secret):
        return "must be a secret access key (8+ characters, no spaces)"
    return None


def is_role_arn(value: str) -> bool:
    return _ROLE_ARN.fullmatch(value) is not None


# --- what the settings chose for one identity ---------------------------------------------


@dataclass(frozen=True)
class KeyPairFiles:
    """Key id and secret read from two files (<PREFIX>_KEY_FILE, <PREFIX>_SECRET_FILE)."""

    key_id_file: Path
    secret_file: Path
    key_id_variable: str
    secret_variable: str


@dataclass(frozen=True)
class AssumedRole:
    """A role assumed through STS with the process's base credentials (<PREFIX>_ROLE_ARN)."""

    role_arn: str
    variable: str
    duration_seconds: int = DEFAULT_ROLE_SECONDS


#: One identity's credential setting: static keys from the environment, files, or a role.
IdentitySetting = Credentials | KeyPairFiles | AssumedRole


def describe(setting: IdentitySetting) -> str:
    """Where the credentials come from, for logs and `check` (no secret)."""
    if isinstance(setting, Credentials):
        return f"environment (key id {setting.access_key_id})"
    if isinstance(setting, KeyPairFiles):
        return f"files {setting.key_id_file} and {setting.secret_file}"
    return f"role {setting.role_arn}"


def naming_variable(identity: str, setting: IdentitySetting) -> str:
    """The variable that names this identity's key id or role, for one-line errors."""
    if isinstance(setting, KeyPairFiles):
        return setting.key_id_variable
    if isinstance(setting, AssumedRole):
        return setting.variable
    return f"{PREFIXES[identity]}_KEY"


def _static(env: Env, key_var: str, secret_var: str) -> Credentials:
    access_key_id = env.required(key_var)
    # Don't echo it: someone may have pasted the secret here by mistake.
    problem = access_key_id_problem(access_key_id)
    if problem:
        raise SettingsError(key_var, problem)
    secret = env.required(secret_var)
    problem = secret_problem(secret)
    if problem:
        raise SettingsError(secret_var, problem)
    return Credentials(access_key_id, secret)


def identity_setting(env: Env, identity: str, role_seconds: int) -> IdentitySetting:
    """The one credential source configured for `identity` (uploader or reader)."""
    prefix = PREFIXES[identity]
    key, secret = f"{prefix}_KEY", f"{prefix}_SECRET"
    key_file, secret_file = f"{prefix}_KEY_FILE", f"{prefix}_SECRET_FILE"
    role = f"{prefix}_ROLE_ARN"
    groups = {"env": (key, secret), "files": (key_file, secret_file), "role": (role,)}
    present = {
        kind: [name for name in names if env.raw(name) is not None]
        for kind, names in groups.items()
    }
    chosen = [kind for kind, names in present.items() if names]
    if len(chosen) > 1:
        raise SettingsError(
            ", ".join(name for kind in chosen for name in present[kind]),
            f"set only one credential source for the {identity}: {key} and {secret}, "
            f"or {key_file} and {secret_file}, or {role}",
        )
    if chosen == ["files"]:
        return KeyPairFiles(
            Path(env.required(key_file)), Path(env.required(secret_file)), key_file, secret_file
        )
    if chosen == ["role"]:
        arn = env.required(role)
        if not is_role_arn(arn):
            raise SettingsError(
                role, "must be an IAM role ARN such as arn:aws:iam::123456789012:role/NAME"
            )
        return AssumedRole(arn, role, role_seconds)
    if not chosen:
        raise SettingsError(
            key, f"is required but not set (or use {key_file} and {secret_file}, or {role})"
        )
    return _static(env, key, secret)


def _variables(identity: str) -> tuple[str, ...]:
    prefix = PREFIXES[identity]
    suffixes = ("KEY", "SECRET", "KEY_FILE", "SECRET_FILE", "ROLE_ARN")
    return tuple(f"{prefix}_{suffix}" for suffix in suffixes)


def verifier_setting(env: Env, verified: bool, role_seconds: int) -> IdentitySetting | None:
    """The verifier's source in verified mode (required there); None in direct mode."""
    given = [name for name in _variables("verifier") if env.raw(name) is not None]
    if not verified:
        if given:
            raise SettingsError(
                given[0], "is set, but UPLOAD_MODE=direct has no verifier: remove it"
            )
        return None
    if not given:
        raise SettingsError(
            "S3_VERIFY_KEY",
            "is required for verified uploads (UPLOAD_MODE=verified, the default): set "
            "S3_VERIFY_KEY and S3_VERIFY_SECRET (or S3_VERIFY_KEY_FILE and "
            "S3_VERIFY_SECRET_FILE, or S3_VERIFY_ROLE_ARN), or set UPLOAD_MODE=direct",
        )
    return identity_setting(env, "verifier", role_seconds)


def role_seconds(env: Env) -> int:
    return env.integer(
        "S3_ROLE_DURATION_SECONDS", DEFAULT_ROLE_SECONDS, ROLE_MIN_SECONDS, ROLE_MAX_SECONDS
    )


def require_role_covers(setting: IdentitySetting, max_ttl: int, ttl_variable: str) -> None:
    """A role session must cover every allowed URL with room to renew before it is needed.

    The watcher renews a session `max ttl + 60 s` before it ends (at most half-way), so a
    session of at least twice that always covers the longest URL without STS on the path.
    """
    if isinstance(setting, AssumedRole):
        needed = 2 * (max_ttl + 60)
        if setting.duration_seconds < needed:
            raise SettingsError(
                "S3_ROLE_DURATION_SECONDS",
                f"must be at least 2 x ({ttl_variable} + 60 s) = {needed} s so every allowed "
                f"URL fits a role session; raise it (at most 3600 s for chained IRSA "
                f"roles) or lower {ttl_variable}",
            )


DEFAULT_PROBE_SECONDS = 60.0


def probe_seconds(env: Env) -> float:
    """CREDENTIALS_PROBE_SECONDS: how often the pairs in force are put to S3 (0: never)."""
    return env.number("CREDENTIALS_PROBE_SECONDS", DEFAULT_PROBE_SECONDS, 0.0, 86400.0)
