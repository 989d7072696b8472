"""Typed clients for ``avatarsigner.v1.AvatarSigner``: results, errors, and the upload PUT.

    with AvatarSignerClient("signer.internal:50051", metadata={"authorization": "Bearer …"}) as c:
        upload = c.create_upload_url("u123", "image/png", len(data), sha256_base64(data))
        upload_bytes(upload, data)
        url = c.create_download_url("u123").url
        cookies = c.create_viewer_cookies()   # with CloudFront: one grant for every avatar

`AvatarSignerClient` (blocking, thread-safe, one channel) and `AsyncAvatarSignerClient`
(grpc.aio; its channel is opened on first use, inside the running event loop) share the
request building and result decoding below, so they differ only in how they wait.

Credentials never travel in plaintext by accident: a client without `channel_credentials`
(TLS) refuses to send a bearer token (`authorization` metadata, an end-user token) unless
its target is this machine (localhost, 127.0.0.0/8, ::1, a unix socket) or it was built
with `allow_plaintext_credentials=True` (a trusted network, a mesh sidecar that encrypts).

Every failed call raises `AvatarSignerError` (the status code, the server's message and,
for INVALID_ARGUMENT, one `FieldViolation` per bad field). `upload_bytes` raises
`UploadError`. Neither ever carries a presigned URL: the URL's query string is a bearer
credential, so it is kept out of every message and every ``repr``.

When the calling process uses OpenTelemetry (`opentelemetry-api` installed; not a
dependency of this package), every call carries the current trace context (`traceparent`),
so the server's span joins the caller's trace.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from types import TracebackType
from typing import Any, NamedTuple, Self

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._propagation import trace_metadata
from .contract import AUTHORIZATION_METADATA, END_USER_TOKEN_METADATA
from .images import detect_content_type, sha256_base64
from .v1 import avatar_signer_pb2 as pb
from .v1 import avatar_signer_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT = 5.0
"""Default deadline of each call, in seconds."""

SERVICE_CONFIG = (resources.files(__package__) / "service_config.json").read_text("utf-8")
"""The gRPC service config both clients use by default (service_config.json beside this
module): every AvatarSigner call is retried on UNAVAILABLE, up to 4 attempts with backoff
from 0.1 s to 1 s, honouring the server's `grpc-retry-pushback-ms`, throttled once many
calls fail. Every RPC is idempotent, so a retry is always safe; UNAVAILABLE is what a
server that is shutting down, or not reachable, answers."""

Ttl = timedelta | float | None
"""How long a URL should stay valid: a timedelta, seconds, or None for the server default."""

Metadata = Mapping[str, str] | Iterable[tuple[str, str]]
"""gRPC metadata sent with every call, e.g. ``{"authorization": "Bearer <token>"}``."""

# google.rpc.Status travels in this trailing-metadata key (the gRPC rich error model).
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


# --- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadUrl:
    """A presigned PUT: send the raw bytes to `url` with exactly `headers`.

    `url` is left out of ``repr``: whoever holds it can perform the upload.
    """

    url: str = field(repr=False)
    method: str
    headers: dict[str, str]
    expires_at: datetime
    """When the URL stops working (timezone-aware, UTC)."""
    key: str
    upload_id: str = ""
    """Verified mode: pass it to ``confirm_upload`` once the bytes are uploaded. Empty in
    direct mode, where the URL writes the avatar itself."""


@dataclass(frozen=True)
class Confirmation:
    """What ConfirmUpload verified and published: now the user's avatar."""

    key: str
    content_type: str
    content_length: int
    width: int
    """As displayed (EXIF orientation applied)."""
    height: int
    checksum_sha256: str
    """Base64 SHA-256 of the stored bytes (metadata removed, so not the uploaded ones)."""
    metadata_removed: tuple[str, ...]
    icc_profile_kept: bool
    version: str
    """Changes with every confirmed upload: store it, use it to tell cached copies apart."""


@dataclass(frozen=True)
class UploadResult:
    """What ``upload`` did: the avatar's key, and in verified mode what was verified."""

    key: str
    confirmation: Confirmation | None
    """None when the server runs direct uploads (no confirm step)."""


@dataclass(frozen=True)
class Deletion:
    """What DeleteAvatar did."""

    deleted: bool
    """Whether there was an avatar (False: nothing to delete, or deleted before)."""
    removed_keys: tuple[str, ...]
    cached_copies_expire_within: timedelta
    """The longest a copy fetched before the deletion may still be shown by a cache."""
    old_versions_remain: bool
    """The bucket keeps old versions and the server does not delete them."""


@dataclass(frozen=True)
class DownloadUrl:
    """A presigned GET for one user's avatar. `url` is left out of ``repr``."""

    user_id: str
    url: str = field(repr=False)
    expires_at: datetime
    """When the URL stops working (timezone-aware, UTC)."""
    key: str


@dataclass(frozen=True)
class ViewerCookies:
    """CloudFront signed cookies that let a browser fetch every avatar until `expires_at`.

    Send `set_cookie` (one ``Set-Cookie`` header value each) to the viewer's browser, then
    build avatar URLs from `url_template` (``{user_id}`` replaced). `cookies` (name -> value)
    and `set_cookie` are bearer credentials for every avatar: left out of ``repr``.
    """

    cookies: dict[str, str] = field(repr=False)
    set_cookie: tuple[str, ...] = field(repr=False)
    resource: str
    """The URL pattern granted, e.g. ``https://avatars.example.com/profiles/*/avatar``."""
    expires_at: datetime
    """When CloudFront stops accepting the cookies (timezone-aware, UTC)."""
    url_template: str
    """An avatar's URL with ``{user_id}`` in place of the user id."""

    def url_for(self, user_id: str) -> str:
        """The plain avatar URL of `user_id` (valid ids need no escaping)."""
        return self.url_template.replace("{user_id}", user_id)


# --- errors --------------------------------------------------------------------------


class FieldViolation(NamedTuple):
    """One bad request field (``user_id``, ``user_ids[3]``, ``ttl``) and the rule it broke."""

    field: str
    description: str


class AvatarSignerError(Exception):
    """A call failed: the gRPC status code, the server's message, any field violations,
    and the google.rpc.ErrorInfo reason when the server gave one (``NOT_AN_IMAGE``...).

    ``str(error)`` is one line: ``INVALID_ARGUMENT: user_id: must match ...``.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: Iterable[tuple[str, str]] = (),
        reason: str | None = None,
        violation_count: int | None = None,
    ) -> None:
        self.code: grpc.StatusCode = code
        self.message = message
        self.field_violations = tuple(FieldViolation(f, d) for f, d in field_violations)
        self.reason = reason
        # The server reports the first few violations and how many there were in all.
        self.violation_count = (
            len(self.field_violations) if violation_count is None else violation_count
        )
        super().__init__(code, message, self.field_violations)

    def __str__(self) -> str:
        if self.field_violations:
            shown = [f"{v.field}: {v.description}" for v in self.field_violations[:5]]
            more = max(self.violation_count, len(self.field_violations)) - len(shown)
            if more:
                shown.append(f"and {more} more")
            detail = "; ".join(shown)
        else:
            detail = self.message
        return f"{self.code.name}: {detail}" if detail else self.code.name

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> AvatarSignerError:
        """Decode a failed call: a sync ``grpc.RpcError`` or a ``grpc.aio.AioRpcError``.

        Both answer ``code()``, ``details()`` and ``trailing_metadata()`` synchronously.
        """
        if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
            return cls(grpc.StatusCode.UNKNOWN, type(error).__name__)
        return _decode(error.code(), error.details(), error.trailing_metadata())

    @classmethod
    def from_status(cls, status: grpc.Status) -> AvatarSignerError:
        """Decode a ``grpc.Status`` (as servers build with ``grpc_status.rpc_status``)."""
        return _decode(status.code, status.details, status.trailing_metadata)


class UploadError(Exception):
    """The PUT to the presigned URL failed.

    `status` is the HTTP status (None when no response arrived), `s3_error_code` the
    ``<Code>`` of S3's XML error body when there was one (``SignatureDoesNotMatch``,
    ``AccessDenied``, ``BadDigest``...). The message never contains the URL.
    """

    def __init__(
        self, status: int | None, s3_error_code: str | None, reason: str | None = None
    ) -> None:
        self.status = status
        self.s3_error_code = s3_error_code
        self.reason = reason
        super().__init__(status, s3_error_code, reason)

    def __str__(self) -> str:
        if self.status is None:
            return f"cannot reach S3: {self.reason or 'no response'}"
        detail = self.s3_error_code or self.reason or "no error code"
        return f"upload refused by S3: {self.status} {detail}"


def _decode(
    code: grpc.StatusCode, message: str | None, trailing_metadata: Any
) -> AvatarSignerError:
    violations: list[tuple[str, str]] = []
    reason = None
    count = None
    rich = _rich_status(trailing_metadata)
    # Trust the details only when they describe this very status.
    if rich is not None and rich.code == code.value[0]:
        for detail in rich.details:
            bad_request = error_details_pb2.BadRequest()
            info = error_details_pb2.ErrorInfo()
            if detail.Is(bad_request.DESCRIPTOR) and detail.Unpack(bad_request):
                violations.extend((v.field, v.description) for v in bad_request.field_violations)
            elif detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
                reason = info.reason
                count_text = info.metadata.get("count", "")
                # ASCII digits only, and few: int() refuses "²" and numbers of 4,300+ digits.
                if count_text.isascii() and count_text.isdigit() and len(count_text) <= 9:
                    count = int(count_text)
    return AvatarSignerError(code, message or "", violations, reason, count)


def _rich_status(trailing_metadata: Any) -> status_pb2.Status | None:
    for key, value in trailing_metadata or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


# --- requests and responses (shared by both clients) ---------------------------------


def _duration(ttl: timedelta | float) -> duration_pb2.Duration:
    if isinstance(ttl, bool) or not isinstance(ttl, timedelta | int | float):
        raise TypeError(f"ttl must be a timedelta or seconds, not {type(ttl).__name__}")
    try:
        delta = ttl if isinstance(ttl, timedelta) else timedelta(seconds=ttl)
    except (OverflowError, ValueError):
        raise ValueError(f"ttl must be a finite number of seconds, not {ttl!r}") from None
    duration = duration_pb2.Duration()
    duration.FromTimedelta(delta)
    return duration


def _ttl_field(ttl: Ttl) -> duration_pb2.Duration | None:
    return None if ttl is None else _duration(ttl)


def _expires_at(timestamp: timestamp_pb2.Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def _upload_request(
    user_id: str,
    content_type: str,
    content_length: int,
    checksum_sha256: str | None,
    ttl: Ttl,
) -> pb.CreateUploadUrlRequest:
    return pb.CreateUploadUrlRequest(
        user_id=user_id,
        content_type=content_type,
        content_length=content_length,
        checksum_sha256=checksum_sha256 or "",
        ttl=_ttl_field(ttl),
    )


def _end_user(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else ((END_USER_TOKEN_METADATA, token),)


def _upload_url(response: pb.CreateUploadUrlResponse) -> UploadUrl:
    return UploadUrl(
        url=response.url,
        method=response.method,
        headers=dict(response.headers),
        expires_at=_expires_at(response.expires_at),
        key=response.key,
        upload_id=response.upload_id,
    )


def _confirmation(response: pb.ConfirmUploadResponse) -> Confirmation:
    return Confirmation(
        key=response.key,
        content_type=response.content_type,
        content_length=response.content_length,
        width=response.width,
        height=response.height,
        checksum_sha256=response.checksum_sha256,
        metadata_removed=tuple(response.metadata_removed),
        icc_profile_kept=response.icc_profile_kept,
        version=response.version,
    )


def _deletion(response: pb.DeleteAvatarResponse) -> Deletion:
    return Deletion(
        deleted=response.deleted,
        removed_keys=tuple(response.removed_keys),
        cached_copies_expire_within=response.cached_copies_expire_within.ToTimedelta(),
        old_versions_remain=response.old_versions_remain,
    )


def _upload_parts(data: bytes) -> tuple[str, str]:
    """(content type, SHA-256) of the bytes; ValueError when they are not an image."""
    content_type = detect_content_type(data)
    if content_type is None:
        raise ValueError("data is not a JPEG, PNG, WebP or GIF image (judged by its first bytes)")
    return content_type, sha256_base64(data)


def _download_url(user_id: str, response: pb.CreateDownloadUrlResponse) -> DownloadUrl:
    return DownloadUrl(
        user_id=user_id,
        url=response.url,
        expires_at=_expires_at(response.expires_at),
        key=response.key,
    )


def _batch_request(user_ids: Iterable[str], ttl: Ttl) -> pb.BatchCreateDownloadUrlsRequest:
    if isinstance(user_ids, str):
        raise TypeError("user_ids must be a collection of user ids, not one string")
    return pb.BatchCreateDownloadUrlsRequest(user_ids=list(user_ids), ttl=_ttl_field(ttl))


def _batch_urls(response: pb.BatchCreateDownloadUrlsResponse) -> list[DownloadUrl]:
    return [
        DownloadUrl(
            user_id=item.user_id,
            url=item.url,
            expires_at=_expires_at(item.expires_at),
            key=item.key,
        )
        for item in response.urls
    ]


def _cookies_request(ttl: Ttl) -> pb.CreateViewerCookiesRequest:
    return pb.CreateViewerCookiesRequest(ttl=_ttl_field(ttl))


def _viewer_cookies(response: pb.CreateViewerCookiesResponse) -> ViewerCookies:
    return ViewerCookies(
        cookies=dict(response.cookies),
        set_cookie=tuple(response.set_cookie),
        resource=response.resource,
        expires_at=_expires_at(response.expires_at),
        url_template=response.url_template,
    )


def _health_name(response: Any) -> str:
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return name


# Metadata that carries a bearer credential: whoever sees it on the wire can replay it.
_CREDENTIAL_METADATA = frozenset({AUTHORIZATION_METADATA, END_USER_TOKEN_METADATA})


def is_loopback_target(target: str) -> bool:
    """True when a gRPC target names this machine: a unix socket, localhost, 127.0.0.0/8 or
    ::1 (as host:port, [v6]:port, or with a dns:, ipv4: or ipv6: scheme)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :].split(",", 1)[0]
            break
    if target.startswith("["):
        host = target[1:].split("]", 1)[0]
    else:
        host = target.rsplit(":", 1)[0] if target.count(":") == 1 else target
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PlaintextCredentialsError(ValueError):
    """A bearer token would travel in plaintext to another machine (see the module doc)."""


class _Options:
    """The settings both clients share, validated where they are written."""

    def __init__(
        self,
        target: str,
        timeout: float,
        channel_credentials: grpc.ChannelCredentials | None,
        metadata: Metadata | None,
        allow_plaintext_credentials: bool = False,
        service_config: str | None = SERVICE_CONFIG,
    ) -> None:
        if not target:
            raise ValueError("target must be host:port")
        if isinstance(timeout, bool) or not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        items = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
        self.target = target
        self.timeout = float(timeout)
        self.channel_credentials = channel_credentials
        # gRPC metadata keys are lowercase on the wire; grpcio refuses others.
        self.metadata: tuple[tuple[str, str], ...] = tuple((k.lower(), v) for k, v in items)
        self.plaintext_ok = (
            channel_credentials is not None
            or allow_plaintext_credentials
            or is_loopback_target(target)
        )
        self.check_credentials(self.metadata)
        # gRPC parses the service config when the channel is made (and ignores it, logging
        # an error, when it is not valid JSON of the right shape).
        self.channel_options: list[tuple[str, Any]] = (
            [] if service_config is None else [("grpc.service_config", service_config)]
        )

    def check_credentials(self, metadata: Iterable[tuple[str, str]]) -> None:
        """PlaintextCredentialsError if metadata holds a bearer credential for plaintext."""
        if self.plaintext_ok:
            return
        carried = sorted({key for key, _ in metadata} & _CREDENTIAL_METADATA)
        if carried:
            raise PlaintextCredentialsError(
                f"refusing to send {carried[0]} in plaintext to {self.target}: use TLS "
                "(channel_credentials), a loopback target, or allow_plaintext_credentials=True "
                "where the network itself is trusted or encrypted"
            )


# --- clients -------------------------------------------------------------------------


class AvatarSignerClient:
    """Blocking client. One channel; safe to share between threads; close it when done.

    `channel_credentials` None means plaintext (a trusted network or a local sidecar);
    `metadata` is sent with every call; every call gets `timeout` seconds. Over plaintext
    to another machine a bearer token is refused (PlaintextCredentialsError, a ValueError)
    unless `allow_plaintext_credentials` is True. `service_config` is the channel's gRPC
    service config (JSON): by default `SERVICE_CONFIG`, which retries UNAVAILABLE; None
    turns retries by the channel off.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        channel_credentials: grpc.ChannelCredentials | None = None,
        metadata: Metadata | None = None,
        allow_plaintext_credentials: bool = False,
        service_config: str | None = SERVICE_CONFIG,
    ) -> None:
        self._options = _Options(
            target,
            timeout,
            channel_credentials,
            metadata,
            allow_plaintext_credentials,
            service_config,
        )
        options = self._options.channel_options
        if channel_credentials is None:
            self._channel = grpc.insecure_channel(target, options)
        else:
            self._channel = grpc.secure_channel(target, channel_credentials, options)
        self._stub: pb_grpc.AvatarSignerStub = pb_grpc.AvatarSignerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._closed = False

    @property
    def target(self) -> str:
        return self._options.target

    def create_upload_url(
        self,
        user_id: str,
        content_type: str,
        content_length: int,
        checksum_sha256: str | None = None,
        ttl: Ttl = None,
        end_user_token: str | None = None,
    ) -> UploadUrl:
        """A presigned PUT bound to the user's key, this type, this length (and checksum).

        end_user_token: the end user's own token (JWT), forwarded as `x-end-user-token` for
        servers that bind uploads to end users (its `sub` must be user_id).
        """
        request = _upload_request(user_id, content_type, content_length, checksum_sha256, ttl)
        response: pb.CreateUploadUrlResponse = self._call(
            self._stub.CreateUploadUrl, request, _end_user(end_user_token)
        )
        return _upload_url(response)

    def confirm_upload(self, user_id: str, upload_id: str) -> Confirmation:
        """Verify a staged upload and publish it as the user's avatar (verified mode).

        A refusal raises AvatarSignerError with code FAILED_PRECONDITION and ``reason``
        (NOT_UPLOADED, NOT_AN_IMAGE, TYPE_MISMATCH, TOO_MANY_PIXELS, ...).
        """
        request = pb.ConfirmUploadRequest(user_id=user_id, upload_id=upload_id)
        response: pb.ConfirmUploadResponse = self._call(self._stub.ConfirmUpload, request)
        return _confirmation(response)

    def upload(
        self,
        user_id: str,
        data: bytes,
        *,
        ttl: Ttl = None,
        end_user_token: str | None = None,
        put_timeout: float = 30,
    ) -> UploadResult:
        """The whole upload: an upload URL for these bytes (type detected, SHA-256 signed),
        the PUT, and in verified mode ConfirmUpload. Raises AvatarSignerError,
        UploadError, or ValueError when the bytes are not an image."""
        content_type, checksum = _upload_parts(data)
        upload = self.create_upload_url(
            user_id, content_type, len(data), checksum, ttl, end_user_token=end_user_token
        )
        upload_bytes(upload, data, timeout=put_timeout)
        if not upload.upload_id:
            return UploadResult(upload.key, None)
        confirmation = self.confirm_upload(user_id, upload.upload_id)
        return UploadResult(confirmation.key, confirmation)

    def delete_avatar(self, user_id: str, end_user_token: str | None = None) -> Deletion:
        """Remove the user's avatar (idempotent). Where end-user tokens are on, pass the
        user's own token, unless this caller runs account deletion."""
        request = pb.DeleteAvatarRequest(user_id=user_id)
        response: pb.DeleteAvatarResponse = self._call(
            self._stub.DeleteAvatar, request, _end_user(end_user_token)
        )
        return _deletion(response)

    def create_download_url(self, user_id: str, ttl: Ttl = None) -> DownloadUrl:
        """A presigned GET for the user's avatar (which may not exist yet)."""
        request = pb.CreateDownloadUrlRequest(user_id=user_id, ttl=_ttl_field(ttl))
        response: pb.CreateDownloadUrlResponse = self._call(self._stub.CreateDownloadUrl, request)
        return _download_url(user_id, response)

    def batch_create_download_urls(
        self, user_ids: Iterable[str], ttl: Ttl = None
    ) -> list[DownloadUrl]:
        """Presigned GETs for many users, in the order given (duplicates answered twice)."""
        request = _batch_request(user_ids, ttl)
        response: pb.BatchCreateDownloadUrlsResponse = self._call(
            self._stub.BatchCreateDownloadUrls, request
        )
        return _batch_urls(response)

    def create_viewer_cookies(self, ttl: Ttl = None) -> ViewerCookies:
        """CloudFront signed cookies for every avatar (servers with CloudFront configured;
        others answer FAILED_PRECONDITION)."""
        response: pb.CreateViewerCookiesResponse = self._call(
            self._stub.CreateViewerCookies, _cookies_request(ttl)
        )
        return _viewer_cookies(response)

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name of `service` ("" is the whole server): "SERVING"..."""
        request = health_pb2.HealthCheckRequest(service=service)
        return _health_name(self._call(self._health.Check, request))

    def _call(self, method: Any, request: Any, extra: Sequence[tuple[str, str]] = ()) -> Any:
        if self._closed:
            raise RuntimeError("AvatarSignerClient is closed")
        self._options.check_credentials(extra)
        metadata = (*self._options.metadata, *extra, *trace_metadata())
        try:
            return method(request, timeout=self._options.timeout, metadata=metadata)
        except grpc.RpcError as error:
            raise AvatarSignerError.from_rpc_error(error) from error

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncAvatarSignerClient:
    """asyncio client (grpc.aio). Same arguments and methods as `AvatarSignerClient`.

    The channel is opened by the first call, so the client may be built outside the event
    loop it is used in; use it from that one loop only.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        channel_credentials: grpc.ChannelCredentials | None = None,
        metadata: Metadata | None = None,
        allow_plaintext_credentials: bool = False,
        service_config: str | None = SERVICE_CONFIG,
    ) -> None:
        self._options = _Options(
            target,
            timeout,
            channel_credentials,
            metadata,
            allow_plaintext_credentials,
            service_config,
        )
        self._channel: Any = None
        self._stub: pb_grpc.AvatarSignerAsyncStub | None = None
        self._health: Any = None
        self._closed = False

    @property
    def target(self) -> str:
        return self._options.target

    async def create_upload_url(
        self,
        user_id: str,
        content_type: str,
        content_length: int,
        checksum_sha256: str | None = None,
        ttl: Ttl = None,
        end_user_token: str | None = None,
    ) -> UploadUrl:
        request = _upload_request(user_id, content_type, content_length, checksum_sha256, ttl)
        response: pb.CreateUploadUrlResponse = await self._call(
            self._signer().CreateUploadUrl, request, _end_user(end_user_token)
        )
        return _upload_url(response)

    async def confirm_upload(self, user_id: str, upload_id: str) -> Confirmation:
        request = pb.ConfirmUploadRequest(user_id=user_id, upload_id=upload_id)
        response: pb.ConfirmUploadResponse = await self._call(self._signer().ConfirmUpload, request)
        return _confirmation(response)

    async def upload(
        self,
        user_id: str,
        data: bytes,
        *,
        ttl: Ttl = None,
        end_user_token: str | None = None,
        put_timeout: float = 30,
    ) -> UploadResult:
        """As AvatarSignerClient.upload; the PUT runs in a worker thread."""
        content_type, checksum = _upload_parts(data)
        upload = await self.create_upload_url(
            user_id, content_type, len(data), checksum, ttl, end_user_token=end_user_token
        )
        await asyncio.to_thread(upload_bytes, upload, data, put_timeout)
        if not upload.upload_id:
            return UploadResult(upload.key, None)
        confirmation = await self.confirm_upload(user_id, upload.upload_id)
        return UploadResult(confirmation.key, confirmation)

    async def delete_avatar(self, user_id: str, end_user_token: str | None = None) -> Deletion:
        request = pb.DeleteAvatarRequest(user_id=user_id)
        response: pb.DeleteAvatarResponse = await self._call(
            self._signer().DeleteAvatar, request, _end_user(end_user_token)
        )
        return _deletion(response)

    async def create_download_url(self, user_id: str, ttl: Ttl = None) -> DownloadUrl:
        request = pb.CreateDownloadUrlRequest(user_id=user_id, ttl=_ttl_field(ttl))
        response: pb.CreateDownloadUrlResponse = await self._call(
            self._signer().CreateDownloadUrl, request
        )
        return _download_url(user_id, response)

    async def batch_create_download_urls(
        self, user_ids: Iterable[str], ttl: Ttl = None
    ) -> list[DownloadUrl]:
        request = _batch_request(user_ids, ttl)
        response: pb.BatchCreateDownloadUrlsResponse = await self._call(
            self._signer().BatchCreateDownloadUrls, request
        )
        return _batch_urls(response)

    async def create_viewer_cookies(self, ttl: Ttl = None) -> ViewerCookies:
        response: pb.CreateViewerCookiesResponse = await self._call(
            self._signer().CreateViewerCookies, _cookies_request(ttl)
        )
        return _viewer_cookies(response)

    async def health(self, service: str = "") -> str:
        self._signer()
        request = health_pb2.HealthCheckRequest(service=service)
        return _health_name(await self._call(self._health.Check, request))

    def _signer(self) -> pb_grpc.AvatarSignerAsyncStub:
        if self._closed:
            raise RuntimeError("AsyncAvatarSignerClient is closed")
        if self._stub is None:
            # grpc.aio channels belong to the loop they are created in: create it here.
            credentials = self._options.channel_credentials
            target, options = self._options.target, self._options.channel_options
            if credentials is None:
                self._channel = grpc.aio.insecure_channel(target, options)
            else:
                self._channel = grpc.aio.secure_channel(target, credentials, options)
            # Given an aio channel the generated stub is an AvatarSignerAsyncStub; the
            # annotation says so whether or not grpc itself is typed.
            created: Any = pb_grpc.AvatarSignerStub(self._channel)
            stub: pb_grpc.AvatarSignerAsyncStub = created
            self._stub = stub
            self._health = health_pb2_grpc.HealthStub(self._channel)
            return stub
        return self._stub

    async def _call(self, method: Any, request: Any, extra: Sequence[tuple[str, str]] = ()) -> Any:
        self._options.check_credentials(extra)
        try:
            return await method(
                request,
                timeout=self._options.timeout,
                metadata=(*self._options.metadata, *extra, *trace_metadata()),
            )
        except grpc.RpcError as error:
            raise AvatarSignerError.from_rpc_error(error) from error

    async def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


# --- the upload itself ---------------------------------------------------------------

_S3_ERROR_CODE = re.compile(rb"<Code>\s*([A-Za-z0-9._-]{1,64})\s*</Code>")
_MAX_ERROR_BODY = 64 * 1024


def _s3_error_code(body: bytes) -> str | None:
    """The ``<Code>`` of an S3 XML error body, if it has one."""
    match = _S3_ERROR_CODE.search(body)
    return match.group(1).decode("ascii") if match else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def upload_bytes(upload: UploadUrl, data: bytes, timeout: float = 30) -> None:
    """PUT `data` (the raw bytes, not multipart) to the presigned URL with its headers.

    Raises `UploadError` when S3 answers other than 2xx or cannot be reached, and
    ValueError, sending nothing, when `data` is not the length the URL was signed for or
    the URL is not http(s).
    """
    declared = _header(upload.headers, "content-length")
    if declared is not None and declared != str(len(data)):
        raise ValueError(f"data is {len(data)} bytes but the upload URL was signed for {declared}")
    if urllib.parse.urlsplit(upload.url).scheme not in ("https", "http"):
        raise ValueError("upload.url is not an http(s) URL")
    request = urllib.request.Request(
        upload.url, data=data, headers=dict(upload.headers), method=upload.method
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as error:
        # Redirects are not followed for PUT, so 3xx lands here too.
        with error:
            body = error.read(_MAX_ERROR_BODY)
        raise UploadError(error.code, _s3_error_code(body), str(error.reason)) from None
    except urllib.error.URLError as error:
        raise UploadError(None, None, _reason(error.reason)) from None
    except (OSError, http.client.HTTPException) as error:
        raise UploadError(None, None, _reason(error)) from None


def _reason(reason: object) -> str:
    # OSError's strerror ("Connection refused") is enough; str() of other exceptions
    # (http.client's) may quote the request, so name only their type.
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, str):
        return reason
    return type(reason).__name__
