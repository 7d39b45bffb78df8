"""Two-stage fine-tuning and layer-wise learning-rate decay.

Stage 1 (the first ``optim.freeze_backbone_epochs`` epochs) trains only the classifier head:
every other parameter has ``requires_grad`` off and the backbone's batch-norm layers run in eval
mode, so neither its weights nor its running statistics move. Stage 2 trains everything. The
stage is derived from the epoch number alone, so a resumed run lands in the right one.

All parameters stay in the optimiser in both stages (AdamW skips a parameter whose ``grad`` is
None, so a frozen one is neither stepped nor decayed): a checkpoint's optimiser state loads
whichever stage wrote it. The optimiser is therefore built before any freezing (timm's
parameter-group helpers leave out parameters that do not require grad).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


FREEZE_WITH_TORCHRUN = (
    "optim.freeze_backbone_epochs is not supported with torchrun (DistributedDataParallel "
    "fixes the trained parameters when it wraps the model); fine-tune in one process"
)


def check_world_size(*, freeze_backbone_epochs: int, world_size: int) -> None:
    if freeze_backbone_epochs and world_size > 1:
        raise ValueError(FREEZE_WITH_TORCHRUN)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The timm model inside a DistributedDataParallel wrapper (or the model itself)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def head_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The classifier head as timm declares it (``get_classifier``): what stage 1 trains."""
    model = unwrap(model)
    if not hasattr(model, "get_classifier"):
        raise ValueError(f"{type(model).__name__} has no get_classifier(): not a timm classifier")
    head = model.get_classifier()
    modules = list(head) if isinstance(head, tuple | list) else [head]
    if not any(p is not None for m in modules for p in m.parameters()):
        raise ValueError(f"{type(model).__name__} has a classifier head without parameters")
    return modules


def head_parameter_names(model: torch.nn.Module) -> list[str]:
    head_ids = {id(p) for m in head_modules(model) for p in m.parameters()}
    return [n for n, p in unwrap(model).named_parameters() if id(p) in head_ids]


def is_frozen_epoch(*, epoch: int, freeze_backbone_epochs: int) -> bool:
    """Whether 1-based ``epoch`` belongs to stage 1 (head only)."""
    return epoch <= freeze_backbone_epochs


def set_backbone_frozen(model: torch.nn.Module, *, frozen: bool) -> None:
    """Stage 1 (``frozen``): only the head's parameters require grad; stage 2: all do."""
    head_ids = {id(p) for m in head_modules(model) for p in m.parameters()}
    for parameter in unwrap(model).parameters():
        parameter.requires_grad_(not frozen or id(parameter) in head_ids)


def freeze_backbone_norms(model: torch.nn.Module) -> None:
    """Put the backbone's batch-norm layers in eval mode (call after ``model.train()``): a frozen
    backbone keeps the running statistics it was pretrained with. Dropout before the head stays
    as ``model.train()`` set it."""
    in_head = {id(m) for head in head_modules(model) for m in head.modules()}
    for module in unwrap(model).modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and id(module) not in in_head:
            module.eval()


def layer_decay_param_groups(
    model: torch.nn.Module, *, lr: float, weight_decay: float, layer_decay: float
) -> list[dict]:
    """timm's layer groups (``group_matcher``): the head's group gets ``lr``, each group below
    ``layer_decay`` times the one above it; no weight decay on norms, biases and the parameters
    the model lists in ``no_weight_decay()``. Sorted with the head's group first, so the logged
    ``lr`` (group 0) is the peak one."""
    from timm.optim import param_groups_layer_decay

    model = unwrap(model)
    if not hasattr(model, "group_matcher"):
        raise ValueError(
            f"optim.layer_decay needs a timm model with group_matcher(); "
            f"{type(model).__name__} has none"
        )
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_layer_decay(
        model, weight_decay=weight_decay, layer_decay=layer_decay, no_weight_decay_list=skip
    )
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return sorted(groups, key=lambda g: -g["lr_scale"])
