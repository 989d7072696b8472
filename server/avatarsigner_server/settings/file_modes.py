"""Who else may change or read the files the service trusts, judged by their mode bits.

    trust files    CALLERS_FILE, END_USER_JWT_JWKS_FILE, END_USER_JWT_SECRET_FILE,
                   TLS_CLIENT_CA_FILE: whoever may write one may add a caller, a key or a
                   CA. A group- or world-writable one is refused (a SettingsError at
                   start-up; on reload the version in force stays).
    secret files   TLS_KEY_FILE, END_USER_JWT_SECRET_FILE, S3_UPLOAD_SECRET_FILE,
                   S3_READ_SECRET_FILE: a world-readable one is worth a start-up warning.

The mode of the file a path resolves to is judged (Kubernetes mounts a volume's files as
symlinks into a `..data` directory). Kubernetes' own modes pass: Secret volumes with
`defaultMode: 0440` and `fsGroup` (group-readable, nobody writes), ConfigMap volumes with
0444 or 0644. Directories are not judged: a volume's root is often world-writable with the
sticky bit, which keeps others from replacing files they do not own.
"""

from __future__ import annotations

import os
import stat

from .env import SettingsError
from .identities import KeyPairFiles
from .load import Settings


def require_not_writable_by_others(setting: str, path: str) -> None:
    """SettingsError naming `setting` when the file is group- or world-writable."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # whoever reads it next says why it cannot be read
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SettingsError(
            setting,
            f"{path} is writable by its group or by everyone (mode {stat.S_IMODE(mode):04o}): "
            "whoever can write it decides whom the service trusts; make it 0644 or stricter",
        )


def _world_readable(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def secret_files(settings: Settings) -> list[tuple[str, str]]:
    """(variable, path) of every file holding a secret in these settings."""
    found: list[tuple[str, str]] = []
    for identity in settings.identities().values():
        if isinstance(identity, KeyPairFiles):
            found.append((identity.secret_variable, str(identity.secret_file)))
    access = settings.access
    if access.tls is not None:
        found.append(("TLS_KEY_FILE", access.tls.key_file))
    if access.end_user is not None and access.end_user.hs256_secret_file is not None:
        found.append(("END_USER_JWT_SECRET_FILE", access.end_user.hs256_secret_file))
    return found


def world_readable_secrets(settings: Settings) -> list[str]:
    """A start-up warning for each secret file every local user can read."""
    return [
        f"{variable}: {path} is readable by every local user; make it 0400, or 0440 with "
        "a group of its own (Kubernetes: defaultMode 0440 and fsGroup)"
        for variable, path in secret_files(settings)
        if _world_readable(path)
    ]
