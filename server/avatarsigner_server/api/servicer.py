"""The AvatarSigner servicer: validate -> gate -> derive key -> sign (or confirm) -> respond.

Handlers hold no state of their own. Every error a caller can cause is a `ServiceError`,
turned into a gRPC status by `_handled` in one place; anything unexpected is logged (type
only) and answered INTERNAL without details, never with a traceback.

Who is calling comes from `call_context.current()` (set by the caller guard). Before an
upload URL is signed, each `UserGate` may refuse it (end-user token, per-user rate limit);
every decision — each signed URL, each refusal — is one line of the audit log.
"""

from __future__ import annotations

import base64
import functools
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import grpc
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from ..errors import DeletionRefused, NotConfigured, ServiceError, UploadRefused
from ..settings.cloudfront import REQUIRED as CLOUDFRONT_SETTINGS
from ..signing.cloudfront_viewers import ViewerCookieSigner
from ..signing.object_keys import ObjectKeys
from ..signing.upload_ids import UploadTicket
from ..signing.url_signers import DownloadUrls, UploadSigner
from ..telemetry import call_context, logs, tracing
from ..telemetry.audit import Audit
from ..telemetry.call_context import Call
from ..verification.confirm import Confirmer
from ..verification.removal import Remover
from . import validation
from .status import abort_with

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[["AvatarSignerService", Req, grpc.aio.ServicerContext], Awaitable[Resp]]
# Called with the current call and the validated user id before a user's avatar may change
# (an upload URL is signed, the avatar deleted); raises a ServiceError to refuse it
# (end-user binding, per-user rate limit). A gate that decides at once returns None; one
# that must ask elsewhere (the shared rate-limit store) returns an awaitable that decides,
# so gates that need no I/O stay synchronous.
UserGate = Callable[[Call, str], Awaitable[None] | None]


async def _pass_gates(gates: Sequence[UserGate], call: Call, user_id: str) -> None:
    """Each gate in turn; a refusal raises. A gate that decides at once costs no await."""
    for gate in gates:
        pending = gate(call, user_id)
        if pending is not None:
            await pending


def _handled(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    @functools.wraps(handler)
    async def wrapper(
        self: AvatarSignerService, request: Req, context: grpc.aio.ServicerContext
    ) -> Resp:
        try:
            return await handler(self, request, context)
        except ServiceError as error:
            call = call_context.current(handler.__name__)
            self._audit.denied(call, error, getattr(request, "user_id", None))
            tracing.rpc_outcome(error.code, error.reason)
            await abort_with(context, error)
            raise  # unreachable: abort raises
        except Exception:
            logs.log.exception("unexpected error in %s", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise

    return wrapper


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """Timestamp.FromDatetime's result (naive means UTC) at a quarter of its cost."""
    delta = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
    )


class AvatarSignerService(pb_grpc.AvatarSignerServicer):
    def __init__(
        self,
        limits: validation.Limits,
        keys: ObjectKeys,
        uploads: UploadSigner,
        downloads: DownloadUrls,
        audit: Audit | None = None,
        upload_gates: Sequence[UserGate] = (),
        confirmer: Confirmer | None = None,
        remover: Remover | None = None,
        delete_gates: Sequence[UserGate] = (),
        cached_copies_seconds: int = 0,
        viewer_cookies: ViewerCookieSigner | None = None,
    ) -> None:
        """confirmer: verified uploads (upload URLs write staging keys once, ConfirmUpload
        publishes them); None: direct uploads (upload URLs write the avatar itself).
        remover: DeleteAvatar (verified mode); cached_copies_seconds: how long a copy
        fetched before a deletion may still be shown (see DeleteAvatarResponse).
        viewer_cookies: CloudFront's cookie signer; None: CreateViewerCookies is refused."""
        self._limits = limits
        self._keys = keys
        self._uploads = uploads
        self._downloads = downloads
        self._viewer_cookies = viewer_cookies
        self._audit = audit or Audit()
        self._upload_gates = tuple(upload_gates)
        self._confirmer = confirmer
        self._remover = remover
        self._delete_gates = tuple(delete_gates)
        self._cached_copies = duration_pb2.Duration(seconds=cached_copies_seconds)

    def close(self) -> None:
        """Release what the handlers hold beyond a call (confirmations' and deletions'
        threads)."""
        if self._confirmer is not None:
            self._confirmer.close()
        if self._remover is not None:
            self._remover.close()

    @_handled
    async def CreateUploadUrl(
        self, request: pb.CreateUploadUrlRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateUploadUrlResponse:
        upload = validation.upload(request, self._limits)
        call = call_context.current("CreateUploadUrl")
        await _pass_gates(self._upload_gates, call, upload.user_id)
        upload_id = ""
        if self._confirmer is None:
            key = self._keys.key_for(upload.user_id)
        else:
            upload_id = UploadTicket(
                minted_at_ms=int(time.time() * 1000),
                content_length=upload.content_length,
                nonce=secrets.token_bytes(16),
                sha256=base64.b64decode(upload.checksum_sha256)
                if upload.checksum_sha256
                else None,
            ).upload_id
            key = self._keys.staging_key(upload.user_id, upload_id)
        signed = self._uploads.sign(
            key,
            content_type=upload.content_type,
            content_length=upload.content_length,
            checksum_sha256=upload.checksum_sha256,
            ttl_seconds=upload.ttl_seconds,
            write_once=self._confirmer is not None,
        )
        self._audit.signed(
            call, "upload", ((upload.user_id, key, signed.expires_at),), upload.ttl_seconds
        )
        return pb.CreateUploadUrlResponse(
            url=signed.url,
            method=UploadSigner.METHOD,
            headers=dict(signed.headers),
            expires_at=_timestamp(signed.expires_at),
            key=key,
            upload_id=upload_id,
        )

    @_handled
    async def ConfirmUpload(
        self, request: pb.ConfirmUploadRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConfirmUploadResponse:
        confirm = validation.confirm(request)
        if self._confirmer is None:
            raise UploadRefused(
                "DIRECT_MODE",
                "this server runs direct uploads (UPLOAD_MODE=direct): the upload URL "
                "already wrote the avatar; there is nothing to confirm",
            )
        call = call_context.current("ConfirmUpload")
        done = await self._confirmer.confirm(
            confirm.user_id, confirm.ticket, context.time_remaining()
        )
        self._audit.confirmed(call, confirm.user_id, done.key, done.version)
        return pb.ConfirmUploadResponse(
            key=done.key,
            content_type=done.content_type,
            content_length=done.content_length,
            width=done.width,
            height=done.height,
            checksum_sha256=done.checksum_sha256,
            metadata_removed=list(done.metadata_removed),
            icc_profile_kept=done.icc_profile_kept,
            version=done.version,
        )

    @_handled
    async def DeleteAvatar(
        self, request: pb.DeleteAvatarRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteAvatarResponse:
        user_id = validation.delete(request)
        if self._remover is None:
            raise DeletionRefused(
                "DIRECT_MODE",
                "this server runs direct uploads (UPLOAD_MODE=direct), which have no "
                "identity that may delete; run verified uploads (UPLOAD_MODE=verified with "
                "S3_VERIFY_* credentials) to delete avatars",
            )
        call = call_context.current("DeleteAvatar")
        await _pass_gates(self._delete_gates, call, user_id)
        removal = await self._remover.remove(user_id, context.time_remaining())
        self._audit.deleted(call, user_id, removal.removed_keys, removal.deleted)
        return pb.DeleteAvatarResponse(
            deleted=removal.deleted,
            removed_keys=list(removal.removed_keys),
            cached_copies_expire_within=self._cached_copies,
            old_versions_remain=removal.old_versions_remain,
        )

    @_handled
    async def CreateDownloadUrl(
        self, request: pb.CreateDownloadUrlRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateDownloadUrlResponse:
        (url,) = self._sign_downloads(
            "CreateDownloadUrl", validation.download(request, self._limits)
        )
        return pb.CreateDownloadUrlResponse(url=url.url, expires_at=url.expires_at, key=url.key)

    @_handled
    async def BatchCreateDownloadUrls(
        self, request: pb.BatchCreateDownloadUrlsRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchCreateDownloadUrlsResponse:
        download = validation.batch_download(request, self._limits)
        return pb.BatchCreateDownloadUrlsResponse(
            urls=self._sign_downloads("BatchCreateDownloadUrls", download)
        )

    @_handled
    async def CreateViewerCookies(
        self, request: pb.CreateViewerCookiesRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateViewerCookiesResponse:
        cookies, rule = self._viewer_cookies, self._limits.cookie_ttl
        if cookies is None or rule is None:
            raise NotConfigured(
                "CreateViewerCookies needs CloudFront, which this server is not configured "
                f"for: set {CLOUDFRONT_SETTINGS}",
                "cloudfront_not_configured",
            )
        ttl_seconds = validation.viewer_cookies(request, rule)
        call = call_context.current("CreateViewerCookies")
        granted = cookies.sign(ttl_seconds=ttl_seconds)
        self._audit.cookies_signed(call, granted.resource, granted.expires_at)
        return pb.CreateViewerCookiesResponse(
            cookies=granted.cookies,
            set_cookie=granted.set_cookie,
            resource=granted.resource,
            expires_at=_timestamp(granted.expires_at),
            url_template=granted.url_template,
        )

    def _sign_downloads(
        self, operation: str, download: validation.Download
    ) -> list[pb.DownloadUrl]:
        call = call_context.current(operation)
        results = []
        audited = []
        for user_id in download.user_ids:
            key = self._keys.key_for(user_id)
            signed = self._downloads.sign(key, ttl_seconds=download.ttl_seconds)
            audited.append((user_id, key, signed.expires_at))
            results.append(
                pb.DownloadUrl(
                    user_id=user_id,
                    url=signed.url,
                    expires_at=_timestamp(signed.expires_at),
                    key=key,
                )
            )
        self._audit.signed(call, "download", audited, download.ttl_seconds)
        return results
