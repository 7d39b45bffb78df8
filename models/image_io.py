"""Turning uploaded or stored bytes into RGB images, safely.

Only the accepted formats' Pillow plugins are tried; sizes, aspect ratios, JPEG scan counts and
TIFF tiles are checked from the headers before anything is decoded, so a hostile file costs
little. Used by training (dataset loading), the MLflow pyfunc and the service.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse images whose decoded size would be absurd (decompression bombs); 50 megapixels covers
# any real photo while bounding memory to ~150 MB per decoded RGB image.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
# Refuse images more elongated than this. Resizing scales the short side to the model's size, so
# a 65535x1 image (few pixels, under any pixel limit) would become ~65535*256 x 256 in memory;
# 32:1 still admits any panorama (a 256-px resize target then costs at most 8192x256).
DEFAULT_MAX_ASPECT_RATIO = 32.0
# The formats we decode. Pillow identifies ~40 more (EPS hands files to Ghostscript, PSD, ICO,
# ...); a classifier needs none of them and each is more parser exposed to uploads.
# (Multi-picture JPEGs from phones, format "MPO", open through the JPEG plugin.)
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


class ImageDecodeError(ValueError):
    """An input could not be turned into an RGB image; the message says why."""


def check_pixel_limit(
    width: int,
    height: int,
    max_pixels: int,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> None:
    """Refuse images whose decoded size would exceed ``max_pixels`` or that are so elongated
    (``max_aspect_ratio``) that resizing them to the model's input would be huge."""
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image is {width}x{height}: it has no pixels")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    ratio = max(width, height) / min(width, height)
    if max_aspect_ratio is not None and ratio > max_aspect_ratio:
        raise ImageDecodeError(
            f"image is {width}x{height}, an aspect ratio of {ratio:.0f}:1, over the limit of "
            f"{max_aspect_ratio:g}:1"
        )


def from_pil(
    image: Image.Image,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> Image.Image:
    """An image a caller already opened, given an upload's treatment: the same size limits,
    EXIF orientation applied, decoded now, RGB."""
    check_pixel_limit(image.width, image.height, max_pixels, max_aspect_ratio)
    try:
        return to_rgb(ImageOps.exif_transpose(image))
    except Exception as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None


def load_image(
    source: bytes | str | Path | io.IOBase,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    min_size: int | None = None,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> Image.Image:
    """Decode ``source`` fully into an RGB image, applying EXIF orientation.

    Only :data:`ACCEPTED_FORMATS` are decoded; animated images give their first frame; 16-bit
    images are scaled to 8 bits (not clipped).

    With ``min_size``, a JPEG much larger than needed is decoded at a reduced scale (1/2, 1/4 or
    1/8, done by libjpeg in the DCT domain) that keeps both sides >= ``min_size``: a 1024x768
    photo for a 224 model decodes as 512x384, much faster to decode and to resize. Pass the
    model's resize target (:attr:`PreprocessConfig.resize_size`); the resize then still
    downsamples, so predictions agree with a full decode (speed and agreement: see
    docs/performance.md).

    Raises :class:`ImageDecodeError` with a human-readable reason for anything that is not a
    decodable image of acceptable size; it never returns a lazily-loaded image, so decoding
    errors surface here rather than later in a batch.
    """
    opened = open_image(
        read_source(source),
        max_pixels=max_pixels,
        min_size=min_size,
        max_aspect_ratio=max_aspect_ratio,
    )
    with opened:
        return finish_decode(opened)


def read_source(source: bytes | str | Path | io.IOBase) -> bytes:
    """The encoded bytes of a file path, a file object or bytes."""
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if isinstance(source, io.IOBase):
        return source.read()
    return Path(source).read_bytes()


def open_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    min_size: int | None = None,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> Image.Image:
    """Read an image's header and check it, without decoding its pixels.

    Only the plugins of :data:`ACCEPTED_FORMATS` ever see the bytes. The returned image is
    lazy: its ``size`` is what :func:`finish_decode` will decode (reduced for large JPEGs with
    ``min_size``), so callers can budget pixels across many images before decoding any. Close
    it (or use it as a context manager).
    """
    if not data:
        raise ImageDecodeError("empty upload: 0 bytes")
    with _decode_errors(data):
        opened = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        try:
            check_pixel_limit(*opened.size, max_pixels, max_aspect_ratio)
            opened.seek(0)  # first frame of animated images
            if opened.format == "TIFF":
                check_tiff_tiles(opened)
            if opened.format in ("JPEG", "MPO"):  # MPO: many phone cameras
                check_jpeg_scans(data)
                if min_size:
                    opened.draft(opened.mode, (min_size, min_size))
        except BaseException:
            opened.close()
            raise
        return opened


def finish_decode(opened: Image.Image) -> Image.Image:
    """Decode an image from :func:`open_image` into RGB, with EXIF orientation applied."""
    with _decode_errors(b""):
        return to_rgb(ImageOps.exif_transpose(opened))


@contextlib.contextmanager
def _decode_errors(data: bytes) -> Iterator[None]:
    """Turn whatever Pillow raises on bad input into an :class:`ImageDecodeError`."""
    try:
        yield
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(_unrecognised_format_reason(data)) from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except Exception as exc:  # PIL raises many types (struct.error, IndexError, ...) on bad input
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None


# A progressive JPEG carries about 10 scans (libjpeg's default script), and each scan is a pass
# over the whole image: a file that repeats a 12-byte scan thousands of times costs seconds of
# CPU per 100 kB. Baseline JPEGs have one scan per component group.
MAX_JPEG_SCANS = 64
# Marker segments before the image ends: tables, APPn blocks and scans; real files have dozens.
MAX_JPEG_MARKERS = 1000
# A marker: 0xFF then anything but a stuffed zero, a restart marker (inside scans) or more fill.
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length field
_SOS, _EOI = 0xDA, 0xD9


def check_jpeg_scans(data: bytes, limit: int = MAX_JPEG_SCANS) -> None:
    """Refuse JPEGs with more scans than ``limit`` before the end-of-image marker.

    Walks the marker segments (skipping each by its length, and each scan's entropy-coded data
    with a byte search), so neither an EXIF thumbnail nor data after the image (the video of a
    "motion photo") is counted."""
    scans, markers, position = 0, 0, 2  # after SOI
    while (found := _JPEG_MARKER.match(data, position)) is not None:
        marker, position = found.group(1)[0], found.end()
        markers += 1
        if marker == _EOI or markers > MAX_JPEG_MARKERS:
            break
        if marker in _STANDALONE_MARKERS:
            continue
        position += int.from_bytes(data[position : position + 2], "big")
        if marker == _SOS:
            scans += 1
            if scans > limit:
                raise ImageDecodeError(
                    f"JPEG with more than {limit} scans (a normal progressive JPEG has about 10)"
                )
            next_marker = _JPEG_MARKER.search(data, position)
            position = next_marker.start() if next_marker else len(data)
    if markers > MAX_JPEG_MARKERS:
        raise ImageDecodeError(f"JPEG with more than {MAX_JPEG_MARKERS} marker segments")


# TIFF tile dimensions (tags 322, 323): libtiff allocates one whole tile whatever the image's size.
_TILE_WIDTH, _TILE_LENGTH = 322, 323
# Tiles larger than the image are legal (padding), but never need more than this many pixels.
_MIN_TILE_ALLOWANCE = 1 << 20


def check_tiff_tiles(image: Image.Image) -> None:
    """Refuse TIFFs whose tiles hold far more pixels than the image: a 16x16 TIFF with a
    16384x16384 tile made libtiff allocate 256 MB for 256 pixels."""
    tags = getattr(image, "tag_v2", {})
    width, length = tags.get(_TILE_WIDTH), tags.get(_TILE_LENGTH)
    if not width or not length:
        return  # stripped: libtiff bounds a strip by the image's own rows
    if width * length > max(image.width * image.height, _MIN_TILE_ALLOWANCE):
        raise ImageDecodeError(
            f"TIFF tiles of {width}x{length} for a {image.width}x{image.height} image"
        )


def sniff_format(prefix: bytes) -> str | None:
    """The format a file's first bytes claim, by the plugins' signature checks only: nothing is
    parsed, so a format we do not accept (EPS, whose parser is slow) costs nothing to name."""
    Image.init()
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        try:
            if accept is not None and accept(prefix[:16]):
                return name
        except Exception:  # a signature check that trips on odd bytes claims nothing
            continue
    return None


def _unrecognised_format_reason(data: bytes) -> str:
    """Name the format of a file Pillow knows but we do not accept, for the error message."""
    accepted = ", ".join(ACCEPTED_FORMATS)
    claimed = sniff_format(data)
    if claimed is None or claimed in ACCEPTED_FORMATS:  # an accepted format that failed to open
        return f"not a recognised image format; accepted: {accepted}"
    return f"unsupported image format {claimed}; accepted: {accepted}"


# 16-bit and 32-bit single-channel modes: ``convert("RGB")`` clips them at 255 (a 16-bit PNG
# turns white), so they are scaled down first.
_WIDE_GRAYSCALE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB (16-bit grayscale scaled, not clipped)."""
    if image.mode in _WIDE_GRAYSCALE_MODES:
        image = Image.fromarray(_wide_to_8_bits(np.array(image)), mode="L")
    return image.convert("RGB")


def _wide_to_8_bits(pixels: np.ndarray) -> np.ndarray:
    """Scale 16-bit values (or 32-bit mode "I" values) to 8 bits, in place: no temporaries wider
    than the input (int64 ones needed 8x a 16-bit image's size, ~0.8 GB for 50 megapixels)."""
    if pixels.dtype.kind == "i":  # mode "I" (int32) may hold 8-bit values or 16-bit ones
        if pixels.max(initial=0) <= 255:
            return np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)
        np.clip(pixels, 0, 65535, out=pixels)
    pixels //= 257
    return pixels.astype(np.uint8)
