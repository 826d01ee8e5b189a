"""SPTD2 training losses (Eq. 11-12): repeatability (cosine similarity of score maps) plus peakiness
for the detector, and a detection-weighted circle loss for the descriptor.

Ground truth is a dense flow: ``flow (B, S, S, 2)`` gives, for each pixel of image 0, its ``(x, y)``
pixel in image 1, with ``valid (B, S, S)``. Level maps at stride s cover the same S x S area.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...backends.sptd2.config import LEVEL_STRIDES


@dataclass
class LossConfig:
    """r: peakiness weight; lam: description weight; patch_px: cosim/peaky footprint in image pixels
    (N_l = max(2, patch_px / s_l)); margin/gamma: circle loss; safe_radius_px: negatives closer than
    this to the true match are ignored; max_correspondences: per image and level; circle_scale: the circle
    loss is multiplied by it (1/gamma brings it to the detection losses' scale; with 1.0 its ~100x larger
    gradient pulled all detector mass onto a few points in our runs); distill: weight of the teacher
    heatmap term on S^1 (training-time teacher; 0 = none, the paper's losses alone)."""

    r: float = 0.5
    lam: float = 1.0
    patch_px: int = 16
    margin: float = 0.25
    gamma: float = 64.0
    safe_radius_px: float = 8.0
    max_correspondences: int = 256
    circle_scale: float = 1.0 / 64.0
    distill: float = 0.0


def to_grid(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel ``(x, y)`` -> grid_sample coordinates in [-1, 1] (align_corners=False). ``(..., 2)``."""
    scale = torch.tensor([2.0 / width, 2.0 / height], device=points.device, dtype=points.dtype)
    return (points + 0.5) * scale - 1.0


def level_correspondences(flow: torch.Tensor, valid: torch.Tensor,
                          stride: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell centres of level ``stride`` in image 0, their pixels in image 1, and validity.

    Returns ``pts0`` ``(H_l, W_l, 2)`` pixels, ``pts1`` ``(B, H_l, W_l, 2)`` pixels, ``ok`` ``(B, H_l, W_l)``.
    """
    b, size_h, size_w, _ = flow.shape
    hl, wl = size_h // stride, size_w // stride
    ys = (torch.arange(hl, device=flow.device, dtype=flow.dtype) + 0.5) * stride - 0.5
    xs = (torch.arange(wl, device=flow.device, dtype=flow.dtype) + 0.5) * stride - 0.5
    pts0 = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    grid = to_grid(pts0, size_h, size_w).expand(b, -1, -1, -1)
    pts1 = F.grid_sample(flow.permute(0, 3, 1, 2), grid, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    ok = F.grid_sample(valid[:, None].float(), grid, mode="bilinear", align_corners=False)[:, 0] > 0.999
    return pts0, pts1, ok


def cosim_loss(s0: torch.Tensor, s1_warped: torch.Tensor, ok: torch.Tensor, n: int) -> torch.Tensor:
    """1 - mean cosine of overlapping NxN patches (stride N/2) of two ``(B, 1, H_l, W_l)`` maps, over
    patches that are at least half valid. ``ok`` ``(B, H_l, W_l)``."""
    mask = ok[:, None].to(s0.dtype)
    stride = max(1, n // 2)
    p0 = F.unfold(s0 * mask, n, stride=stride)
    p1 = F.unfold(s1_warped * mask, n, stride=stride)
    share = F.unfold(mask, n, stride=stride).mean(dim=1)  # (B, P)
    cos = (F.normalize(p0, dim=1, eps=1e-8) * F.normalize(p1, dim=1, eps=1e-8)).sum(dim=1)
    use = share > 0.5
    if not use.any():
        return s0.sum() * 0.0
    return 1.0 - cos[use].mean()


def peaky_loss(scores: torch.Tensor, n: int) -> torch.Tensor:
    """1 - mean(maxpool_{N+1} - avgpool_{N+1}) of the 3x3-smoothed ``(B, 1, H_l, W_l)`` score map; in [0, 1]."""
    smooth = F.avg_pool2d(scores, 3, stride=1, padding=1, count_include_pad=False)
    k = n + 1
    pad = k // 2
    peak = (F.max_pool2d(smooth, k, stride=1, padding=pad)
            - F.avg_pool2d(smooth, k, stride=1, padding=pad, count_include_pad=False))
    return 1.0 - peak.mean()


def circle_loss(sim: torch.Tensor, negatives: torch.Tensor, margin: float, gamma: float) -> torch.Tensor:
    """Per-anchor circle loss. ``sim`` ``(..., M, M)`` cosine of anchor i in image 0 with j in image 1 (the
    diagonal holds the positives); ``negatives`` ``(..., M, M)`` bool marks usable (i, j) negatives. Both
    the row (i vs image-1 j) and the column (image-1 i vs image-0 j) of each anchor are its negatives.
    Returns ``(..., M)``."""
    positive = sim.diagonal(dim1=-2, dim2=-1)
    a_p = torch.relu(1 + margin - positive).detach()
    logit_p = -gamma * a_p * (positive - (1 - margin))
    neg_logits = gamma * torch.relu(sim + margin).detach() * (sim - margin)
    neg_inf = torch.finfo(sim.dtype).min
    rows = neg_logits.masked_fill(~negatives, neg_inf)
    cols = neg_logits.transpose(-1, -2).masked_fill(~negatives.transpose(-1, -2), neg_inf)
    lse = torch.logsumexp(torch.cat([rows, cols], dim=-1), dim=-1)
    lse = torch.where(negatives.any(-1) | negatives.any(-2), lse, torch.full_like(lse, -30.0))
    return F.softplus(lse + logit_p)


def description_loss(
    d0: torch.Tensor, d1: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor,
    pts0: torch.Tensor, pts1: torch.Tensor, ok: torch.Tensor, stride: int, size: tuple[int, int],
    cfg: LossConfig, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Detection-weighted circle loss at one level, averaged over the batch (0 where no correspondence).

    d0, d1: ``(B, d, H_l, W_l)`` unit descriptors; s0, s1: ``(B, 1, H_l, W_l)`` scores; pts0 ``(H_l, W_l, 2)``,
    pts1 ``(B, H_l, W_l, 2)`` pixels; ok ``(B, H_l, W_l)``. Up to ``cfg.max_correspondences`` valid cells
    per image are drawn at random (``generator``, on any device), all images at once.
    """
    b, dim = d0.shape[:2]
    radius = max(cfg.safe_radius_px, float(stride))
    flat_ok = ok.reshape(b, -1)
    m = min(cfg.max_correspondences, flat_ok.shape[1])
    draw = torch.rand(flat_ok.shape, generator=generator,
                      device=generator.device if generator is not None else flat_ok.device).to(flat_ok.device)
    cells = draw.masked_fill(~flat_ok, -1.0).topk(m, dim=1).indices  # valid cells first, in random order
    use = flat_ok.gather(1, cells)  # (B, M)
    p0 = pts0.reshape(1, -1, 2).expand(b, -1, -1).gather(1, cells[..., None].expand(-1, -1, 2))
    p1 = pts1.reshape(b, -1, 2).gather(1, cells[..., None].expand(-1, -1, 2))
    desc0 = d0.reshape(b, dim, -1).gather(2, cells[:, None].expand(-1, dim, -1)).transpose(1, 2)  # (B, M, d)
    score0 = s0.reshape(b, -1).gather(1, cells)
    grid = to_grid(p1, *size)[:, None]  # (B, 1, M, 2)
    desc1 = F.normalize(F.grid_sample(d1, grid, align_corners=False)[:, :, 0].transpose(1, 2), dim=2)
    score1 = F.grid_sample(s1, grid, align_corners=False)[:, 0, 0]
    sim = desc0 @ desc1.transpose(1, 2)
    pair_ok = use[:, :, None] & use[:, None, :]
    negatives = (torch.cdist(p0, p0) > radius) & (torch.cdist(p1, p1) > radius) & pair_ok
    per_anchor = cfg.circle_scale * circle_loss(sim, negatives, cfg.margin, cfg.gamma)
    weight = score0 * score1 * use
    per_image = (weight * per_anchor).sum(1) / weight.sum(1).clamp_min(1e-8)
    per_image = torch.where(use.sum(1) >= 2, per_image, torch.zeros_like(per_image))
    return per_image.sum() / b


def distillation_loss(scores: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Balanced binary cross-entropy of a full-resolution score map ``(B, 1, H, W)`` against a teacher's
    keypoint heatmap of the same image ``(B, 1, H, W)`` in [0, 1] (soft targets): the keypoint term is
    averaged over the teacher's mass and the background term over the rest, so the few keypoint pixels
    weigh as much as the many background ones. ~1.4 for an untrained map at 0.5, 0 when both agree."""
    if teacher.shape[-2:] != scores.shape[-2:]:
        teacher = F.adaptive_max_pool2d(teacher, scores.shape[-2:])
    s = scores.float().clamp(1e-6, 1 - 1e-6)
    t = teacher.float()
    positive = (t * -torch.log(s)).sum() / t.sum().clamp_min(1.0)
    negative = ((1 - t) * -torch.log1p(-s)).sum() / (1 - t).sum().clamp_min(1.0)
    return positive + negative


def sptd2_loss(out0: dict, out1: dict, flow: torch.Tensor, valid: torch.Tensor, cfg: LossConfig | None = None,
               generator: torch.Generator | None = None, teacher0: torch.Tensor | None = None,
               teacher1: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """L = sum_l [cosim + r (peaky0 + peaky1)] + lam * sum_l L_des (+ cfg.distill * the teacher term on
    S^1 when ``teacher0``/``teacher1`` ``(B, 1, S, S)`` heatmaps are given). ``out0``/``out1`` are model
    outputs of image 0 and image 1. A score map finer than its level (full-resolution S^1) gets the
    repeatability and peakiness losses at its own resolution and is average-pooled to the level's grid for
    the description weights. Returns the loss and its parts (floats) for logging."""
    cfg = cfg or LossConfig()
    size = tuple(flow.shape[1:3])
    parts = {"cosim": 0.0, "peaky": 0.0, "desc": 0.0, "distill": 0.0}
    total = flow.new_zeros(())
    for level, stride in enumerate(LEVEL_STRIDES):
        s0, s1 = out0["scores"][level].float(), out1["scores"][level].float()
        d0, d1 = out0["descriptors"][level].float(), out1["descriptors"][level].float()
        pts0, pts1, ok = level_correspondences(flow, valid, stride)
        score_stride = max(1, size[0] // s0.shape[-2])
        spts1, sok = pts1, ok
        if score_stride != stride:
            _, spts1, sok = level_correspondences(flow, valid, score_stride)
        n = max(2, cfg.patch_px // score_stride)
        s1_warped = F.grid_sample(s1, to_grid(spts1, *size), align_corners=False)
        cos = cosim_loss(s0, s1_warped, sok, n)
        peak = peaky_loss(s0, n) + peaky_loss(s1, n)
        if score_stride != stride:
            s0, s1 = F.avg_pool2d(s0, stride // score_stride), F.avg_pool2d(s1, stride // score_stride)
        desc = description_loss(d0, d1, s0, s1, pts0, pts1, ok, stride, size, cfg, generator)
        total = total + cos + cfg.r * peak + cfg.lam * desc
        parts["cosim"] += float(cos.detach())
        parts["peaky"] += float(peak.detach())
        parts["desc"] += float(desc.detach())
    if teacher0 is not None and teacher1 is not None and cfg.distill > 0:
        fine0, fine1 = out0["scores"][0], out1["scores"][0]
        distill = distillation_loss(fine0, teacher0) + distillation_loss(fine1, teacher1)
        total = total + cfg.distill * distill
        parts["distill"] = float(distill.detach())
    parts["total"] = float(total.detach())
    return total, parts
