"""A key pair read from two files, and re-read when they change.

Each refresh costs two stat() calls (following symlinks, so Kubernetes' atomic `..data`
symlink swap shows up as a new inode). A changed pair is read, validated, and adopted only
when the next refresh sees the same files unchanged, and, once a pair is in force, only
when S3 accepts a request signed with the new pair (`vet`, one request at rotation time,
never on the request path): a secret left half-written for seconds, or a key id changed
before its secret, is refused by S3 and never replaces the working pair. Until the new pair
is proven the old one stays in force and a WARNING names the files; the proof is tried
again every VET_RETRY_SECONDS (new IAM keys can take a few seconds to be accepted). An
empty, missing, unreadable or malformed file never replaces a good pair: a warning is
logged (once per problem) and the previous pair stays in use. Both files are read between two stat()
snapshots that must agree, so a swap during the read cannot pair an old key id with a new
secret.

Log lines and errors name variables, paths and the identity, never a secret or file
contents.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path

from ..errors import CredentialsUnavailable
from ..settings.identities import KeyPairFiles, access_key_id_problem, secret_problem
from ..signing.key_pairs import Credentials
from .proofs import Proof, Verdict, Vet

log = logging.getLogger("avatarsigner.credentials")

_MAX_KEY_FILE_BYTES = 4096
VET_RETRY_SECONDS = 5.0

# (device, inode, size, mtime) of a file, following symlinks: how a change is noticed.
FileStamp = tuple[int, int, int, int]
PairStamp = tuple[FileStamp, FileStamp]


class KeyFileError(Exception):
    """A key file that cannot be used; `variable` names the setting, str() the problem."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def _stamp(path: Path, variable: str) -> FileStamp:
    try:
        st = os.stat(path)
    except OSError as error:
        raise KeyFileError(variable, f"cannot read {path} ({error.strerror})") from None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read_value(path: Path, variable: str) -> str:
    try:
        with open(path, "rb") as stream:
            data = stream.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as error:
        raise KeyFileError(variable, f"cannot read {path} ({error.strerror})") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(variable, f"{path} is larger than {_MAX_KEY_FILE_BYTES} bytes")
    try:
        value = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyFileError(variable, f"{path} is not ASCII text") from None
    if not value:
        raise KeyFileError(variable, f"{path} is empty")
    return value


def _pair_stamp(files: KeyPairFiles) -> PairStamp:
    return (
        _stamp(files.key_id_file, files.key_id_variable),
        _stamp(files.secret_file, files.secret_variable),
    )


def read_key_pair(files: KeyPairFiles) -> tuple[PairStamp, Credentials]:
    """Read and validate a key pair from its two files (raises KeyFileError).

    The files are read between two stat() snapshots that must agree, so a symlink swap in
    the middle cannot produce the old key id with the new secret.
    """
    for _ in range(3):
        before = _pair_stamp(files)
        key = _read_value(files.key_id_file, files.key_id_variable)
        secret = _read_value(files.secret_file, files.secret_variable)
        if _pair_stamp(files) == before:
            break
    else:
        raise KeyFileError(files.key_id_variable, "the key files kept changing while being read")
    problem = access_key_id_problem(key)
    if problem:
        raise KeyFileError(files.key_id_variable, f"{files.key_id_file} {problem}")
    problem = secret_problem(secret)
    if problem:
        raise KeyFileError(files.secret_variable, f"{files.secret_file} {problem}")
    return before, Credentials(key, secret)


class FileCredentials:
    """A key pair read from two files and re-read when they change (see module docstring)."""

    def __init__(
        self, files: KeyPairFiles, identity: str = "signer", vet: Vet | None = None
    ) -> None:
        self.files = files
        self.identity = identity
        self.vet = vet
        self._current: Credentials | None = None
        self._stamp: PairStamp | None = None
        self._pending: tuple[PairStamp, Credentials] | None = None
        self._vetted_at = 0.0  # when the pending pair was last put to S3 (monotonic)
        self._problem: str | None = None
        self._lock = threading.Lock()
        self.refresh()

    def get(self, valid_until: datetime) -> Credentials:
        creds = self._current
        if creds is None:
            raise CredentialsUnavailable(
                f"the {self.identity}'s key files ({self.files.key_id_variable}, "
                f"{self.files.secret_variable}) hold no usable key pair; see the server log"
            )
        return creds

    def current(self) -> Credentials | None:
        return self._current

    def refresh(self) -> None:
        with self._lock:
            try:
                self._refresh()
            except KeyFileError as error:
                self._pending = None
                self._report(str(error))

    def _refresh(self) -> None:
        if _pair_stamp(self.files) == self._stamp:
            self._pending = None
            self._report(None)
            return
        stamp, creds = read_key_pair(self.files)
        if self._current is not None and creds == self._current:
            self._stamp, self._pending = stamp, None  # touched, same pair
            self._report(None)
            return
        if self._current is not None and (self._pending is None or self._pending != (stamp, creds)):
            # Changed since the last refresh: adopt it once it is seen unchanged next time,
            # so a file still being written is never taken up half-done.
            self._pending, self._vetted_at = (stamp, creds), 0.0
            return
        if self._current is not None and not self._proven(creds):
            return  # the old pair stays in force; the files are tried again later
        previous = self._current
        self._current, self._stamp, self._pending = creds, stamp, None
        self._report(None)
        if previous is not None:
            log.info(
                "%s credentials rotated from the key files",
                self.identity,
                extra={
                    "identity": self.identity,
                    "old_key_id": previous.access_key_id,
                    "new_key_id": creds.access_key_id,
                },
            )

    def _proven(self, creds: Credentials) -> bool:
        """Whether S3 accepts the new pair; asks at most every VET_RETRY_SECONDS."""
        if self.vet is None:
            return True
        now = time.monotonic()
        if now - self._vetted_at < VET_RETRY_SECONDS:
            return False
        self._vetted_at = now
        proof: Proof = self.vet(creds)
        if proof.verdict is Verdict.VALID:
            return True
        files = f"{self.files.key_id_file} and {self.files.secret_file}"
        if proof.verdict is Verdict.INVALID:
            self._report(f"S3 refuses the key pair now in {files} ({proof.detail})")
        else:
            self._report(f"the key pair now in {files} could not be proven yet ({proof.detail})")
        return False

    def _report(self, problem: str | None) -> None:
        """Log a problem once (not every second), and say when it is over."""
        if problem == self._problem:
            return
        self._problem = problem
        if problem is None:
            return
        keeping = "keeping the previous key pair" if self._current else "no key pair yet"
        log.warning(
            "%s key files unusable: %s; %s",
            self.identity,
            problem,
            keeping,
            extra={"identity": self.identity},
        )
