"""JPEG: walk the markers, keep what decoding needs, drop the metadata, copy the scans.

Kept, byte for byte: DQT, DHT, DRI, DAC, the frame header (SOF0/1/2: baseline, extended
and progressive Huffman, 8-bit, 1/3/4 components) and every scan with its entropy-coded
data. Kept in a canonical form:

- APP0 JFIF, without its thumbnail (it tells decoders the file is YCbCr);
- APP2 ICC_PROFILE, all chunks, when they reassemble into a plausible profile: the colours
  of a wide-gamut (Display P3) photo depend on it;
- APP14 Adobe, its 12 bytes: it selects the colour transform (YCCK/CMYK vs. none).

Dropped: APP1 (EXIF, XMP, extended XMP), APP13 (IPTC/Photoshop), COM, every other APPn
(MPF, maker data, JFXX thumbnails) and anything after EOI. EXIF Orientation 2..8 is written
back as a one-entry APP1 (see `_exif`). The decoded pixels are the same because none of
the dropped segments takes part in decoding.

Scan data that ends before the frame is complete (or is damaged) is something libjpeg only
warns about: it decodes the rest as grey, as browsers do, and the image is accepted as it
will be shown. A file that ends before EOI is refused as TRUNCATED.
"""

from __future__ import annotations

import re
import struct

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

SIGNATURE = b"\xff\xd8\xff"

# A progressive encoder writes about ten scans (libjpeg's default script for colour) and
# rarely more than a few dozen; each scan costs the decoder a pass over the whole image,
# so thousands of tiny scans in a small file are a CPU bomb.
MAX_SCANS = 100

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_EOI_CODE = 0xD9
_SOS = 0xDA
_SOF_KEPT = frozenset({0xC0, 0xC1, 0xC2})
_SOF_REFUSED = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_TABLES = frozenset({0xC4, 0xCC, 0xDB, 0xDD})  # DHT, DAC, DQT, DRI
_APP0, _APP1, _APP2, _APP13, _APP14, _APP15 = 0xE0, 0xE1, 0xE2, 0xED, 0xEE, 0xEF
_COM = 0xFE
_TEM = 0x01
_SEGMENTS = frozenset({*_SOF_KEPT, *_SOF_REFUSED, *_TABLES, _SOS, _COM, *range(_APP0, _APP15 + 1)})

_JFIF = b"JFIF\x00"
_JFIF_BYTES = 14  # identifier, version, units, densities, thumbnail width and height
_JFXX = b"JFXX\x00"
_XMP = (b"http://ns.adobe.com/xap/1.0/\x00", b"http://ns.adobe.com/xmp/extension/\x00")
_ICC = b"ICC_PROFILE\x00"
_ICC_HEADER = len(_ICC) + 2  # then the chunk's sequence number and the chunk count
_PHOTOSHOP = b"Photoshop 3.0\x00"
_ADOBE = b"Adobe"
_ADOBE_BYTES = 12

# The end of a scan: 0xFF then a byte that is neither stuffing (00), a restart marker
# (D0-D7) nor a fill byte (FF).
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_MARKER_CODE = re.compile(rb"[^\xff]")  # the first byte after a marker's fill bytes


def _segment(code: int, payload: bytes | memoryview) -> bytes:
    return struct.pack(">BBH", 0xFF, code, len(payload) + 2) + bytes(payload)


class _Walk:
    """The state of one pass over the markers."""

    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.limits = limits
        self.view = memoryview(data)
        self.removed: set[Metadata] = set()
        self.jfif: bytes | None = None
        self.adobe: bytes | None = None
        self.exif: _exif.ExifFacts | None = None
        self.icc: list[tuple[int, int, memoryview]] = []
        self.body: list[bytes | memoryview] = []  # tables, frame header, scans, in order
        self.size: tuple[int, int] | None = None
        self.scans = 0

    def run(self) -> int:
        """Walks from SOI to EOI; returns the offset just after EOI."""
        data, pos, parts = self.data, len(_SOI), 0
        while True:
            parts += 1
            if parts > MAX_PARTS:
                raise Refused(Reason.TOO_COMPLEX, f"more than {MAX_PARTS} JPEG segments")
            if pos >= len(data):
                raise Refused(Reason.TRUNCATED, "the JPEG ends before its EOI marker")
            if data[pos] != 0xFF:
                raise Refused(Reason.CORRUPT, "JPEG bytes where a marker should be")
            found = _MARKER_CODE.search(data, pos)
            if found is None:
                raise Refused(Reason.TRUNCATED, "the JPEG ends before its EOI marker")
            pos = found.start()
            code = data[pos]
            pos += 1
            if code == _EOI_CODE:
                return pos
            if code == _TEM:
                continue
            if code not in _SEGMENTS:
                raise Refused(Reason.CORRUPT, f"JPEG marker 0x{code:02X} where it cannot be")
            if pos + 2 > len(data):
                raise Refused(Reason.TRUNCATED, "the JPEG ends inside a segment header")
            (length,) = struct.unpack_from(">H", data, pos)
            end = pos + length
            if length < 2:
                raise Refused(Reason.CORRUPT, "a JPEG segment length below 2")
            if end > len(data):
                raise Refused(Reason.TRUNCATED, "the JPEG ends inside a segment")
            self.segment(code, pos - 2, pos + 2, end)
            pos = end
            if code == _SOS:
                pos = self.scan_data(pos)

    def segment(self, code: int, start: int, payload_start: int, end: int) -> None:
        payload = self.view[payload_start:end]
        if _APP0 <= code <= _APP15 or code == _COM:
            self.application(code, payload)
        elif code in _SOF_KEPT:
            self.frame_header(payload)
            self.body.append(self.view[start:end])
        elif code in _SOF_REFUSED:
            raise Refused(
                Reason.UNSUPPORTED_FORMAT,
                "a lossless, hierarchical or arithmetic-coded JPEG (browsers decode only "
                "Huffman-coded baseline and progressive JPEG)",
            )
        elif code in _TABLES:
            self.body.append(self.view[start:end])
        else:  # SOS, the only code left in _SEGMENTS
            self.scan_header(payload)
            self.body.append(self.view[start:end])

    def application(self, code: int, payload: memoryview) -> None:
        head = bytes(payload[:40])
        if code == _APP0 and head.startswith(_JFIF) and len(payload) >= _JFIF_BYTES:
            if self.jfif is None:  # kept with its thumbnail's size set to 0 x 0
                self.jfif = bytes(payload[: _JFIF_BYTES - 2]) + b"\x00\x00"
            else:
                self.removed.add(Metadata.OTHER)
            if len(payload) > _JFIF_BYTES:
                self.removed.add(Metadata.THUMBNAIL)
        elif code == _APP0 and head.startswith(_JFXX):
            self.removed.add(Metadata.THUMBNAIL)
        elif code == _APP1 and head.startswith(_exif.EXIF_PREFIX):
            self.removed.add(Metadata.EXIF)
            if self.exif is None:  # the first block is the one readers use
                self.exif = _exif.read_facts(_exif.without_prefix(payload))
                if self.exif.gps:
                    self.removed.add(Metadata.GPS)
                if self.exif.thumbnail:
                    self.removed.add(Metadata.THUMBNAIL)
        elif code == _APP1 and head.startswith(_XMP):
            self.removed.add(Metadata.XMP)
        elif code == _APP2 and head.startswith(_ICC) and len(payload) > _ICC_HEADER:
            sequence, count = payload[len(_ICC)], payload[len(_ICC) + 1]
            self.icc.append((sequence, count, payload[_ICC_HEADER:]))
        elif code == _APP13 and head.startswith(_PHOTOSHOP):
            self.removed.add(Metadata.IPTC)
        elif code == _APP14 and head.startswith(_ADOBE) and len(payload) >= _ADOBE_BYTES:
            if self.adobe is None:
                self.adobe = bytes(payload[:_ADOBE_BYTES])
        elif code == _COM:
            self.removed.add(Metadata.COMMENT)
        else:
            self.removed.add(Metadata.OTHER)

    def frame_header(self, payload: memoryview) -> None:
        if self.size is not None:
            raise Refused(Reason.CORRUPT, "a second JPEG frame header")
        if len(payload) < 6:
            raise Refused(Reason.CORRUPT, "a short JPEG frame header")
        precision, height, width, components = struct.unpack_from(">BHHB", payload)
        if len(payload) != 6 + 3 * components:
            raise Refused(Reason.CORRUPT, "a JPEG frame header of the wrong length")
        if precision != 8:
            raise Refused(Reason.UNSUPPORTED_FORMAT, f"a {precision}-bit JPEG")
        if components not in (1, 3, 4):
            raise Refused(Reason.UNSUPPORTED_FORMAT, f"a JPEG with {components} components")
        if height == 0:
            raise Refused(Reason.UNSUPPORTED_FORMAT, "a JPEG whose height is set after the scan")
        if width == 0:
            raise Refused(Reason.CORRUPT, "a JPEG of width 0")
        self.limits.check_size(width, height)
        self.size = (width, height)

    def scan_header(self, payload: memoryview) -> None:
        if self.size is None:
            raise Refused(Reason.CORRUPT, "a JPEG scan before the frame header")
        self.scans += 1
        if self.scans > MAX_SCANS:
            raise Refused(Reason.TOO_COMPLEX, f"more than {MAX_SCANS} JPEG scans")
        if not payload or not 1 <= payload[0] <= 4 or len(payload) != 4 + 2 * payload[0]:
            raise Refused(Reason.CORRUPT, "a malformed JPEG scan header")

    def scan_data(self, pos: int) -> int:
        found = _SCAN_END.search(self.data, pos)
        if found is None:
            raise Refused(Reason.TRUNCATED, "the JPEG ends inside its image data")
        self.body.append(self.view[pos : found.start()])
        return found.start()

    def icc_profile(self) -> list[bytes] | None:
        """The APP2 payloads of a complete, plausible profile in order, else None."""
        if not self.icc:
            return None
        count = self.icc[0][1]
        ordered = sorted(self.icc, key=lambda chunk: chunk[0])
        if [sequence for sequence, _, _ in ordered] != list(range(1, count + 1)) or any(
            total != count for _, total, _ in ordered
        ):
            return None
        if not icc_profile_ok(b"".join(chunk for _, _, chunk in ordered)):
            return None
        return [
            _ICC + bytes([sequence, total]) + bytes(chunk) for sequence, total, chunk in ordered
        ]


def strip(data: bytes, limits: Limits) -> Container:
    """Rebuilds a JPEG from SOI to EOI without its metadata; refuses what it cannot walk
    or what exceeds `limits`."""
    walk = _Walk(data, limits)
    end = walk.run()
    if walk.size is None or walk.scans == 0:
        raise Refused(Reason.CORRUPT, "a JPEG without image data")
    if end < len(data):
        walk.removed.add(Metadata.TRAILING_DATA)
    orientation = walk.exif.orientation if walk.exif else _exif.NORMAL_ORIENTATION

    head: list[bytes] = [_SOI]
    if walk.jfif is not None:
        head.append(_segment(_APP0, walk.jfif))
    if orientation != _exif.NORMAL_ORIENTATION:
        head.append(_segment(_APP1, _exif.EXIF_PREFIX + _exif.orientation_only(orientation)))
    icc = walk.icc_profile()
    if icc is not None:
        head.extend(_segment(_APP2, chunk) for chunk in icc)
    elif walk.icc:
        walk.removed.add(Metadata.ICC)
    if walk.adobe is not None:
        head.append(_segment(_APP14, walk.adobe))
    width, height = walk.size
    return Container(
        format=ImageFormat.JPEG,
        data=b"".join([*head, *walk.body, _EOI]),
        width=width,
        height=height,
        frames=1,
        orientation=orientation,
        removed=frozenset(walk.removed),
        icc_profile_kept=icc is not None,
    )
