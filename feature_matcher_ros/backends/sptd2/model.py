"""SPTD2 network: VGG16-BN trunk, feature uniformisation, soft point-wise attention, residual fusion,
multi-level decoder (score maps and unit descriptors).

Shapes use B = batch, C = channels, H x W = input size (multiples of 16), H_l x W_l = size of level l
(strides 4, 8, 16), N_l = H_l * W_l tokens, K = keys per branch, d = token width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import LEVEL_STRIDES, LIGHT_LAYOUT, VGG16_TAPS, SPTD2Config


class VGGTrunk(nn.Module):
    """VGG16-BN ``features`` up to the ReLU of conv5_3, laid out index by index like torchvision's
    ``vgg16_bn().features[:43]`` (so such a state dict maps onto ``self.features`` key for key).

    forward: ``(B, in_channels, H, W)`` -> three maps ``(B, C_l, H/s_l, W/s_l)``, s_l = 4, 8, 16.
    """

    def __init__(self, config: SPTD2Config) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = config.in_channels
        for value in config.vgg_layout:
            if value == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, value, 3, padding=1), nn.BatchNorm2d(value), nn.ReLU(inplace=True)]
                channels = value
        self.features = nn.Sequential(*layers)
        assert len(self.features) == VGG16_TAPS[-1] + 1

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        x = image
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG16_TAPS:
                taps.append(x)
        return taps


class LightTrunk(nn.Module):
    """The light trunk of ``SPTD2Config.fast()``: plain 3x3 conv-BN-ReLU layers like VGG's, but narrow
    (:data:`LIGHT_LAYOUT`), one conv at full resolution, and strided convs instead of max-pools.

    forward: ``(B, in_channels, H, W)`` -> three maps ``(B, C_l, H/s_l, W/s_l)``, s_l = 4, 8, 16.
    """

    def __init__(self, config: SPTD2Config) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        channels = config.in_channels
        for index, widths in enumerate(LIGHT_LAYOUT):
            layers: list[nn.Module] = []
            for position, width in enumerate(widths):
                stride = 2 if index > 0 and position == 0 else 1
                layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                           nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
            self.stages.append(nn.Sequential(*layers))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        x = image
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index >= 2:
                taps.append(x)
        return taps


class FeatureUniformisation(nn.Module):
    """Channel attention (Eq. 1-2, DANet style) then a 1x1 projection to d.

    forward: ``(B, C, H_l, W_l)`` -> ``(B, d, H_l, W_l)``. With ``gamma == 0`` it is the 1x1 conv alone.
    """

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.proj = nn.Conv2d(channels, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        flat32 = flat.float()  # fp32 affinities: sums over N positions overflow fp16
        affinity = flat32 @ flat32.transpose(1, 2)  # (B, C, C)
        weights = torch.softmax(affinity, dim=-1).to(x.dtype)  # softmax subtracts the row max: stable
        mixed = (weights @ flat).reshape(b, c, h, w)
        return self.proj(self.gamma.to(x.dtype) * mixed + x)


class PositionEncoder(nn.Module):
    """MLP on normalised cell-centre coordinates in [0, 1]^2, shared by all levels.

    forward: level size ``(H_l, W_l)`` -> ``(1, d, H_l, W_l)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self._cache: dict[tuple, torch.Tensor] = {}

    def forward(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self._compute(height, width, device, dtype)
        # inference: the embedding depends only on the size and the weights (their in-place versions
        # change with every optimiser step or load_state_dict), so it is computed once per size
        key = (height, width, str(device), dtype, tuple((p.data_ptr(), p._version) for p in self.mlp.parameters()))
        if key not in self._cache:
            if len(self._cache) >= 8:
                self._cache.clear()
            self._cache[key] = self._compute(height, width, device, dtype)
        return self._cache[key]

    def _compute(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H_l, W_l, 2) as (x, y)
        return self.mlp(grid.to(dtype)).permute(2, 0, 1).unsqueeze(0)


def soft_keypoint_scores(features: torch.Tensor) -> torch.Tensor:
    """Soft "dual maximum" score of every position (Eq. 8-9, D2-Net style).

    Args:
        features: ``(B, C, H_l, W_l)`` non-negative backbone map of the key level.
    Returns:
        ``(B, H_l * W_l)`` scores, each row summing to one.
    """
    x = features.float()
    b = x.shape[0]
    x = x / x.reshape(b, -1).amax(dim=1).clamp_min(1e-6).view(b, 1, 1, 1)
    exp = torch.exp(x)
    # 3x3 window including the centre; padding with exp(0) = 1 (a zero feature outside the image)
    local_sum = 9.0 * F.avg_pool2d(F.pad(exp, (1, 1, 1, 1), value=1.0), 3, stride=1)
    alpha = exp / local_sum
    beta = x / x.amax(dim=1, keepdim=True).clamp_min(1e-6)
    gamma = (alpha * beta).amax(dim=1).reshape(b, -1)
    return gamma / gamma.sum(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def select_keys(
    scores: torch.Tensor, threshold: float, max_keys: int, min_keys: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft point-wise key selection (Eq. 10) with fixed shapes.

    Args:
        scores: ``(B, N)`` soft scores (``soft_keypoint_scores``).
        threshold: tau on the max-normalised score.
        max_keys, min_keys: K_max and K_min.
    Returns:
        index ``(B, K)`` long, K = min(max_keys, N), sorted by score; keep ``(B, K)`` bool, False where
        the key is under tau (and not among the ``min_keys`` best).
    """
    k = min(max_keys, scores.shape[1])
    top, index = scores.topk(k, dim=1)
    normalised = top / top[:, :1].clamp_min(1e-12)
    keep = normalised > threshold if threshold > 0 else torch.ones_like(normalised, dtype=torch.bool)
    keep[:, : min(min_keys, k)] = True
    return index, keep


class AttentionBranch(nn.Module):
    """One attention branch (in-, up- or down-scale): all positions of the query level attend to the
    selected keys of the key level. Pre-LayerNorm multi-head attention + optional feed-forward, residual.

    forward: queries ``(B, N_q, d)``, keys ``(B, N_k, d)``, optional ``index``/``keep`` ``(B, K)`` from
    :func:`select_keys` (None = every key position, i.e. full attention), optional ``weights`` ``(B, K)``
    multiplying the gathered values, optional position embeddings ``pos_q`` ``(B or 1, N_q, d)`` and
    ``pos_k`` ``(B or 1, N_k, d)`` added to the query and key inputs only -> ``(B, N_q, d)``.
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        if ffn_mult > 0:
            self.norm_ffn = nn.LayerNorm(dim)
            self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))
        else:
            self.ffn = None

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        index: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        pos_q: torch.Tensor | None = None,
        pos_k: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, d = queries.shape
        if index is not None:
            gather = index.unsqueeze(-1).expand(-1, -1, d)
            keys = torch.gather(keys, 1, gather)
            if pos_k is not None:
                pos_k = torch.gather(pos_k.expand(b, -1, -1), 1, gather)
        q = self.to_q(self.norm_q(queries if pos_q is None else queries + pos_q))
        k, v = self.to_kv(self.norm_kv(keys)).chunk(2, dim=-1)
        if pos_k is not None:
            k = self.to_kv(self.norm_kv(keys + pos_k))[..., :d]
        if weights is not None:
            v = v * weights.unsqueeze(-1).to(v.dtype)
        split = lambda t: t.reshape(b, t.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, K), True = attend
        message = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        x = queries + self.out(message.transpose(1, 2).reshape(b, n, d))
        if self.ffn is not None:
            x = x + self.ffn(self.norm_ffn(x))
        return x


class ResidualFusion(nn.Module):
    """``conv(a - b) + a`` with conv = kxk conv-BN-ReLU (Eq. 4-5; k = 3, or 1 in the fast variant).
    ``(B, d, H_l, W_l)`` twice -> same."""

    def __init__(self, dim: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(dim, dim, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(dim),
                                  nn.ReLU(inplace=True))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.conv(a - b) + a


class DecoderHead(nn.Module):
    """Descriptor D = P / |P| and score S = 2-class softmax(conv1x1(P * P))[1] (Eq. 6-7).

    With ``cell > 1`` the score conv predicts ``cell**2`` scores per position, one for each pixel of the
    position's cell, arranged by depth-to-space: S is then ``cell`` times finer than P. Each of them is a
    one-logit sigmoid, which is the same function as a 2-class softmax of two logits (their difference).

    forward: ``(B, d, H_l, W_l)`` -> descriptors ``(B, d, H_l, W_l)`` unit length, scores
    ``(B, 1, cell * H_l, cell * W_l)`` in [0, 1], and their logits (the same shape; ``S = sigmoid(logit)``:
    they rank what saturates at 1 in S).
    """

    def __init__(self, dim: int, cell: int = 1) -> None:
        super().__init__()
        self.cell = cell
        self.score = nn.Conv2d(dim, 2 if cell == 1 else cell * cell, 1)

    def forward(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        descriptors = F.normalize(p.float(), dim=1).to(p.dtype)
        logits = self.score(p * p).float()
        logit = logits[:, 1:2] - logits[:, :1] if self.cell == 1 else F.pixel_shuffle(logits, self.cell)
        return descriptors, torch.sigmoid(logit).to(p.dtype), logit.to(p.dtype)


class SPTD2(nn.Module):
    """The whole network. forward: ``(B, in_channels, H, W)`` in [0, 1], H and W multiples of 16 ->
    ``{"scores": [S^1, S^2, S^3], "descriptors": [D^1, D^2, D^3], "score_logits": [...]}`` with S^l
    ``(B, 1, H_l, W_l)`` (``score_logits``: S^l before the sigmoid) and
    D^l ``(B, d, H_l, W_l)``; levels at strides 4, 8, 16 (with ``config.fine_scores`` S^1 is ``(B, 1, H, W)``)."""

    # attention branches per level: (name, key level offset)
    BRANCHES = {0: (("in", 0), ("up", 1)), 1: (("in", 0), ("up", 1), ("down", -1)), 2: (("in", 0), ("down", -1))}

    def __init__(self, config: SPTD2Config | None = None) -> None:
        super().__init__()
        self.config = config or SPTD2Config()
        c = self.config
        self.trunk = LightTrunk(c) if c.trunk == "light" else VGGTrunk(c)
        self.uniformise = nn.ModuleList(FeatureUniformisation(ch, c.dim) for ch in c.level_channels)
        self.position = PositionEncoder(c.dim)
        self.branches = nn.ModuleDict(
            {f"{level}_{name}": AttentionBranch(c.dim, c.heads, c.ffn_mult)
             for level, names in self.BRANCHES.items() for name, _ in names}
        )
        k = c.fusion_kernel
        self.fuse_down = nn.ModuleList([nn.Identity(), ResidualFusion(c.dim, k), ResidualFusion(c.dim, k)])
        self.fuse_up = nn.ModuleList([ResidualFusion(c.dim, k), ResidualFusion(c.dim, k), nn.Identity()])
        cells = [LEVEL_STRIDES[0] if c.fine_scores else 1, 1, 1]
        self.heads = nn.ModuleList(DecoderHead(c.dim, cell) for cell in cells)
        self.key_threshold = c.key_threshold  # run-time choices, may be changed after loading
        self.max_keys = c.max_keys
        self.min_keys = c.min_keys

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        if image.ndim != 4 or image.shape[1] != self.config.in_channels:
            raise ValueError(
                f"SPTD2 expects a (B, {self.config.in_channels}, H, W) image tensor, got {tuple(image.shape)}"
            )
        h, w = image.shape[-2:]
        if h % 16 or w % 16 or h < 16 or w < 16:
            raise ValueError(f"SPTD2 input height and width must be positive multiples of 16, got {h}x{w}")
        taps = self.trunk((image - 0.5) / 0.25)
        tokens, positions, shapes = [], [], []
        qk_only = self.config.position_qk_only
        for level, tap in enumerate(taps):
            e = self.uniformise[level](tap)
            _, _, hl, wl = e.shape
            p = self.position(hl, wl, e.device, e.dtype)
            if qk_only:
                positions.append(p.flatten(2).transpose(1, 2))  # (1, N_l, d)
            else:
                e = e + p
            tokens.append(e.flatten(2).transpose(1, 2))  # (B, N_l, d)
            shapes.append((hl, wl))
        selections = []
        for tap in taps:
            scores = soft_keypoint_scores(tap)
            index, keep = select_keys(scores, self.key_threshold, self.max_keys, self.min_keys)
            weights = None
            if self.config.weighted_values:
                picked = torch.gather(scores, 1, index)
                weights = picked / picked.amax(dim=1, keepdim=True).clamp_min(1e-12)
            selections.append((index, keep, weights))
        out: dict[str, Any] = {"scores": [], "descriptors": [], "score_logits": []}
        for level, names in self.BRANCHES.items():
            hl, wl = shapes[level]
            branch_out = {}
            for name, offset in names:
                index, keep, weights = selections[level + offset]
                pos_q, pos_k = (positions[level], positions[level + offset]) if qk_only else (None, None)
                y = self.branches[f"{level}_{name}"](tokens[level], tokens[level + offset], index, keep, weights,
                                                     pos_q, pos_k)
                branch_out[name] = y.transpose(1, 2).reshape(-1, self.config.dim, hl, wl)
            p = branch_out["in"]
            if "down" in branch_out:
                p = self.fuse_down[level](p, branch_out["down"])
            if "up" in branch_out:
                p = self.fuse_up[level](p, branch_out["up"])
            descriptors, scores, logits = self.heads[level](p)
            out["descriptors"].append(descriptors)
            out["scores"].append(scores)
            out["score_logits"].append(logits)
        return out


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> tuple[SPTD2, dict[str, Any]]:
    """An fp32 :class:`SPTD2` in eval mode and the checkpoint's ``meta``. Clear errors on a bad file."""
    try:
        from torch.torch_version import TorchVersion

        with torch.serialization.safe_globals([TorchVersion]):  # older files stored torch.__version__ as is
            blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"SPTD2 weights not found: {path}") from None
    except Exception as error:  # noqa: BLE001 - anything torch.load raises means "not a checkpoint"
        raise ValueError(f"{path} is not a readable SPTD2 checkpoint: {error}") from error
    if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} is not an SPTD2 checkpoint (needs 'config' and 'state_dict' entries)")
    config = SPTD2Config.from_dict(blob["config"])
    stored_hash = blob.get("architecture_hash")
    if stored_hash is not None and stored_hash != config.architecture_hash():
        raise ValueError(f"{path}: architecture hash {stored_hash} does not match its config")
    model = SPTD2(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: state dict does not fit the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return model.eval(), dict(blob.get("meta", {}))
