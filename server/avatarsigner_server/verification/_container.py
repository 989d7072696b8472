"""The vocabulary the container parsers share: formats, refusal reasons, metadata kinds.

A container parser (`_jpeg`, `_png`, `_webp`) walks the file's structure without decoding
pixels, keeps what a decoder needs to draw the same pixels, drops the rest, and returns a
`Container`; anything it cannot accept it raises as `Refused`. `images.py` re-exports the
public names.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image


class ImageFormat(StrEnum):
    """A format this service verifies and publishes; the value is its media type."""

    JPEG = "image/jpeg"
    PNG = "image/png"
    WEBP = "image/webp"

    @property
    def content_type(self) -> str:
        return self.value


class Reason(StrEnum):
    """Why an upload was refused: a fixed word a program can switch on."""

    NOT_AN_IMAGE = "NOT_AN_IMAGE"
    """Not an image format at all: empty, HTML, SVG, text, an archive, a video."""
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    """An image, or a declared type, this service does not verify: GIF, AVIF, HEIC, BMP,
    TIFF, JPEG 2000/XL, and JPEG variants browsers do not decode (arithmetic, lossless,
    hierarchical, 12-bit)."""
    TYPE_MISMATCH = "TYPE_MISMATCH"
    """A supported image of another type than the declared one (a JPEG declared
    image/webp)."""
    TRUNCATED = "TRUNCATED"
    """The file ends before its format says it does (no IEND, no EOI, RIFF shorter than
    its size, a segment cut off, the decoder ran out of data)."""
    CORRUPT = "CORRUPT"
    """The structure or the coded data is inconsistent: a bad CRC, a segment where none
    may be, dimensions that disagree, a decoder error."""
    TOO_MANY_PIXELS = "TOO_MANY_PIXELS"
    """Width x height over the pixel limit or a side over the side limit, as the header
    declares it; nothing is decoded."""
    ANIMATED = "ANIMATED"
    """More than one frame while animation is not allowed."""
    TOO_MANY_FRAMES = "TOO_MANY_FRAMES"
    """Animation is allowed, but the file has more frames than the frame limit."""
    TOO_COMPLEX = "TOO_COMPLEX"
    """Structure that would cost far more work than its size suggests: more segments or
    chunks, or more progressive JPEG scans, than any ordinary encoder writes."""
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    """The server ran out of memory while decoding. Not a verdict on the image: a caller
    should answer it as a retryable server condition. Best effort: libwebp reports its own
    failed allocations as a decoding error, so a WebP then comes back CORRUPT; keep memory
    headroom with a limit on verifications in flight."""


class Metadata(StrEnum):
    """A kind of metadata removed from an upload before it is published."""

    EXIF = "EXIF"
    """EXIF (camera, dates, serial numbers, ...). Orientation alone may be written back,
    see `orientation`."""
    GPS = "GPS"
    """The EXIF block carried a GPS location (reported in addition to EXIF)."""
    THUMBNAIL = "THUMBNAIL"
    """An embedded preview (EXIF IFD1, JFIF/JFXX): it can show what a crop removed."""
    XMP = "XMP"
    """XMP packets (JPEG APP1, PNG iTXt, WebP XMP chunk)."""
    IPTC = "IPTC"
    """IPTC / Photoshop resources (JPEG APP13)."""
    ICC = "ICC"
    """A colour profile that was dropped because it was malformed or too large. A valid
    profile is kept; `VerifiedImage.icc_profile_kept` says which."""
    COMMENT = "COMMENT"
    """JPEG comment segments."""
    TEXT = "TEXT"
    """PNG text chunks (tEXt, zTXt, iTXt) other than XMP and EXIF carried as text."""
    TIMESTAMP = "TIMESTAMP"
    """PNG tIME."""
    TRAILING_DATA = "TRAILING_DATA"
    """Bytes after the end of the image (EOI, IEND, the RIFF size): a polyglot's payload,
    or a phone's appended video or depth map. Not stored."""
    OTHER = "OTHER"
    """Anything else a decoder does not need: other APPn segments (MPF, maker data),
    PNG pHYs/bKGD/private chunks, unknown WebP chunks."""


_LARGEST_SIDE = 65_535  # JPEG's largest side; PNG allows more, WebP less


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What an upload may cost to decode; checked from the headers before decoding.

    max_pixels: width x height of the image (the canvas, for an animation);
    max_side: the longer of width and height;
    max_frames: 1 refuses every animation (ANIMATED); N > 1 allows animations of up to N
        frames (TOO_MANY_FRAMES beyond), each of which is decoded, so decoding costs up
        to max_frames x max_pixels.
    """

    max_pixels: int
    max_side: int
    max_frames: int

    def __post_init__(self) -> None:
        ceiling = Image.MAX_IMAGE_PIXELS
        if self.max_pixels < 1 or (ceiling is not None and self.max_pixels > ceiling):
            # Above Pillow's own decompression-bomb threshold it would warn or refuse.
            raise ValueError(f"max_pixels must be between 1 and {ceiling}")
        if not 1 <= self.max_side <= _LARGEST_SIDE:
            raise ValueError(f"max_side must be between 1 and {_LARGEST_SIDE}")
        if self.max_frames < 1:
            raise ValueError("max_frames must be at least 1")

    @property
    def allows_animation(self) -> bool:
        return self.max_frames > 1

    def check_size(self, width: int, height: int) -> None:
        """Refuses TOO_MANY_PIXELS; called as soon as a header declares the size."""
        if width * height > self.max_pixels or max(width, height) > self.max_side:
            raise Refused(
                Reason.TOO_MANY_PIXELS,
                f"{width} x {height} pixels; at most {self.max_pixels} pixels "
                f"and {self.max_side} per side",
            )

    def check_frames(self, frames: int) -> None:
        """Refuses ANIMATED or TOO_MANY_FRAMES; called as soon as the count is known."""
        if frames > 1 and not self.allows_animation:
            raise Refused(Reason.ANIMATED, "an animation, and animations are not allowed")
        if frames > self.max_frames:
            raise Refused(
                Reason.TOO_MANY_FRAMES,
                f"an animation of {frames} frames; at most {self.max_frames}",
            )


class Refused(Exception):
    """Raised by a container parser; `images.verify_image` returns it as a Refusal."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Container:
    """A container walked and rebuilt without its metadata; pixels not decoded yet."""

    format: ImageFormat
    data: bytes
    width: int
    height: int
    frames: int
    orientation: int
    removed: frozenset[Metadata]
    icc_profile_kept: bool


# Parsing is a Python loop per segment/chunk; ordinary files have tens to a few thousand
# (a 5 MiB PNG written in 8 KiB IDAT chunks has 640). This keeps the loop to a few
# milliseconds whatever the bytes are.
MAX_PARTS = 20_000

# Profiles from cameras, phones and displays are a few KiB; printer (CMYK) profiles with
# large lookup tables reach about 1 MiB, which is also Pillow's limit for a PNG iCCP.
MAX_ICC_BYTES = 1 << 20

_ICC_HEADER_BYTES = 128


def icc_profile_ok(profile: bytes | memoryview) -> bool:
    """True for something shaped like an ICC profile: its declared size is its length,
    it carries the `acsp` signature, and it is at most MAX_ICC_BYTES."""
    if not _ICC_HEADER_BYTES <= len(profile) <= MAX_ICC_BYTES:
        return False
    (declared,) = struct.unpack_from(">I", profile, 0)
    return declared == len(profile) and bytes(profile[36:40]) == b"acsp"
