"""Everything between a caller and the servicer, built (and checked) from AccessSettings.

    tls           server credentials (TLS, or mutual TLS with a client CA), or plaintext
    callers       the callers file (CALLERS_FILE), or None: every caller allowed
    end_users     the end-user token verifier for uploads, or None (off)
    limiter       token buckets per caller and per user: in this process, or in the shared
                  store when one is given (RATE_LIMIT_REDIS_URL)
    guard         the interceptor that authenticates, authorizes and rate-limits each call
    upload_gates  what the servicer runs before signing an upload URL
    delete_gates  what the servicer runs before deleting an avatar
                  (each gate a child span, `upload_check.*` or `delete_check.*`, when
                  tracing is on)
    reloader      re-reads the callers, JWKS and TLS files on SIGHUP or when they change

The audit log, the metrics, the shared store and the tracing are the server's, passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from ..api.servicer import UserGate
from ..settings.access import AccessSettings
from ..telemetry.audit import Audit
from ..telemetry.call_context import Call
from ..telemetry.metrics import Metrics
from ..telemetry.tracing import Tracing
from .callers import CallersFile
from .end_users import EndUserVerifier
from .guard import CallGuard
from .rate_limits import Admission, Limiter, RateLimiter
from .reloading import FileReloader

if TYPE_CHECKING:  # imported only with a store: the Redis client costs ~20 MB per process
    from .shared_rate_limits import SharedStore
from .tls import ServerTls


class AccessControl:
    """Who may call which RPC, how fast, and over what transport (see module docstring)."""

    def __init__(
        self,
        settings: AccessSettings,
        audit: Audit,
        metrics: Metrics | None = None,
        *,
        store: SharedStore | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        tracing = tracing or Tracing.off()
        watched = [
            path
            for path in (
                settings.callers_file,
                settings.end_user.jwks_file if settings.end_user else None,
                settings.end_user.hs256_secret_file if settings.end_user else None,
                *(
                    (settings.tls.cert_file, settings.tls.key_file, settings.tls.client_ca_file)
                    if settings.tls
                    else ()
                ),
            )
            if path is not None
        ]
        # Before the files are read: a change while they are being read is seen next time.
        self.reloader = FileReloader(watched)
        self.tls = ServerTls(settings.tls) if settings.tls else None
        self.callers = CallersFile(settings.callers_file) if settings.callers_file else None
        self.end_users = EndUserVerifier(settings.end_user) if settings.end_user else None
        self.reloader.track("callers", self.callers, [settings.callers_file])
        self.reloader.track(
            "end_user_keys",
            self.end_users if self.end_users and self.end_users.path else None,
            [settings.end_user.jwks_file if settings.end_user else None],
        )
        self.reloader.track(
            "tls",
            self.tls,
            [settings.tls.cert_file, settings.tls.client_ca_file] if settings.tls else [],
        )
        if metrics is not None:
            metrics.watch_files(self.reloader.status)
        self.store = store
        self.limiter: Limiter = RateLimiter(settings.rate_limits)
        if store is not None:
            from .shared_rate_limits import SharedRateLimiter

            self.limiter = SharedRateLimiter(settings.rate_limits, store)
        self.guard = CallGuard(self.callers, self.limiter, audit, metrics, tracing)
        gates: list[UserGate] = []
        if self.end_users is not None:
            # First: a call without the user's token must not use up the user's bucket.
            gates.append(_step(tracing, "upload_check.end_user_token", self.end_users.admit_upload))
        gates.append(_step(tracing, "upload_check.rate_limit_user", self.limiter.admit_upload_user))
        self.upload_gates: tuple[UserGate, ...] = tuple(gates)
        # The same for deletions (the user's bucket is the same one: an avatar change is
        # one), but a caller that runs account deletion needs no end-user token and does
        # not take from the user's bucket, which the user can empty at will: only its own
        # per-caller limit bounds it.
        deletion: list[UserGate] = []
        if self.end_users is not None:
            deletion.append(
                _step(tracing, "delete_check.end_user_token", self.end_users.admit_deletion)
            )
        deletion.append(
            _step(tracing, "delete_check.rate_limit_user", _users_own(self.limiter))
        )
        self.delete_gates: tuple[UserGate, ...] = tuple(deletion)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials for the port, or None for plaintext."""
        return None if self.tls is None else self.tls.credentials()

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
            "end_user_tokens": "off" if self.end_users is None else self.end_users.mode,
            "rate_limits": "per process"
            if self.store is None
            else f"shared: {self.store.address} (failure {self.store.failure})",
        }


def _users_own(limiter: Limiter) -> UserGate:
    """The per-user limit for deletions: none for a caller that runs account deletion."""

    def gate(call: Call, user_id: str) -> Admission:
        if call.account_deletion:
            return None
        return limiter.admit_upload_user(call, user_id)

    return gate


def _step(tracing: Tracing, name: str, gate: UserGate) -> UserGate:
    """The gate inside a child span `name` when tracing is on; the gate itself when off."""
    if not tracing.enabled:
        return gate

    async def traced(call: Call, user_id: str) -> None:
        with tracing.step(name):
            pending = gate(call, user_id)
            if pending is not None:
                await pending

    return traced
