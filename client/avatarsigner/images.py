"""What an upload needs to know about its bytes: the image type and the SHA-256.

The type comes from the bytes themselves (magic numbers), never from a file name: the
upload URL signs the content type, so it should describe what is actually sent. Whether the
service accepts the type is the service's decision (ALLOWED_CONTENT_TYPES), not this
module's; GIF is recognised here even though the default allowlist refuses it.
"""

from __future__ import annotations

import base64
import hashlib

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"
_GIF = (b"GIF87a", b"GIF89a")
_RIFF = b"RIFF"
_WEBP = b"WEBP"


def detect_content_type(data: bytes) -> str | None:
    """The image MIME type the bytes start with, or None when it is none of ours.

    Recognises image/jpeg (FF D8 FF), image/png (the 8-byte PNG signature), image/webp
    (``RIFF<size>WEBP``) and image/gif (GIF87a / GIF89a).
    """
    if data.startswith(_JPEG):
        return "image/jpeg"
    if data.startswith(_PNG):
        return "image/png"
    if data.startswith(_RIFF) and data[8:12] == _WEBP:
        return "image/webp"
    if data.startswith(_GIF):
        return "image/gif"
    return None


def sha256_base64(data: bytes) -> str:
    """SHA-256 of the bytes, base64 with padding: the form ``checksum_sha256`` takes."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
