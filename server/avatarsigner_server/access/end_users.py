"""End-user binding for uploads: the end user's token (a JWT) must name the user.

On when END_USER_JWT_SECRET or END_USER_JWT_SECRET_FILE (HS256) or END_USER_JWT_JWKS_FILE
(RS256 / ES256 public keys) is set; the two files are re-read on reload (key rotation).
The caller forwards the end user's token in the `x-end-user-token` metadata; for
CreateUploadUrl it must verify (signature, issuer, audience, exp and nbf with a small
leeway; exp, iss, aud and sub required) and its `sub` must equal the request's user_id.
So even a compromised caller cannot get an upload URL for a user without that user's token.

Algorithms are pinned by the key, never taken from the token: an HS256 secret verifies only
HS256, an RSA key only RS256, a P-256 key only ES256. So `alg: none` and algorithm
confusion (an HS256 token "signed" with a public key) are refused.

    missing, malformed, expired, not yet valid, wrong issuer or audience, bad signature,
    unknown key, algorithm not allowed          -> UNAUTHENTICATED
    a valid token for another user (sub != user_id) -> PERMISSION_DENIED

Messages and reasons are fixed words: never the token or PyJWT's own message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from avatarsigner.contract import END_USER_TOKEN_METADATA as TOKEN_METADATA

from ..errors import PermissionDenied, Unauthenticated
from ..settings import SettingsError
from ..settings.access import EndUserSettings
from ..settings.file_modes import require_not_writable_by_others
from ..telemetry.call_context import Call

MAX_TOKEN_BYTES = 8192
JWKS_SETTING = "END_USER_JWT_JWKS_FILE"
SECRET_FILE_SETTING = "END_USER_JWT_SECRET_FILE"  # noqa: S105 - a variable's name
MIN_SECRET_BYTES = 32

log = logging.getLogger("avatarsigner.enduser")

# Most specific first: several of these subclass others (InvalidSignatureError is a
# DecodeError, ExpiredSignatureError an InvalidTokenError...).
_REFUSALS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "end_user_token_expired"),
    (jwt.ImmatureSignatureError, "not yet valid", "end_user_token_not_yet_valid"),
    (jwt.InvalidIssuerError, "wrong issuer", "end_user_token_wrong_issuer"),
    (jwt.InvalidAudienceError, "wrong audience", "end_user_token_wrong_audience"),
    (jwt.InvalidSignatureError, "bad signature", "end_user_token_bad_signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed", "end_user_token_algorithm"),
    (jwt.MissingRequiredClaimError, "missing a required claim", "end_user_token_missing_claim"),
    (jwt.InvalidKeyError, "algorithm not allowed", "end_user_token_algorithm"),
    (jwt.DecodeError, "malformed", "end_user_token_malformed"),
    (jwt.InvalidTokenError, "invalid", "end_user_token_invalid"),
)


@dataclass(frozen=True)
class _VerificationKey:
    """One verification key and the one algorithm it may verify."""

    key: Any
    algorithm: str


def _refused(what: str, reason: str) -> Unauthenticated:
    return Unauthenticated(f"end-user token ({TOKEN_METADATA}): {what}", reason)


def _jwk(entry: object, number: int) -> tuple[str | None, _VerificationKey]:
    if not isinstance(entry, dict):
        raise ValueError(f"key {number} is not a JSON object")
    kty, crv, alg = entry.get("kty"), entry.get("crv"), entry.get("alg")
    if kty == "RSA":
        algorithm = "RS256"
    elif kty == "EC" and crv == "P-256":
        algorithm = "ES256"
    else:
        raise ValueError(f"key {number}: only RSA (RS256) and EC P-256 (ES256) keys are allowed")
    if alg is not None and alg != algorithm:
        raise ValueError(f"key {number}: alg {alg!r} does not fit a {kty} key (use {algorithm})")
    if entry.get("use", "sig") != "sig":
        raise ValueError(f"key {number}: use must be 'sig'")
    if "d" in entry:
        raise ValueError(f"key {number} holds private key material: publish public keys only")
    try:
        key = jwt.PyJWK(entry, algorithm).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
        raise ValueError(f"key {number} is not a valid {algorithm} public key") from None
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError(f"key {number}: kid must be a string")
    return kid, _VerificationKey(key, algorithm)


def load_jwks(path: str) -> Mapping[str | None, _VerificationKey]:
    """kid -> key from a JWKS file (a single key may have no kid); SettingsError otherwise."""
    require_not_writable_by_others(JWKS_SETTING, path)
    try:
        with open(path, "rb") as file:
            document = json.load(file)
    except OSError as error:
        raise SettingsError(JWKS_SETTING, f"cannot read {path}: {error.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise SettingsError(JWKS_SETTING, f"{path} is not JSON") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise SettingsError(JWKS_SETTING, f'{path} must be {{"keys": [...]}} with at least one key')
    by_kid: dict[str | None, _VerificationKey] = {}
    for number, entry in enumerate(keys, start=1):
        try:
            kid, key = _jwk(entry, number)
        except ValueError as error:
            raise SettingsError(JWKS_SETTING, f"{path}: {error}") from None
        if kid is None and len(keys) > 1:
            raise SettingsError(JWKS_SETTING, f"{path}: key {number} needs a kid (several keys)")
        if kid in by_kid:
            raise SettingsError(JWKS_SETTING, f"{path}: key {number} repeats kid {kid!r}")
        by_kid[kid] = key
    return by_kid


def load_hs256_secret(path: str) -> bytes:
    """The HS256 secret in a file (one trailing newline ignored); SettingsError otherwise."""
    require_not_writable_by_others(SECRET_FILE_SETTING, path)
    try:
        with open(path, "rb") as file:
            secret = file.read()
    except OSError as error:
        raise SettingsError(SECRET_FILE_SETTING, f"cannot read {path}: {error.strerror}") from None
    secret = secret.removesuffix(b"\n").removesuffix(b"\r")
    if len(secret) < MIN_SECRET_BYTES:
        raise SettingsError(
            SECRET_FILE_SETTING,
            f"{path} must hold at least {MIN_SECRET_BYTES} bytes (an HS256 key)",
        )
    return secret


class EndUserVerifier:
    """Verifies end-user tokens and binds uploads to their subject."""

    def __init__(self, settings: EndUserSettings) -> None:
        self._settings = settings
        self._keys: Mapping[str | None, _VerificationKey] = {}
        if settings.hs256_secret is not None:
            self._keys = {None: _VerificationKey(settings.hs256_secret.encode("utf-8"), "HS256")}
        else:
            self._keys = self._read_keys()
        self.mode = "jwks" if settings.jwks_file else "hs256"

    @property
    def path(self) -> str | None:
        """The file the keys come from (JWKS or HS256 secret), or None."""
        return self._settings.jwks_file or self._settings.hs256_secret_file

    def _read_keys(self) -> Mapping[str | None, _VerificationKey]:
        if self._settings.jwks_file is not None:
            return load_jwks(self._settings.jwks_file)
        assert self._settings.hs256_secret_file is not None
        return {
            None: _VerificationKey(load_hs256_secret(self._settings.hs256_secret_file), "HS256")
        }

    def reload(self) -> bool:
        """Re-read the key file (rotation); on any problem keep the current keys."""
        if self.path is None:
            return False
        try:
            self._keys = self._read_keys()
        except SettingsError as error:
            log.error(
                "end-user key file not reloaded; the previous keys stay in force",
                extra={"problem": str(error)},
            )
            return False
        log.info("end-user key file reloaded", extra={"kids": [k for k in self._keys if k]})
        return True

    def _key_for(self, token: str) -> _VerificationKey:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:  # DecodeError, and InvalidTokenError for a bad kid or crit
            raise _refused("malformed", "end_user_token_malformed") from None
        if isinstance(kid, str) and kid in self._keys:
            return self._keys[kid]
        if None in self._keys:  # the HS256 secret, or a JWKS of one key without a kid
            return self._keys[None]
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise _refused("signed with an unknown key", "end_user_token_unknown_key")

    def subject(self, token: str | None) -> str:
        """The verified token's `sub`, or Unauthenticated saying (in fixed words) why not."""
        if token is None or token == "":
            raise _refused("missing", "end_user_token_missing")
        if len(token) > MAX_TOKEN_BYTES:
            raise _refused("malformed", "end_user_token_malformed")
        key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                issuer=self._settings.issuer,
                audience=self._settings.audience,
                leeway=self._settings.leeway_seconds,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as error:
            for kind, what, reason in _REFUSALS:
                if isinstance(error, kind):
                    raise _refused(what, reason) from None
            raise _refused("invalid", "end_user_token_invalid") from None
        subject = claims.get("sub")
        if not isinstance(subject, str):
            raise _refused("sub must be a string", "end_user_token_invalid")
        return subject

    def admit_deletion(self, call: Call, user_id: str) -> None:
        """As admit_upload, unless the caller runs account deletion (callers file)."""
        if not call.account_deletion:
            self.admit_upload(call, user_id)

    def admit_upload(self, call: Call, user_id: str) -> None:
        """Unauthenticated / PermissionDenied unless the call's end-user token is user_id's."""
        if self.subject(call.metadata.get(TOKEN_METADATA)) != user_id:
            raise PermissionDenied(
                "end-user token is for another user: it must have sub == user_id",
                "end_user_mismatch",
            )
