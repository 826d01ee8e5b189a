"""Efficient LoFTR (Wang et al., CVPR 2024): a clean-room re-implementation, exact to the official model.

``EfficientLoFTRBackend`` is the ``eloftr`` backend; ``load_model`` reads the official checkpoint; the
network itself is :class:`EfficientLoFTR` (see :mod:`.model` for the streaming and reference paths).
"""

from .backend import EfficientLoFTRBackend
from .config import DEFAULT_THRESHOLDS, MODES, EloftrConfig
from .loader import CheckpointError, load_model, read_state_dict
from .model import EfficientLoFTR

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MODES",
    "CheckpointError",
    "EfficientLoFTR",
    "EfficientLoFTRBackend",
    "EloftrConfig",
    "load_model",
    "read_state_dict",
]
