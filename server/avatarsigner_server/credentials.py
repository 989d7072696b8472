"""Where each identity's credentials come from, and how they are kept fresh.

A signer asks its `CredentialSource` for credentials that stay valid until a given moment
(the URL's expiry); a source that cannot promise that raises `CredentialsUnavailable`
(FAILED_PRECONDITION), so a URL never outlives the credentials that signed it.

Each identity (uploader, reader) has exactly one source, chosen by config:

    StaticCredentials  S3_*_KEY / S3_*_SECRET (the seed's variables). Never expire.
    FileCredentials    S3_*_KEY_FILE / S3_*_SECRET_FILE (a Kubernetes Secret volume).
    RoleCredentials    S3_*_ROLE_ARN, assumed through STS with the process's own base
                       credentials (IRSA, EKS Pod Identity, instance role, AWS_* variables).

Freshness, and where the I/O happens:

* `get()` is on the request path and does no file I/O. For files it returns the pair in
  memory. For a role it returns the session in memory when that outlives the URL;
  otherwise (rare: the URL's ttl is longer than the refresh margin) it assumes the role
  once, synchronously, and signs with the new session if that covers the URL, else raises
  CredentialsUnavailable. That synchronous call is made only while STS has been answering
  (after a failure only the watcher retries, with back-off), never waits for a renewal in
  progress on another thread, and is spaced at least `min_retry` from the previous call,
  so a ttl no session can cover never turns into a stream of STS calls.
* `refresh()` is the blocking part. `CredentialWatcher.check()` calls it for both
  identities once per `CHECK_PERIOD_SECONDS` (1 s) in a worker thread, and reports whether
  every identity can sign a URL of its default ttl; the server turns that into health
  SERVING / NOT_SERVING.
* Files: each check costs two stat() calls (following symlinks, so Kubernetes' atomic
  `..data` symlink swap shows up as a new inode). A changed pair is read, validated, and
  adopted only when the next check sees the same files unchanged: a half-written file is
  never adopted mid-write, so a rotation takes effect within about two seconds. An empty,
  missing, unreadable or malformed file never replaces a good pair: a warning is logged
  (once per problem) and the previous pair stays in use. Both files are read between two
  stat() snapshots that must agree, so a swap during the read cannot pair an old key id
  with a new secret.
* Roles: sessions are renewed in the background `refresh_before` ahead of expiry (the
  identity's maximum ttl plus a minute, at most half the session); a failed renewal is
  retried with back-off while the old session keeps signing the URLs it can still cover.

Log lines and error messages name variables, paths and identities, never a secret, a
session token or file contents.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from .errors import CredentialsUnavailable

log = logging.getLogger("avatarsigner.credentials")

Clock = Callable[[], datetime]

#: How often the server's watcher re-checks key files and role sessions.
CHECK_PERIOD_SECONDS = 1.0
#: A role session may be requested for 15 minutes to 12 hours (chained roles: 1 hour).
ROLE_MIN_SECONDS = 900
ROLE_MAX_SECONDS = 43200
_MAX_KEY_FILE_BYTES = 4096
_ACCESS_KEY_ID = re.compile(r"[A-Za-z0-9]{3,128}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")


def utc_now() -> datetime:
    return datetime.now(UTC)


_second_cache: tuple[int, datetime] = (0, datetime.fromtimestamp(0, UTC))


def utc_now_to_the_second() -> datetime:
    """Now in UTC, truncated to the whole second: the signers' clock.

    SigV4 dates carry no fraction, so a signature needs no more; the datetime is built once
    per second because it is on every signature's path.
    """
    global _second_cache
    second = int(time.time())
    if second != _second_cache[0]:
        _second_cache = (second, datetime.fromtimestamp(second, UTC))
    return _second_cache[1]


@dataclass(frozen=True)
class Credentials:
    """One AWS key pair, optionally temporary. Secrets never appear in repr()."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None  # None: never expires


# --- the rules a key pair and a role ARN follow (config and the file reloader share them) ---


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


# --- what config chose for one identity ------------------------------------------------


@dataclass(frozen=True)
class KeyFiles:
    """Key id and secret read from two files (S3_*_KEY_FILE, S3_*_SECRET_FILE)."""

    key_file: Path
    secret_file: Path
    key_variable: str
    secret_variable: str


@dataclass(frozen=True)
class AssumedRole:
    """A role assumed through STS with the process's base credentials (S3_*_ROLE_ARN)."""

    role_arn: str
    variable: str
    duration_seconds: int = 3600


#: One identity's credential setting: static keys from the environment, files, or a role.
CredentialSetting = Credentials | KeyFiles | AssumedRole


def describe(setting: CredentialSetting) -> str:
    """Where the credentials come from, for logs and `check` (no secret)."""
    if isinstance(setting, Credentials):
        return f"environment (key id {setting.access_key_id})"
    if isinstance(setting, KeyFiles):
        return f"files {setting.key_file} and {setting.secret_file}"
    return f"role {setting.role_arn}"


# --- sources ------------------------------------------------------------------------------


class CredentialSource(Protocol):
    def get(self, valid_until: datetime) -> Credentials:
        """Credentials usable until at least `valid_until`, or CredentialsUnavailable."""
        ...


class ManagedSource(CredentialSource, Protocol):
    """A source the watcher keeps fresh."""

    identity: str

    def refresh(self) -> None:
        """Blocking: reload or renew when due. Never raises; problems are logged."""
        ...

    def current(self) -> Credentials | None:
        """The credentials in use now (no I/O), or None when there are none."""
        ...


def _uncovered(identity: str, creds: Credentials, now: datetime) -> str:
    assert creds.expires_at is not None
    left = max(0, int((creds.expires_at - now).total_seconds()))
    return (
        f"the {identity}'s temporary credentials expire before a URL with this ttl would; "
        f"ask for a ttl of at most {left} s, or retry shortly"
    )


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


class KeyFileError(Exception):
    """A key file that cannot be used; `variable` names the setting, str() the problem."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


# (device, inode, size, mtime) of each file, following symlinks.
_Signature = tuple[tuple[int, int, int, int], tuple[int, int, int, int]]


def _stat(path: Path, variable: str) -> tuple[int, int, int, int]:
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


def _signature(files: KeyFiles) -> _Signature:
    return (
        _stat(files.key_file, files.key_variable),
        _stat(files.secret_file, files.secret_variable),
    )


def read_key_files(files: KeyFiles) -> tuple[_Signature, Credentials]:
    """Read and validate a key pair from its two files (raises KeyFileError).

    The files are read between two stat() snapshots that must agree, so a symlink swap in
    the middle cannot produce the old key id with the new secret.
    """
    for _ in range(3):
        before = _signature(files)
        key = _read_value(files.key_file, files.key_variable)
        secret = _read_value(files.secret_file, files.secret_variable)
        if _signature(files) == before:
            break
    else:
        raise KeyFileError(files.key_variable, "the key files kept changing while being read")
    problem = access_key_id_problem(key)
    if problem:
        raise KeyFileError(files.key_variable, f"{files.key_file} {problem}")
    problem = secret_problem(secret)
    if problem:
        raise KeyFileError(files.secret_variable, f"{files.secret_file} {problem}")
    return before, Credentials(key, secret)


class FileCredentials:
    """A key pair read from two files and re-read when they change (see module docstring)."""

    def __init__(self, files: KeyFiles, identity: str = "signer") -> None:
        self.files = files
        self.identity = identity
        self._current: Credentials | None = None
        self._signature: _Signature | None = None
        self._pending: tuple[_Signature, Credentials] | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()
        self.refresh()

    def get(self, valid_until: datetime) -> Credentials:
        creds = self._current
        if creds is None:
            raise CredentialsUnavailable(
                f"the {self.identity}'s key files ({self.files.key_variable}, "
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
        if _signature(self.files) == self._signature:
            self._pending = None
            self._report(None)
            return
        signature, creds = read_key_files(self.files)
        self._report(None)
        if self._current is not None and creds == self._current:
            self._signature = signature  # touched, same pair
            return
        if self._current is not None and (
            self._pending is None or self._pending != (signature, creds)
        ):
            # Changed since the last check: adopt it once it is seen unchanged next time,
            # so a file still being written is never taken up half-done.
            self._pending = (signature, creds)
            return
        previous = self._current
        self._current, self._signature, self._pending = creds, signature, None
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


StsClientFactory = Callable[[], Any]


def default_sts_client(region: str) -> StsClientFactory:
    """A factory of boto3 STS clients using the default credential chain (IRSA, Pod
    Identity, instance role, AWS_* variables) and the regional STS endpoint (botocore's
    default; AWS_ENDPOINT_URL_STS overrides it)."""

    def make() -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "sts",
            region_name=region,
            config=Config(
                connect_timeout=3,
                read_timeout=5,
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )

    return make


def _sts_problem(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        code = response.get("Error", {}).get("Code")
        if code:
            return f"STS answered {code}"
    return f"STS call failed ({type(error).__name__})"


class RoleCredentials:
    """Temporary credentials from STS AssumeRole, renewed ahead of expiry."""

    def __init__(
        self,
        role: AssumedRole,
        *,
        identity: str,
        sts: StsClientFactory,
        refresh_before: timedelta,
        clock: Clock = utc_now,
        min_retry: timedelta = timedelta(seconds=5),
        max_retry: timedelta = timedelta(seconds=60),
    ) -> None:
        duration = timedelta(seconds=role.duration_seconds)
        if not timedelta(0) <= refresh_before < duration:
            raise ValueError("refresh_before must be shorter than the role session")
        self.role = role
        self.identity = identity
        self.session_name = f"avatar-signer-{identity}"
        self._duration = duration
        self._sts_factory = sts
        self._sts: Any = None
        self._refresh_before = refresh_before
        self._clock = clock
        self._min_retry = min_retry
        self._max_retry = max_retry
        self._retry = min_retry
        self._not_before: datetime | None = None
        self._current: Credentials | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()

    def current(self) -> Credentials | None:
        return self._current

    def due(self, now: datetime) -> bool:
        """True when there is no session or the current one is within the refresh margin."""
        creds = self._current
        return (
            creds is None
            or creds.expires_at is None
            or (creds.expires_at - self._refresh_before <= now)
        )

    def refresh(self) -> None:
        with self._lock:
            now = self._clock()
            if self.due(now):
                self._assume(now)

    def get(self, valid_until: datetime) -> Credentials:
        creds = self._current
        if _covers(creds, valid_until):
            assert creds is not None
            return creds
        now = self._clock()
        if valid_until > now + self._duration:
            raise CredentialsUnavailable(
                f"the {self.identity}'s role sessions last {self.role.duration_seconds} s, "
                "less than the URL would; ask for a shorter ttl"
            )
        # Never STS on the request path (it would stall every call on this event loop): the
        # watcher renews sessions in the background, `refresh_before` ahead of expiry, and
        # config makes that margin cover every allowed ttl.
        if creds is not None and creds.expires_at is not None and creds.expires_at > now:
            raise CredentialsUnavailable(_uncovered(self.identity, creds, now))
        raise CredentialsUnavailable(
            f"the {self.identity}'s role credentials are unavailable "
            f"({self._problem or 'not yet obtained'}); retry shortly"
        )

    def _assume(self, now: datetime) -> Credentials | None:
        """One AssumeRole call unless one was made too recently. Holds self._lock."""
        if self._not_before is not None and now < self._not_before:
            return self._current
        try:
            if self._sts is None:
                self._sts = self._sts_factory()
            answer = self._sts.assume_role(
                RoleArn=self.role.role_arn,
                RoleSessionName=self.session_name,
                DurationSeconds=self.role.duration_seconds,
            )["Credentials"]
            expires_at = answer["Expiration"]
            if expires_at.tzinfo is None:
                expires_at = expires_at.replace(tzinfo=UTC)
            creds = Credentials(
                access_key_id=answer["AccessKeyId"],
                secret_access_key=answer["SecretAccessKey"],
                session_token=answer["SessionToken"],
                expires_at=expires_at,
            )
        except Exception as error:  # noqa: BLE001 - any failure: keep the old session
            self._sts = None  # a fresh client next time (base credentials may have changed)
            self._not_before = now + self._retry
            self._retry = min(self._retry * 2, self._max_retry)
            problem = _sts_problem(error)
            if problem != self._problem:
                log.warning(
                    "%s role session could not be renewed: %s; retrying",
                    self.identity,
                    problem,
                    extra={"identity": self.identity, "role_arn": self.role.role_arn},
                )
            self._problem = problem
            return self._current
        self._current = creds
        self._problem = None
        self._retry = self._min_retry
        self._not_before = now + self._min_retry
        log.info(
            "%s role session renewed",
            self.identity,
            extra={
                "identity": self.identity,
                "role_arn": self.role.role_arn,
                "expires_at": expires_at.isoformat(),
            },
        )
        return creds


def _covers(creds: Credentials | None, valid_until: datetime) -> bool:
    return creds is not None and (creds.expires_at is None or creds.expires_at >= valid_until)


def source_for(
    setting: CredentialSetting,
    *,
    identity: str,
    region: str,
    max_ttl_seconds: int,
    clock: Clock = utc_now,
    sts: StsClientFactory | None = None,
) -> ManagedSource:
    """The source for one identity's setting (files are read now; a role is assumed later)."""
    if isinstance(setting, Credentials):
        return StaticCredentials(setting, identity)
    if isinstance(setting, KeyFiles):
        return FileCredentials(setting, identity)
    half = setting.duration_seconds // 2
    return RoleCredentials(
        setting,
        identity=identity,
        sts=sts or default_sts_client(region),
        refresh_before=timedelta(seconds=min(max_ttl_seconds + 60, half)),
        clock=clock,
    )


# --- the watcher ----------------------------------------------------------------------------


class CredentialWatcher:
    """Keeps every identity's source fresh and says whether all of them can sign.

    An identity is usable when it holds credentials that outlive a URL of its default ttl.
    """

    def __init__(
        self,
        sources: Mapping[str, ManagedSource],
        needed: Mapping[str, timedelta],
        *,
        clock: Clock = utc_now,
        period: float = CHECK_PERIOD_SECONDS,
    ) -> None:
        self.sources = dict(sources)
        self._needed = dict(needed)
        self._clock = clock
        self.period = period
        self._usable: dict[str, bool] = {}

    def __getitem__(self, identity: str) -> ManagedSource:
        return self.sources[identity]

    def check(self) -> bool:
        """Blocking: refresh every source, then True when every identity is usable."""
        for source in self.sources.values():
            source.refresh()
        now = self._clock()
        for identity, source in self.sources.items():
            creds = source.current()
            needed = self._needed.get(identity, timedelta(0))
            usable = _covers(creds, now + needed)
            if usable != self._usable.get(identity, True):
                if usable:
                    log.info("%s credentials usable again", identity)
                else:
                    log.warning(
                        "%s has no credentials that outlive a %d s URL",
                        identity,
                        needed.total_seconds(),
                        extra={"identity": identity},
                    )
            self._usable[identity] = usable
        return all(self._usable.values())

    async def watch(
        self, on_change: Callable[[bool], Awaitable[None]], last: bool | None = None
    ) -> None:
        """Forever: check (in a thread) every `period` s; await on_change(usable) when it
        differs from the last answer (`last`: what the caller already knows)."""
        while True:
            try:
                usable = await asyncio.to_thread(self.check)
            except Exception:
                log.exception("credential check failed")
                usable = False
            if usable != last:
                await on_change(usable)
                last = usable
            await asyncio.sleep(self.period)
