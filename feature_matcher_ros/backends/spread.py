"""Keypoints for any scene: a budget that adapts the detector threshold, spread over a grid of cells.

In a texture-poor room a fixed detector threshold finds a few dozen keypoints, clustered on the few
textured objects; in a textured street it finds thousands, most on the same facade. Both starve the pose
(too few matches, or matches along one line). ORB-SLAM detects FAST corners per cell and lowers the threshold
where a cell has none; this module does the same for any OpenCV detector that reports a response:

1. :func:`adapt_threshold`: with fewer keypoints than the budget at the configured threshold, detect again at
   a floor and lower the threshold in halves until the budget is met (or the floor is reached: the image has
   nothing left); the keypoints above it are the candidates.
2. :func:`grid_select`: the budget taken round by round over square cells, every cell's strongest first, then
   every cell's second strongest, and so on: empty cells cost nothing and textured cells fill what is left.

Example:
    >>> import numpy as np
    >>> xy = np.array([[5, 5], [6, 5], [7, 5], [60, 60]], np.float32)   # three in one corner, one alone
    >>> response = np.array([0.9, 0.8, 0.7, 0.1], np.float32)
    >>> grid_select(xy, response, (64, 64), budget=2, cell_px=32).tolist()   # the lone weak one makes the cut
    [0, 3]
"""

from __future__ import annotations

import numpy as np


def grid_select(xy: np.ndarray, response: np.ndarray, size: tuple[int, int], budget: int, cell_px: int) -> np.ndarray:
    """Indices of at most ``budget`` keypoints spread over ``cell_px`` square cells of a ``size (h, w)`` image.

    Args:
        xy: ``(N, 2)`` ``(x, y)`` pixels; response: ``(N,)`` detector response (higher = stronger).
    Returns ``(min(N, budget),)`` int64 indices: by rank within their cell (each cell's strongest, then each
    cell's second, ...), ties in rank by response.
    """
    n = len(response)
    if n <= budget:
        return np.argsort(-response, kind="stable")
    h, w = size
    cols = max(1, int(np.ceil(w / cell_px)))
    cx = np.clip((xy[:, 0] // cell_px).astype(np.int64), 0, cols - 1)
    cy = np.clip((xy[:, 1] // cell_px).astype(np.int64), 0, max(0, int(np.ceil(h / cell_px)) - 1))
    cell = cy * cols + cx
    order = np.lexsort((-response, cell))  # by cell, strongest first within each
    sorted_cell = cell[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_cell))[0] + 1]
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    return np.lexsort((-response, rank))[:budget]


def adapt_threshold(response: np.ndarray, threshold: float, floor: float, budget: int, scale: float = 1.0) -> float:
    """The threshold the keypoints are cut at: ``threshold`` halved until at least ``budget`` responses reach
    ``threshold * scale`` (``scale`` maps the detector's threshold to its response units), never below
    ``floor``."""
    t = threshold
    while t > floor and np.count_nonzero(response >= t * scale) < budget:
        t = max(floor, t / 2)
    return t
