"""Batched JPEG decode into model-ready uint8 tensors with torchvision (nvjpeg on CUDA).

The PIL path decodes one image at a time on a CPU thread; on a GPU host that thread, not the
model, limits throughput. Here a request's JPEGs decode in one ``torchvision.io.decode_jpeg``
call on the model's device and are resized and cropped there by the same eval geometry the PIL
path uses (:meth:`EvalPreprocessing.prepare_tensor`). An image torchvision cannot decode comes
back as ``None``: the caller decodes it with PIL, whose errors say what is wrong with the file.

Only the pixels move here: header checks (sizes, scans, budgets) stay with :mod:`.image_io`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from .preprocessing import EvalPreprocessing

logger = logging.getLogger(__name__)

# Pillow's names for what libjpeg/nvjpeg decode ("MPO": phone photos with a second picture,
# of which the first is the photo, as PIL's ``seek(0)`` reads it).
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
# Colour modes whose RGB conversion matches PIL's; CMYK/YCCK (Adobe) files stay with PIL,
# whose inverted-CMYK handling nvjpeg does not promise to share.
_TENSOR_MODES = frozenset({"RGB", "L"})
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class JpegHeader:
    """What the tensor path needs from an image's header, read while it is checked."""

    orientation: int  # EXIF orientation, 1 (as stored) to 8
    full_pixels: int  # pixels of a full-size decode (an upper bound): what torchvision decodes


def tensor_header(image: Image.Image) -> JpegHeader | None:
    """The header of an image opened by :func:`.image_io.open_image` if the tensor path can
    decode it (a YCbCr or grayscale JPEG), else None."""
    if image.format not in JPEG_FORMATS or image.mode not in _TENSOR_MODES:
        return None
    # After a reduced-size draft ``size`` is the reduced one; ``decoderconfig`` keeps the scale.
    scale = (getattr(image, "decoderconfig", None) or (1,))[0] or 1
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation not in range(1, 9):
        orientation = 1  # PIL's exif_transpose ignores values it does not know, so do we
    return JpegHeader(orientation, image.width * image.height * scale * scale)


def pixel_chunks(headers: Sequence[JpegHeader], *, max_pixels: int) -> list[range]:
    """Consecutive runs of ``headers`` decoding to at most ``max_pixels`` each (an image over it
    alone): one batched call holds all its full-size images in memory at once."""
    chunks: list[range] = []
    start, pixels = 0, 0
    for index, header in enumerate(headers):
        if index > start and pixels + header.full_pixels > max_pixels:
            chunks.append(range(start, index))
            start, pixels = index, 0
        pixels += header.full_pixels
    if start < len(headers):
        chunks.append(range(start, len(headers)))
    return chunks


def decode_jpegs(
    encoded: Sequence[bytes],
    *,
    orientations: Sequence[int],
    preprocessing: EvalPreprocessing,
    device: torch.device,
) -> list[torch.Tensor | None]:
    """Decode JPEGs in one batched call on ``device``, apply their EXIF ``orientations`` and
    resize and crop each to the model's input: uint8 ``(3, H, W)`` tensors on ``device``, with
    None for each image torchvision could not decode (decode those with PIL)."""
    decoded = _decode_batch(encoded, device=device)
    return [
        None
        if image is None
        else preprocessing.prepare_tensor(orient(image, orientation=orientation))
        for image, orientation in zip(decoded, orientations, strict=True)
    ]


def orient(image: torch.Tensor, *, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a ``(C, H, W)`` tensor, as PIL's ``exif_transpose`` does."""
    if orientation in (5, 6, 7, 8):  # the four that swap width and height
        image = image.transpose(-2, -1)  # 5 = TRANSPOSE
        flips = {6: (-1,), 7: (-2, -1), 8: (-2,)}.get(orientation, ())
    else:
        flips = {2: (-1,), 3: (-2, -1), 4: (-2,)}.get(orientation, ())
    return image.flip(flips) if flips else image


def _decode_batch(encoded: Sequence[bytes], *, device: torch.device) -> list[torch.Tensor | None]:
    from torchvision.io import ImageReadMode, decode_jpeg

    if not encoded:
        return []
    # frombuffer on a bytearray: torch warns on (and must not write to) immutable bytes.
    data = [torch.frombuffer(bytearray(item), dtype=torch.uint8) for item in encoded]
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        # One bad file fails the whole call (no partial results): find it by decoding singly.
        logger.debug("batched JPEG decode failed; decoding %d images one by one", len(data))
    results: list[torch.Tensor | None] = []
    for item in data:
        try:
            results.append(decode_jpeg(item, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            results.append(None)
    return results
