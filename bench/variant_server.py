"""`avatar-signer serve` for the benchmark, with one part swapped for a comparison.

    python bench/variant_server.py real    the production command, nothing swapped
    python bench/variant_server.py empty   every AvatarSigner method returns an empty
                                           response at once: the gRPC ceiling of the very
                                           same server (options, interceptors, health,
                                           reflection, uvloop, logging)
    python bench/variant_server.py boto3   download URLs signed by boto3's
                                           generate_presigned_url instead of our signer

It runs the real `cli.main(["serve"])`, so everything but the swapped part is production
wiring, and settings come from the environment as usual.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from typing import Any

import boto3
import grpc
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server import settings
from avatarsigner_server.app import wiring
from avatarsigner_server.commands import cli
from avatarsigner_server.signing.clock import utc_now
from avatarsigner_server.signing.key_pairs import CredentialSource
from avatarsigner_server.signing.url_signers import BucketEndpoint, SignedUrl
from botocore.config import Config


class EmptyAvatarSigner(pb_grpc.AvatarSignerServicer):
    """The gRPC ceiling: no validation, no signing, no logging; an empty response."""

    async def CreateUploadUrl(
        self, request: pb.CreateUploadUrlRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateUploadUrlResponse:
        return pb.CreateUploadUrlResponse()

    async def CreateDownloadUrl(
        self, request: pb.CreateDownloadUrlRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateDownloadUrlResponse:
        return pb.CreateDownloadUrlResponse()

    async def ConfirmUpload(
        self, request: pb.ConfirmUploadRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConfirmUploadResponse:
        return pb.ConfirmUploadResponse()

    async def DeleteAvatar(
        self, request: pb.DeleteAvatarRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteAvatarResponse:
        return pb.DeleteAvatarResponse()

    async def BatchCreateDownloadUrls(
        self, request: pb.BatchCreateDownloadUrlsRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchCreateDownloadUrlsResponse:
        return pb.BatchCreateDownloadUrlsResponse()

    async def CreateViewerCookies(
        self, request: pb.CreateViewerCookiesRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateViewerCookiesResponse:
        return pb.CreateViewerCookiesResponse()


def boto3_download_signer(bucket: str) -> Any:
    """A DownloadSigner look-alike whose URLs come from boto3's generate_presigned_url."""

    class Boto3DownloadSigner:
        METHOD = "GET"

        def __init__(
            self,
            credentials: CredentialSource,
            endpoint: BucketEndpoint,
            region: str,
            clock: Any = utc_now,
            **_: Any,
        ) -> None:
            creds = credentials.get(clock())
            self._clock = clock
            self._client = boto3.session.Session().client(
                "s3",
                region_name=region,
                aws_access_key_id=creds.access_key_id,
                aws_secret_access_key=creds.secret_access_key,
                aws_session_token=creds.session_token,
                config=Config(signature_version="s3v4", s3={"addressing_style": "virtual"}),
            )
            self._access_key_id = creds.access_key_id

        def sign(self, key: str, *, ttl_seconds: int) -> SignedUrl:
            signed_at: datetime = self._clock().replace(microsecond=0)
            url = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl_seconds
            )
            expires_at = signed_at + timedelta(seconds=ttl_seconds)
            return SignedUrl(url, expires_at, {}, self._access_key_id)

    return Boto3DownloadSigner


def main() -> int:
    variant = sys.argv[1]
    if variant == "empty":
        setattr(wiring, "build_servicer", lambda *args, **kwargs: EmptyAvatarSigner())  # noqa: B010
    elif variant == "boto3":
        bucket = settings.load(os.environ).bucket
        setattr(wiring, "DownloadSigner", boto3_download_signer(bucket))  # noqa: B010
    elif variant != "real":
        raise SystemExit(f"unknown variant {variant!r}")
    return cli.main(["serve", *sys.argv[2:]])


if __name__ == "__main__":
    sys.exit(main())
