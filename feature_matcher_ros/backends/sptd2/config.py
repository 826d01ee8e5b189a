"""SPTD2 configuration: one frozen dataclass, with the paper-sized and the CPU-sized presets.

The paper's network (VGG16-BN trunk, d = 128, 2048 soft keys per attention branch) is ``SPTD2Config.full()``.
``SPTD2Config.small()`` divides every VGG width by 4 and keeps fewer keys, so that a 640x480 frame runs in
about a second on one CPU core; it keeps the 128-D descriptor. ``SPTD2Config.fast()`` is the real-time size
(see its docstring for what it changes against the paper). See ``shared/reference/sptd2-design.md`` beside the checkout.
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
# The light trunk of ``SPTD2Config.fast()``: conv widths per stage; stage i runs at stride 2**i and every
# stage after the first starts with a stride-2 3x3 conv instead of VGG's 2x2 max-pool. Stages 2, 3 and 4
# end in the three pyramid levels (strides 4, 8, 16).
LIGHT_LAYOUT = ((8,), (16,), (24, 32, 32), (64, 64), (96, 96))
TRUNKS = ("vgg", "light")


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
        trunk: ``"vgg"`` (VGG16-BN layout, widths / width_divisor) or ``"light"`` (:data:`LIGHT_LAYOUT`,
            strided convs; width_divisor must be 1).
        fusion_kernel: kernel of the residual-fusion conv (3 = the digest's reading, 1 = cheaper).
        fine_scores: the level-1 score head predicts one score per pixel of its 4x4 cell (16 channels,
            depth-to-space), so S^1 is at full image resolution instead of stride 4.
        position_qk_only: the position embedding enters only the attention's queries and keys (it decides
            where to attend) instead of being added to the tokens, so that the values, the residual
            stream and hence the descriptors carry no absolute image position.
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
    trunk: str = "vgg"
    fusion_kernel: int = 3
    fine_scores: bool = False
    position_qk_only: bool = False

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"SPTD2Config.in_channels must be 1 or 3, not {self.in_channels}")
        if self.width_divisor < 1 or 64 % self.width_divisor:
            raise ValueError(f"SPTD2Config.width_divisor must divide 64, not {self.width_divisor}")
        if self.dim < 1 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"SPTD2Config.dim ({self.dim}) must be a positive multiple of heads ({self.heads})")
        if not 0.0 <= self.key_threshold <= 1.0:
            raise ValueError(f"SPTD2Config.key_threshold must be in [0, 1], not {self.key_threshold}")
        if self.trunk not in TRUNKS:
            raise ValueError(f"SPTD2Config.trunk must be one of {TRUNKS}, not {self.trunk!r}")
        if self.trunk == "light" and self.width_divisor != 1:
            raise ValueError("SPTD2Config: the light trunk has its own widths; width_divisor must be 1")
        if self.fusion_kernel not in (1, 3):
            raise ValueError(f"SPTD2Config.fusion_kernel must be 1 or 3, not {self.fusion_kernel}")
        if self.max_keys < 1 or not 1 <= self.min_keys <= self.max_keys:
            raise ValueError(
                f"SPTD2Config: need 1 <= min_keys ({self.min_keys}) <= max_keys ({self.max_keys})"
            )

    @classmethod
    def full(cls) -> SPTD2Config:
        """The paper's size (VGG16-BN widths, d = 128, 2048 keys)."""
        return cls()

    @classmethod
    def small(cls) -> SPTD2Config:
        """CPU size: VGG widths / 4, d = 128, 4 heads, FFN x1, 256 keys per branch."""
        return cls(width_divisor=4, dim=128, heads=4, ffn_mult=1, max_keys=256, min_keys=32)

    @classmethod
    def fast(cls) -> SPTD2Config:
        """Real-time size (a 640x480 frame in about a tenth of a second on two CPU threads).

        What it changes against the paper (design digest section in brackets):
        light trunk instead of VGG16-BN (2; strided 3x3 convs, widths 8..96, same three strides 4/8/16);
        d = 64 instead of 128 (3.1, 4: token width and descriptor size); 2 heads, no feed-forward layer
        (3.3: the literal non-local block); 64 soft keys per branch instead of 2048 (3.4, same tau = 0.8);
        1x1 residual-fusion conv (3.5); level-1 scores at full resolution (4: depth-to-space score head);
        the position embedding goes into queries and keys only (3.2: E = e + p feeds Q and K, while the
        values and the residual path use e, so descriptors hold no absolute position).
        """
        return cls(dim=64, heads=2, ffn_mult=0, max_keys=64, min_keys=16, trunk="light", fusion_kernel=1,
                   fine_scores=True, position_qk_only=True)

    @classmethod
    def preset(cls, name: str) -> SPTD2Config:
        presets = {"full": cls.full, "small": cls.small, "fast": cls.fast}
        if name not in presets:
            raise ValueError(f"unknown SPTD2 variant {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    @property
    def vgg_layout(self) -> tuple:
        return tuple(v if v == "M" else v // self.width_divisor for v in VGG16_LAYOUT)

    @property
    def level_channels(self) -> tuple[int, int, int]:
        """Channels of the three trunk taps (conv3_3, conv4_3 and conv5_3 for VGG)."""
        if self.trunk == "light":
            return tuple(stage[-1] for stage in LIGHT_LAYOUT[2:])
        return (256 // self.width_divisor, 512 // self.width_divisor, 512 // self.width_divisor)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SPTD2Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SPTD2Config: unknown fields {unknown} (known: {sorted(known)})")
        return cls(**data)

    def architecture_hash(self) -> str:
        """Hash of the fields that change parameter shapes (not tau/keys, which are run-time choices)."""
        shape = {k: getattr(self, k) for k in ("in_channels", "width_divisor", "dim", "heads", "ffn_mult")}
        for name, default in (("trunk", "vgg"), ("fusion_kernel", 3), ("fine_scores", False),
                              ("position_qk_only", False)):
            if getattr(self, name) != default:  # older checkpoints keep their hash
                shape[name] = getattr(self, name)
        return hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
