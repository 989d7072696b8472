"""PNG: walk the chunks (CRC checked), keep what drawing the pixels needs, drop the rest.

Kept, byte for byte with their CRCs, in their order:

- IHDR, PLTE, IDAT, IEND and tRNS: the image and its transparency;
- gAMA, cHRM, sRGB, iCCP (when it inflates to a plausible profile), cICP, mDCv, cLLI,
  sBIT: how the samples map to colours; dropping them would change what a viewer shows;
- acTL, fcTL, fdAT: the frames of an animated PNG (when animation is allowed).

Dropped: eXIf, tEXt, zTXt, iTXt (XMP travels in iTXt), tIME, and every other ancillary
chunk (pHYs, bKGD, private chunks), plus anything after IEND. EXIF Orientation 2..8 is
written back as a one-entry eXIf chunk after IHDR, with its CRC computed here.
"""

from __future__ import annotations

import struct
import zlib

from avatarsigner_server.verification import _exif
from avatarsigner_server.verification._container import (
    MAX_ICC_BYTES,
    MAX_PARTS,
    Container,
    ImageFormat,
    Limits,
    Metadata,
    Reason,
    Refused,
    icc_profile_ok,
)

SIGNATURE = b"\x89PNG\r\n\x1a\n"

_MAX_LENGTH = 2**31 - 1
_KEPT = frozenset({b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"cICP", b"mDCv", b"cLLI", b"sBIT"})
_FRAMES = frozenset({b"fcTL", b"fdAT"})
_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})
# Text keywords some writers use to carry other metadata in text chunks.
_TEXT_KINDS = {
    b"XML:com.adobe.xmp": Metadata.XMP,
    b"Raw profile type xmp": Metadata.XMP,
    b"Raw profile type exif": Metadata.EXIF,
    b"Raw profile type APP1": Metadata.EXIF,
    b"Raw profile type iptc": Metadata.IPTC,
    b"Raw profile type 8bim": Metadata.IPTC,
}
# Bit depths each colour type allows (PNG specification, table 11.1).
_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _header(payload: memoryview) -> tuple[int, int, int]:
    """Width, height and colour type from IHDR, after checking every field."""
    if len(payload) != 13:
        raise Refused(Reason.CORRUPT, "a PNG IHDR of the wrong length")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", payload
    )
    if not (1 <= width <= _MAX_LENGTH and 1 <= height <= _MAX_LENGTH):
        raise Refused(Reason.CORRUPT, "PNG dimensions outside 1..2^31-1")
    if depth not in _DEPTHS.get(colour, ()):
        raise Refused(Reason.CORRUPT, "a PNG colour type and bit depth that do not go together")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise Refused(Reason.CORRUPT, "a PNG compression, filter or interlace method unknown")
    return width, height, colour


def _icc_profile_ok(payload: memoryview) -> bool:
    """iCCP: a 1-79 byte name, NUL, method 0, then a zlib stream of a plausible profile.
    Inflated at most MAX_ICC_BYTES + 1 bytes, so a zlib bomb costs nothing."""
    name_end = bytes(payload[:81]).find(b"\x00")
    if not 1 <= name_end <= 79 or len(payload) < name_end + 2 or payload[name_end + 1] != 0:
        return False
    inflater = zlib.decompressobj()
    try:
        profile = inflater.decompress(payload[name_end + 2 :], MAX_ICC_BYTES + 1)
    except zlib.error:
        return False
    return inflater.eof and icc_profile_ok(profile)


def _text_kind(payload: memoryview) -> Metadata:
    keyword = bytes(payload[:80]).split(b"\x00", 1)[0]
    return _TEXT_KINDS.get(keyword, Metadata.TEXT)


def strip(data: bytes, limits: Limits) -> Container:
    """Rebuilds a PNG from IHDR to IEND without its metadata; refuses what it cannot walk
    or what exceeds `limits`."""
    view = memoryview(data)
    kept: list[bytes | memoryview] = []
    removed: set[Metadata] = set()
    exif: _exif.ExifFacts | None = None
    size: tuple[int, int] | None = None
    colour = 0
    have_palette = False
    idat_run = "before"  # before, in, after: IDAT chunks must be consecutive
    animation_frames = 0  # from acTL, 0 when not animated
    frame_controls = 0
    icc_kept = False
    pos = len(SIGNATURE)
    for _ in range(MAX_PARTS):
        if pos + 8 > len(data):
            raise Refused(Reason.TRUNCATED, "the PNG ends before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        if not kind.isalpha():  # ASCII letters only, for bytes
            raise Refused(Reason.CORRUPT, "a PNG chunk type that is not four letters")
        if (size is None) != (kind == b"IHDR"):
            raise Refused(Reason.CORRUPT, "a PNG that does not start with its one IHDR")
        if length > _MAX_LENGTH:
            raise Refused(Reason.CORRUPT, "a PNG chunk length over 2^31-1")
        end = pos + 12 + length
        if end > len(data):
            raise Refused(Reason.TRUNCATED, "the PNG ends inside a chunk")
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            raise Refused(Reason.CORRUPT, "a PNG chunk whose CRC does not match")
        payload = view[pos + 8 : end - 4]
        chunk = view[pos:end]
        pos = end

        if size is None:
            width, height, colour = _header(payload)
            limits.check_size(width, height)
            size = (width, height)
            kept.append(chunk)
            continue
        if kind == b"IEND":
            if length:
                raise Refused(Reason.CORRUPT, "a PNG IEND chunk with data")
            break
        if idat_run == "in" and kind != b"IDAT":
            idat_run = "after"
        if kind == b"IDAT":
            if idat_run == "after":
                raise Refused(Reason.CORRUPT, "PNG IDAT chunks that are not consecutive")
            idat_run = "in"
            kept.append(chunk)
        elif kind == b"PLTE":
            if have_palette or idat_run != "before":
                raise Refused(Reason.CORRUPT, "a second or misplaced PNG PLTE chunk")
            have_palette = True
            kept.append(chunk)
        elif kind in _KEPT:
            kept.append(chunk)
        elif kind == b"acTL":
            if animation_frames or idat_run != "before" or len(payload) != 8:
                raise Refused(Reason.CORRUPT, "a misplaced or malformed PNG acTL chunk")
            (animation_frames,) = struct.unpack_from(">I", payload)
            if animation_frames == 0:
                raise Refused(Reason.CORRUPT, "a PNG animation of 0 frames")
            limits.check_frames(animation_frames)
            kept.append(chunk)
        elif kind in _FRAMES:
            frame_controls += kind == b"fcTL"
            kept.append(chunk)
        elif kind == b"iCCP":
            if not icc_kept and _icc_profile_ok(payload):
                icc_kept = True
                kept.append(chunk)
            else:
                removed.add(Metadata.ICC)
        elif kind == b"eXIf":
            removed.add(Metadata.EXIF)
            if exif is None:
                exif = _exif.read_facts(_exif.without_prefix(payload))
                if exif.gps:
                    removed.add(Metadata.GPS)
                if exif.thumbnail:
                    removed.add(Metadata.THUMBNAIL)
        elif kind in _TEXT:
            removed.add(_text_kind(payload))
        elif kind == b"tIME":
            removed.add(Metadata.TIMESTAMP)
        elif kind[0] & 0x20:  # ancillary: lowercase first letter
            removed.add(Metadata.OTHER)
        else:
            raise Refused(Reason.CORRUPT, "an unknown critical PNG chunk")
    else:
        raise Refused(Reason.TOO_COMPLEX, f"more than {MAX_PARTS} PNG chunks")

    if size is None or idat_run == "before":
        raise Refused(Reason.CORRUPT, "a PNG without image data")
    if colour == 3 and not have_palette:
        raise Refused(Reason.CORRUPT, "a palette PNG without a palette")
    if animation_frames != frame_controls:
        raise Refused(Reason.CORRUPT, "a PNG animation whose frame count does not match")
    if pos < len(data):
        removed.add(Metadata.TRAILING_DATA)
    orientation = exif.orientation if exif else _exif.NORMAL_ORIENTATION
    if orientation != _exif.NORMAL_ORIENTATION:
        kept.insert(1, _chunk(b"eXIf", _exif.orientation_only(orientation)))
    kept.append(_chunk(b"IEND", b""))
    width, height = size
    return Container(
        format=ImageFormat.PNG,
        data=b"".join([SIGNATURE, *kept]),
        width=width,
        height=height,
        frames=max(animation_frames, 1),
        orientation=orientation,
        removed=frozenset(removed),
        icc_profile_kept=icc_kept,
    )
