"""The one preprocessing definition shared by training evaluation and the service.

Input size, resize/crop, interpolation and mean/std are resolved from timm's data config for the
architecture (optionally overriding the input size) and then stored with the weights, so the
service rebuilds exactly the transform that evaluation used.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

# Refuse images whose decoded size would be absurd (decompression bombs); 50 megapixels covers
# any real photo while bounding memory to ~150 MB per decoded RGB image.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


class ImageDecodeError(ValueError):
    """An input could not be turned into an RGB image; the message says why."""


class PreprocessConfig(BaseModel):
    """How an RGB image becomes the model's input tensor (timm data-config fields)."""

    model_config = ConfigDict(frozen=True)

    input_size: tuple[int, int, int] = Field(description="(channels, height, width)")
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = Field(0.875, gt=0.0, le=1.0)
    crop_mode: Literal["center", "squash", "border"] = "center"

    @classmethod
    def for_model(cls, model: torch.nn.Module, image_size: int | None = None) -> PreprocessConfig:
        """Resolve from the timm model's pretrained config; ``image_size`` overrides H and W."""
        from timm.data import resolve_data_config

        args = {"input_size": (3, image_size, image_size)} if image_size else {}
        resolved = resolve_data_config(args, model=model)
        return cls(**resolved)


def _timm_transform_args(config: PreprocessConfig) -> dict:
    return {
        "input_size": config.input_size,
        "interpolation": config.interpolation,
        "mean": config.mean,
        "std": config.std,
        "crop_pct": config.crop_pct,
        "crop_mode": config.crop_mode,
    }


def create_eval_transform(config: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic resize + crop + normalise: used for validation, tests and serving."""
    from timm.data import create_transform

    return create_transform(**_timm_transform_args(config), is_training=False)


def create_train_transform(
    config: PreprocessConfig,
    scale: tuple[float, float] = (0.5, 1.0),
    hflip: float = 0.5,
    color_jitter: float = 0.2,
) -> Callable[[Image.Image], torch.Tensor]:
    """Random resized crop, flip and colour jitter on top of the same normalisation."""
    from timm.data import create_transform

    args = _timm_transform_args(config)
    args.pop("crop_pct")
    args.pop("crop_mode")
    return create_transform(
        **args, is_training=True, scale=scale, hflip=hflip, color_jitter=color_jitter
    )


def check_pixel_limit(width: int, height: int, max_pixels: int) -> None:
    """Refuse images whose decoded size would exceed ``max_pixels``."""
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )


def load_image(
    source: bytes | str | Path | io.IOBase, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Decode ``source`` fully into an RGB image, applying EXIF orientation.

    Raises :class:`ImageDecodeError` with a human-readable reason for anything that is not a
    decodable image of acceptable size; it never returns a lazily-loaded image, so decoding
    errors surface here rather than later in a batch.
    """
    if isinstance(source, bytes):
        if not source:
            raise ImageDecodeError("empty upload: 0 bytes")
        source = io.BytesIO(source)
    try:
        with Image.open(source) as opened:
            check_pixel_limit(*opened.size, max_pixels)
            opened.seek(0)  # first frame of animated images
            image = ImageOps.exif_transpose(opened)
            return image.convert("RGB")
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except Exception as exc:  # PIL raises many types (struct.error, IndexError, ...) on bad input
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None


def preprocess_batch(
    images: Sequence[Image.Image], transform: Callable[[Image.Image], torch.Tensor]
) -> torch.Tensor:
    """Stack transformed RGB images into an ``(N, C, H, W)`` float tensor."""
    return torch.stack([transform(image) for image in images])
