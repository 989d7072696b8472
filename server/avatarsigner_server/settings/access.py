"""Who may call, settings only: TLS files, the callers file, end-user tokens, rate limits.

Only the shape of these settings is checked here; the files they name are read (and their
contents checked, with one-line SettingsErrors) by the `access` package at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .env import Env, SettingsError

MAX_RATE = 1_000_000.0


@dataclass(frozen=True)
class TlsSettings:
    """Server certificate and key (PEM files); with a client CA, mutual TLS is required."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True)
class EndUserSettings:
    """How end-user tokens (JWTs) are verified: an HS256 secret (from the environment or a
    file) or a JWKS file; exactly one of the three."""

    issuer: str
    audience: str
    hs256_secret: str | None = field(default=None, repr=False)
    jwks_file: str | None = None
    # A file holding the HS256 secret (a Kubernetes Secret volume); read by the access layer.
    hs256_secret_file: str | None = None
    leeway_seconds: int = 30


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `rate` tokens per second, holding at most `burst`."""

    rate: float
    burst: int


@dataclass(frozen=True)
class RateLimits:
    """Token buckets per caller and per user; None means no limit of that kind."""

    upload_per_caller: RateLimit | None = RateLimit(100.0, 200)
    upload_per_user: RateLimit | None = RateLimit(0.2, 10)
    download_per_caller: RateLimit | None = None


@dataclass(frozen=True)
class AccessSettings:
    """Who may call (callers file, TLS), end-user binding and rate limits."""

    tls: TlsSettings | None = None
    callers_file: str | None = None
    end_user: EndUserSettings | None = None
    rate_limits: RateLimits = RateLimits()


def _tls(env: Env) -> TlsSettings | None:
    cert = env.file("TLS_CERT_FILE")
    key = env.file("TLS_KEY_FILE")
    client_ca = env.file("TLS_CLIENT_CA_FILE")
    if cert is None and key is None:
        if client_ca is not None:
            raise SettingsError(
                "TLS_CLIENT_CA_FILE", "needs TLS_CERT_FILE and TLS_KEY_FILE (mutual TLS is TLS)"
            )
        return None
    if cert is None:
        raise SettingsError("TLS_CERT_FILE", "must be set together with TLS_KEY_FILE")
    if key is None:
        raise SettingsError("TLS_KEY_FILE", "must be set together with TLS_CERT_FILE")
    return TlsSettings(cert, key, client_ca)


KEY_SOURCES = ("END_USER_JWT_SECRET", "END_USER_JWT_SECRET_FILE", "END_USER_JWT_JWKS_FILE")


def _end_user(env: Env) -> EndUserSettings | None:
    secret = env.raw("END_USER_JWT_SECRET")
    secret_file = env.file("END_USER_JWT_SECRET_FILE")
    jwks_file = env.file("END_USER_JWT_JWKS_FILE")
    issuer = env.raw("END_USER_JWT_ISSUER")
    audience = env.raw("END_USER_JWT_AUDIENCE")
    chosen = [name for name in KEY_SOURCES if env.raw(name) is not None]
    if not chosen:
        for name, value in (("END_USER_JWT_ISSUER", issuer), ("END_USER_JWT_AUDIENCE", audience)):
            if value is not None:
                raise SettingsError(name, f"is set but none of {', '.join(KEY_SOURCES)} is")
        return None
    if len(chosen) > 1:
        raise SettingsError(chosen[-1], f"set one of {', '.join(KEY_SOURCES)}, not several")
    if secret is not None and len(secret.encode()) < 32:
        raise SettingsError("END_USER_JWT_SECRET", "must be at least 32 bytes (an HS256 key)")
    return EndUserSettings(
        issuer=env.required("END_USER_JWT_ISSUER"),
        audience=env.required("END_USER_JWT_AUDIENCE"),
        hs256_secret=secret,
        jwks_file=jwks_file,
        hs256_secret_file=secret_file,
        leeway_seconds=env.integer("END_USER_JWT_LEEWAY_SECONDS", 30, 0, 300),
    )


def _rate_limit(env: Env, what: str, default: RateLimit | None) -> RateLimit | None:
    """<WHAT>_PER_SECOND (0 = no limit) and <WHAT>_BURST, e.g. UPLOADS_PER_CALLER_PER_SECOND."""
    rate_name, burst_name = f"{what}_PER_SECOND", f"{what}_BURST"
    text = env.raw(rate_name)
    rate = default.rate if default else 0.0
    if text is not None:
        try:
            rate = float(text)
        except ValueError:
            raise SettingsError(rate_name, "must be a number of calls per second") from None
        if not 0 <= rate <= MAX_RATE:
            raise SettingsError(rate_name, f"must be between 0 (no limit) and {MAX_RATE:g}")
    burst = env.integer(burst_name, default.burst if default else 1, 1, int(MAX_RATE))
    if rate == 0:
        if env.raw(burst_name) is not None:
            raise SettingsError(burst_name, f"is set but {what}_PER_SECOND is 0 (no limit)")
        return None
    return RateLimit(rate, burst)


def access(env: Env) -> AccessSettings:
    defaults = RateLimits()
    return AccessSettings(
        tls=_tls(env),
        callers_file=env.file("CALLERS_FILE"),
        end_user=_end_user(env),
        rate_limits=RateLimits(
            upload_per_caller=_rate_limit(env, "UPLOADS_PER_CALLER", defaults.upload_per_caller),
            upload_per_user=_rate_limit(env, "UPLOADS_PER_USER", defaults.upload_per_user),
            download_per_caller=_rate_limit(
                env, "DOWNLOADS_PER_CALLER", defaults.download_per_caller
            ),
        ),
    )
