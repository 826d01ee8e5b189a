"""CasMTR-style max-pool non-maximum suppression, as pure functions usable by any backend.

CasMTR (Cao et al., ICCV 2023) keeps a position only when it is the arg-max of the k x k window centred on
it (max-pool, stride 1, padding k // 2 that never wins; exact ties settled by scan order so a flat plateau
keeps one position) and its confidence is above a threshold. Survivors are then at least k // 2 + 1 cells
apart (Chebyshev). It needs a dense confidence map; for sparse matches :func:`nms_matches` rasterises the
match scores onto a grid of ``cell`` pixels first.

Off by default everywhere: ``kernel_size <= 1`` means "no NMS" (every position/match above the threshold
is kept).

Functions:
    :func:`maxpool_nms` -- boolean mask of local maxima of a ``(..., H, W)`` confidence map (torch).
    :func:`nms_matches` -- indices of :class:`~feature_matcher_ros.backends.base.Matches` that survive
    NMS of their scores over image-0 positions (numpy in, numpy out).
"""

from __future__ import annotations

import numpy as np


def maxpool_nms(confidence, kernel_size: int = 5, threshold: float = 0.0):
    """Local-maximum mask of a confidence map.

    Args:
        confidence: torch tensor ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` (any float dtype).
        kernel_size: odd window size k (1 or 0 = no suppression, only the threshold).
        threshold: keep only values strictly above it.
    Returns:
        bool tensor of ``confidence``'s shape: True where the position is the arg-max of its k x k window
        and above ``threshold``.
    """
    import torch
    import torch.nn.functional as F

    if not isinstance(confidence, torch.Tensor):
        raise TypeError(f"maxpool_nms expects a torch.Tensor, got {type(confidence).__name__}")
    if confidence.ndim not in (2, 3, 4) or (confidence.ndim == 4 and confidence.shape[1] != 1):
        raise ValueError(f"maxpool_nms expects (H, W), (B, H, W) or (B, 1, H, W), got {tuple(confidence.shape)}")
    if kernel_size < 0 or (kernel_size > 1 and kernel_size % 2 == 0):
        raise ValueError(f"maxpool_nms kernel_size must be odd (or 0/1 for off), got {kernel_size}")
    above = confidence > threshold
    if kernel_size <= 1 or confidence.numel() == 0:
        return above
    shape = confidence.shape
    x = confidence.reshape(-1, 1, shape[-2], shape[-1]).float()
    x = torch.nan_to_num(x, nan=float("-inf"))
    # max_pool2d pads with -inf, so padding never wins; indices are flat positions in the H x W map
    _, index = F.max_pool2d(x, kernel_size, stride=1, padding=kernel_size // 2, return_indices=True)
    own = torch.arange(shape[-2] * shape[-1], device=x.device).view(1, 1, shape[-2], shape[-1])
    return (index == own).reshape(shape) & above


def nms_matches(kpts0: np.ndarray, scores: np.ndarray, image_size: tuple[int, int], kernel_size: int = 5,
                cell: int = 4, threshold: float = 0.0) -> np.ndarray:
    """Indices of matches kept by max-pool NMS of their scores over image-0 positions.

    Each match is placed in the ``cell``-pixel grid cell holding its image-0 keypoint (the best match of a
    cell represents it), then :func:`maxpool_nms` with ``kernel_size`` runs on that grid. CasMTR runs it on
    its 1/4 (cell 4) or 1/2 (cell 2) stage.

    Args:
        kpts0: ``(N, 2)`` ``(x, y)`` pixels in image 0.
        scores: ``(N,)`` higher is better.
        image_size: ``(H, W)`` of image 0.
        kernel_size: odd window in cells (0/1 = off: every match above ``threshold``).
        cell: grid cell in pixels (>= 1).
        threshold: keep only scores strictly above it.
    Returns:
        ``(M,)`` int64 indices into the matches, best score first.
    """
    import torch

    kpts0 = np.asarray(kpts0, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(kpts0) != len(scores):
        raise ValueError(f"nms_matches: {len(kpts0)} keypoints but {len(scores)} scores")
    if cell < 1:
        raise ValueError(f"nms_matches: cell must be >= 1 pixel, got {cell}")
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"nms_matches: image_size must be (H, W) > 0, got {image_size}")
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order]) & (scores[order] > threshold)]
    if kernel_size <= 1 or len(order) == 0:
        return order.astype(np.int64)
    gh, gw = -(-int(image_size[0]) // cell), -(-int(image_size[1]) // cell)
    cx = np.clip(np.floor((kpts0[order, 0] + 0.5) / cell).astype(np.int64), 0, gw - 1)
    cy = np.clip(np.floor((kpts0[order, 1] + 0.5) / cell).astype(np.int64), 0, gh - 1)
    flat = cy * gw + cx
    # the best match of each cell (order is best first, so the first occurrence wins)
    _, first = np.unique(flat, return_index=True)
    best = order[first]
    grid = torch.full((gh * gw,), float("-inf"), dtype=torch.float64)
    grid[torch.from_numpy(flat[first])] = torch.from_numpy(scores[best])
    keep = maxpool_nms(grid.view(gh, gw), kernel_size, threshold=float("-inf")).view(-1).numpy()
    kept = best[keep[flat[first]]]
    return kept[np.argsort(-scores[kept], kind="stable")].astype(np.int64)
