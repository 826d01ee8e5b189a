"""Coarse transformer: 4 x [self, cross] "aggregated attention" layers with 2-D rotary encoding.

Each layer attends from a 4x-aggregated query grid (depthwise 4x4 conv, stride 4) to a 4x max-pooled
key/value grid, upsamples the message back x4 and fuses it with the input through an MLP (residual).
Self layers rotate queries and keys with RoPE (1-based positions, fp16-rounded sin/cos tables, as the
official module builds them). Cross layers update sequentially: image 1 attends to image 0's features
*after* this layer's update.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RoPE2d(nn.Module):
    """2-D rotary position encoding over ``d_model`` channels on the aggregated grid.

    Channel pair ``p = (2p, 2p+1)`` uses frequency ``f_k = exp(-k ln(10000) / (d_model/4))`` with
    ``k = p // 2``; even pairs rotate by ``row * f_k``, odd pairs by ``col * f_k``. Rows and columns
    count from 1 and are scaled by ``npe[0]/npe[2]`` and ``npe[1]/npe[3]``. The sin/cos values are
    computed in fp32 and rounded to fp16 (the official tables are stored in fp16).
    """

    def __init__(self, d_model: int = 256, npe: tuple[int, int, int, int] = (832, 832, 832, 832)) -> None:
        super().__init__()
        self.d_model = d_model
        self.row_scale = npe[0] / npe[2]
        self.col_scale = npe[1] / npe[3]
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``(h, w, d_model)`` fp16, every pair's value repeated twice."""
        key = (h, w, str(device))
        if key not in self._tables:
            nfreq = self.d_model // 4
            freq = torch.exp(torch.arange(nfreq, dtype=torch.float32) * (-math.log(10000.0) / nfreq))
            rows = torch.ones(h, w).cumsum(0).unsqueeze(-1) * self.row_scale  # 1..h
            cols = torch.ones(h, w).cumsum(1).unsqueeze(-1) * self.col_scale  # 1..w
            angle = torch.empty(h, w, self.d_model // 2)
            angle[..., 0::2] = rows * freq
            angle[..., 1::2] = cols * freq
            cos = torch.cos(angle).half().repeat_interleave(2, dim=-1)
            sin = torch.sin(angle).half().repeat_interleave(2, dim=-1)
            if len(self._tables) > 16:
                self._tables.clear()
            self._tables[key] = (cos.to(device), sin.to(device))
        return self._tables[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, h, w, d_model)`` -> rotated, same shape and dtype."""
        cos, sin = self.tables(x.shape[1], x.shape[2], x.device)
        shape = tuple(int(v) for v in x.shape)  # constants when traced for export: every shape is fixed
        pairs = x.reshape(*shape[:-1], shape[-1] // 2, 2)
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(shape)
        return (x * cos + rotated * sin).to(x.dtype)


class AggregatedAttentionLayer(nn.Module):
    """One layer, ``layer(x, source)``: ``x``, ``source`` ``(N, C, H, W)`` -> ``(N, C, H, W)``.

    State-dict names follow the official module: ``aggregate``, ``q_proj``, ``k_proj``, ``v_proj``,
    ``merge``, ``mlp.0``, ``mlp.2``, ``norm1``, ``norm2``.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, agg_size0: int = 4, agg_size1: int = 4) -> None:
        super().__init__()
        self.nhead, self.agg_size0, self.agg_size1 = nhead, agg_size0, agg_size1
        self.aggregate = nn.Conv2d(d_model, d_model, agg_size0, agg_size0, 0, bias=False, groups=d_model)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * d_model, 2 * d_model, bias=False),
            nn.LeakyReLU(0.01),
            nn.Linear(2 * d_model, d_model, bias=False),
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self, x: torch.Tensor, source: torch.Tensor, rope: RoPE2d | None = None, factored: bool = False
    ) -> torch.Tensor:
        """One layer. ``factored`` (streaming): ``mlp.0`` is split into its ``x`` and message columns and
        the message half is applied on the aggregated grid *before* the x4 upsampling (both maps are
        linear, so they commute): the same numbers up to float rounding, 16x fewer products for that
        half. Otherwise the official order (upsample, concatenate, ``mlp.0``)."""
        n, c, _, _ = x.shape
        query = self.norm1(self.aggregate(x).permute(0, 2, 3, 1))  # (N, h, w, C), h = H/4
        kv = self.norm1(F.max_pool2d(source, self.agg_size1, self.agg_size1).permute(0, 2, 3, 1))
        q, k, v = self.q_proj(query), self.k_proj(kv), self.v_proj(kv)
        h, w = q.shape[1:3]
        if rope is not None:
            q, k = rope(q), rope(k)
        heads = lambda t: t.reshape(n, -1, self.nhead, c // self.nhead).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))  # (N, nhead, h*w, C/nhead)
        message = self.merge(out.transpose(1, 2).reshape(n, h, w, c))  # (N, h, w, C)
        if factored:
            w0 = self.mlp[0].weight  # (2C, 2C): columns [:C] read x, [C:] read the message
            hidden = F.linear(x.permute(0, 2, 3, 1), w0[:, :c])  # (N, H, W, 2C)
            hidden += self._up(F.linear(message, w0[:, c:]).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            update = self.norm2(self.mlp[2](self.mlp[1](hidden)))
        else:
            message = self._up(message.permute(0, 3, 1, 2))
            update = self.norm2(self.mlp(torch.cat([x, message], dim=1).permute(0, 2, 3, 1)))
        return x + update.permute(0, 3, 1, 2)

    def _up(self, t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=self.agg_size0, mode="bilinear", align_corners=False)


class CoarseTransformer(nn.Module):
    """The 8-layer schedule on the 1/8 maps (state-dict prefix ``loftr_coarse.layers.{i}``)."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        layer_names: tuple[str, ...] = ("self", "cross") * 4,
        agg_size0: int = 4,
        agg_size1: int = 4,
        rope: bool = True,
        npe: tuple[int, int, int, int] = (832, 832, 832, 832),
    ) -> None:
        super().__init__()
        self.layer_names = tuple(layer_names)
        self.layers = nn.ModuleList(
            [AggregatedAttentionLayer(d_model, nhead, agg_size0, agg_size1) for _ in self.layer_names]
        )
        self.rope = RoPE2d(d_model, npe) if rope else None

    def self_layer(self, index: int, feat: torch.Tensor, factored: bool = False) -> torch.Tensor:
        """Layer ``index`` (a self layer) on one image: ``(N, C, h, w)`` -> same. Depends on that image
        alone, so the streaming path runs layer 0 at extraction time."""
        if self.layer_names[index] != "self":
            raise ValueError(f"layer {index} is a {self.layer_names[index]} layer, not a self layer")
        return self.layers[index](feat, feat, self.rope, factored)

    def forward(
        self,
        feat0: torch.Tensor,
        feat1: torch.Tensor,
        start: int = 0,
        collect: list | None = None,
        factored: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers ``start..7`` on ``feat0 (N, C, h0, w0)`` and ``feat1 (N, C, h1, w1)``.

        ``collect``: when a list, each layer's ``(feat0, feat1)`` output is appended to it.
        ``factored``: see :meth:`AggregatedAttentionLayer.forward` (the streaming path uses it).
        """
        for index in range(start, len(self.layers)):
            layer = self.layers[index]
            if self.layer_names[index] == "self":
                feat0 = layer(feat0, feat0, self.rope, factored)
                feat1 = layer(feat1, feat1, self.rope, factored)
            else:
                feat0 = layer(feat0, feat1, None, factored)
                feat1 = layer(feat1, feat0, None, factored)  # sequential: image 1 sees image 0's updated features
            if collect is not None:
                collect.append((feat0, feat1))
        return feat0, feat1
