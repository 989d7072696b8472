"""The CloudFront private key and its key pair id, read from files and kept fresh.

CLOUDFRONT_PRIVATE_KEY_FILE holds the key (unencrypted PEM); the id comes from
CLOUDFRONT_KEY_PAIR_ID, or from CLOUDFRONT_KEY_PAIR_ID_FILE, read together with the key.
The watcher re-checks the files every second, like the S3 key files (key_files.py): a
changed key is adopted once it is seen unchanged on the next check, a broken one never
replaces a good one (one warning, the previous key stays).

Rotation. CloudFront finds the public key by the id a signature names, and a public key
keeps its id for life, so a new key always comes with a new id. A key file that changes to
another key while the id stays the same would sign what CloudFront refuses: it is refused
here instead (one warning; the previous key stays in use). Keep the id in a file beside the
key (both in one Kubernetes Secret) and they rotate together, without a restart:

    1. add the new public key to the distribution's trusted key group;
    2. replace both files (the Secret) with the new key and its id;
    3. once every URL and cookie signed with the old key has expired, remove it from the
       key group.

Log lines and errors name the variables and paths, never key material.
"""

from __future__ import annotations

import logging

from ..errors import CredentialsUnavailable
from ..settings import SettingsError
from ..settings.cloudfront import KEY_PAIR_ID_FILE, PRIVATE_KEY_FILE, CloudFrontSettings
from ..signing.cloudfront import CloudFrontKeyError, check_key_pair_id, load_private_key
from ..signing.cloudfront_viewers import CloudFrontKeyPair
from .key_files import KeyFileError, NamedFile, WatchedFiles, read_value

log = logging.getLogger("avatarsigner.credentials")


def read_key_pair(settings: CloudFrontSettings) -> CloudFrontKeyPair:
    """The key and its id from the settings' files (raises KeyFileError naming the variable)."""
    path = settings.private_key_file
    pem = read_value(path, PRIVATE_KEY_FILE)
    try:
        key = load_private_key(pem.encode("ascii"))
    except CloudFrontKeyError as error:
        raise KeyFileError(PRIVATE_KEY_FILE, f"{path}: {error}") from None
    key_pair_id = settings.key_pair_id
    if key_pair_id is None:
        assert settings.key_pair_id_file is not None  # settings hold one or the other
        id_path = settings.key_pair_id_file
        try:
            key_pair_id = check_key_pair_id(read_value(id_path, KEY_PAIR_ID_FILE))
        except CloudFrontKeyError as error:
            raise KeyFileError(KEY_PAIR_ID_FILE, f"{id_path}: {error}") from None
    return CloudFrontKeyPair(key, key_pair_id)


def check_key_file(settings: CloudFrontSettings) -> None:
    """Start-up: SettingsError (one line naming the variable) unless the files hold a key
    CloudFront accepts and a well-formed id."""
    try:
        read_key_pair(settings)
    except KeyFileError as error:
        raise SettingsError(error.variable, error.problem) from None


def _files(settings: CloudFrontSettings) -> tuple[NamedFile, ...]:
    files: tuple[NamedFile, ...] = ((settings.private_key_file, PRIVATE_KEY_FILE),)
    if settings.key_pair_id_file is not None:
        files += ((settings.key_pair_id_file, KEY_PAIR_ID_FILE),)
    return files


class CloudFrontKeyFile(WatchedFiles[CloudFrontKeyPair]):
    """The key pair in force (`current()`, no I/O) and its files, re-read by `refresh()`."""

    def __init__(self, settings: CloudFrontSettings) -> None:
        super().__init__(_files(settings), ("CloudFront key", "key"), {})
        self._settings = settings
        self.refresh()

    def current(self) -> CloudFrontKeyPair:
        pair = self._current
        if pair is None:
            raise CredentialsUnavailable(
                f"{PRIVATE_KEY_FILE} holds no usable CloudFront key; see the server log"
            )
        return pair

    def _read(self) -> CloudFrontKeyPair:
        return read_key_pair(self._settings)

    def _same(self, new: CloudFrontKeyPair, current: CloudFrontKeyPair) -> bool:
        return new.key_pair_id == current.key_pair_id and _public(new) == _public(current)

    def _refuse(self, new: CloudFrontKeyPair, current: CloudFrontKeyPair) -> KeyFileError | None:
        if new.key_pair_id != current.key_pair_id:
            return None
        return KeyFileError(
            PRIVATE_KEY_FILE,
            f"{self._settings.private_key_file} holds another key but the key pair id is "
            f"still {current.key_pair_id}: CloudFront would refuse its signatures; rotate the "
            f"id with the key ({KEY_PAIR_ID_FILE}, or restart with the new "
            "CLOUDFRONT_KEY_PAIR_ID)",
        )

    def _adopted(self, new: CloudFrontKeyPair, previous: CloudFrontKeyPair) -> None:
        log.info(
            "CloudFront key rotated from the key files",
            extra={"old_key_pair_id": previous.key_pair_id, "new_key_pair_id": new.key_pair_id},
        )


def _public(pair: CloudFrontKeyPair) -> bytes:
    return pair.key.public_key_pem()
