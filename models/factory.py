"""Create timm classifiers by architecture name."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# `pretrained` values that mean "download the architecture's default weights from the hub".
HUB_WEIGHTS = "hub"


def create_classifier(
    architecture: str,
    num_classes: int,
    pretrained: str | Path | None = None,
    **timm_kwargs,
) -> torch.nn.Module:
    """A timm model with a fresh ``num_classes`` head.

    ``pretrained`` is ``None`` (random init), ``"hub"`` (the architecture's default weights
    from the timm/Hugging Face hub) or a path to a local ``.safetensors``/``.pth`` state dict.
    A backbone's own classifier is dropped when its size differs from ``num_classes``.
    """
    import timm

    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not timm.is_model(architecture):
        close = timm.list_models(f"*{architecture.split('.')[0][:6]}*")[:10]
        raise ValueError(f"unknown timm architecture {architecture!r}; similar names: {close}")

    kwargs = dict(timm_kwargs, num_classes=num_classes)
    if pretrained is None or pretrained == "":
        return timm.create_model(architecture, pretrained=False, **kwargs)
    if str(pretrained) == HUB_WEIGHTS:
        logger.info("Loading %s weights from the hub", architecture)
        return timm.create_model(architecture, pretrained=True, **kwargs)

    weights = Path(pretrained)
    if not weights.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {weights}")
    logger.info("Loading %s weights from %s", architecture, weights)
    return timm.create_model(
        architecture,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(weights)},
        **kwargs,
    )
