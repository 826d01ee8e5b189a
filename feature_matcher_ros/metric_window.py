"""Metric poses refined over more than one keyframe (``pnp.window``). ROS-free.

A keyframe made from a frame with a metric pose keeps its *window*: the points that the keyframe it was matched
with (and, through that one's window, up to ``pnp.window`` keyframes back) measured at its inlier keypoints, moved
into the new keyframe's camera frame by the poses between, with their covariances (the measuring keyframe's depth
noise along its own ray, rotated, plus the uncertainty of the poses that moved them). A frame matched against the
keyframe is first solved by PnP against the keyframe's own depth (:func:`~.metric_keyframe.metric_pose`); then the
pose is refined (weighted Gauss-Newton, Huber kernel, :func:`~.metric.refine_weighted`) on those points together
with every earlier measurement of the same keypoints, so that the depth noise of one keyframe does not become the
step's error. No new matching: a keypoint is the same one when the keyframe's matchings place it on the same pixel
(detector backends extract a keyframe once; a dense matcher's keypoints agree less often and get fewer window
points). The step's covariance stays the one against the active keyframe alone (the earlier points share the
errors of the poses that moved them, which a per-point covariance cannot say; measured: docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backends.base import Matches
from .camera import CameraModel
from .geometry import RelativePose
from .metric import (
    AbsolutePose,
    back_project,
    point_jacobian,
    ray_covariance,
    refine_weighted,
    reprojection,
    residual_information,
    residual_variance,
)

SAME_PIXEL_PX = 0.5  # two matchings of one keyframe place one of its keypoints within this (detector backends: 0)
GATE_CHI2 = 9.21  # an earlier measurement further than this (whitened, chi^2(2) 99 %) from the PnP pose is dropped
HUBER = 1.345 * 2  # Huber width on the whitened residual norms of the windowed refinement


@dataclass
class WindowPoints:
    """Earlier keyframes' measurements of a keyframe's keypoints, in that keyframe's camera frame.

    Attributes:
        pixels: ``(M, 2)`` the keyframe's own pixels (original image) where each point is seen.
        X: ``(M, 3)`` the point as an earlier keyframe's depth measured it, in this keyframe's frame (metres).
        cov: ``(M, 3, 3)`` its covariance (depth noise along the measuring ray plus the poses that moved it).
        age: ``(M,)`` how many keyframes back it was measured (1: the keyframe this one was matched with).
    """

    pixels: np.ndarray
    X: np.ndarray
    cov: np.ndarray
    age: np.ndarray

    def __len__(self) -> int:
        return len(self.age)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.pixels, self.X, self.cov, self.age))


def same_pixels(a: np.ndarray, b: np.ndarray, tol: float = SAME_PIXEL_PX) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(ia, ib)`` of the points of ``a (M, 2)`` and ``b (N, 2)`` that round to the same pixel and lie
    within ``tol`` of each other (one-to-many: a pixel of ``b`` may have several measurements in ``a``).

    >>> same_pixels(np.array([[1.0, 2.0], [5.0, 5.0], [1.2, 2.1]]), np.array([[1.0, 2.0], [9.0, 9.0]]))
    (array([0, 2]), array([0, 0]))
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ka, kb = _pixel_keys(a), _pixel_keys(b)
    order = np.argsort(ka, kind="stable")
    lo, hi = np.searchsorted(ka[order], kb, "left"), np.searchsorted(ka[order], kb, "right")
    counts = hi - lo
    ib = np.repeat(np.arange(len(b)), counts)
    start = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    ia = order[start + np.arange(len(ib))]
    near = np.abs(a[ia] - b[ib]).max(axis=1) <= tol
    return ia[near], ib[near]


def _pixel_keys(p: np.ndarray) -> np.ndarray:
    q = np.rint(np.asarray(p, np.float64)).astype(np.int64)
    return q[:, 0] * 1_000_003 + q[:, 1]


def carry_window(from_kf_camera: CameraModel, from_depth_noise: float, from_window: WindowPoints | None,
                 m: Matches, depth0: np.ndarray, pose: RelativePose, depth: int) -> WindowPoints | None:
    """The window of a keyframe made from a frame whose metric pose against an earlier keyframe (its camera,
    depth noise and window) is ``pose``, from their matches ``m`` and that keyframe's depth ``depth0`` at them:
    the earlier keyframe's points at the inlier matches (age 1) and its own window points seen there (age + 1),
    up to ``depth`` keyframes back. None when there is nothing to carry."""
    inl = np.flatnonzero(pose.inliers)
    own = inl[np.isfinite(depth0[inl])]
    X = back_project(from_kf_camera, m.kpts0[own], depth0[own])
    parts = [(m.kpts1[own], X, ray_covariance(X, from_depth_noise), np.ones(len(own), np.int64))]
    if from_window is not None and depth > 1:
        ia, ib = same_pixels(from_window.pixels, m.kpts0[inl])
        young = from_window.age[ia] < depth
        ia, ib = ia[young], inl[ib[young]]
        parts.append((m.kpts1[ib], from_window.X[ia], from_window.cov[ia], from_window.age[ia] + 1))
    pixels, X, cov, age = (np.concatenate(p) for p in zip(*parts))
    if len(age) == 0:
        return None
    RX = X @ pose.R.T
    J = point_jacobian(RX)
    cov = pose.R @ cov @ pose.R.T + J @ pose.covariance @ J.transpose(0, 2, 1)
    return WindowPoints(np.asarray(pixels, np.float64), RX + pose.t, cov, age)


def refine_with_window(ap: AbsolutePose, X: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray, camera: CameraModel,
                       depth_noise: float, window: WindowPoints) -> tuple[np.ndarray, np.ndarray, int]:
    """``(R, t, points used)``: the PnP pose ``ap`` (keyframe points ``X (N, 3)`` at keyframe pixels ``kpts0`` seen
    at ``kpts1``) refined on its inliers together with the window's measurements of the same keyframe pixels
    (those within :data:`GATE_CHI2` of the PnP pose); ``ap``'s own pose when none is."""
    inl = np.flatnonzero(ap.inliers)
    ia, ib = same_pixels(window.pixels, kpts0[inl])
    if len(ia) == 0:
        return ap.R, ap.t, 0
    Xa, xn_a = X[inl], camera.normalize(kpts1[inl])
    Xw, Cw, xn_w = window.X[ia], window.cov[ia], xn_a[ib]
    sigma2 = residual_variance(reprojection(ap.R, ap.t, Xa, xn_a, camera.fx, camera.fy)[0])  # the PnP inliers'
    r, _, Jp = reprojection(ap.R, ap.t, Xw, xn_w, camera.fx, camera.fy)
    W = residual_information(ap.R, r, Jp, Cw, sigma2)
    keep = np.einsum("na,nab,nb->n", r, W, r) < GATE_CHI2
    if not keep.any():
        return ap.R, ap.t, 0
    Xall = np.concatenate([Xa, Xw[keep]])
    cov = np.concatenate([ray_covariance(Xa, depth_noise), Cw[keep]])
    xn = np.concatenate([xn_a, xn_w[keep]])
    R, t = refine_weighted(ap.R, ap.t, Xall, xn, camera.fx, camera.fy, depth_noise, point_cov=cov, huber=HUBER)
    return R, t, int(keep.sum())
