"""SPTD2 configuration: one frozen dataclass, with the paper-sized and the CPU-sized presets.

The paper's network (VGG16-BN trunk, d = 128, 2048 soft keys per attention branch) is ``SPTD2Config.full()``.
``SPTD2Config.small()`` divides every VGG width by 4 and keeps fewer keys, so that a 640x480 frame runs in
about a second on one CPU core; it keeps the 128-D descriptor. See ``/work/shared/reference/sptd2-design.md``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

# torchvision ``vgg16_bn.features`` layout up to conv5_3 (index 42): conv widths, "M" = 2x2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# ReLU indices in ``vgg16_bn.features`` whose outputs are the three pyramid levels (strides 4, 8, 16).
VGG16_TAPS = (22, 32, 42)
LEVEL_STRIDES = (4, 8, 16)


@dataclass(frozen=True)
class SPTD2Config:
    """Every architectural choice of the network.

    Attributes:
        in_channels: 1 for grayscale input (what the frontend gives), 3 for RGB.
        width_divisor: every VGG16 conv width is divided by this (1 = paper size).
        dim: common token width d after feature uniformisation; also the descriptor size.
        heads: attention heads per branch (dim must be divisible by it).
        ffn_mult: hidden width of the feed-forward layer after each attention, as a multiple of dim
            (0 = no feed-forward layer, the literal non-local block).
        key_threshold: tau; a position of the key level is a key when its max-normalised soft score
            is above it (0 keeps every scored position up to ``max_keys``).
        max_keys: K_max, keys per branch (the top-scoring ones; those under tau are masked).
        min_keys: K_min, keys always kept (by score) even when under tau.
        weighted_values: multiply each gathered value by its renormalised soft score (gives the key
            selection a gradient; off in the paper reading).
    """

    in_channels: int = 1
    width_divisor: int = 1
    dim: int = 128
    heads: int = 4
    ffn_mult: int = 2
    key_threshold: float = 0.8
    max_keys: int = 2048
    min_keys: int = 64
    weighted_values: bool = False

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"SPTD2Config.in_channels must be 1 or 3, not {self.in_channels}")
        if self.width_divisor < 1 or 64 % self.width_divisor:
            raise ValueError(f"SPTD2Config.width_divisor must divide 64, not {self.width_divisor}")
        if self.dim < 1 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"SPTD2Config.dim ({self.dim}) must be a positive multiple of heads ({self.heads})")
        if not 0.0 <= self.key_threshold <= 1.0:
            raise ValueError(f"SPTD2Config.key_threshold must be in [0, 1], not {self.key_threshold}")
        if self.max_keys < 1 or not 1 <= self.min_keys <= self.max_keys:
            raise ValueError(
                f"SPTD2Config: need 1 <= min_keys ({self.min_keys}) <= max_keys ({self.max_keys})"
            )

    @classmethod
    def full(cls) -> "SPTD2Config":
        """The paper's size (VGG16-BN widths, d = 128, 2048 keys)."""
        return cls()

    @classmethod
    def small(cls) -> "SPTD2Config":
        """CPU size: VGG widths / 4, d = 128, 4 heads, FFN x1, 256 keys per branch."""
        return cls(width_divisor=4, dim=128, heads=4, ffn_mult=1, max_keys=256, min_keys=32)

    @classmethod
    def preset(cls, name: str) -> "SPTD2Config":
        presets = {"full": cls.full, "small": cls.small}
        if name not in presets:
            raise ValueError(f"unknown SPTD2 variant {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    @property
    def vgg_layout(self) -> tuple:
        return tuple(v if v == "M" else v // self.width_divisor for v in VGG16_LAYOUT)

    @property
    def level_channels(self) -> tuple[int, int, int]:
        """Channels of the conv3_3, conv4_3 and conv5_3 taps."""
        return (256 // self.width_divisor, 512 // self.width_divisor, 512 // self.width_divisor)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SPTD2Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SPTD2Config: unknown fields {unknown} (known: {sorted(known)})")
        return cls(**data)

    def architecture_hash(self) -> str:
        """Hash of the fields that change parameter shapes (not tau/keys, which are run-time choices)."""
        shape = {k: getattr(self, k) for k in ("in_channels", "width_divisor", "dim", "heads", "ffn_mult")}
        return hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
