"""Values read from key files and re-read when they change: `WatchedFiles`, and the one for
an S3 key pair, `FileCredentials` (the CloudFront key is the other, cloudfront_key.py).

Each refresh costs two stat() calls (following symlinks, so Kubernetes' atomic `..data`
symlink swap shows up as a new inode). A changed pair is read, validated, and adopted only
when the next refresh sees the same files unchanged, and, once a pair is in force, only
when S3 accepts a request signed with the new pair (`vet`, one request at rotation time,
never on the request path): a secret left half-written for seconds, or a key id changed
before its secret, is refused by S3 and never replaces the working pair. Until the new pair
is proven the old one stays in force and a WARNING names the files; the proof is tried
again every VET_RETRY_SECONDS (new IAM keys can take a few seconds to be accepted). An
empty, missing, unreadable or malformed file never replaces a good pair: a warning is
logged (once per problem) and the previous pair stays in use. Both files are read between
two stat() snapshots that must agree, so a swap during the read cannot pair an old key id
with a new secret.

The same holds for any `WatchedFiles`. Log lines and errors name variables, paths and the
identity, never a secret or file contents.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Generic, TypeVar

from ..errors import CredentialsUnavailable
from ..settings.identities import KeyPairFiles, access_key_id_problem, secret_problem
from ..signing.key_pairs import Credentials
from .proofs import Proof, Verdict, Vet

log = logging.getLogger("avatarsigner.credentials")

_MAX_KEY_FILE_BYTES = 4096
VET_RETRY_SECONDS = 5.0

# (device, inode, size, mtime) of a file, following symlinks: how a change is noticed.
FileStamp = tuple[int, int, int, int]
Stamps = tuple[FileStamp, ...]
# A file and the variable that names it (for one-line errors).
NamedFile = tuple[Path, str]
T = TypeVar("T")


class KeyFileError(Exception):
    """A key file that cannot be used; `variable` names the setting, str() the problem."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def file_stamp(path: Path, variable: str) -> FileStamp:
    try:
        st = os.stat(path)
    except OSError as error:
        raise KeyFileError(variable, f"cannot read {path} ({error.strerror})") from None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def stamps(files: Sequence[NamedFile]) -> Stamps:
    return tuple(file_stamp(path, variable) for path, variable in files)


def read_value(path: Path, variable: str) -> str:
    """The file's text (ASCII, surrounding blanks stripped, at most 4096 bytes), or
    KeyFileError naming `variable`."""
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


def read_consistently(files: Sequence[NamedFile], read: Callable[[], T]) -> tuple[Stamps, T]:
    """`read()` between two stat() snapshots of `files` that agree (raises KeyFileError).

    So a symlink swap in the middle cannot produce, say, the old key id with the new secret.
    """
    for _ in range(3):
        before = stamps(files)
        value = read()
        if stamps(files) == before:
            return before, value
    raise KeyFileError(files[0][1], "the files kept changing while being read")


def _named(files: KeyPairFiles) -> tuple[NamedFile, NamedFile]:
    return (files.key_id_file, files.key_id_variable), (files.secret_file, files.secret_variable)


def read_key_pair(files: KeyPairFiles) -> tuple[Stamps, Credentials]:
    """Read and validate a key pair from its two files (raises KeyFileError)."""
    named = _named(files)
    stamp, (key, secret) = read_consistently(
        named, lambda: tuple(read_value(path, variable) for path, variable in named)
    )
    problem = access_key_id_problem(key)
    if problem:
        raise KeyFileError(files.key_id_variable, f"{files.key_id_file} {problem}")
    problem = secret_problem(secret)
    if problem:
        raise KeyFileError(files.secret_variable, f"{files.secret_file} {problem}")
    return stamp, Credentials(key, secret)


class WatchedFiles(Generic[T]):
    """A value read from files and re-read when they change (see the module docstring).

    A subclass says how the value is read and checked (`_read`, raising KeyFileError), when
    a new value is the current one again (`_same`), whether it may replace the current one
    (`_refuse`), and what to log (`_adopted`). The value in force is `_current`; reading it
    needs no lock (one reference swap), refreshing takes one.
    """

    def __init__(
        self, files: Sequence[NamedFile], names: tuple[str, str], log_extra: Mapping[str, str]
    ) -> None:
        self._files = tuple(files)
        # For log lines: what the files are and what they hold ("uploader key", "key pair").
        self._files_name, self._value_name = names
        self._log_extra = dict(log_extra)
        self._current: T | None = None
        self._stamp: Stamps | None = None
        self._pending: tuple[Stamps, T] | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()

    def _read(self) -> T:
        raise NotImplementedError

    def _same(self, new: T, current: T) -> bool:
        return new == current

    def _refuse(self, new: T, current: T) -> KeyFileError | None:
        """Why `new` must not replace `current` (checked once both are known), or None."""
        return None

    def _adopted(self, new: T, previous: T) -> None:
        """Called after `new` replaced `previous` (not for the first value)."""

    def _proven(self, new: T) -> bool:
        """Whether a stable new value may replace the one in force now (asked again on
        later refreshes while it says no); `_report` what stands in the way."""
        return True

    def _pending_changed(self) -> None:
        """Called when a new value starts waiting to be seen unchanged."""

    def refresh(self) -> None:
        """Blocking: re-read the files if they changed. Never raises; problems are logged."""
        with self._lock:
            try:
                self._refresh()
            except KeyFileError as error:
                self._pending = None
                self._report(str(error))

    def _refresh(self) -> None:
        if stamps(self._files) == self._stamp:
            self._pending = None
            self._report(None)
            return
        stamp, value = read_consistently(self._files, self._read)
        current = self._current
        if current is not None and self._same(value, current):
            self._stamp, self._pending = stamp, None  # touched, same value
            self._report(None)
            return
        refusal = None if current is None else self._refuse(value, current)
        if refusal is not None:
            raise refusal
        pending = self._pending
        if current is not None and (
            pending is None or pending[0] != stamp or not self._same(value, pending[1])
        ):
            # Changed since the last refresh: adopt it once it is seen unchanged next time,
            # so a file still being written is never taken up half-done.
            self._pending = (stamp, value)
            self._pending_changed()
            return
        if current is not None and not self._proven(value):
            return  # the value in force stays; the files are tried again later
        self._current, self._stamp, self._pending = value, stamp, None
        self._report(None)
        if current is not None:
            self._adopted(value, current)

    def _report(self, problem: str | None) -> None:
        """Log a problem once (not every second), and say when it is over."""
        if problem == self._problem:
            return
        self._problem = problem
        if problem is None:
            return
        value = self._value_name
        keeping = f"keeping the previous {value}" if self._current else f"no {value} yet"
        log.warning(
            "%s files unusable: %s; %s", self._files_name, problem, keeping, extra=self._log_extra
        )


class FileCredentials(WatchedFiles[Credentials]):
    """A key pair read from two files and re-read when they change (see module docstring)."""

    def __init__(
        self, files: KeyPairFiles, identity: str = "signer", vet: Vet | None = None
    ) -> None:
        super().__init__(
            _named(files),
            (f"{identity} key", "key pair"),
            {"identity": identity},
        )
        self.files = files
        self.identity = identity
        self.vet = vet
        self._vetted_at = 0.0  # when the pending pair was last put to S3 (monotonic)
        self.refresh()

    def _read(self) -> Credentials:
        return read_key_pair(self.files)[1]

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

    def _pending_changed(self) -> None:
        self._vetted_at = 0.0

    def _proven(self, new: Credentials) -> bool:
        """Whether S3 accepts the new pair; asks at most every VET_RETRY_SECONDS."""
        if self.vet is None:
            return True
        now = time.monotonic()
        if now - self._vetted_at < VET_RETRY_SECONDS:
            return False
        self._vetted_at = now
        proof: Proof = self.vet(new)
        if proof.verdict is Verdict.VALID:
            return True
        files = f"{self.files.key_id_file} and {self.files.secret_file}"
        if proof.verdict is Verdict.INVALID:
            self._report(f"S3 refuses the key pair now in {files} ({proof.detail})")
        else:
            self._report(f"the key pair now in {files} could not be proven yet ({proof.detail})")
        return False

    def _adopted(self, new: Credentials, previous: Credentials) -> None:
        log.info(
            "%s credentials rotated from the key files",
            self.identity,
            extra={
                "identity": self.identity,
                "old_key_id": previous.access_key_id,
                "new_key_id": new.access_key_id,
            },
        )
