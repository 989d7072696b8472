"""Untrusted bytes in, a verified image without its metadata (or a refusal) out.

    result = verify_image(data, "image/png", limits)
    match result:
        case VerifiedImage(): store result.data (exactly those bytes), report the facts
        case Refusal(reason=reason): refuse with `reason`, a fixed word

Pure: no I/O, no global state changed, nothing raised for any input (a programming error
in the arguments, such as bad `Limits`, raises ValueError when it is written).

The steps, in order, each refusing with its own `Reason`:

1. the declared type must be one this service verifies (JPEG, PNG, WebP);
2. the bytes' signature says which format they are; a supported format other than the
   declared one is TYPE_MISMATCH, another image format UNSUPPORTED_FORMAT, the rest
   NOT_AN_IMAGE;
3. the container is walked segment by segment / chunk by chunk (`_jpeg`, `_png`,
   `_webp`) without decoding a pixel: its structure is checked, metadata dropped and the
   file rebuilt from what is kept; trailing bytes are not carried over;
4. during that walk, as soon as a header declares the dimensions (IHDR, SOF, VP8X) or
   the frame count (acTL, the VP8X animation flag), they are checked against `Limits`:
   decompression bombs stop there, before anything is allocated for pixels;
5. Pillow opens the rebuilt bytes (header only, restricted to the one expected format; its
   own decompression-bomb guard applies as well), must agree on size and frame count, and
   then decodes every frame in full: truncated or corrupt data fails here.

The bytes decoded in step 5 are the bytes returned: what is stored is what was verified.

Trailing data (a polyglot's HTML after a JPEG's EOI, or a phone's motion-photo video) is
dropped rather than refused: every byte stored lies inside the image structure, and ordinary
phone photos keep working.

CPU and time. Steps 1-4 are linear in the input, capped at MAX_PARTS segments or chunks,
and take at most a few milliseconds for 5 MiB. Step 5 is linear in width x height x
frames, which `Limits` caps, times the scans of a progressive JPEG (at most MAX_SCANS).
Medians from bench/image_verification.py on a shared 2-core machine under load (load
average 4-5, so on the high side): 200 KB images 1-35 ms (WebP the slowest); 5 MiB: JPEG
~65 ms, PNG 30-70 ms, lossy WebP 0.3-0.8 s; 25 megapixels: 0.22-0.31 s; a progressive
JPEG at the scan limit adds ~7 ms per scan at 25 megapixels. With animation allowed,
multiply by the frame limit.

The call cannot be interrupted, but Pillow releases the GIL while it decodes (other
threads waited at most ~40 ms, libwebp at 25 megapixels). So a caller runs it off the
event loop with a bounded number in flight, for example a semaphore around
`await asyncio.wait_for(asyncio.to_thread(verify_image, ...), deadline)`: the caller
answers at the deadline, and the thread still finishes within the bound above (keep it
counted against the limit until it does). For a hard bound on CPU and memory as well, run
it in a child process that can be killed at the deadline and given an address-space
limit (multiprocessing; a ProcessPoolExecutor cannot cancel a running call), at the cost
of copying the bytes across.

Memory. Besides the input, one verification holds the rebuilt copy (about the input's
size) and the decoded frame with the decoder's buffers. Peak RSS added, measured: about
4 bytes per pixel for JPEG (7 for progressive, which keeps every coefficient) and PNG,
and 16 for WebP (libwebp's canvas, the copy it hands over, Pillow's image): 44 MB for a
5 MiB 10-megapixel JPEG, 150 MB for a 5 MiB 8.5-megapixel WebP, 390 MB for a 25-megapixel
WebP. Size `Limits.max_pixels` and the number in flight together.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
from dataclasses import dataclass

from PIL import Image, features

from avatarsigner_server.verification import _jpeg, _png, _webp
from avatarsigner_server.verification._container import (
    Container,
    ImageFormat,
    Limits,
    Metadata,
    Reason,
    Refused,
)

__all__ = [
    "SUPPORTED_CONTENT_TYPES",
    "ImageFormat",
    "Limits",
    "Metadata",
    "Reason",
    "Refusal",
    "VerifiedImage",
    "verify_image",
]

SUPPORTED_CONTENT_TYPES = tuple(image_format.content_type for image_format in ImageFormat)

if not features.check_module("webp"):
    raise ImportError("Pillow was built without WebP support, which verification needs")

_STRIP = {ImageFormat.JPEG: _jpeg.strip, ImageFormat.PNG: _png.strip, ImageFormat.WEBP: _webp.strip}
_PILLOW_FORMAT = {ImageFormat.JPEG: "JPEG", ImageFormat.PNG: "PNG", ImageFormat.WEBP: "WEBP"}

# Other image formats, told apart from "not an image" only for a clearer refusal.
_OTHER_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"8BPS", "Photoshop"),
    (b"qoif", "QOI"),
)
_ISO_IMAGE_BRANDS = frozenset(
    {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
)
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the bytes are not published. `detail` is one line for logs and the caller,
    written here (never copied from the input)."""

    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class VerifiedImage:
    """An image that decoded in full within the limits, rebuilt without its metadata."""

    format: ImageFormat
    width: int
    """Width of the stored pixels (before orientation is applied)."""
    height: int
    frames: int
    orientation: int
    """EXIF orientation kept in `data`: 1 (none) or 2..8; 5..8 swap width and height on
    screen, see `displayed_size`."""
    data: bytes
    """Exactly the bytes to store: the bytes that were decoded."""
    sha256: str
    """Base64 SHA-256 of `data`, as S3 checksums write it."""
    metadata_removed: frozenset[Metadata]
    icc_profile_kept: bool
    """True when the upload carried a valid colour profile and it is kept."""

    @property
    def content_type(self) -> str:
        return self.format.content_type

    @property
    def displayed_size(self) -> tuple[int, int]:
        """Width and height as a viewer shows them, after orientation."""
        if self.orientation >= 5:
            return self.height, self.width
        return self.width, self.height


def verify_image(data: bytes, declared_type: str, limits: Limits) -> VerifiedImage | Refusal:
    """Verifies untrusted `data` declared as `declared_type`; never raises for any input."""
    try:
        container = _strip(data, declared_type, limits)
        _decode(container)
    except Refused as refused:
        return Refusal(refused.reason, refused.detail)
    except MemoryError:
        return Refusal(Reason.OUT_OF_MEMORY, "out of memory while parsing the image")
    except Exception as error:  # noqa: BLE001 - untrusted bytes must never raise out of here
        return Refusal(Reason.CORRUPT, f"unexpected {type(error).__name__} while parsing")
    return VerifiedImage(
        format=container.format,
        width=container.width,
        height=container.height,
        frames=container.frames,
        orientation=container.orientation,
        data=container.data,
        sha256=base64.b64encode(hashlib.sha256(container.data).digest()).decode("ascii"),
        metadata_removed=container.removed,
        icc_profile_kept=container.icc_profile_kept,
    )


def _strip(data: bytes, declared_type: str, limits: Limits) -> Container:
    """Steps 1-4: declared type, signature, container and limits."""
    try:
        declared = ImageFormat(declared_type)
    except ValueError:
        raise Refused(
            Reason.UNSUPPORTED_FORMAT,
            f"the declared type is not one of {', '.join(SUPPORTED_CONTENT_TYPES)}",
        ) from None
    actual = _signature(data)
    if actual is None:
        other = _other_image(data)
        if other is not None:
            raise Refused(Reason.UNSUPPORTED_FORMAT, f"a {other} image, which is not verified")
        raise Refused(Reason.NOT_AN_IMAGE, "the bytes are not a JPEG, PNG or WebP image")
    if actual is not declared:
        raise Refused(
            Reason.TYPE_MISMATCH, f"a {actual.name} image declared as {declared.content_type}"
        )
    return _STRIP[actual](data, limits)


def _signature(data: bytes) -> ImageFormat | None:
    if data.startswith(_jpeg.SIGNATURE):
        return ImageFormat.JPEG
    if data.startswith(_png.SIGNATURE):
        return ImageFormat.PNG
    if data.startswith(_webp.RIFF) and data[8:12] == _webp.WEBP:
        return ImageFormat.WEBP
    return None


def _other_image(data: bytes) -> str | None:
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in _ISO_IMAGE_BRANDS:
        return "AVIF/HEIF"
    if data.startswith(b"BM") and len(data) >= 18:
        (header_size,) = struct.unpack_from("<I", data, 14)
        if header_size in _BMP_HEADER_SIZES:
            return "BMP"
    return None


def _decode(container: Container) -> None:
    """Step 5: Pillow reads the header, agrees with the container, decodes every frame."""
    expected = (container.width, container.height)
    try:
        with Image.open(
            io.BytesIO(container.data), formats=[_PILLOW_FORMAT[container.format]]
        ) as image:
            frames = getattr(image, "n_frames", 1)
            if image.size != expected or frames != container.frames:
                raise Refused(Reason.CORRUPT, "the decoder reads another size or frame count")
            for frame in range(frames):
                image.seek(frame)
                image.load()
    except Refused:
        raise
    except Image.DecompressionBombError:
        raise Refused(Reason.TOO_MANY_PIXELS, "over the decoder's own pixel limit") from None
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow's plugins raise many types on bad data
        # Pillow says "image file is truncated" when the data ends before the pixels do.
        reason = Reason.TRUNCATED if "truncated" in str(error) else Reason.CORRUPT
        raise Refused(reason, f"the image data does not decode ({type(error).__name__})") from None
