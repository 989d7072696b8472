"""WebP: walk the RIFF chunks, keep the image chunks, drop EXIF and XMP, fix the header.

Kept: VP8X (its EXIF and XMP flags cleared, its ICC flag set only when a profile is
kept), ICCP when it is a plausible profile, ANIM and ANMF (each frame's ALPH, VP8 and VP8L
only), ALPH, VP8, VP8L. Dropped: EXIF, "XMP ", every unknown chunk and anything after the
size the RIFF header gives. The RIFF size is recomputed. EXIF Orientation 2..8 is written
back as a one-entry EXIF chunk (last, as the format orders it) with the EXIF flag set;
not for animations, nor for a simple-format file (no VP8X header to flag it in).

Every image bitstream's own dimensions are read (VP8 key frame header, VP8L header) and
must equal the canvas (a still image) or the frame rectangle (an animation frame).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from avatarsigner_server.verification import _exif
from avatarsigner_server.verification._container import (
    MAX_PARTS,
    Container,
    ImageFormat,
    Limits,
    Metadata,
    Reason,
    Refused,
    icc_profile_ok,
)

RIFF = b"RIFF"
WEBP = b"WEBP"

_ICC_FLAG, _EXIF_FLAG, _XMP_FLAG, _ANIMATION_FLAG = 0x20, 0x08, 0x04, 0x02
_IMAGE = frozenset({b"VP8 ", b"VP8L"})
_VP8_START = b"\x9d\x01\x2a"
_VP8L_SIGNATURE = 0x2F
_FRAME_HEADER = 16  # ANMF: x, y, width-1, height-1, duration (24 bits each), flags


@dataclass(frozen=True, slots=True)
class _Chunk:
    kind: bytes
    payload: memoryview

    def parts(self) -> list[bytes | memoryview]:
        """The chunk as written: header, payload (not copied), padding to an even size."""
        header = self.kind + struct.pack("<I", len(self.payload))
        return [header, self.payload, b"\x00" * (len(self.payload) & 1)]


def _u24(payload: memoryview, offset: int) -> int:
    return int.from_bytes(payload[offset : offset + 3], "little")


def _chunks(view: memoryview, budget: list[int]) -> list[_Chunk]:
    """The chunks of a RIFF body; each counts against the shared MAX_PARTS budget."""
    chunks: list[_Chunk] = []
    pos = 0
    while pos < len(view):
        budget[0] -= 1
        if budget[0] < 0:
            raise Refused(Reason.TOO_COMPLEX, f"more than {MAX_PARTS} WebP chunks")
        if pos + 8 > len(view):
            raise Refused(Reason.CORRUPT, "a WebP chunk header cut by the RIFF size")
        kind = bytes(view[pos : pos + 4])
        (size,) = struct.unpack_from("<I", view, pos + 4)
        end = pos + 8 + size
        if end > len(view):
            raise Refused(Reason.CORRUPT, "a WebP chunk larger than the RIFF size")
        chunks.append(_Chunk(kind, view[pos + 8 : end]))
        pos = end + (size & 1)
    return chunks


def _bitstream_size(chunk: _Chunk) -> tuple[int, int]:
    """Width and height a VP8 or VP8L bitstream declares."""
    payload = chunk.payload
    if chunk.kind == b"VP8 ":
        if len(payload) < 10 or payload[0] & 1 or bytes(payload[3:6]) != _VP8_START:
            raise Refused(Reason.CORRUPT, "a WebP VP8 chunk without a key frame header")
        width, height = struct.unpack_from("<HH", payload, 6)
        width, height = width & 0x3FFF, height & 0x3FFF
    else:
        if len(payload) < 5 or payload[0] != _VP8L_SIGNATURE:
            raise Refused(Reason.CORRUPT, "a WebP VP8L chunk without its signature")
        (bits,) = struct.unpack_from("<I", payload, 1)
        if bits >> 29:
            raise Refused(Reason.CORRUPT, "a WebP VP8L chunk of an unknown version")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if width == 0 or height == 0:
        raise Refused(Reason.CORRUPT, "a WebP bitstream of width or height 0")
    return width, height


def _image(chunks: list[_Chunk], size: tuple[int, int], where: str) -> list[_Chunk]:
    """Checks one image (an optional ALPH, then VP8 or VP8L) of the given size; returns it
    without any other chunk."""
    images = [chunk for chunk in chunks if chunk.kind in _IMAGE]
    alpha = [chunk for chunk in chunks if chunk.kind == b"ALPH"]
    if len(images) != 1 or len(alpha) > 1:
        raise Refused(Reason.CORRUPT, f"a WebP {where} without exactly one image bitstream")
    if alpha and images[0].kind != b"VP8 ":
        raise Refused(Reason.CORRUPT, f"a WebP {where} with ALPH but a lossless bitstream")
    if _bitstream_size(images[0]) != size:
        raise Refused(Reason.CORRUPT, f"a WebP {where} whose bitstream size differs")
    return [*alpha, images[0]]


def _frame(chunk: _Chunk, canvas: tuple[int, int], budget: list[int]) -> _Chunk:
    """An ANMF frame, rebuilt with only its image chunks, checked to lie in the canvas."""
    header = chunk.payload[:_FRAME_HEADER]
    if len(header) < _FRAME_HEADER:
        raise Refused(Reason.CORRUPT, "a short WebP ANMF frame header")
    x, y = 2 * _u24(header, 0), 2 * _u24(header, 3)
    width, height = _u24(header, 6) + 1, _u24(header, 9) + 1
    if x + width > canvas[0] or y + height > canvas[1]:
        raise Refused(Reason.CORRUPT, "a WebP animation frame outside the canvas")
    inner = _chunks(chunk.payload[_FRAME_HEADER:], budget)
    image = _image(inner, (width, height), "animation frame")
    body = b"".join([header, *(part for chunk in image for part in chunk.parts())])
    return _Chunk(b"ANMF", memoryview(body))


def strip(data: bytes, limits: Limits) -> Container:
    """Rebuilds a WebP file without its metadata; refuses what it cannot walk or what
    exceeds `limits`."""
    if len(data) < 12:
        raise Refused(Reason.TRUNCATED, "the WebP ends inside its RIFF header")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end = 8 + riff_size
    if riff_size < 4:
        raise Refused(Reason.CORRUPT, "a WebP RIFF size below 4")
    if end > len(data):
        raise Refused(Reason.TRUNCATED, "the WebP is shorter than its RIFF size")
    removed: set[Metadata] = set()
    if end < len(data):
        removed.add(Metadata.TRAILING_DATA)
    budget = [MAX_PARTS]
    chunks = _chunks(memoryview(data)[12:end], budget)
    if not chunks:
        raise Refused(Reason.CORRUPT, "a WebP without chunks")
    first, rest = chunks[0], chunks[1:]
    exif: _exif.ExifFacts | None = None
    for chunk in rest:
        if chunk.kind == b"EXIF":
            removed.add(Metadata.EXIF)
            if exif is None:
                exif = _exif.read_facts(_exif.without_prefix(chunk.payload))
                if exif.gps:
                    removed.add(Metadata.GPS)
                if exif.thumbnail:
                    removed.add(Metadata.THUMBNAIL)
        elif chunk.kind == b"XMP ":
            removed.add(Metadata.XMP)

    if first.kind in _IMAGE:  # the simple format: one bitstream, nothing else belongs
        if any(chunk.kind not in (b"EXIF", b"XMP ") for chunk in rest):
            removed.add(Metadata.OTHER)
        width, height = _bitstream_size(first)
        limits.check_size(width, height)
        return _container(
            [first],
            (width, height),
            1,
            _exif.NORMAL_ORIENTATION,  # no VP8X to flag an EXIF chunk with: not kept
            removed,
            icc_kept=False,
        )
    if first.kind != b"VP8X" or len(first.payload) < 10:
        raise Refused(Reason.CORRUPT, "a WebP that starts with neither VP8, VP8L nor VP8X")
    flags = first.payload[0]
    canvas = (_u24(first.payload, 4) + 1, _u24(first.payload, 7) + 1)
    limits.check_size(*canvas)
    animated = bool(flags & _ANIMATION_FLAG)
    if animated:
        limits.check_frames(2)  # refuses now if no animation is allowed

    icc: _Chunk | None = None
    anim: _Chunk | None = None
    frames: list[_Chunk] = []
    image: list[_Chunk] = []
    for chunk in rest:
        if chunk.kind == b"ICCP":
            if icc is None and icc_profile_ok(chunk.payload):
                icc = chunk
            else:
                removed.add(Metadata.ICC)
        elif chunk.kind == b"ANIM":
            if anim is not None or len(chunk.payload) != 6:
                raise Refused(Reason.CORRUPT, "a second or malformed WebP ANIM chunk")
            anim = chunk
        elif chunk.kind == b"ANMF":
            frames.append(chunk)
        elif chunk.kind in _IMAGE or chunk.kind == b"ALPH":
            image.append(chunk)
        elif chunk.kind not in (b"EXIF", b"XMP "):
            removed.add(Metadata.OTHER)

    if animated:
        if anim is None or not frames or image:
            raise Refused(Reason.CORRUPT, "a WebP animation without ANIM and frames only")
        limits.check_frames(len(frames))
        kept = [anim, *(_frame(frame, canvas, budget) for frame in frames)]
    else:
        if anim is not None or frames:
            raise Refused(Reason.CORRUPT, "WebP animation chunks without the animation flag")
        kept = _image(image, canvas, "image")

    orientation = exif.orientation if exif and not animated else _exif.NORMAL_ORIENTATION
    flags &= ~(_ICC_FLAG | _EXIF_FLAG | _XMP_FLAG)
    tail: list[_Chunk] = []
    if icc is not None:
        flags |= _ICC_FLAG
        kept.insert(0, icc)
    if orientation != _exif.NORMAL_ORIENTATION:
        flags |= _EXIF_FLAG
        tail.append(_Chunk(b"EXIF", memoryview(_exif.orientation_only(orientation))))
    header = _Chunk(b"VP8X", memoryview(bytes([flags]) + bytes(first.payload[1:10])))
    return _container(
        [header, *kept, *tail],
        canvas,
        len(frames) if animated else 1,
        orientation,
        removed,
        icc_kept=icc is not None,
    )


def _container(
    chunks: list[_Chunk],
    size: tuple[int, int],
    frames: int,
    orientation: int,
    removed: set[Metadata],
    *,
    icc_kept: bool,
) -> Container:
    parts = [part for chunk in chunks for part in chunk.parts()]
    riff_size = len(WEBP) + sum(len(part) for part in parts)
    return Container(
        format=ImageFormat.WEBP,
        data=b"".join([RIFF, struct.pack("<I", riff_size), WEBP, *parts]),
        width=size[0],
        height=size[1],
        frames=frames,
        orientation=orientation,
        removed=frozenset(removed),
        icc_profile_kept=icc_kept,
    )
