"""Uploads built to cost the server far more than their size (issue 10's reproductions).

Each is small on the wire; on a decoder that misjudges it, each costs seconds of CPU or a large
allocation. Tests send them to check that they are refused (or bounded) and never freeze the
server's event loop.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

# What Pillow's FLI plugin accepts at bytes 4-5 (little-endian magic 0xAF11).
_FLI_MAGIC = b"\x11\xaf"


def eps_bomb(lines: int = 3 << 20) -> bytes:
    """An EPS header and then megabytes of text: Pillow's EPS parser reads it byte by byte."""
    header = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n%%EndComments\n"
    return header + b"0123456789abcde\n" * lines


def _segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every marker segment, scans including their entropy-coded data."""
    positions, i = [], 2  # after SOI
    while i < len(data) - 1:
        assert data[i] == 0xFF, f"not at a marker at {i}"
        marker = data[i + 1]
        if marker == 0xD9:  # EOI
            positions.append((i, i + 2))
            break
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        end = i + 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data up to the next real marker
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        positions.append((i, end))
        i = end
    return positions


def progressive_scan_bomb(size: int = 2000, copies: int = 22_000) -> bytes:
    """A progressive JPEG of ``size`` x ``size`` whose smallest scan is repeated ``copies`` times:
    ~12 bytes a scan on the wire, a pass over the whole image each for the decoder."""
    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    segments = _segments(data)
    scans = [(s, e) for s, e in segments if data[s + 1] == 0xDA]
    start, end = min(scans, key=lambda span: span[1] - span[0])
    eoi = segments[-1][0]
    return data[:eoi] + data[start:end] * copies + data[eoi:]


def tiff_fli_polyglot(side: int = 7000) -> bytes:
    """A deflate TIFF of ``side`` x ``side`` (grayscale zeros) whose first-IFD offset makes
    bytes 4-5 the FLI magic: Pillow's FLI plugin reads it as a tiny animation, the TIFF plugin as
    the full image."""
    strip = zlib.compress(bytes(side * side), 9)
    # Bytes 6-7 are the FLI frame count: 1, so the IFD sits at 0x1AF11.
    ifd_offset = struct.unpack("<I", _FLI_MAGIC + b"\x01\x00")[0]
    entries = [  # (tag, type, count, value); type 3 SHORT, 4 LONG
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: Adobe deflate
        (262, 3, 1, 1),  # PhotometricInterpretation: BlackIsZero
        (273, 4, 1, 0),  # StripOffsets (filled below)
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, side),  # RowsPerStrip
        (279, 4, 1, len(strip)),  # StripByteCounts
    ]
    head = struct.pack("<HH", 1, 1)  # FLI width and height; the TIFF reader skips them
    return _tiff(entries, offset_tag=273, payload=strip, ifd_offset=ifd_offset, head=head)


def tiff_with_huge_tile(side: int = 16, tile: int = 4096) -> bytes:
    """A ``side`` x ``side`` grayscale TIFF stored as one deflate tile of ``tile`` x ``tile``:
    libtiff allocates the whole tile to decode a few pixels."""
    data = zlib.compress(bytes(tile * tile), 9)
    entries = [
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: Adobe deflate
        (262, 3, 1, 1),  # PhotometricInterpretation: BlackIsZero
        (277, 3, 1, 1),  # SamplesPerPixel
        (322, 4, 1, tile),  # TileWidth
        (323, 4, 1, tile),  # TileLength
        (324, 4, 1, 0),  # TileOffsets (filled below)
        (325, 4, 1, len(data)),  # TileByteCounts
    ]
    return _tiff(entries, offset_tag=324, payload=data, ifd_offset=8)


def _tiff(
    entries: list, offset_tag: int, payload: bytes, ifd_offset: int, head: bytes = b""
) -> bytes:
    """A little-endian TIFF: header (+ ``head`` padding up to the IFD), one IFD, the payload."""
    ifd_size = 2 + 12 * len(entries) + 4
    payload_offset = ifd_offset + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = payload_offset if tag == offset_tag else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)  # no next IFD
    header = b"II*\x00" + struct.pack("<I", ifd_offset) + head
    return header + bytes(ifd_offset - len(header)) + ifd + payload


def motion_photo(trailer_bytes: int = 5 << 20) -> bytes:
    """A JPEG followed by random bytes, as phones append a video after the image."""
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), "olive").save(buffer, "JPEG")
    rng = np.random.default_rng(0)
    return buffer.getvalue() + rng.integers(0, 256, trailer_bytes, dtype=np.uint8).tobytes()


def large_png(width: int = 8000, height: int = 6000) -> bytes:
    """A flat grayscale PNG of ``width`` x ``height``: ~150 kB for 48 megapixels."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 7).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def wide_png(width: int = 4000, height: int = 4000) -> bytes:
    """A 16-bit grayscale PNG (mode I;16) with a gradient, so its values need scaling."""
    ramp = np.linspace(0, 65535, width, dtype=np.uint16)
    pixels = np.broadcast_to(ramp, (height, width)).copy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")  # uint16: mode I;16
    return buffer.getvalue()
