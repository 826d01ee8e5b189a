"""Online self-calibration of a rectified stereo rig's disparity offset. ROS-free.

A constant error ``δ`` in every disparity ``d = (u_l - cx) - (u_r - cx_r)`` (a right principal point off by
``δ`` pixels, the commonest residue of a stereo calibration) makes every depth ``Z = f b / (d + δ)`` wrong by a
different factor: far points most. One stereo pair cannot see it; two can. Between two stereo keyframes that
the front-end tracked metrically the same points are triangulated twice, at other depths, and a rigid motion
explains both only with the right ``δ``. :func:`fit_disparity_offset` finds the pose and ``δ`` that best
reproject the earlier keyframe's points into the later keyframe's left image and predict its disparities
(Huber-weighted Gauss-Newton, 7 parameters, from the PnP pose); :class:`DisparityOffset` keeps the median of
the last estimates, which the front-end applies to new keyframes (``stereo.self_calibrate``) once enough pairs
agree (``stereo.self_calibrate_min_pairs``, ``stereo.self_calibrate_max_sd_px``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .se3 import rotation_from_rotvec

HUBER_PX = 1.0
MIN_POINTS = 20
MAX_SD_PX = 0.25  # a pair that constrains the offset less than this (sideways motion, one depth) is not used
WINDOW = 50


@dataclass(frozen=True)
class Stereo2View:
    """Inlier matches between two stereo keyframes of one rig, in original pixels, with each keyframe's raw
    disparity (the offset not applied) at them, and the PnP pose of the second in the first
    (``X1 = R X0 + t``).

    Attributes:
        k0, k1: ``(N, 2)`` left-image pixels in keyframe 0 and 1.
        d0, d1: ``(N,)`` raw disparities (pixels).
        R, t: ``(3, 3)``, ``(3,)`` initial pose.
        K: ``(3, 3)`` the left camera matrix; ``baseline_m``: the rig's baseline.
    """

    k0: np.ndarray
    k1: np.ndarray
    d0: np.ndarray
    d1: np.ndarray
    R: np.ndarray
    t: np.ndarray
    K: np.ndarray
    baseline_m: float


@dataclass(frozen=True)
class OffsetFit:
    """One pair's estimate: the offset (pixels), its standard deviation from the fit, the points used."""

    offset_px: float
    sd_px: float
    points: int


def _residuals(v: Stereo2View, R: np.ndarray, t: np.ndarray, offset: float) -> np.ndarray:
    """``(3N,)``: keyframe 0's points (at ``offset``) seen from keyframe 1: ``u``, ``v`` and disparity errors."""
    fx, fy, cx, cy = v.K[0, 0], v.K[1, 1], v.K[0, 2], v.K[1, 2]
    fb = fx * v.baseline_m
    z0 = fb / (v.d0 + offset)
    X = np.column_stack([(v.k0[:, 0] - cx) * z0 / fx, (v.k0[:, 1] - cy) * z0 / fy, z0])
    P = X @ R.T + t
    with np.errstate(divide="ignore", invalid="ignore"):
        u = fx * P[:, 0] / P[:, 2] + cx - v.k1[:, 0]
        w = fy * P[:, 1] / P[:, 2] + cy - v.k1[:, 1]
        d = fb / P[:, 2] - (v.d1 + offset)
    return np.concatenate([u, w, d])


def _apply(R: np.ndarray, t: np.ndarray, offset: float, step: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The parameters moved by ``step`` ``(7,)`` = rotation vector (left), translation, offset."""
    return rotation_from_rotvec(step[:3]) @ R, t + step[3:6], offset + float(step[6])


def fit_disparity_offset(v: Stereo2View, offset0: float = 0.0, iterations: int = 10) -> OffsetFit | None:
    """The disparity offset that, with a rigid motion, best explains both keyframes' depths of the same points
    (see the module docstring); None with fewer than ``MIN_POINTS`` points or a degenerate fit."""
    ok = np.isfinite(v.d0) & np.isfinite(v.d1) & (v.d0 + offset0 > 0) & (v.d1 + offset0 > 0)
    if int(ok.sum()) < MIN_POINTS:
        return None
    v = Stereo2View(v.k0[ok], v.k1[ok], v.d0[ok], v.d1[ok], v.R, v.t, v.K, v.baseline_m)
    R, t, offset = np.asarray(v.R, np.float64), np.asarray(v.t, np.float64).ravel(), float(offset0)
    eps = 1e-6
    for _ in range(iterations):
        r = _residuals(v, R, t, offset)
        if not np.all(np.isfinite(r)):
            return None
        J = np.empty((len(r), 7))
        for j in range(7):
            e = np.zeros(7)
            e[j] = eps
            J[:, j] = (_residuals(v, *_apply(R, t, offset, e)) - r) / eps
        w = np.minimum(1.0, HUBER_PX / np.maximum(np.abs(r), 1e-12))  # Huber weights
        H = J.T @ (J * w[:, None])
        try:
            step = -np.linalg.solve(H, J.T @ (w * r))
        except np.linalg.LinAlgError:
            return None
        R, t, offset = _apply(R, t, offset, step)
        if np.abs(step).max() < 1e-8:
            break
    r = _residuals(v, R, t, offset)
    sigma2 = float(np.median(r**2)) / 0.455  # robust residual variance (median of chi2(1) is 0.455)
    try:
        sd = float(np.sqrt(sigma2 * np.linalg.inv(H)[6, 6]))
    except np.linalg.LinAlgError:
        return None
    if not (np.isfinite(offset) and np.isfinite(sd)):
        return None
    return OffsetFit(offset, sd, len(v.d0))


class DisparityOffset:
    """The running estimate: the median offset of the last ``WINDOW`` pair fits whose standard deviation is at
    most ``MAX_SD_PX`` (a median: single pairs scatter more than their own standard deviations say). The fits
    are held in a tuple replaced whole on each :meth:`add`, so another thread (the node's diagnostics) reads a
    consistent set without a lock."""

    def __init__(self) -> None:
        self._offsets: tuple[float, ...] = ()

    def add(self, fit: OffsetFit | None) -> None:
        if fit is not None and fit.sd_px <= MAX_SD_PX:
            self._offsets = (*self._offsets, fit.offset_px)[-WINDOW:]

    @property
    def count(self) -> int:
        return len(self._offsets)

    def value(self) -> float | None:
        """The median offset (pixels), None before the first fit."""
        x = self._offsets
        return float(np.median(x)) if x else None

    def sd(self) -> float:
        """The median's standard error from the fits' own scatter (1.2533 x 1.4826 MAD / sqrt(n): a normal
        sample's; single fits scatter several times more than their own standard deviations say); inf with
        fewer than 3 fits."""
        x = np.array(self._offsets)
        if len(x) < 3:
            return float("inf")
        mad = float(np.median(np.abs(x - np.median(x))))
        return 1.2533 * 1.4826 * mad / float(np.sqrt(len(x)))

    def clear(self) -> None:
        self._offsets = ()
