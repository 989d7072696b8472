"""Untrusted upload bytes are published only as verified images without their metadata.

Every image here is made with Pillow while the tests run (nothing binary is committed);
hostile files are real images edited at the byte level, with valid CRCs where a format
has them, so each refusal is for the reason named and not for an accident of the fixture.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import struct
import warnings
import zlib
from collections.abc import Callable

import pytest
from avatarsigner_server.verification._container import MAX_PARTS
from avatarsigner_server.verification._jpeg import MAX_SCANS
from avatarsigner_server.verification.images import (
    SUPPORTED_CONTENT_TYPES,
    ImageFormat,
    Limits,
    Metadata,
    Reason,
    Refusal,
    VerifiedImage,
    verify_image,
)
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

LIMITS = Limits(max_pixels=4_000_000, max_side=4096, max_frames=1)
ANIMATIONS = Limits(max_pixels=4_000_000, max_side=4096, max_frames=5)
SIZE = (96, 64)
HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"
SECRET = "SECRET-3f9a"  # planted in metadata; must not survive


# --- making images ---------------------------------------------------------------------


def picture(mode: str = "RGB", size: tuple[int, int] = SIZE) -> Image.Image:
    """A deterministic picture with detail in every channel (gradients, not noise)."""
    across = Image.linear_gradient("L").rotate(90).resize(size)
    down = Image.linear_gradient("L").resize(size)
    ring = Image.radial_gradient("L").resize(size)
    if mode == "I;16":
        return down.convert("I").point(lambda value: value * 257).convert("I;16")
    if mode in ("RGBA", "LA"):
        rgb = Image.merge("RGB", (across, down, ring))
        image = rgb.convert(mode[:-1])
        image.putalpha(ring)
        return image
    return Image.merge("RGB", (across, down, ring)).convert(mode)


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def jpeg(**params: object) -> bytes:
    return encode(picture(), "JPEG", quality=90, **params)


def png(mode: str = "RGB", **params: object) -> bytes:
    return encode(picture(mode), "PNG", **params)


def webp(**params: object) -> bytes:
    return encode(picture("RGBA"), "WEBP", **params)


def animation(image_format: str, frames: int = 3, **params: object) -> bytes:
    images = [picture().rotate(30 * index) for index in range(frames)]
    return encode(
        images[0], image_format, save_all=True, append_images=images[1:], duration=50, **params
    )


def exif_with_gps(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = SECRET  # Make
    exif[0x0110] = "Phone 12"  # Model
    if orientation is not None:
        exif[0x0112] = orientation
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 29.6)  # latitude
    gps[3], gps[4] = "E", (2.0, 17.0, 40.2)  # longitude
    return exif


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def pixels(data: bytes, frame: int = 0) -> tuple[str, tuple[int, int], bytes]:
    with warnings.catch_warnings():  # originals may be damaged on purpose
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as image:
            image.seek(frame)
            return image.mode, image.size, image.tobytes()


# --- editing bytes -----------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG, asserting each CRC."""
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        assert crc == zlib.crc32(kind + payload), f"bad CRC in {kind!r}"
        chunks.append((kind, payload))
        pos += 12 + length
    return chunks


def png_from(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(kind, payload) for kind, payload in chunks)


def png_huge_header() -> bytes:
    """A valid-looking PNG whose IHDR claims 50,000 x 50,000 RGB (7.5 GB decoded)."""
    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * 50_000) * 4)
    return png_from([(b"IHDR", header), (b"IDAT", rows), (b"IEND", b"")])


def png_with(extra: tuple[bytes, bytes]) -> bytes:
    chunks = png_chunks(png())
    return png_from([chunks[0], extra, *chunks[1:]])


def png_bad_crc() -> bytes:
    data = bytearray(png())
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    return bytes(data)


def png_bad_text_crc() -> bytes:
    """A chunk that is dropped anyway must still be intact: its CRC is checked too."""
    text = png_chunk(b"tEXt", b"Comment\x00hello")
    damaged = text[:-1] + bytes([text[-1] ^ 1])
    data = png()
    return data[:33] + damaged + data[33:]


def png_bad_pixels() -> bytes:
    """The compressed image data is damaged, and the CRC recomputed to match."""
    chunks = png_chunks(png())
    damaged = [
        (kind, payload[:10] + bytes(200) + payload[210:] if kind == b"IDAT" else payload)
        for kind, payload in chunks
    ]
    return png_from(damaged)


def jpeg_segment(code: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, code, len(payload) + 2) + payload


def jpeg_with(*segments: bytes, data: bytes | None = None) -> bytes:
    """A JPEG with segments inserted after its JFIF APP0."""
    data = jpeg() if data is None else data
    (length,) = struct.unpack_from(">H", data, 4)
    at = 4 + length
    return data[:at] + b"".join(segments) + data[at:]


def jpeg_frame(
    data: bytes,
    *,
    code: int | None = None,
    precision: int | None = None,
    size: tuple[int, int] | None = None,
) -> bytes:
    """Edits the frame header (SOF0/SOF2) of a JPEG made by Pillow."""
    out = bytearray(data)
    at = max(out.find(b"\xff\xc0"), out.find(b"\xff\xc2"))
    if code is not None:
        out[at + 1] = code
    if precision is not None:
        out[at + 4] = precision
    if size is not None:
        struct.pack_into(">HH", out, at + 5, size[1], size[0])
    return bytes(out)


def jpeg_repeated_scan(times: int) -> bytes:
    """A progressive JPEG whose last scan is repeated: each repeat is one more decoding
    pass over the whole image for the price of a few bytes."""
    data = jpeg(progressive=True)
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * times + data[-2:]


def riff(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(
        kind + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) & 1)
        for kind, payload in chunks
    )
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a WebP file, asserting the RIFF size."""
    (size,) = struct.unpack_from("<I", data, 4)
    assert size + 8 == len(data) and data[8:12] == b"WEBP"
    chunks, pos = [], 12
    while pos < len(data):
        kind, length = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 8 + length + (length & 1)
    return chunks


def webp_canvas(width: int, height: int) -> bytes:
    """An extended WebP whose VP8X header claims another canvas than its bitstream."""
    data = bytearray(webp(exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00"))
    assert data[12:16] == b"VP8X"
    data[24:27] = (width - 1).to_bytes(3, "little")
    data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def webp_lossy_size(width: int, height: int) -> bytes:
    """A simple lossy WebP whose VP8 key frame header claims width x height."""
    data = bytearray(encode(picture(), "WEBP", quality=80))
    assert data[12:16] == b"VP8 "
    struct.pack_into("<HH", data, 26, width, height)
    return bytes(data)


SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script></svg>"
)

# --- refused -----------------------------------------------------------------------------

HOSTILE: dict[str, tuple[Callable[[], bytes], str, Reason]] = {
    "zero-bytes": (lambda: b"", "image/png", Reason.NOT_AN_IMAGE),
    "html-declared-png": (lambda: HTML, "image/png", Reason.NOT_AN_IMAGE),
    "svg-renamed-png": (lambda: SVG, "image/png", Reason.NOT_AN_IMAGE),
    "svg-declared-svg": (lambda: SVG, "image/svg+xml", Reason.UNSUPPORTED_FORMAT),
    "text-declared-jpeg": (lambda: b"just some text\n" * 20, "image/jpeg", Reason.NOT_AN_IMAGE),
    "riff-wave-declared-webp": (
        lambda: b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28),
        "image/webp",
        Reason.NOT_AN_IMAGE,
    ),
    "png-signature-then-html": (lambda: b"\x89PNG\r\n\x1a\n" + HTML, "image/png", Reason.CORRUPT),
    "jpeg-signature-then-html": (lambda: b"\xff\xd8\xff" + HTML, "image/jpeg", Reason.CORRUPT),
    "png-signature-only": (lambda: png()[:8], "image/png", Reason.TRUNCATED),
    "png-truncated-in-idat": (lambda: png()[: len(png()) // 2], "image/png", Reason.TRUNCATED),
    "png-without-iend": (lambda: png()[:-12], "image/png", Reason.TRUNCATED),
    "png-ihdr-50000x50000": (png_huge_header, "image/png", Reason.TOO_MANY_PIXELS),
    "png-side-over-limit": (
        lambda: encode(Image.new("L", (5000, 1)), "PNG"),
        "image/png",
        Reason.TOO_MANY_PIXELS,
    ),
    "png-bad-crc": (png_bad_crc, "image/png", Reason.CORRUPT),
    "png-bad-crc-in-text-chunk": (png_bad_text_crc, "image/png", Reason.CORRUPT),
    "png-damaged-pixels-valid-crc": (png_bad_pixels, "image/png", Reason.CORRUPT),
    "png-unknown-critical-chunk": (lambda: png_with((b"ABCD", b"x")), "image/png", Reason.CORRUPT),
    "png-declared-jpeg": (png, "image/jpeg", Reason.TYPE_MISMATCH),
    "jpeg-declared-webp": (jpeg, "image/webp", Reason.TYPE_MISMATCH),
    "webp-declared-png": (webp, "image/png", Reason.TYPE_MISMATCH),
    "jpeg-truncated": (lambda: jpeg()[: len(jpeg()) // 2], "image/jpeg", Reason.TRUNCATED),
    "jpeg-without-eoi": (lambda: jpeg()[:-2], "image/jpeg", Reason.TRUNCATED),
    "jpeg-sof-65535x65535": (
        lambda: jpeg_frame(jpeg(), size=(65535, 65535)),
        "image/jpeg",
        Reason.TOO_MANY_PIXELS,
    ),
    "jpeg-arithmetic-coded": (
        lambda: jpeg_frame(jpeg(), code=0xC9),
        "image/jpeg",
        Reason.UNSUPPORTED_FORMAT,
    ),
    "jpeg-lossless": (
        lambda: jpeg_frame(jpeg(), code=0xC3),
        "image/jpeg",
        Reason.UNSUPPORTED_FORMAT,
    ),
    "jpeg-12-bit": (
        lambda: jpeg_frame(jpeg(), precision=12),
        "image/jpeg",
        Reason.UNSUPPORTED_FORMAT,
    ),
    "jpeg-too-many-scans": (
        lambda: jpeg_repeated_scan(MAX_SCANS),
        "image/jpeg",
        Reason.TOO_COMPLEX,
    ),
    "jpeg-50000-comments": (
        lambda: jpeg_with(*[jpeg_segment(0xFE, b"")] * 50_000),
        "image/jpeg",
        Reason.TOO_COMPLEX,
    ),
    "jpeg-fill-bytes-to-the-end": (
        lambda: b"\xff\xd8" + b"\xff" * 100_000,
        "image/jpeg",
        Reason.TRUNCATED,
    ),
    "png-too-many-chunks": (
        lambda: png_with((b"prVt", b""))[:33] + png_chunk(b"prVt", b"") * MAX_PARTS + png()[33:],
        "image/png",
        Reason.TOO_COMPLEX,
    ),
    "webp-too-many-chunks": (
        lambda: riff([*riff_chunks(webp(lossless=True)), *[(b"JUNK", b"")] * MAX_PARTS]),
        "image/webp",
        Reason.TOO_COMPLEX,
    ),
    "webp-vp8x-canvas-100000x100000": (
        lambda: webp_canvas(100_000, 100_000),
        "image/webp",
        Reason.TOO_MANY_PIXELS,
    ),
    "webp-vp8-16383x16383": (
        lambda: webp_lossy_size(16383, 16383),
        "image/webp",
        Reason.TOO_MANY_PIXELS,
    ),
    "webp-canvas-disagrees-with-bitstream": (
        lambda: webp_canvas(200, 200),
        "image/webp",
        Reason.CORRUPT,
    ),
    "webp-truncated": (lambda: webp()[:-10], "image/webp", Reason.TRUNCATED),
    "webp-riff-size-past-chunks": (
        lambda: riff([(b"VP8X", bytes(10))]) + bytes(4),
        "image/webp",
        Reason.CORRUPT,
    ),
    "animated-png": (lambda: animation("PNG"), "image/png", Reason.ANIMATED),
    "animated-webp": (lambda: animation("WEBP"), "image/webp", Reason.ANIMATED),
    "gif-declared-png": (
        lambda: encode(picture("P"), "GIF"),
        "image/png",
        Reason.UNSUPPORTED_FORMAT,
    ),
    "gif-declared-gif": (
        lambda: encode(picture("P"), "GIF"),
        "image/gif",
        Reason.UNSUPPORTED_FORMAT,
    ),
    "avif-declared-png": (
        lambda: encode(picture(), "AVIF", speed=10),
        "image/png",
        Reason.UNSUPPORTED_FORMAT,
    ),
    "bmp-declared-png": (lambda: encode(picture(), "BMP"), "image/png", Reason.UNSUPPORTED_FORMAT),
    "tiff-declared-jpeg": (
        lambda: encode(picture(), "TIFF"),
        "image/jpeg",
        Reason.UNSUPPORTED_FORMAT,
    ),
    "png-declared-with-parameters": (png, "image/png; charset=utf-8", Reason.UNSUPPORTED_FORMAT),
}


@pytest.mark.parametrize(("make", "declared", "reason"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_upload_is_refused_with_its_reason(
    make: Callable[[], bytes], declared: str, reason: Reason
) -> None:
    result = verify_image(make(), declared, LIMITS)
    assert isinstance(result, Refusal), result
    assert result.reason is reason, result.detail
    assert "<" not in result.detail and "script" not in result.detail  # never echoes input


def test_oversize_png_is_refused_from_its_header_before_decoding() -> None:
    # Decoding would need 7.5 GB; the header alone refuses it, naming the declared size.
    result = verify_image(png_huge_header(), "image/png", LIMITS)
    assert isinstance(result, Refusal)
    assert result.reason is Reason.TOO_MANY_PIXELS
    assert "50000 x 50000" in result.detail


def test_pixel_limit_applies_below_pillows_own_guard() -> None:
    data = encode(Image.new("L", (2100, 2000)), "PNG")  # 4.2 MP, far below Pillow's guard
    result = verify_image(data, "image/png", LIMITS)
    assert isinstance(result, Refusal) and result.reason is Reason.TOO_MANY_PIXELS
    assert isinstance(
        verify_image(data, "image/png", Limits(max_pixels=5_000_000, max_side=4096, max_frames=1)),
        VerifiedImage,
    )


def test_allowed_scans_are_decoded() -> None:
    result = verify_image(jpeg_repeated_scan(MAX_SCANS - 10), "image/jpeg", LIMITS)
    assert isinstance(result, VerifiedImage)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"max_pixels": 0}, "max_pixels"),
        ({"max_pixels": (Image.MAX_IMAGE_PIXELS or 0) + 1}, "max_pixels"),
        ({"max_side": 0}, "max_side"),
        ({"max_side": 70_000}, "max_side"),
        ({"max_frames": 0}, "max_frames"),
    ],
    ids=["no-pixels", "over-pillows-guard", "no-side", "side-over-jpeg", "no-frames"],
)
def test_limits_refuse_impossible_values(bad: dict[str, int], message: str) -> None:
    values = {"max_pixels": 1_000_000, "max_side": 2048, "max_frames": 1} | bad
    with pytest.raises(ValueError, match=message):
        Limits(**values)


def test_supported_content_types_are_the_verified_formats() -> None:
    assert SUPPORTED_CONTENT_TYPES == ("image/jpeg", "image/png", "image/webp")


# --- accepted, pixels unchanged ----------------------------------------------------------

ORDINARY: dict[str, tuple[Callable[[], bytes], ImageFormat, str]] = {
    "jpeg-baseline": (jpeg, ImageFormat.JPEG, "RGB"),
    "jpeg-progressive": (lambda: jpeg(progressive=True), ImageFormat.JPEG, "RGB"),
    "jpeg-restart-markers": (lambda: jpeg(restart_marker_blocks=1), ImageFormat.JPEG, "RGB"),
    "jpeg-grayscale": (lambda: encode(picture("L"), "JPEG"), ImageFormat.JPEG, "L"),
    "jpeg-cmyk": (lambda: encode(picture("CMYK"), "JPEG"), ImageFormat.JPEG, "CMYK"),
    "jpeg-4:4:4": (lambda: jpeg(subsampling=0), ImageFormat.JPEG, "RGB"),
    "png-rgb": (png, ImageFormat.PNG, "RGB"),
    "png-rgba": (lambda: png("RGBA"), ImageFormat.PNG, "RGBA"),
    "png-16-bit": (lambda: png("I;16"), ImageFormat.PNG, "I;16"),
    "png-1-bit": (lambda: png("1"), ImageFormat.PNG, "1"),
    "png-gray-alpha": (lambda: png("LA"), ImageFormat.PNG, "LA"),
    "png-palette-transparency": (
        lambda: encode(picture("P"), "PNG", transparency=0),
        ImageFormat.PNG,
        "P",
    ),
    "webp-lossy": (lambda: encode(picture(), "WEBP", quality=80), ImageFormat.WEBP, "RGB"),
    "webp-lossy-alpha": (lambda: webp(quality=80), ImageFormat.WEBP, "RGBA"),
    "webp-lossless-alpha": (lambda: webp(lossless=True), ImageFormat.WEBP, "RGBA"),
}


@pytest.mark.parametrize(("make", "image_format", "mode"), ORDINARY.values(), ids=ORDINARY.keys())
def test_ordinary_image_is_verified_with_identical_pixels(
    make: Callable[[], bytes], image_format: ImageFormat, mode: str
) -> None:
    data = make()
    result = verify_image(data, image_format.content_type, LIMITS)
    assert isinstance(result, VerifiedImage), result
    assert (result.format, result.width, result.height, result.frames) == (image_format, *SIZE, 1)
    assert result.content_type == image_format.content_type
    assert result.sha256 == base64.b64encode(hashlib.sha256(result.data).digest()).decode()
    assert pixels(result.data) == pixels(data)
    assert pixels(result.data)[0] == mode


@pytest.mark.parametrize(("make", "image_format", "mode"), ORDINARY.values(), ids=ORDINARY.keys())
def test_verifying_the_stored_bytes_again_changes_nothing(
    make: Callable[[], bytes], image_format: ImageFormat, mode: str
) -> None:
    first = verify_image(make(), image_format.content_type, LIMITS)
    assert isinstance(first, VerifiedImage)
    again = verify_image(first.data, image_format.content_type, LIMITS)
    assert isinstance(again, VerifiedImage)
    assert again.data == first.data and again.sha256 == first.sha256
    assert again.metadata_removed == frozenset()


def test_cmyk_jpeg_keeps_its_adobe_colour_transform() -> None:
    result = verify_image(encode(picture("CMYK"), "JPEG"), "image/jpeg", LIMITS)
    assert isinstance(result, VerifiedImage)
    assert b"\xff\xee\x00\x0eAdobe" in result.data


# --- polyglots: what follows the image is not stored --------------------------------------

POLYGLOTS: dict[str, tuple[bytes, ImageFormat, Metadata]] = {
    "jpeg-then-html": (jpeg() + HTML, ImageFormat.JPEG, Metadata.TRAILING_DATA),
    "png-then-html": (png() + HTML, ImageFormat.PNG, Metadata.TRAILING_DATA),
    "webp-then-html": (webp() + HTML, ImageFormat.WEBP, Metadata.TRAILING_DATA),
    "jpeg-then-zip": (jpeg() + b"PK\x03\x04" + HTML, ImageFormat.JPEG, Metadata.TRAILING_DATA),
    "html-in-jpeg-comment": (jpeg(comment=HTML), ImageFormat.JPEG, Metadata.COMMENT),
    "html-in-png-text": (
        png_with((b"tEXt", b"Comment\x00" + HTML)),
        ImageFormat.PNG,
        Metadata.TEXT,
    ),
    "html-in-unknown-png-chunk": (png_with((b"htMl", HTML)), ImageFormat.PNG, Metadata.OTHER),
    "html-in-unknown-webp-chunk": (
        riff(
            [
                *riff_chunks(webp(exif=b"MM\x00*\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00")),
                (b"HTML", HTML),
            ]
        ),
        ImageFormat.WEBP,
        Metadata.OTHER,
    ),
    "html-in-jpeg-app15": (jpeg_with(jpeg_segment(0xEF, HTML)), ImageFormat.JPEG, Metadata.OTHER),
}


@pytest.mark.parametrize(("data", "image_format", "kind"), POLYGLOTS.values(), ids=POLYGLOTS.keys())
def test_polyglot_is_stored_without_its_payload(
    data: bytes, image_format: ImageFormat, kind: Metadata
) -> None:
    result = verify_image(data, image_format.content_type, LIMITS)
    assert isinstance(result, VerifiedImage), result
    assert kind in result.metadata_removed
    assert b"script" not in result.data
    assert pixels(result.data) == pixels(data)


# --- metadata ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file")
def test_jpeg_loses_gps_exif_xmp_iptc_comments_and_keeps_its_colour_profile() -> None:
    profile = srgb_profile()
    data = jpeg_with(
        jpeg_segment(
            0xED,
            b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x0b\x1c\x02\x05\x00\x07"
            + SECRET.encode(),
        ),
        jpeg_segment(0xE2, b"MPF\x00" + SECRET.encode()),
        data=jpeg(
            exif=exif_with_gps(),
            xmp=f'<x:xmpmeta xmlns:x="adobe:ns:meta/">{SECRET}</x:xmpmeta>'.encode(),
            comment=SECRET,
            icc_profile=profile,
        ),
    )
    with Image.open(io.BytesIO(data)) as original:  # the fixture does carry all of it
        assert original.getexif().get_ifd(0x8825) and "xmp" in original.info

    result = verify_image(data, "image/jpeg", LIMITS)

    assert isinstance(result, VerifiedImage)
    assert result.metadata_removed == {
        Metadata.EXIF,
        Metadata.GPS,
        Metadata.XMP,
        Metadata.IPTC,
        Metadata.COMMENT,
        Metadata.OTHER,
    }
    assert result.icc_profile_kept
    assert SECRET.encode() not in result.data
    with Image.open(io.BytesIO(result.data)) as stored:
        assert stored.getexif().get_ifd(0x8825) == {}
        assert dict(stored.getexif()) == {}
        assert "xmp" not in stored.info and "comment" not in stored.info
        assert stored.info["icc_profile"] == profile
    assert pixels(result.data) == pixels(data)


def test_jpeg_colour_profile_over_several_segments_is_kept_whole() -> None:
    profile = bytearray(srgb_profile() + bytes(150_000))  # three APP2 segments
    struct.pack_into(">I", profile, 0, len(profile))
    result = verify_image(jpeg(icc_profile=bytes(profile)), "image/jpeg", LIMITS)
    assert isinstance(result, VerifiedImage) and result.icc_profile_kept
    with Image.open(io.BytesIO(result.data)) as stored:
        assert stored.info["icc_profile"] == bytes(profile)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_malformed_colour_profile_is_dropped(image_format: str) -> None:
    data = encode(picture(), image_format, icc_profile=b"<html>not a profile</html>" * 8)
    result = verify_image(data, Image.MIME[image_format], LIMITS)
    assert isinstance(result, VerifiedImage)
    assert Metadata.ICC in result.metadata_removed and not result.icc_profile_kept
    assert b"html" not in result.data
    assert pixels(result.data) == pixels(data)


def test_jpeg_thumbnails_are_dropped() -> None:
    # EXIF with an IFD1 (a thumbnail of the uncropped photo), and a JFIF thumbnail.
    tiff = (
        b"MM\x00*\x00\x00\x00\x08"
        + b"\x00\x00"
        + b"\x00\x00\x00\x0e"
        + b"\x00\x00"
        + b"\x00\x00\x00\x00"
    )
    jfif_thumbnail = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x01\x01" + b"\xff\x00\x00"
    data = jpeg()
    data = data[:2] + jpeg_segment(0xE0, jfif_thumbnail) + data[20:]  # replaces Pillow's JFIF
    data = jpeg_with(jpeg_segment(0xE1, b"Exif\x00\x00" + tiff), data=data)
    result = verify_image(data, "image/jpeg", LIMITS)
    assert isinstance(result, VerifiedImage)
    assert result.metadata_removed == {Metadata.EXIF, Metadata.THUMBNAIL}
    assert result.data.startswith(
        b"\xff\xd8" + jpeg_segment(0xE0, jfif_thumbnail[:12] + b"\x00\x00")
    )
    assert pixels(result.data) == pixels(data)


def test_png_loses_text_exif_time_and_private_chunks_with_valid_crcs() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", SECRET)
    info.add_text("Comment", SECRET, zip=True)
    info.add_itxt("Description", SECRET, zip=True)
    info.add_itxt("XML:com.adobe.xmp", f"<x:xmpmeta>{SECRET}</x:xmpmeta>")
    info.add(b"tIME", struct.pack(">HBBBBB", 2026, 1, 2, 3, 4, 5))
    info.add(b"prVt", SECRET.encode(), after_idat=True)
    data = png(pnginfo=info, exif=exif_with_gps(), icc_profile=srgb_profile(), dpi=(300, 300))
    assert {b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf", b"pHYs", b"iCCP"} <= {
        kind for kind, _ in png_chunks(data)
    }

    result = verify_image(data, "image/png", LIMITS)

    assert isinstance(result, VerifiedImage)
    assert result.metadata_removed == {
        Metadata.TEXT,
        Metadata.XMP,
        Metadata.TIMESTAMP,
        Metadata.EXIF,
        Metadata.GPS,
        Metadata.OTHER,
    }
    assert result.icc_profile_kept
    assert [kind for kind, _ in png_chunks(result.data)] == [b"IHDR", b"iCCP", b"IDAT", b"IEND"]
    assert SECRET.encode() not in result.data
    with Image.open(io.BytesIO(result.data)) as stored:
        assert stored.getexif().get_ifd(0x8825) == {}
        assert stored.info["icc_profile"] == srgb_profile()
    assert pixels(result.data) == pixels(data)


def test_png_colour_chunks_are_kept() -> None:
    data = png_from(
        [
            *png_chunks(png())[:1],
            (b"gAMA", struct.pack(">I", 45455)),
            (b"sRGB", b"\x00"),
            *png_chunks(png())[1:],
        ]
    )
    result = verify_image(data, "image/png", LIMITS)
    assert isinstance(result, VerifiedImage)
    assert result.data == data and result.metadata_removed == frozenset()


def test_webp_loses_exif_and_xmp_and_its_header_says_so() -> None:
    data = webp(
        exif=exif_with_gps(),
        xmp=f"<x:xmpmeta>{SECRET}</x:xmpmeta>".encode(),
        icc_profile=srgb_profile(),
    )
    flags = data[20]
    assert flags & 0x08 and flags & 0x04 and flags & 0x20  # EXIF, XMP, ICC

    result = verify_image(data, "image/webp", LIMITS)

    assert isinstance(result, VerifiedImage)
    assert result.metadata_removed == {Metadata.EXIF, Metadata.GPS, Metadata.XMP}
    assert result.icc_profile_kept
    chunks = riff_chunks(result.data)  # asserts the RIFF size too
    assert [kind for kind, _ in chunks] == [b"VP8X", b"ICCP", b"ALPH", b"VP8 "]
    flags = chunks[0][1][0]
    assert not flags & 0x08 and not flags & 0x04 and flags & 0x20 and flags & 0x10  # ICC, alpha
    assert SECRET.encode() not in result.data
    with Image.open(io.BytesIO(result.data)) as stored:
        assert "exif" not in stored.info and "xmp" not in stored.info
        assert stored.info["icc_profile"] == srgb_profile()
    assert pixels(result.data) == pixels(data)


# --- orientation -------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_rotated_photo_keeps_only_its_orientation(image_format: str, orientation: int) -> None:
    data = encode(picture(), image_format, exif=exif_with_gps(orientation))
    result = verify_image(data, Image.MIME[image_format], LIMITS)

    assert isinstance(result, VerifiedImage)
    assert result.orientation == orientation
    assert {Metadata.EXIF, Metadata.GPS} <= result.metadata_removed
    assert SECRET.encode() not in result.data
    with Image.open(io.BytesIO(result.data)) as stored, Image.open(io.BytesIO(data)) as original:
        assert dict(stored.getexif()) == {0x0112: orientation}
        assert stored.getexif().get_ifd(0x8825) == {}
        shown = ImageOps.exif_transpose(stored)
        assert shown.size == result.displayed_size
        assert shown.tobytes() == ImageOps.exif_transpose(original).tobytes()


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_upright_photo_keeps_no_exif_at_all(image_format: str) -> None:
    data = encode(picture(), image_format, exif=exif_with_gps(1))
    result = verify_image(data, Image.MIME[image_format], LIMITS)
    assert isinstance(result, VerifiedImage)
    assert result.orientation == 1 and result.displayed_size == SIZE
    assert b"Exif" not in result.data and b"eXIf" not in result.data and b"EXIF" not in result.data


# --- animation ---------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_animation_is_verified_frame_by_frame_when_allowed(image_format: str) -> None:
    data = animation(image_format, frames=3, exif=exif_with_gps())
    result = verify_image(data, Image.MIME[image_format], ANIMATIONS)
    assert isinstance(result, VerifiedImage)
    assert result.frames == 3
    assert {Metadata.EXIF, Metadata.GPS} <= result.metadata_removed
    assert SECRET.encode() not in result.data
    for frame in range(3):
        assert pixels(result.data, frame) == pixels(data, frame)


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_animation_over_the_frame_limit_is_refused(image_format: str) -> None:
    result = verify_image(animation(image_format, frames=6), Image.MIME[image_format], ANIMATIONS)
    assert isinstance(result, Refusal) and result.reason is Reason.TOO_MANY_FRAMES


# --- random damage -----------------------------------------------------------------------

FUZZ_SEEDS: dict[str, tuple[Callable[[], bytes], str, Limits]] = {
    "jpeg": (jpeg, "image/jpeg", LIMITS),
    "jpeg-progressive": (
        lambda: jpeg(progressive=True, exif=exif_with_gps(6)),
        "image/jpeg",
        LIMITS,
    ),
    "png": (lambda: png("RGBA", exif=exif_with_gps(6)), "image/png", LIMITS),
    "png-palette": (lambda: encode(picture("P"), "PNG", transparency=0), "image/png", LIMITS),
    "webp-lossy": (lambda: webp(quality=70, exif=exif_with_gps(6)), "image/webp", LIMITS),
    "webp-lossless": (lambda: webp(lossless=True), "image/webp", LIMITS),
    "apng": (lambda: animation("PNG"), "image/png", ANIMATIONS),
    "webp-animated": (lambda: animation("WEBP"), "image/webp", ANIMATIONS),
}


def mutations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        damaged = bytearray(data)
        kind = rng.randrange(4)
        if kind == 0:  # flip a few bytes
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        elif kind == 1:  # cut
            del damaged[rng.randrange(len(damaged)) :]
        elif kind == 2:  # insert
            at = rng.randrange(len(damaged))
            damaged[at:at] = rng.randbytes(rng.randint(1, 16))
        else:  # overwrite a header field with an extreme value
            at = rng.randrange(min(len(damaged), 64))
            damaged[at : at + 4] = rng.choice(
                [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"]
            )
        out.append(bytes(damaged))
    return out


@pytest.mark.parametrize(("make", "declared", "limits"), FUZZ_SEEDS.values(), ids=FUZZ_SEEDS.keys())
def test_damaged_bytes_never_raise_and_never_pass_unverified(
    make: Callable[[], bytes], declared: str, limits: Limits
) -> None:
    rng = random.Random(f"{declared}-{len(make())}")
    for damaged in mutations(make(), rng, 150):
        result = verify_image(damaged, declared, limits)
        if isinstance(result, Refusal):
            # An "unexpected" refusal is an exception in this code, not in the decoder.
            assert not result.detail.startswith("unexpected"), result.detail
            continue
        assert isinstance(result, VerifiedImage)
        again = verify_image(result.data, declared, limits)
        assert isinstance(again, VerifiedImage) and again.data == result.data
        assert pixels(result.data) == pixels(damaged)
