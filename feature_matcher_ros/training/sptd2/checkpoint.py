"""SPTD2 checkpoints as training writes them, and the helpers training needs around the model: the shipped
format (fp16 state dict, config, architecture hash, meta; read back by the runtime's
:func:`~feature_matcher_ros.backends.sptd2.model.load_checkpoint`), parameter counts, and torchvision's VGG16-BN
weights for the trunk."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...backends.sptd2.model import SPTD2, VGGTrunk


def load_trunk_from_torchvision(model: SPTD2, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a torchvision ``vgg16_bn`` state dict (keys ``features.{0..42}.*``) into the trunk (strict).

    Only meaningful at ``width_divisor == 1``; a grayscale model gets the sum of the RGB first-conv kernels.
    """
    if not isinstance(model.trunk, VGGTrunk):
        raise ValueError(f"only a VGG trunk takes torchvision weights, this model's trunk is {model.config.trunk!r}")
    wanted = model.trunk.state_dict()
    mapped = {}
    for key in wanted:
        source = state_dict.get(key)
        if source is None:
            raise KeyError(f"torchvision VGG16-BN state dict lacks {key!r}")
        if key == "features.0.weight" and source.shape[1] == 3 and model.config.in_channels == 1:
            source = source.sum(dim=1, keepdim=True)
        if source.shape != wanted[key].shape:
            raise ValueError(f"{key}: shape {tuple(source.shape)} does not fit {tuple(wanted[key].shape)}")
        mapped[key] = source
    model.trunk.load_state_dict(mapped, strict=True)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(model: SPTD2, path: str, meta: dict[str, Any] | None = None, half: bool = True) -> None:
    """Write ``{"config", "architecture_hash", "state_dict", "meta"}``; floats stored in fp16 when ``half``."""
    import json

    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    meta = json.loads(json.dumps(meta or {}, default=str))  # plain types only: loadable with weights_only
    torch.save(
        {"config": model.config.to_dict(), "architecture_hash": model.config.architecture_hash(),
         "state_dict": state, "meta": meta},
        path,
    )
