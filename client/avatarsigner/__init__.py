"""Python client for ``avatarsigner.v1.AvatarSigner``: short-lived S3 URLs for avatars.

    import avatarsigner

    data = open("me.png", "rb").read()
    with avatarsigner.AvatarSignerClient("127.0.0.1:50051") as client:
        upload = client.create_upload_url(
            "u123", avatarsigner.detect_content_type(data) or "", len(data),
            avatarsigner.sha256_base64(data),
        )
        avatarsigner.upload_bytes(upload, data)
        print(client.create_download_url("u123").expires_at)

The names below are imported on first use, so importing the generated stubs
(``avatarsigner.v1``) or the CLI does not import the client first; the CLI relies on
this to quiet gRPC's own logging before grpc is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import (
        DEFAULT_TIMEOUT,
        AsyncAvatarSignerClient,
        AvatarSignerClient,
        AvatarSignerError,
        Confirmation,
        Deletion,
        DownloadUrl,
        FieldViolation,
        PlaintextCredentialsError,
        UploadError,
        UploadResult,
        UploadUrl,
        ViewerCookies,
        upload_bytes,
    )
    from .images import detect_content_type, sha256_base64

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncAvatarSignerClient",
    "AvatarSignerClient",
    "AvatarSignerError",
    "Confirmation",
    "Deletion",
    "DownloadUrl",
    "FieldViolation",
    "PlaintextCredentialsError",
    "UploadError",
    "UploadResult",
    "UploadUrl",
    "ViewerCookies",
    "detect_content_type",
    "sha256_base64",
    "upload_bytes",
]
_FROM_IMAGES = {"detect_content_type", "sha256_base64"}


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    source = ".images" if name in _FROM_IMAGES else ".client"
    value: object = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
