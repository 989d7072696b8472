"""The little this service reads from an EXIF block, and the one it writes.

EXIF is dropped whole. Before it goes, IFD0 is read for three facts: the orientation
(written back, see below), whether a GPS IFD is referenced, and whether a thumbnail IFD
follows. Nothing else is parsed: a malformed block only means those facts are unknown,
never a refusal, since the block is not stored.

Orientation: a phone stores a portrait photo as landscape pixels plus EXIF Orientation 6;
without the tag it would be shown on its side. Rotating the pixels would mean re-encoding
(lossy for JPEG, and different pixels for every format), so the service keeps the pixels
and writes back a minimal EXIF block of one entry: the orientation, nothing else. It does
so only for orientations 2 to 8; 1 (as stored) needs no EXIF at all.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

EXIF_PREFIX = b"Exif\x00\x00"
NORMAL_ORIENTATION = 1

_ORIENTATION_TAG = 0x0112
_GPS_IFD_TAG = 0x8825
_SHORT = 3
_ENTRY_BYTES = 12
_BYTE_ORDERS = {b"II*\x00": "<", b"MM\x00*": ">"}


@dataclass(frozen=True, slots=True)
class ExifFacts:
    orientation: int = NORMAL_ORIENTATION
    gps: bool = False
    thumbnail: bool = False


def without_prefix(block: bytes | memoryview) -> bytes:
    """The TIFF structure of an EXIF block, with or without its `Exif\\0\\0` prefix
    (JPEG always has it; PNG and WebP writers differ)."""
    tiff = bytes(block)
    return tiff.removeprefix(EXIF_PREFIX)


def read_facts(tiff: bytes) -> ExifFacts:
    """Orientation, GPS and thumbnail from IFD0 of a TIFF-structured EXIF block."""
    order = _BYTE_ORDERS.get(tiff[:4])
    if order is None or len(tiff) < 8:
        return ExifFacts()
    (ifd0,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd0 + 2 > len(tiff):
        return ExifFacts()
    (count,) = struct.unpack_from(order + "H", tiff, ifd0)
    entries_end = ifd0 + 2 + count * _ENTRY_BYTES
    if entries_end > len(tiff):
        return ExifFacts()
    orientation = NORMAL_ORIENTATION
    gps = False
    for offset in range(ifd0 + 2, entries_end, _ENTRY_BYTES):
        tag, kind, values = struct.unpack_from(order + "HHI", tiff, offset)
        if tag == _ORIENTATION_TAG and kind == _SHORT and values == 1:
            (value,) = struct.unpack_from(order + "H", tiff, offset + 8)
            if 1 <= value <= 8:
                orientation = value
        elif tag == _GPS_IFD_TAG:
            gps = True
    thumbnail = False
    if entries_end + 4 <= len(tiff):
        (next_ifd,) = struct.unpack_from(order + "I", tiff, entries_end)
        thumbnail = next_ifd != 0
    return ExifFacts(orientation=orientation, gps=gps, thumbnail=thumbnail)


def orientation_only(orientation: int) -> bytes:
    """A TIFF-structured EXIF block whose only entry is Orientation (26 bytes)."""
    if not 2 <= orientation <= 8:
        raise ValueError("orientation must be 2..8 (1 needs no EXIF block)")
    return b"MM\x00*" + struct.pack(
        ">IHHHIHHI", 8, 1, _ORIENTATION_TAG, _SHORT, 1, orientation, 0, 0
    )
