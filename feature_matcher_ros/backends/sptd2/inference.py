"""SPTD2 test-time procedure: one full-resolution pass, fused score map, NMS, top-K, sub-pixel refinement
and bilinear descriptor sampling; plus mutual-nearest-neighbour matching of two descriptor sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nms import maxpool_nms
from .config import LEVEL_STRIDES
from .model import SPTD2

MAX_KEYPOINTS = 5000


SCORE_LEVELS = ("all", "fine")


@dataclass
class DetectionConfig:
    """top_k: keypoints kept (<= 5000); nms_radius: NMS window is (2r+1)^2 pixels (1: the 3x3 window of the
    design digest); detection_threshold: minimum score; border: pixels ignored at the image edge; subpixel:
    quadratic refinement; score_levels: the map keypoints are detected and refined on (:func:`detection_maps`)."""

    top_k: int = 2048
    nms_radius: int = 1
    detection_threshold: float = 0.0
    border: int = 4
    subpixel: bool = True
    score_levels: str = "all"

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= MAX_KEYPOINTS:
            raise ValueError(f"top_k must be in [1, {MAX_KEYPOINTS}], got {self.top_k}")
        if self.nms_radius < 0:
            raise ValueError(f"nms_radius must be >= 0, got {self.nms_radius}")
        if self.score_levels not in SCORE_LEVELS:
            raise ValueError(f"score_levels must be one of {SCORE_LEVELS}, got {self.score_levels!r}")


def image_to_tensor(image, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(H, W)`` uint8 numpy grayscale -> ``(1, 1, H, W)`` tensor in [0, 1]. Clear errors on bad input."""
    import numpy as np

    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W) grayscale, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if min(image.shape) < 16:
        raise ValueError(f"image is too small for SPTD2 ({image.shape[1]}x{image.shape[0]}); need at least 16x16")
    return (torch.from_numpy(np.ascontiguousarray(image)).to(device=device, dtype=torch.float32).div(255.0)[None, None]
            .to(dtype))


def pad_to_multiple(image: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """Replicate-pad ``(B, C, H, W)`` on the right/bottom to multiples of ``multiple``."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image
    return F.pad(image.float(), (0, pw, 0, ph), mode="replicate").to(image.dtype)


def fused_score_map(scores: list[torch.Tensor], size: tuple[int, int],
                    padded: tuple[int, int] | None = None) -> torch.Tensor:
    """Average of the level score maps upsampled (bilinear) to the padded input size, cropped to ``size``.

    scores: ``[(B, 1, H_l, W_l)]`` (a map already at the padded size is used as it is); padded: the model
    input's size (default: the last map's size times its stride); returns ``(B, H, W)`` float32."""
    if padded is None:
        padded = (scores[-1].shape[-2] * LEVEL_STRIDES[-1], scores[-1].shape[-1] * LEVEL_STRIDES[-1])
    padded = tuple(padded)
    total = sum(s.float() if tuple(s.shape[-2:]) == padded
                else F.interpolate(s.float(), size=padded, mode="bilinear", align_corners=False) for s in scores)
    return (total / len(scores))[:, 0, : size[0], : size[1]]


def detection_maps(out: dict, size: tuple[int, int], padded: tuple[int, int], levels: str = "all"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(peaks, rank)``, each ``(B, H, W)``, from the network's output ``out``: keypoints are the local maxima of
    ``peaks``, refined to sub-pixel on it, ranked and scored by ``rank``, the levels' average
    (:func:`fused_score_map`, the design digest's reading of the paper). ``levels`` ``all``: the peaks are that
    average too; ``fine``: the finest level's logits alone (the fast variant scores level 1 at full resolution,
    where the coarser levels' upsampled maps blur its peaks; its scores saturate at 1 where the logits do not)."""
    rank = fused_score_map(out["scores"], size, padded)
    return (rank if levels == "all" else fused_score_map(out["score_logits"][:1], size, padded)), rank


def refine_subpixel(score: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Separable quadratic fit of ``score`` ``(H, W)`` around integer keypoints ``xy`` ``(N, 2)`` (long);
    returns float ``(N, 2)`` with offsets clamped to +-0.5 px (0 where the fit is not a maximum)."""
    h, w = score.shape
    x, y = xy[:, 0].clamp(1, w - 2), xy[:, 1].clamp(1, h - 2)
    c = score[y, x]

    def offset(minus: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
        curvature = minus - 2 * c + plus
        peaked = curvature < -1e-9
        delta = 0.5 * (minus - plus) / curvature.where(peaked, torch.full_like(curvature, -1.0))
        return torch.where(peaked, delta, torch.zeros_like(delta)).clamp(-0.5, 0.5)

    dx = offset(score[y, x - 1], score[y, x + 1])
    dy = offset(score[y - 1, x], score[y + 1, x])
    return xy.float() + torch.stack([dx, dy], dim=1)


def sample_descriptors(descriptors: list[torch.Tensor], keypoints: torch.Tensor,
                       padded: tuple[int, int]) -> torch.Tensor:
    """Sum of the bilinearly sampled level descriptors at ``keypoints`` ``(N, 2)`` pixels, L2-normalised.

    descriptors: ``[(1, d, H_l, W_l)]`` covering the padded ``(H, W)`` image; returns ``(N, d)`` float32."""
    h, w = padded
    grid = (keypoints.float() + 0.5) * torch.tensor([2.0 / w, 2.0 / h], device=keypoints.device) - 1.0
    grid = grid.view(1, 1, -1, 2)
    total = sum(F.grid_sample(d.float(), grid, mode="bilinear", align_corners=False)[0, :, 0] for d in descriptors)
    return F.normalize(total.t(), dim=1)


@torch.inference_mode()
def detect_and_describe(model: SPTD2, image: torch.Tensor, cfg: DetectionConfig) -> dict[str, torch.Tensor]:
    """Keypoints and descriptors of one image.

    Args:
        model: an :class:`SPTD2` in eval mode, on the image's device and dtype.
        image: ``(1, C, H, W)`` in [0, 1] (any H, W >= 16; padded internally to multiples of 16).
    Returns:
        ``keypoints`` ``(N, 2)`` float32 ``(x, y)`` pixels, ``scores`` ``(N,)`` float32 sorted best first,
        ``descriptors`` ``(N, d)`` float32 unit vectors; N <= top_k.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"detect_and_describe expects a (1, C, H, W) tensor, got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    padded = pad_to_multiple(image)
    out = model(padded)
    peaks, rank = (m[0] for m in detection_maps(out, (h, w), tuple(padded.shape[-2:]), cfg.score_levels))
    keep = (maxpool_nms(peaks, 2 * cfg.nms_radius + 1, float("-inf")) if cfg.nms_radius > 0
            else torch.ones_like(peaks, dtype=torch.bool))
    keep &= rank > cfg.detection_threshold
    b = min(cfg.border, (min(h, w) - 1) // 2)
    if b > 0:
        keep[:b] = False
        keep[-b:] = False
        keep[:, :b] = False
        keep[:, -b:] = False
    ys, xs = keep.nonzero(as_tuple=True)
    values = rank[ys, xs]
    top = values.topk(min(cfg.top_k, values.numel())).indices
    xy = torch.stack([xs[top], ys[top]], dim=1)
    values = values[top]
    keypoints = refine_subpixel(peaks, xy) if cfg.subpixel and h >= 3 and w >= 3 else xy.float()
    descriptors = sample_descriptors(out["descriptors"], keypoints, tuple(padded.shape[-2:]))
    return {"keypoints": keypoints.float(), "scores": values.float(), "descriptors": descriptors}


def _row_argmax(sim: torch.Tensor) -> torch.Tensor:
    """Index of each row's maximum. On the CPU numpy's argmax is several times faster than torch's."""
    if sim.device.type == "cpu" and sim.dtype == torch.float32:
        import numpy as np

        return torch.from_numpy(np.ascontiguousarray(sim.numpy().argmax(axis=1)))
    return sim.argmax(dim=1)


def mutual_nearest_neighbours(desc0: torch.Tensor, desc1: torch.Tensor, min_similarity: float = -1.0,
                              ratio: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours of unit descriptors ``(N0, d)`` and ``(N1, d)`` by cosine similarity.

    ``min_similarity``: drop pairs under it; ``ratio``: Lowe's test on Euclidean distances in both
    directions (1.0 = off). Returns ``idx0``, ``idx1`` (M,) long and ``similarity`` (M,) float32.

    A row's best column j is mutual when no other row of column j is more similar (the column maxima are
    reduced without indices, which is what keeps this fast)."""
    empty = torch.zeros(0, dtype=torch.long, device=desc0.device)
    if desc0.shape[0] == 0 or desc1.shape[0] == 0:
        return empty, empty, torch.zeros(0, device=desc0.device)
    sim = desc0.float() @ desc1.float().t()
    best01_index = _row_argmax(sim).to(sim.device)
    best01_value = sim.gather(1, best01_index[:, None])[:, 0]
    mutual = best01_value >= sim.amax(dim=0)[best01_index]
    mutual &= best01_value >= min_similarity
    if ratio < 1.0:
        def passes(s: torch.Tensor) -> torch.Tensor:  # rows: candidates; ratio of distances best/second
            if s.shape[1] < 2:
                return torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
            two = s.topk(2, dim=1).values
            dist = torch.sqrt((2 - 2 * two).clamp_min(0))
            return dist[:, 0] < ratio * dist[:, 1]

        mutual &= passes(sim) & passes(sim.t())[best01_index]
    i0 = torch.arange(sim.shape[0], device=sim.device)[mutual]
    i1 = best01_index[mutual]
    return i0, i1, best01_value[mutual]
