"""Who may call, wired from Settings: the pieces app.py puts around the servicer.

    tls          server credentials (TLS, or mutual TLS with a client CA), or plaintext
    callers      the callers file (CALLERS_FILE), or None: every caller allowed
    end_user     the end-user token verifier for uploads, or None (off)
    limiter      token buckets per caller and per user
    metrics      Prometheus counters and the credential-expiry gauge (METRICS_PORT)
    audit        one line per decision
    interceptor  the CallGuard that authenticates, authorizes and rate-limits each call
    upload_checks  what the servicer runs before signing an upload URL

`reload()` is what SIGHUP does: re-read the callers file, the JWKS file and the TLS files;
each keeps its current version when its new one is bad. Calls in flight are unaffected:
each reads the version in force when it started.
"""

from __future__ import annotations

import logging
import math

import grpc

from .audit import Audit
from .auth import CallGuard
from .callers import CallersFile
from .config import Settings
from .credentials import Clock, CredentialWatcher
from .enduser import EndUserVerifier
from .metrics import CredentialExpiry, Metrics
from .ratelimit import RateLimiter
from .service import UploadCheck
from .tls import ServerTls

log = logging.getLogger("avatarsigner")


def credential_expiry(watcher: CredentialWatcher, clock: Clock) -> CredentialExpiry:
    """Seconds until each identity's current credentials expire (inf: never; 0: none)."""

    def seconds_left() -> dict[str, float]:
        now = clock()
        left: dict[str, float] = {}
        for identity, source in watcher.sources.items():
            creds = source.current()
            if creds is None:
                left[identity] = 0.0
            elif creds.expires_at is None:
                left[identity] = math.inf
            else:
                left[identity] = max(0.0, (creds.expires_at - now).total_seconds())
        return left

    return seconds_left


class CallSecurity:
    """Everything between a caller and the servicer, built (and checked) from Settings."""

    def __init__(self, settings: Settings) -> None:
        auth = settings.auth
        self.tls = ServerTls(auth.tls) if auth.tls else None
        self.callers = CallersFile(auth.callers_file) if auth.callers_file else None
        self.end_user = EndUserVerifier(auth.end_user) if auth.end_user else None
        self.limiter = RateLimiter(auth.rate_limits)
        self.metrics = Metrics()
        self.audit = Audit(self.metrics)
        self.interceptor = CallGuard(self.callers, self.limiter, self.audit, self.metrics)
        checks: list[UploadCheck] = []
        if self.end_user is not None:
            # First: a call without the user's token must not use up the user's bucket.
            checks.append(self.end_user.check_upload)
        checks.append(self.limiter.check_upload_user)
        self.upload_checks: tuple[UploadCheck, ...] = tuple(checks)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials for the port, or None for plaintext."""
        return None if self.tls is None else self.tls.credentials()

    def reload(self) -> None:
        """SIGHUP: re-read the callers, JWKS and TLS files (each keeps its old one if bad)."""
        log.info("reloading on SIGHUP")
        for reloadable in (self.callers, self.end_user, self.tls):
            if reloadable is not None:
                reloadable.reload()

    def startup_warnings(self) -> list[str]:
        """What an operator must hear about at start-up."""
        warnings = []
        if self.callers is None:
            warnings.append(
                "CALLERS_FILE is not set: every caller may call every RPC (local development only)"
            )
            if self.tls is None:
                warnings.append(
                    "no TLS and no CALLERS_FILE: anyone who can reach the port gets URLs "
                    "in plaintext (local development only)"
                )
        elif self.tls is None or not self.tls.mutual:
            by_certificate = [c.name for c in self.callers.table.callers if c.tls_identity]
            if by_certificate:
                warnings.append(
                    "TLS_CLIENT_CA_FILE is not set, so no client certificate is checked: "
                    f"callers {', '.join(by_certificate)} can only authenticate by token"
                )
        return warnings

    def describe(self) -> dict[str, object]:
        """Fields for the start-up log line (no secrets)."""
        return {
            "tls": "off" if self.tls is None else ("mutual" if self.tls.mutual else "on"),
            "callers": "open"
            if self.callers is None
            else [c.name for c in self.callers.table.callers],
            "end_user_tokens": "off" if self.end_user is None else self.end_user.mode,
        }
