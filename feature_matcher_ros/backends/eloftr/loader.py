"""Reading the official Efficient LoFTR checkpoint (``eloftr_outdoor.ckpt``) unchanged.

Only the ``'state_dict'`` entry is used (other top-level entries, e.g. Lightning metadata, are ignored).
A leading ``matcher.`` is stripped when present; keys without it are accepted too. Loading is strict:
anything else (another model's checkpoint, a truncated or missing file) raises :class:`CheckpointError`
naming the file and the first missing / unexpected keys. ``torch.load(weights_only=True)`` is used, so
no code from the file is executed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from .config import EloftrConfig
from .model import EfficientLoFTR

PREFIX = "matcher."


class CheckpointError(ValueError):
    """The checkpoint file cannot be used (message names the file and the problem)."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's ``state_dict`` with one leading ``matcher.`` removed from each key (on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Efficient LoFTR checkpoint {str(path)!r} not found (or not a file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one clear error
        raise CheckpointError(
            f"Efficient LoFTR checkpoint {str(path)!r} cannot be read by torch.load(weights_only=True): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(truncated download, or not a torch checkpoint?)"
        ) from exc
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        keys = sorted(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"Efficient LoFTR checkpoint {str(path)!r} has no 'state_dict' entry (found {keys}); "
            "expected the official release file, e.g. eloftr_outdoor.ckpt"
        )
    state = obj["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"Efficient LoFTR checkpoint {str(path)!r}: 'state_dict' is not a mapping of tensors")
    return {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in state.items()}


def _first(keys: set[str], n: int = 5) -> str:
    shown = sorted(keys)[:n]
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(shown) + more


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    fuse: bool = True,
    config: EloftrConfig | None = None,
) -> EfficientLoFTR:
    """An eval-mode :class:`EfficientLoFTR` with the checkpoint's weights.

    The weights load strictly into the training (multi-branch RepVGG) form; with ``fuse`` (default)
    each RepVGG block is then folded into one 3x3 conv, in fp32, before moving to ``device``/``dtype``.
    """
    state = read_state_dict(path)
    model = EfficientLoFTR(config)
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
        raise CheckpointError(
            f"Efficient LoFTR checkpoint {str(path)!r} does not fit the model ({'; '.join(parts)}); "
            "is it another model's checkpoint?"
        )
    wrong = {k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)}
    if wrong:
        k = sorted(wrong)[0]
        raise CheckpointError(
            f"Efficient LoFTR checkpoint {str(path)!r}: {len(wrong)} tensors have the wrong shape, first "
            f"{k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    if fuse:
        model.backbone.fuse()
    return model.to(device=device, dtype=dtype)
