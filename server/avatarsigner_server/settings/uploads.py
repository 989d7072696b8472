"""How uploads become avatars: UPLOAD_MODE, the staging prefix, and ConfirmUpload's bounds.

    verified (the default)  an upload URL writes a staging object once; ConfirmUpload
                            verifies it with a third identity (the verifier) and publishes
                            exactly the verified bytes
    direct                  two identities, no verifier: the upload URL writes the
                            avatar itself, which readers see at once; no verifier, no
                            ConfirmUpload. It gives up every check on the bytes (any bytes
                            of the signed type and length become the avatar), metadata
                            removal, and write-once URLs

Which image formats and limits verification can honour is the verification package's
knowledge; it checks these values against it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..signing.object_keys import DEFAULT_STAGING_PREFIX, is_valid_prefix, prefixes_overlap
from .env import Env, SettingsError

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096  # a 12-megapixel phone photo fits
DEFAULT_MAX_IMAGE_SIDE = 8192
DEFAULT_CONFIRM_CONCURRENCY = 2
DEFAULT_CONFIRM_TIMEOUT_SECONDS = 10.0


class UploadMode(StrEnum):
    VERIFIED = "verified"
    DIRECT = "direct"


@dataclass(frozen=True)
class UploadSettings:
    """Verified or direct uploads, and what verification may cost."""

    mode: UploadMode = UploadMode.VERIFIED
    staging_prefix: str = DEFAULT_STAGING_PREFIX
    # Decoding bounds: width x height, the longer side, frames (1: no animation).
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE
    max_image_frames: int = 1
    # ConfirmUploads verified at once per process (each holds the bytes and the decoded
    # image), and how long one may take before its caller is answered.
    confirm_concurrency: int = DEFAULT_CONFIRM_CONCURRENCY
    confirm_timeout_seconds: float = DEFAULT_CONFIRM_TIMEOUT_SECONDS
    # On a versioned bucket, DeleteAvatar also deletes the avatar's old versions (the
    # verifier then needs s3:ListBucketVersions and s3:DeleteObjectVersion: `policies
    # --versioned`). Off: they stay, and DeleteAvatar says so.
    delete_old_versions: bool = False

    @property
    def verified(self) -> bool:
        return self.mode is UploadMode.VERIFIED


def mode(env: Env) -> UploadMode:
    value = (env.raw("UPLOAD_MODE") or UploadMode.VERIFIED.value).lower()
    try:
        return UploadMode(value)
    except ValueError:
        raise SettingsError("UPLOAD_MODE", "must be verified or direct") from None


def uploads(env: Env, upload_mode: UploadMode, key_prefix: str) -> UploadSettings:
    """The upload settings; in verified mode the two prefixes must not contain each other
    (the reader may read everything under S3_KEY_PREFIX, the uploader write under the
    staging prefix)."""
    name = "S3_STAGING_PREFIX"
    staging = env.raw(name) or DEFAULT_STAGING_PREFIX
    if not is_valid_prefix(staging):
        raise SettingsError(name, "must be segments of A-Z a-z 0-9 . _ - each ending in '/'")
    if upload_mode is UploadMode.VERIFIED and prefixes_overlap(staging, key_prefix):
        raise SettingsError(
            name,
            f"must not overlap S3_KEY_PREFIX ({key_prefix or 'empty'}): readers must never "
            "reach staged uploads (neither may contain the other, nor be empty)",
        )
    return UploadSettings(
        mode=upload_mode,
        staging_prefix=staging,
        max_image_pixels=env.integer("MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, 1, 2**40),
        max_image_side=env.integer("MAX_IMAGE_SIDE", DEFAULT_MAX_IMAGE_SIDE, 1, 2**20),
        max_image_frames=env.integer("MAX_IMAGE_FRAMES", 1, 1, 10_000),
        confirm_concurrency=env.integer(
            "CONFIRM_CONCURRENCY", DEFAULT_CONFIRM_CONCURRENCY, 1, 64
        ),
        confirm_timeout_seconds=env.number(
            "CONFIRM_TIMEOUT_SECONDS", DEFAULT_CONFIRM_TIMEOUT_SECONDS, 0.5, 300.0
        ),
        delete_old_versions=env.boolean("DELETE_OLD_VERSIONS", False),
    )
