"""The one preprocessing definition shared by training evaluation and the service.

Input size, resize/crop, interpolation and mean/std are resolved from timm's data config for the
architecture (optionally overriding the input size) and then stored with the weights, so the
service rebuilds exactly the transform that evaluation used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from .image_io import to_rgb


class PreprocessConfig(BaseModel):
    """How an RGB image becomes the model's input tensor (timm data-config fields)."""

    model_config = ConfigDict(frozen=True)

    input_size: tuple[int, int, int] = Field(description="(channels, height, width)")
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = Field(0.875, gt=0.0, le=1.0)
    crop_mode: Literal["center", "squash", "border"] = "center"

    @property
    def resize_size(self) -> int:
        """Shorter side the image is resized to before the crop (timm's eval ``scale_size``)."""
        return math.floor(max(self.input_size[1:]) / self.crop_pct)

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


class EvalPreprocessing:
    """The eval transform in two steps, with results identical to :func:`create_eval_transform`.

    ``prepare`` does the geometry on one image (resize + crop to the model's input size, PIL);
    ``to_batch`` turns many prepared images into one normalised ``(N, C, H, W)`` float tensor in
    a few vectorised ops. The service runs ``prepare`` while it validates each request, so it
    overlaps the forward pass of the batch before, and ``to_batch`` on the whole batch: it
    stacks the uint8 pixels once and permutes them without a copy, which leaves the tensor
    channels-last, the layout the model runs in.
    """

    def __init__(self, config: PreprocessConfig) -> None:
        steps = create_eval_transform(config).transforms
        cut = next((i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__), None)
        if cut is None or len(steps) != cut + 2 or "Normalize" not in type(steps[-1]).__name__:
            raise ValueError(f"unexpected eval transform layout: {steps}")
        self.config = config
        self._geometry = steps[:cut]
        self._key = config.model_dump_json()
        self._mean = torch.tensor(config.mean).view(1, -1, 1, 1)
        self._std = torch.tensor(config.std).view(1, -1, 1, 1)

    def prepare(self, image: Image.Image) -> Image.Image:
        """Resize and crop an RGB image to the model's input size (marked as done)."""
        if self.is_prepared(image):
            return image
        for step in self._geometry:
            image = step(image)
        # A Python attribute, not ``image.info``: file metadata (a PNG text chunk) lands in
        # ``info``, and a client must not be able to claim its upload is already prepared.
        setattr(image, _PREPARED, self._key)
        return image

    def is_prepared(self, image: Image.Image) -> bool:
        prepared_for = getattr(image, _PREPARED, None)
        if prepared_for is not None and prepared_for != self._key:
            # Prepared (cropped) for another model: preparing again would silently crop twice.
            raise ValueError("image was prepared for a different model's preprocessing")
        return prepared_for == self._key

    @property
    def supports_tensors(self) -> bool:
        """Whether :meth:`prepare_tensor` can run this geometry (torchvision's Resize and
        CenterCrop, any interpolation but lanczos); timm's keep-ratio and pad steps are PIL-only."""
        kinds = [type(step).__name__ for step in self._geometry]
        lanczos = "lanczos" in self.config.interpolation
        return kinds == ["Resize", "CenterCrop"] and not lanczos

    def prepare_tensor(self, image: torch.Tensor) -> torch.Tensor:
        """Resize and crop a uint8 ``(3, H, W)`` RGB tensor to the model's input size on its own
        device, with the steps :meth:`prepare` runs (antialiased, so it matches PIL's resize to
        rounding, not bit for bit)."""
        if not self.supports_tensors:
            raise ValueError(f"{self._geometry} cannot run on tensors: use prepare()")
        for step in self._geometry:
            image = step(image)
        return image

    def to_batch(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        """Normalised float batch, channels-last; images not yet prepared are prepared here.

        Tensors are prepared uint8 ``(3, H, W)`` ones (:meth:`prepare_tensor`); a batch holding
        any is built on their device (the model's: tensors decoded on a GPU stay there).
        """
        if any(isinstance(image, torch.Tensor) for image in images):
            batch = self._stack_mixed(images)
        else:
            pixels = np.stack([np.asarray(self.prepare(_rgb(image))) for image in images])
            batch = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # NHWC memory = channels_last
        # Same operations, in the same order, as to_tensor + Normalize: bit-identical results.
        mean, std = self._mean.to(batch.device), self._std.to(batch.device)
        return batch.float().div_(255).sub_(mean).div_(std)

    def _stack_mixed(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` with NHWC memory, on the tensors' device."""
        [device] = {image.device for image in images if isinstance(image, torch.Tensor)}
        shape = tuple(self.config.input_size)
        pixels = []
        for image in images:
            if isinstance(image, torch.Tensor):
                if tuple(image.shape) != shape or image.dtype != torch.uint8:
                    raise ValueError(f"expected a prepared uint8 {shape} tensor, got "
                                     f"{image.dtype} {tuple(image.shape)}")  # fmt: skip
                pixels.append(image.permute(1, 2, 0))
            else:
                array = np.array(self.prepare(_rgb(image)))  # writable: torch refuses read-only
                pixels.append(torch.from_numpy(array).to(device))
        return torch.stack(pixels).permute(0, 3, 1, 2)


# Attribute set on images prepared by EvalPreprocessing: the preprocessing they were prepared for.
_PREPARED = "_image_classifier_prepared_for"


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else to_rgb(image)
