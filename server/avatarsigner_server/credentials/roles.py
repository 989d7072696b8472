"""Temporary credentials from STS AssumeRole, renewed ahead of expiry, never on a request.

The base credentials that call STS are the process's own (IRSA, EKS Pod Identity, an
instance role, AWS_* variables). Sessions are renewed in the background `refresh_before`
ahead of expiry (the identity's maximum ttl plus a minute, at most half the session); a
failed renewal is retried with back-off while the old session keeps signing the URLs it
can still cover. `get()` never calls STS: a URL the current session cannot cover is
FAILED_PRECONDITION, with the ttl that would work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import CredentialsUnavailable
from ..settings.identities import AssumedRole
from ..signing.clock import Clock, utc_now
from ..signing.key_pairs import Credentials, covers

log = logging.getLogger("avatarsigner.credentials")

def _uncovered(identity: str, creds: Credentials, now: datetime) -> str:
    assert creds.expires_at is not None
    left = max(0, int((creds.expires_at - now).total_seconds()))
    return (
        f"the {identity}'s temporary credentials expire before a URL with this ttl would; "
        f"ask for a ttl of at most {left} s, or retry shortly"
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
        if covers(creds, valid_until):
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
