"""RepVGG backbone (stages 0-3): 1/2, 1/4 and 1/8 feature maps of a grayscale image.

The checkpoint stores the multi-branch training form (3x3 conv+BN, 1x1 conv+BN, identity BN). After
loading, :meth:`RepVGGBackbone.fuse` turns every block into one 3x3 conv with bias (the deploy form the
released model was evaluated in). The un-fused form stays usable (same result within fp32 noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Module):
    """Conv (no bias) followed by an eval-mode BatchNorm; state-dict names ``conv.*`` and ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _fold_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kernel * t, beta - mean * t)`` with ``t = gamma / sqrt(var + eps)`` per output channel."""
    t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return kernel * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * t


class RepVGGBlock(nn.Module):
    """``ReLU(dense3x3(x) + conv1x1(x) [+ identityBN(x)])``; the identity branch exists only when
    ``cin == cout`` and ``stride == 1``.

    Shapes: ``(N, cin, H, W)`` -> ``(N, cout, H/stride, W/stride)``.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        self.rbr_dense = ConvBN(cin, cout, 3, stride, 1)
        self.rbr_1x1 = ConvBN(cin, cout, 1, stride, 0)
        self.rbr_identity = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None
        self.fused: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return F.relu(self.fused(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return F.relu(out)

    @torch.no_grad()
    def fuse(self) -> None:
        """Replace the branches by one equivalent 3x3 conv with bias (exact up to float rounding)."""
        if self.fused is not None:
            return
        kernel, bias = _fold_bn(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        k1, b1 = _fold_bn(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel = kernel + F.pad(k1, (1, 1, 1, 1))  # the 1x1 kernel becomes the centre tap
        bias = bias + b1
        if self.rbr_identity is not None:
            eye = torch.zeros_like(kernel)
            eye[torch.arange(self.cout), torch.arange(self.cout), 1, 1] = 1.0
            ki, bi = _fold_bn(eye, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        conv = nn.Conv2d(self.cin, self.cout, 3, self.stride, 1, bias=True).to(kernel.device, kernel.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self.fused = conv
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity
        self.rbr_dense = self.rbr_1x1 = self.rbr_identity = None


class RepVGGBackbone(nn.Module):
    """Stages 0-3 of RepVGG with blocks [1, 2, 4, 14] (layer0 is a single block).

    ``forward(img)``: ``(N, 1, H, W)`` -> ``x1 (N, 64, H/2, W/2)``, ``x2 (N, 128, H/4, W/4)``,
    ``c (N, 256, H/8, W/8)``.
    """

    def __init__(self, block_dims: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        d1, d2, d3 = block_dims
        self.layer0 = RepVGGBlock(1, d1, 2)
        self.layer1 = self._stage(d1, d1, 2, 1)
        self.layer2 = self._stage(d1, d2, 4, 2)
        self.layer3 = self._stage(d2, d3, 14, 2)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*[RepVGGBlock(cin if k == 0 else cout, cout, stride if k == 0 else 1)
                               for k in range(blocks)])

    def blocks(self) -> list[RepVGGBlock]:
        return [m for m in self.modules() if isinstance(m, RepVGGBlock)]

    def fuse(self) -> None:
        for block in self.blocks():
            block.fuse()

    @property
    def is_fused(self) -> bool:
        return all(b.fused is not None for b in self.blocks())

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x1 = self.layer1(self.layer0(img))
        x2 = self.layer2(x1)
        c = self.layer3(x2)
        return x1, x2, c
