"""Where the shared rate-limit buckets live: RATE_LIMIT_REDIS_* (a Redis or Valkey server).

    RATE_LIMIT_REDIS_URL              redis://host:port/db or rediss:// (TLS); unset: every
                                      process keeps its own buckets, as without a store
    RATE_LIMIT_REDIS_FAILURE          open (default) | closed: what a check does while the
                                      store does not answer (see below)
    RATE_LIMIT_REDIS_TIMEOUT_SECONDS  how long a check waits for the store (default 0.25)
    RATE_LIMIT_REDIS_PASSWORD_FILE    a file holding the password (a mounted Secret), for a
                                      URL without one
    RATE_LIMIT_REDIS_CA_FILE          the CA that signed the store's certificate (rediss://
                                      only; default: the system's CAs)

Open is the default because the limits bound abuse (how fast one caller or one user gets
URLs); they are not what makes a URL safe (IAM, the signature, the short expiry are). With
the store down, open mode falls back to the per-process buckets (N processes admit up to N
times each limit) for as long as the outage lasts; closed mode refuses every limited
call (UNAVAILABLE), which makes the store a hard dependency of uploads. Closed is right when
a leaked caller token must never get more than the configured rate, e.g. a caller outside
your trust boundary, and the store is run with the same availability as the service.

Neither the URL's password nor the password file's content is ever echoed; `StoreAddress`'s
str() is the address without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from .env import Env, SettingsError

FailureMode = Literal["open", "closed"]
FAILURE_MODES: tuple[FailureMode, ...] = ("open", "closed")
DEFAULT_FAILURE: FailureMode = "open"
DEFAULT_TIMEOUT_SECONDS = 0.25
MAX_TIMEOUT_SECONDS = 10.0
MAX_PASSWORD_BYTES = 4096


@dataclass(frozen=True)
class StoreAddress:
    """A `redis://` or `rediss://` URL, checked; `str()` is it without user or password."""

    url: str = field(repr=False)
    tls: bool
    host: str
    port: int
    db: int
    has_password: bool = False

    @classmethod
    def parse(cls, url: str) -> StoreAddress:
        """The address, or ValueError saying what is wrong (never echoing the URL)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("must be a redis:// or rediss:// URL")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError("has a port that is not a number from 1 to 65535") from None
        if not parts.hostname:
            raise ValueError("must name a host, as in redis://valkey:6379/0")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment (timeouts are settings)")
        path = unquote(parts.path).strip("/")
        if path and not (path.isdigit() and int(path) < 16_384):
            raise ValueError("may only have a database number as its path, as in /0")
        return cls(
            url,
            parts.scheme == "rediss",
            parts.hostname,
            port,
            int(path or 0),
            bool(parts.password),
        )

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


@dataclass(frozen=True)
class RateLimitStoreSettings:
    """The store shared by every process and replica for the rate limits."""

    address: StoreAddress
    failure: FailureMode = DEFAULT_FAILURE
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None

    @property
    def url(self) -> str:
        return self.address.url


def _failure(env: Env) -> FailureMode:
    value = (env.raw("RATE_LIMIT_REDIS_FAILURE") or DEFAULT_FAILURE).lower()
    for mode in FAILURE_MODES:
        if value == mode:
            return mode
    raise SettingsError(
        "RATE_LIMIT_REDIS_FAILURE", f"must be one of {', '.join(FAILURE_MODES)}"
    )


def _password(env: Env, address: StoreAddress) -> str | None:
    name = "RATE_LIMIT_REDIS_PASSWORD_FILE"
    path = env.file(name)
    if path is None:
        return None
    if address.has_password:
        raise SettingsError(name, "is set but RATE_LIMIT_REDIS_URL has a password too")
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_PASSWORD_BYTES + 1)
    except OSError:
        raise SettingsError(name, f"{path} cannot be read") from None
    try:
        password = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SettingsError(name, f"{path} is not UTF-8 text") from None
    if not password or len(raw) > MAX_PASSWORD_BYTES or "\n" in password:
        raise SettingsError(name, f"{path} must hold one password on one line")
    return password


def rate_limit_store(env: Env) -> RateLimitStoreSettings | None:
    """The store's settings, or None when RATE_LIMIT_REDIS_URL is unset (per-process limits)."""
    url = env.raw("RATE_LIMIT_REDIS_URL")
    if url is None:
        for name in (
            "RATE_LIMIT_REDIS_FAILURE",
            "RATE_LIMIT_REDIS_TIMEOUT_SECONDS",
            "RATE_LIMIT_REDIS_PASSWORD_FILE",
            "RATE_LIMIT_REDIS_CA_FILE",
        ):
            if env.raw(name) is not None:
                raise SettingsError(name, "is set but RATE_LIMIT_REDIS_URL is not")
        return None
    try:
        address = StoreAddress.parse(url)
    except ValueError as error:
        raise SettingsError("RATE_LIMIT_REDIS_URL", str(error)) from None
    ca_file = env.file("RATE_LIMIT_REDIS_CA_FILE")
    if ca_file is not None and not address.tls:
        raise SettingsError(
            "RATE_LIMIT_REDIS_CA_FILE", "needs a rediss:// RATE_LIMIT_REDIS_URL (TLS)"
        )
    return RateLimitStoreSettings(
        address=address,
        failure=_failure(env),
        timeout_seconds=env.number(
            "RATE_LIMIT_REDIS_TIMEOUT_SECONDS",
            DEFAULT_TIMEOUT_SECONDS,
            0.001,
            MAX_TIMEOUT_SECONDS,
        ),
        password=_password(env, address),
        ca_file=ca_file,
    )
