"""Request messages -> validated values, or every field violation at once.

One function per RPC. Each checks every field and raises a single `InvalidArgument`
listing all bad fields (one violation per field; per index for batches), before any key
is derived or anything is signed. Values that pass are returned as plain dataclasses.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from avatarsigner.v1 import avatar_signer_pb2 as pb
from google.protobuf import duration_pb2

from ..errors import FieldViolation, InvalidArgument
from ..settings import Settings, TtlRule
from ..signing import upload_ids
from ..signing.object_keys import USER_ID_RULE, is_valid_user_id
from ..signing.upload_ids import UploadTicket

MAX_BATCH = 1000


@dataclass(frozen=True)
class Limits:
    """The request limits the validation applies, taken from Settings."""

    allowed_content_types: tuple[str, ...]
    max_upload_bytes: int
    upload_ttl: TtlRule
    download_ttl: TtlRule
    max_batch: int = MAX_BATCH
    # Viewer cookies' lifetimes; None without CloudFront (the RPC is refused before this).
    cookie_ttl: TtlRule | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            allowed_content_types=settings.allowed_content_types,
            max_upload_bytes=settings.max_upload_bytes,
            upload_ttl=settings.upload_ttl,
            download_ttl=settings.download_ttl,
            cookie_ttl=settings.cloudfront.cookie_ttl if settings.cloudfront else None,
        )


@dataclass(frozen=True)
class Upload:
    user_id: str
    content_type: str
    content_length: int
    checksum_sha256: str | None
    ttl_seconds: int


@dataclass(frozen=True)
class Confirm:
    user_id: str
    ticket: UploadTicket


@dataclass(frozen=True)
class Download:
    user_ids: tuple[str, ...]
    ttl_seconds: int


class _Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def _user_id(violations: _Violations, field: str, user_id: str) -> None:
    if not is_valid_user_id(user_id):
        violations.add(field, f"must match {USER_ID_RULE}")


def _ttl(violations: _Violations, has_ttl: bool, ttl: duration_pb2.Duration, rule: TtlRule) -> int:
    if not has_ttl:
        return rule.default
    if ttl.nanos != 0:
        violations.add("ttl", "must be a whole number of seconds")
    elif not 1 <= ttl.seconds <= rule.maximum:
        violations.add("ttl", f"must be between 1s and {rule.maximum}s")
    return int(ttl.seconds)


def _checksum(violations: _Violations, value: str) -> str | None:
    if value == "":
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32 or base64.b64encode(raw).decode("ascii") != value:
        violations.add("checksum_sha256", "must be the base64 of a 32-byte SHA-256 digest")
        return None
    return value


def upload(request: pb.CreateUploadUrlRequest, limits: Limits) -> Upload:
    v = _Violations()
    _user_id(v, "user_id", request.user_id)
    if request.content_type not in limits.allowed_content_types:
        v.add("content_type", "must be one of " + ", ".join(limits.allowed_content_types))
    if not 1 <= request.content_length <= limits.max_upload_bytes:
        v.add("content_length", f"must be between 1 and {limits.max_upload_bytes} bytes")
    checksum = _checksum(v, request.checksum_sha256)
    ttl = _ttl(v, request.HasField("ttl"), request.ttl, limits.upload_ttl)
    v.raise_any()
    return Upload(request.user_id, request.content_type, request.content_length, checksum, ttl)


def download(request: pb.CreateDownloadUrlRequest, limits: Limits) -> Download:
    v = _Violations()
    _user_id(v, "user_id", request.user_id)
    ttl = _ttl(v, request.HasField("ttl"), request.ttl, limits.download_ttl)
    v.raise_any()
    return Download((request.user_id,), ttl)


def batch_download(request: pb.BatchCreateDownloadUrlsRequest, limits: Limits) -> Download:
    v = _Violations()
    count = len(request.user_ids)
    if not 1 <= count <= limits.max_batch:
        v.add("user_ids", f"must hold 1 to {limits.max_batch} user ids, got {count}")
    else:
        for index, user_id in enumerate(request.user_ids):
            _user_id(v, f"user_ids[{index}]", user_id)
    ttl = _ttl(v, request.HasField("ttl"), request.ttl, limits.download_ttl)
    v.raise_any()
    return Download(tuple(request.user_ids), ttl)


def confirm(request: pb.ConfirmUploadRequest) -> Confirm:
    v = _Violations()
    _user_id(v, "user_id", request.user_id)
    ticket = upload_ids.parse(request.upload_id)
    if ticket is None:
        v.add("upload_id", f"must be {upload_ids.RULE}")
    v.raise_any()
    assert ticket is not None
    return Confirm(request.user_id, ticket)


def delete(request: pb.DeleteAvatarRequest) -> str:
    """The validated user id."""
    v = _Violations()
    _user_id(v, "user_id", request.user_id)
    v.raise_any()
    return request.user_id


def viewer_cookies(request: pb.CreateViewerCookiesRequest, rule: TtlRule) -> int:
    """The cookies' ttl in seconds (the rule's default when absent)."""
    v = _Violations()
    ttl = _ttl(v, request.HasField("ttl"), request.ttl, rule)
    v.raise_any()
    return ttl
