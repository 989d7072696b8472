"""The callers file (CALLERS_FILE, TOML): which services may call, how each proves who it
is, and which RPCs each may call.

    [[caller]]
    name = "profile-service"
    token_sha256 = "9f86d0..."   # hex SHA-256 of its bearer token; never the token itself
    tls_identity = "spiffe://cluster.local/ns/app/sa/profile"   # optional: URI or DNS SAN
    allow = ["CreateUploadUrl", "CreateDownloadUrl"]
    account_deletion = false     # optional: true lets it DeleteAvatar without end-user tokens

A `tls_identity` is typed by its form: with a scheme (`spiffe://...`, `https://...`) it is
a URI and matches only a certificate's URI SANs; otherwise it must be a DNS name and
matches only DNS SANs (case-insensitively). So a DNS SAN that merely spells a caller's URI
proves nothing. A certificate whose SANs match two callers identifies neither.

Every caller has a unique name, and at least one of `token_sha256` / `tls_identity`, each
unique across the file. `allow` names RPCs of avatarsigner.v1.AvatarSigner. Anything else
(an unknown key, a typo in an RPC name, a token pasted where its hash belongs) is a
`SettingsError` naming CALLERS_FILE, the caller and the problem, in one line, without
echoing a token or a hash. `CallersFile` holds the current table and swaps it atomically on
`reload()` (SIGHUP); a file that fails to load on reload leaves the old table in force.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from avatarsigner.contract import RPC_NAMES, SERVICE_NAME

from ..settings import SettingsError
from ..settings.file_modes import require_not_writable_by_others

SETTING = "CALLERS_FILE"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s\x00-\x1f\x7f]{1,500}")
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
URI, DNS = "uri", "dns"
# A certificate identity: (URI or DNS, the SAN's value; a DNS name lowercase).
TlsIdentity = tuple[str, str]
_KEYS = ("name", "token_sha256", "tls_identity", "allow", "account_deletion")

log = logging.getLogger("avatarsigner.callers")


def tls_identity_of(value: str) -> TlsIdentity | None:
    """The typed identity a callers file's `tls_identity` names, or None if it is neither."""
    if "://" in value or (":" in value and _URI.fullmatch(value)):
        return (URI, value) if _URI.fullmatch(value) else None
    return (DNS, value.lower()) if _DNS_NAME.fullmatch(value) else None


def token_sha256(token: str) -> str:
    """The hex SHA-256 of a bearer token: what the callers file stores instead of it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Caller:
    """One calling service and the RPCs it may call."""

    name: str
    allow: frozenset[str]
    token_sha256: str | None = field(default=None, repr=False)
    tls_identity: str | None = None
    # Runs account deletion: may call DeleteAvatar for any user without the end user's
    # token (where end-user tokens are on). Needs DeleteAvatar in `allow` as well.
    account_deletion: bool = False

    @property
    def certificate_identity(self) -> TlsIdentity | None:
        return None if self.tls_identity is None else tls_identity_of(self.tls_identity)


@dataclass(frozen=True)
class CallerTable:
    """The callers of one version of the file, indexed by token hash and by TLS identity."""

    callers: tuple[Caller, ...]
    by_token_sha256: Mapping[str, Caller] = field(repr=False)
    by_tls_identity: Mapping[TlsIdentity, Caller] = field(repr=False)

    @classmethod
    def of(cls, callers: Iterable[Caller]) -> CallerTable:
        listed = tuple(callers)
        by_identity = {}
        for each in listed:
            identity = each.certificate_identity
            if identity is not None:
                by_identity[identity] = each
        return cls(listed, {c.token_sha256: c for c in listed if c.token_sha256}, by_identity)

    def by_token(self, token: str) -> Caller | None:
        return self.by_token_sha256.get(token_sha256(token))

    def by_certificate(self, identities: Iterable[TlsIdentity]) -> tuple[Caller, ...]:
        """Every caller one of the certificate's typed SANs names, each once, in file order.
        More than one means the certificate is ambiguous: it must identify nobody."""
        found = {
            self.by_tls_identity.get((kind, value.lower() if kind == DNS else value))
            for kind, value in identities
        }
        return tuple(c for c in self.callers if c in found)


class _Problem(Exception):
    """A problem in one [[caller]] table; turned into one SettingsError line."""


def _caller(entry: object) -> Caller:
    if not isinstance(entry, dict):
        raise _Problem("must be a table")
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise _Problem(f"unknown key {unknown[0]!r} (expected {', '.join(_KEYS)})")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _Problem("name must be 1-64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    digest = entry.get("token_sha256")
    if digest is not None and (not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest)):
        raise _Problem(
            "token_sha256 must be 64 hex digits: the SHA-256 of the token, never the token"
        )
    identity = entry.get("tls_identity")
    if identity is not None and (not isinstance(identity, str) or not tls_identity_of(identity)):
        raise _Problem(
            "tls_identity must be a URI with a scheme (matched against URI SANs) or a DNS "
            "name (matched against DNS SANs)"
        )
    if digest is None and identity is None:
        raise _Problem("needs token_sha256 or tls_identity (or both)")
    allow = entry.get("allow")
    if not isinstance(allow, list) or not allow or not all(isinstance(a, str) for a in allow):
        raise _Problem("allow must be a non-empty list of RPC names")
    for rpc in allow:
        if rpc not in RPC_NAMES:
            raise _Problem(
                f"allow: {rpc!r} is not an RPC of {SERVICE_NAME} "
                f"(one of {', '.join(sorted(RPC_NAMES))})"
            )
    account_deletion = entry.get("account_deletion", False)
    if not isinstance(account_deletion, bool):
        raise _Problem("account_deletion must be true or false")
    if account_deletion and "DeleteAvatar" not in allow:
        raise _Problem("account_deletion needs DeleteAvatar in allow")
    return Caller(
        name=name,
        account_deletion=account_deletion,
        allow=frozenset(allow),
        token_sha256=digest.lower() if digest else None,
        tls_identity=identity,
    )


def parse(document: Mapping[str, object]) -> CallerTable:
    """A CallerTable from a parsed TOML document, or ValueError with a one-line message."""
    unknown = sorted(set(document) - {"caller"})
    if unknown:
        raise ValueError(f"unknown top-level key {unknown[0]!r} (expected [[caller]] tables)")
    entries = document.get("caller")
    if not isinstance(entries, list) or not entries:
        raise ValueError("defines no [[caller]] tables")
    callers: list[Caller] = []
    seen: dict[str, set[object]] = {"name": set(), "token_sha256": set(), "tls_identity": set()}
    for number, entry in enumerate(entries, start=1):
        label = f"caller {number}"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label += f" ({entry['name'][:64]!r})"
        try:
            caller = _caller(entry)
        except _Problem as problem:
            raise ValueError(f"{label}: {problem}") from None
        for key, value in (
            ("name", caller.name),
            ("token_sha256", caller.token_sha256),
            ("tls_identity", caller.certificate_identity),
        ):
            if value is None:
                continue
            if value in seen[key]:
                raise ValueError(f"{label}: {key} is the same as an earlier caller's")
            seen[key].add(value)
        callers.append(caller)
    return CallerTable.of(callers)


def load(path: str) -> CallerTable:
    """Read and check the callers file; SettingsError (one line naming CALLERS_FILE)."""
    require_not_writable_by_others(SETTING, path)
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise SettingsError(SETTING, f"cannot read {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        # tomllib's message names the line and column, never the text there.
        raise SettingsError(SETTING, f"{path} is not valid TOML: {error}") from None
    try:
        return parse(document)
    except ValueError as error:
        raise SettingsError(SETTING, f"{path}: {error}") from None


class CallersFile:
    """The callers file in force; `reload()` swaps in a new version only when it is valid."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.table = load(path)

    def reload(self) -> bool:
        """Re-read the file; on any problem keep the current table and log it. True if swapped."""
        try:
            table = load(self.path)
        except SettingsError as error:
            log.error(
                "callers file not reloaded; the previous version stays in force",
                extra={"problem": str(error)},
            )
            return False
        self.table = table
        log.info("callers file reloaded", extra={"callers": [c.name for c in table.callers]})
        return True
