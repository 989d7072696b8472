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
each reads the version in force when it started. `reload_if_changed()` does the same when
any of those files changed (the server checks every few seconds), so a renewed certificate
or an edited ConfigMap takes effect without anyone sending SIGHUP.
"""

from __future__ import annotations

import logging
import math
import os
import threading

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
        self._watched = [
            path
            for path in (
                auth.callers_file,
                auth.end_user.jwks_file if auth.end_user else None,
                *(
                    (auth.tls.cert_file, auth.tls.key_file, auth.tls.client_ca_file)
                    if auth.tls
                    else ()
                ),
            )
            if path is not None
        ]
        # Before the files are read: a change while they are being read is seen next time.
        self._seen = self._file_states()
        # SIGHUP and the change check may both reload: one at a time, so the newest wins.
        self._reloading = threading.Lock()
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

    def reload(self, why: str = "SIGHUP") -> None:
        """SIGHUP: re-read the callers, JWKS and TLS files (each keeps its old one if bad)."""
        with self._reloading:
            log.info("reloading on %s", why)
            self._seen = self._file_states()  # before reading: a later change is seen later
            for reloadable in (self.callers, self.end_user, self.tls):
                if reloadable is not None:
                    reloadable.reload()

    def reload_if_changed(self) -> bool:
        """Reload when any of those files changed since the last (re)load; True if it did."""
        if self._file_states() == self._seen:
            return False
        self.reload("a changed file")
        return True

    def _file_states(self) -> tuple[tuple[str, int, int, int] | None, ...]:
        """(path, inode, size, mtime) per file, following symlinks as Kubernetes swaps them."""
        states: list[tuple[str, int, int, int] | None] = []
        for path in self._watched:
            try:
                stat = os.stat(path)
            except OSError:
                states.append(None)
                continue
            states.append((path, stat.st_ino, stat.st_size, stat.st_mtime_ns))
        return tuple(states)

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
        else:
            by_token = [c.name for c in self.callers.table.callers if c.token_sha256]
            if self.tls is None and by_token:
                warnings.append(
                    "no TLS (TLS_CERT_FILE, TLS_KEY_FILE not set): bearer tokens travel in "
                    "cleartext; anyone on the path can replay those of callers "
                    f"{', '.join(by_token)} (local development only)"
                )
            by_certificate = [c.name for c in self.callers.table.callers if c.tls_identity]
            if by_certificate and (self.tls is None or not self.tls.mutual):
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
