"""Keyframes: the policy that decides when the current frame becomes the keyframe, and the bounded cache.

Policy (:class:`KeyframePolicy`): after a frame is matched against the keyframe and its pose estimated,

* tracking is **lost** when there is no pose (too few matches, estimation failed) or fewer than
  ``tracking.min_inliers`` inliers: the frontend then tries the cached keyframes (relocalisation) and, when none
  fits, makes the current frame a new keyframe ("tracking lost");
* otherwise a **new keyframe** is taken when the inliers fall below ``keyframe.min_inliers`` or the parallax
  grows past ``keyframe.max_parallax_px``. Parallax is the median displacement of the inliers in pixels
  (``keyframe.parallax = "displacement"``), or that displacement once the estimated rotation is removed
  (``"rotation_compensated"``, only translation counts: turning in place does not trigger keyframes).

Cache (:class:`KeyframeCache`): the last ``keyframe_cache_size`` keyframes (newest last), each with its
features computed once. Memory is bounded by the entry count and reported as the sum of ``Features.nbytes``.

Example:
    >>> policy = KeyframePolicy(min_inliers=30, max_parallax_px=50.0, min_tracking_inliers=15)
    >>> policy.decide(num_inliers=23, parallax_px=4.0)
    (True, 'inliers 23 < 30')
    >>> policy.decide(num_inliers=200, parallax_px=61.0)
    (True, 'parallax 61 px > 50')
    >>> policy.decide(num_inliers=200, parallax_px=10.0)
    (False, '')
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends.base import Backend, Features
from .camera import CameraModel

PARALLAX_MODES = ("displacement", "rotation_compensated")


@dataclass(eq=False)  # identity comparison: two keyframes are never "equal"
class Keyframe:
    """One cached keyframe.

    Attributes:
        features: the backend's features of the (possibly resized) keyframe image, computed once.
        stamp_ns: the keyframe image's stamp.
        index: keyframe counter since start (0 for the first keyframe).
        frame_index: the frame counter of the frame that became this keyframe.
        camera: the camera of the original (un-resized) image.
        image_size: ``(H, W)`` of the original image.
        T_world: ``(4, 4)`` chained odometry pose ``T_world_keyframe`` (None when unknown).
        covariance: ``(6, 6)`` covariance of ``T_world`` over ``[x, y, z, rx, ry, rz]`` (see :mod:`.se3`).
        depth: ``(H, W)`` float32 metres on the original image's pixel grid (NaN = none): the registered depth
            (RGB-D) or the triangulated left-right matches (stereo, sparse); None for a monocular keyframe.
        depth_noise: the standard deviation of a depth ``Z`` over ``Z²`` (1/m), for the pose covariance.
        landmarks: ``(K, 5)`` float32 ``x y z u v``: 3-D points in the keyframe camera frame (metres) and their
            keyframe pixels (see :meth:`~feature_matcher_ros.frontend.Frontend.process`); None without depth.
        window: earlier keyframes' measurements of its keypoints (:class:`~.metric_window.WindowPoints`,
            ``pnp.window``); None when it has none.
        disparity_offset_px: the offset added to a stereo keyframe's disparities when its depth was made
            (:mod:`.stereo_calibration`).
    """

    features: Features
    stamp_ns: int
    index: int
    frame_index: int
    camera: CameraModel
    image_size: tuple[int, int]
    T_world: np.ndarray | None = None
    covariance: np.ndarray | None = None
    depth: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    depth_noise: float = 0.0
    window: Any = None
    disparity_offset_px: float = 0.0

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.depth, self.landmarks, self.window) if a is not None)
        return self.features.nbytes + extra


class KeyframePolicy:
    """When to take a new keyframe and when tracking is lost (see the module docstring)."""

    def __init__(self, min_inliers: int = 50, max_parallax_px: float = 60.0, min_tracking_inliers: int = 20,
                 parallax: str = "displacement") -> None:
        if parallax not in PARALLAX_MODES:
            raise ValueError(f"parallax must be one of {PARALLAX_MODES}, got {parallax!r}")
        self.min_inliers = int(min_inliers)
        self.max_parallax_px = float(max_parallax_px)
        self.min_tracking_inliers = int(min_tracking_inliers)
        self.parallax = parallax

    def lost(self, num_inliers: int | None) -> bool:
        """No pose (``None``) or too few inliers to trust it."""
        return num_inliers is None or num_inliers < self.min_tracking_inliers

    def decide(self, num_inliers: int, parallax_px: float) -> tuple[bool, str]:
        """``(new_keyframe, reason)`` for a tracked frame."""
        if num_inliers < self.min_inliers:
            return True, f"inliers {num_inliers} < {self.min_inliers}"
        if parallax_px > self.max_parallax_px:
            return True, f"parallax {parallax_px:.0f} px > {self.max_parallax_px:g}"
        return False, ""


def median_displacement_px(kpts0: np.ndarray, kpts1: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Median ``|kpts1 - kpts0|`` in pixels over ``mask`` (all when None); 0 for no points."""
    d = np.linalg.norm(np.asarray(kpts1, np.float64) - np.asarray(kpts0, np.float64), axis=1)
    if mask is not None:
        d = d[np.asarray(mask, bool)]
    return float(np.median(d)) if len(d) else 0.0


class KeyframeCache:
    """The last ``capacity`` keyframes, newest last; the newest is the active one (matched against)."""

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"keyframe cache capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._items: deque[Keyframe] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Keyframe]:
        return iter(self._items)

    @property
    def active(self) -> Keyframe | None:
        return self._items[-1] if self._items else None

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached features (sum of ``Features.nbytes``)."""
        return sum(k.nbytes for k in self._items)

    def add(self, keyframe: Keyframe) -> None:
        """Make ``keyframe`` the active one, evicting the oldest beyond the capacity."""
        self._items.append(keyframe)
        while len(self._items) > self.capacity:
            self._items.popleft()

    def activate(self, keyframe: Keyframe) -> None:
        """Move a cached keyframe to the newest (active) position (after relocalising to it)."""
        self._items.remove(keyframe)
        self._items.append(keyframe)

    def older(self) -> list[Keyframe]:
        """The cached keyframes other than the active one, newest first (relocalisation order)."""
        return list(self._items)[-2::-1]

    def resize(self, capacity: int) -> None:
        """Change the capacity, evicting the oldest entries (never the active one)."""
        if capacity < 1:
            raise ValueError(f"keyframe cache capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        while len(self._items) > self.capacity:
            self._items.popleft()

    def clear(self) -> None:
        self._items.clear()

    def sync(self, backend: Backend) -> list[Keyframe]:
        """Bring every entry to the backend's precision and device via ``backend.convert_features``;
        entries that cannot be converted are dropped (the cache never mixes dtypes or devices).
        Returns the dropped keyframes."""
        kept, dropped = deque(), []
        for kf in self._items:
            f = kf.features
            if f.backend == backend.name and f.precision == backend.precision and f.device == backend.device:
                kept.append(kf)
                continue
            conv = backend.convert_features(f)
            if (conv is None or conv.backend != backend.name or conv.precision != backend.precision
                    or conv.device != backend.device):
                dropped.append(kf)
            else:
                kf.features = conv
                kept.append(kf)
        self._items = kept
        return dropped
