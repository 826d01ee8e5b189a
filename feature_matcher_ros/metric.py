"""Metric relative pose: 3-D keyframe points (from registered depth or a rectified stereo pair) against the
current frame's pixels, by robust absolute pose (PnP). ROS-free.

Conventions are the monocular ones (:mod:`.geometry`): the pose maps keyframe to current camera,
``X_cur = R @ X_kf + t``, here with ``t`` in metres; the covariance is ``(6, 6)`` over
``[tx, ty, tz, rx, ry, rz]`` with ``R_true = exp([w]x) @ R`` and ``t_true = t + dt``.

* :func:`depth_at` reads a depth image at sub-pixel keypoints (``nearest`` valid depth in a small window, or
  ``bilinear`` where all four neighbours are valid and agree), with range limits.
* :func:`stereo_points` triangulates left-right matches of a rectified pair (``Z = fx * b / d``), and
  :func:`stereo_depth_image` rasterises them into a sparse depth image for :func:`depth_at`.
* :func:`back_project` turns keypoints with depth into keyframe-camera points.
* :func:`estimate_absolute_pose` runs PoseLib's absolute-pose LO-RANSAC (or OpenCV's ``solvePnPRansac``)
  and :func:`pnp_covariance` the Gauss-Newton covariance of the reprojection residuals at the inliers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .camera import CameraModel

DEPTH_LOOKUPS = ("nearest", "bilinear")
PNP_METHODS = ("poselib", "opencv")
MIN_PNP_POINTS = 6
# bilinear lookup: the four neighbours must agree within this fraction of their mean (a depth edge otherwise)
EDGE_RATIO = 0.05


def depth_at(
    depth_m: np.ndarray, kpts: np.ndarray, mode: str = "nearest", window: int = 1,
    min_m: float = 0.1, max_m: float = 10.0,
) -> np.ndarray:
    """Depth in metres at each keypoint, NaN where there is none.

    Args:
        depth_m: ``(H, W)`` float depth in metres (0, NaN and inf mean no measurement).
        kpts: ``(N, 2)`` ``(x, y)`` pixels (pixel centres at integers).
        mode: ``nearest``: the valid depth closest to the keypoint within ``window`` pixels (Chebyshev);
            ``bilinear``: interpolated where all four neighbours are valid and within ``EDGE_RATIO`` of each
            other (so a keypoint on a depth edge gets none, never a depth between the two surfaces).
        min_m, max_m: depths outside ``[min_m, max_m]`` count as missing.

    >>> d = np.full((4, 4), 2.0); d[0, 0] = 0.0
    >>> depth_at(d, np.array([[0.0, 0.0], [1.5, 1.5]])).tolist()
    [2.0, 2.0]
    >>> depth_at(d, np.array([[0.2, 0.2]]), mode="bilinear").tolist()
    [nan]
    """
    if mode not in DEPTH_LOOKUPS:
        raise ValueError(f"depth lookup must be one of {DEPTH_LOOKUPS}, not {mode!r}")
    depth = np.asarray(depth_m, np.float32)
    valid = np.isfinite(depth) & (depth >= min_m) & (depth <= max_m)
    kpts = np.asarray(kpts, np.float64).reshape(-1, 2)
    if mode == "bilinear":
        return _bilinear(depth, valid, kpts)
    return _nearest(depth, valid, kpts, window)


def _nearest(depth: np.ndarray, valid: np.ndarray, kpts: np.ndarray, window: int) -> np.ndarray:
    H, W = depth.shape
    out = np.full(len(kpts), np.nan)
    best = np.full(len(kpts), np.inf)
    cx, cy = np.rint(kpts[:, 0]).astype(np.int64), np.rint(kpts[:, 1]).astype(np.int64)
    for dy in range(-window, window + 1):
        for dx in range(-window, window + 1):
            x, y = cx + dx, cy + dy
            inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
            ok = np.zeros(len(kpts), bool)
            ok[inside] = valid[y[inside], x[inside]]
            dist = (x - kpts[:, 0]) ** 2 + (y - kpts[:, 1]) ** 2
            better = ok & (dist < best)
            out[better] = depth[y[better], x[better]]
            best[better] = dist[better]
    return out


def _bilinear(depth: np.ndarray, valid: np.ndarray, kpts: np.ndarray) -> np.ndarray:
    H, W = depth.shape
    x0, y0 = np.floor(kpts[:, 0]).astype(np.int64), np.floor(kpts[:, 1]).astype(np.int64)
    out = np.full(len(kpts), np.nan)
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < W) & (y0 + 1 < H)
    i = np.flatnonzero(inside)
    xs, ys = x0[i], y0[i]
    corners = np.stack([depth[ys, xs], depth[ys, xs + 1], depth[ys + 1, xs], depth[ys + 1, xs + 1]], 1)
    ok = valid[ys, xs] & valid[ys, xs + 1] & valid[ys + 1, xs] & valid[ys + 1, xs + 1]
    with np.errstate(invalid="ignore"):
        spread = corners.max(1) - corners.min(1)
        ok &= spread <= EDGE_RATIO * corners.mean(1)
    fx, fy = kpts[i, 0] - xs, kpts[i, 1] - ys
    w = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    out[i[ok]] = (corners[ok] * w[ok]).sum(1)
    return out


@dataclass(frozen=True)
class StereoRig:
    """A rectified pair: the left camera and the right camera's intrinsics, baseline ``b`` in metres
    (``X_right = X_left - [b, 0, 0]``)."""

    left: CameraModel
    right_fx: float
    right_cx: float
    baseline_m: float

    def problem(self) -> str | None:
        """Why this rig cannot triangulate, or None."""
        if not np.isfinite(self.baseline_m) or self.baseline_m <= 0:
            return f"stereo baseline must be > 0 m, got {self.baseline_m}"
        if self.left.has_distortion:
            return "stereo images must be rectified (the left camera_info has distortion)"
        if abs(self.right_fx - self.left.fx) > 1e-3 * self.left.fx:
            return f"left and right rectified focal lengths differ ({self.left.fx} vs {self.right_fx})"
        return None


@dataclass
class StereoFrame:
    """The right image of a rectified pair (``(H, W)`` uint8 gray or ``(H, W, 3)`` RGB, the left image's size)
    and the rig it comes from."""

    image: np.ndarray
    rig: StereoRig


def stereo_points(
    rig: StereoRig, kpts_left: np.ndarray, kpts_right: np.ndarray, max_dv_px: float = 1.0,
    min_disparity_px: float = 1.0, max_disparity_px: float = 512.0,
) -> np.ndarray:
    """Depth ``Z = fx * b / d`` of left keypoints from their right matches, NaN where a match breaks the
    rectified geometry (``|v_l - v_r| > max_dv_px``) or its disparity ``d = (u_l - cx) - (u_r - cx_r)`` is
    outside ``[min_disparity_px, max_disparity_px]``. Returns ``(N,)`` metres."""
    kl, kr = np.asarray(kpts_left, np.float64).reshape(-1, 2), np.asarray(kpts_right, np.float64).reshape(-1, 2)
    d = (kl[:, 0] - rig.left.cx) - (kr[:, 0] - rig.right_cx)
    ok = (np.abs(kl[:, 1] - kr[:, 1]) <= max_dv_px) & (d >= min_disparity_px) & (d <= max_disparity_px)
    z = np.full(len(kl), np.nan)
    z[ok] = rig.left.fx * rig.baseline_m / d[ok]
    return z


def refine_right_x(left: np.ndarray, right: np.ndarray, kpts_left: np.ndarray, kpts_right: np.ndarray,
                   search_px: int = 2, half: int = 5) -> np.ndarray:
    """Sub-pixel right-image x of left-right matches of a rectified pair, by block matching along the row (the
    stereo refinement of ORB-SLAM2): the ``(2 half + 1)²`` patch around each left keypoint (rounded) is compared
    (sum of absolute differences) with the right row at whole-pixel shifts within ``search_px`` of the matched
    x, and a parabola through the best cost and its neighbours gives the sub-pixel position. Detectors place a
    keypoint a fraction of a pixel apart in two images, a bias of the disparity (and of the depth, by the same
    fraction) that this removes. Returns ``(N,)``: the refined x, NaN where the patch leaves an image or the best
    shift is at the edge of the search. ``left``, ``right``: ``(H, W)`` uint8."""
    kl = np.rint(np.asarray(kpts_left, np.float64).reshape(-1, 2)).astype(np.int64)
    xr = np.asarray(kpts_right, np.float64).reshape(-1, 2)[:, 0]
    h, w = left.shape
    shifts = np.arange(-search_px - 1, search_px + 2)  # one more each side for the parabola
    centre = np.rint(xr).astype(np.int64)
    ok = ((kl[:, 0] >= half) & (kl[:, 0] < w - half) & (kl[:, 1] >= half) & (kl[:, 1] < h - half)
          & (centre + shifts[0] >= half) & (centre + shifts[-1] < w - half))
    out = np.full(len(kl), np.nan)
    if not ok.any():
        return out
    offsets = np.arange(-half, half + 1)
    rows = kl[ok, 1][:, None, None] + offsets[None, :, None]                       # (n, p, 1)
    patch = left[rows, kl[ok, 0][:, None, None] + offsets[None, None, :]].astype(np.int32)  # (n, p, p)
    cols = centre[ok][:, None, None, None] + shifts[None, :, None, None] + offsets[None, None, None, :]
    cand = right[rows[:, None], cols].astype(np.int32)                              # (n, s, p, p)
    cost = np.abs(cand - patch[:, None]).sum(axis=(2, 3)).astype(np.float64)         # (n, s)
    best = np.argmin(cost, axis=1)
    inside = (best > 0) & (best < len(shifts) - 1)  # a minimum at the edge: no parabola, no refinement
    best = np.clip(best, 1, len(shifts) - 2)
    idx = np.arange(len(best))
    c0, c1, c2 = cost[idx, best - 1], cost[idx, best], cost[idx, best + 1]
    denom = c0 - 2 * c1 + c2
    delta = np.where(denom > 0, 0.5 * (c0 - c2) / np.where(denom > 0, denom, 1.0), 0.0)
    inside &= np.abs(delta) <= 1.0
    x_left = np.asarray(kpts_left, np.float64).reshape(-1, 2)[ok, 0]
    refined = centre[ok] + shifts[best] + delta + (x_left - kl[ok, 0])  # at the left keypoint's own x
    out[np.flatnonzero(ok)[inside]] = refined[inside]
    return out


def stereo_depth_image(rig: StereoRig, kpts_left: np.ndarray, kpts_right: np.ndarray, shape: tuple[int, int],
                       **limits: float) -> np.ndarray:
    """The left-right matches of a keyframe as a sparse ``(H, W)`` depth image (metres, NaN elsewhere), so
    that stereo keyframes get their keypoints' depth through :func:`depth_at` like RGB-D ones (a backend
    may place a keypoint a few pixels apart in two matchings of the same image). ``limits`` go to
    :func:`stereo_points`."""
    z = stereo_points(rig, kpts_left, kpts_right, **limits)
    depth = np.full(shape, np.nan, np.float32)
    kl = np.rint(np.asarray(kpts_left, np.float64).reshape(-1, 2)).astype(np.int64)
    ok = np.isfinite(z) & (kl[:, 0] >= 0) & (kl[:, 0] < shape[1]) & (kl[:, 1] >= 0) & (kl[:, 1] < shape[0])
    depth[kl[ok, 1], kl[ok, 0]] = z[ok]
    return depth


def back_project(camera: CameraModel, kpts: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``(N, 3)`` camera-frame points of pixels ``kpts`` at depths ``z`` (along the optical axis; NaN rows
    stay NaN). Distortion is removed first.

    >>> cam = CameraModel.from_matrix(640, 480, [[500, 0, 320], [0, 500, 240], [0, 0, 1]])
    >>> back_project(cam, np.array([[820.0, 240.0]]), np.array([2.0])).tolist()
    [[2.0, 0.0, 2.0]]
    """
    xn = camera.normalize(np.asarray(kpts, np.float64).reshape(-1, 2))
    z = np.asarray(z, np.float64).reshape(-1)
    return np.column_stack([xn * z[:, None], z])


@dataclass
class AbsolutePose:
    """The result of :func:`estimate_absolute_pose`: ``X_cur = R @ X_kf + t`` (metres), inliers over the
    input correspondences, covariance (see the module docstring), median inlier reprojection error (px)."""

    R: np.ndarray
    t: np.ndarray
    inliers: np.ndarray
    covariance: np.ndarray
    residual_px: float
    method: str


def _poselib_pnp(xn: np.ndarray, X: np.ndarray, f: float, thr_px: float, confidence: float, max_iters: int):
    import poselib

    cam = {"model": "PINHOLE", "width": 0, "height": 0, "params": [f, f, 0.0, 0.0]}
    pose, info = poselib.estimate_absolute_pose(
        xn * f, X, cam,
        {"max_reproj_error": thr_px, "success_prob": confidence, "max_iterations": max_iters, "min_iterations": 100},
        {},
    )
    inl = np.asarray(info.get("inliers", []), bool)
    return np.asarray(pose.R, np.float64), np.asarray(pose.t, np.float64), inl


def _opencv_pnp(xn: np.ndarray, X: np.ndarray, f: float, thr_px: float, confidence: float, max_iters: int):
    K = np.array([[f, 0, 0], [0, f, 0], [0, 0, 1.0]])
    ok, rvec, tvec, idx = cv2.solvePnPRansac(
        X.astype(np.float64), (xn * f).astype(np.float64), K, None, iterationsCount=max_iters,
        reprojectionError=thr_px, confidence=confidence, flags=cv2.SOLVEPNP_ITERATIVE)
    inl = np.zeros(len(X), bool)
    if not ok or idx is None:
        return np.eye(3), np.zeros(3), inl
    inl[idx.reshape(-1)] = True
    rvec, tvec = cv2.solvePnPRefineLM(X[inl], (xn[inl] * f), K, None, rvec, tvec)
    return cv2.Rodrigues(rvec)[0], tvec.reshape(3), inl


def estimate_absolute_pose(
    X_kf: np.ndarray, kpts_cur: np.ndarray, camera: CameraModel, method: str = "poselib", threshold_px: float = 2.0,
    confidence: float = 0.999, max_iterations: int = 10000, depth_noise: float = 0.0, weighted: bool = False,
) -> AbsolutePose | None:
    """Robust pose of the current camera from keyframe points ``X_kf (N, 3)`` (metres, keyframe camera) seen
    at ``kpts_cur (N, 2)`` (pixels of ``camera``); None with fewer than ``MIN_PNP_POINTS`` inliers.
    Non-finite points are skipped (they count as outliers). ``depth_noise``: the points' depth standard deviation
    over ``Z²`` (1/m), for the covariance (:func:`pnp_covariance`) and, with ``weighted``, the final refinement
    (:func:`refine_weighted`)."""
    if method not in PNP_METHODS:
        raise ValueError(f"absolute pose method must be one of {PNP_METHODS}, not {method!r}")
    X = np.asarray(X_kf, np.float64).reshape(-1, 3)
    finite = np.flatnonzero(np.isfinite(X).all(1) & (X[:, 2] > 0))
    if len(finite) < MIN_PNP_POINTS:
        return None
    xn = camera.normalize(np.asarray(kpts_cur, np.float64).reshape(-1, 2))[finite]
    fit = _poselib_pnp if method == "poselib" else _opencv_pnp
    R, t, inl_f = fit(xn, X[finite], camera.focal, threshold_px, confidence, max_iterations)
    if len(inl_f) != len(finite) or inl_f.sum() < MIN_PNP_POINTS:
        return None
    inliers = np.zeros(len(X), bool)
    inliers[finite[inl_f]] = True
    xn_in = camera.normalize(np.asarray(kpts_cur, np.float64)[inliers])
    if weighted and depth_noise > 0:
        R, t = refine_weighted(R, t, X[inliers], xn_in, camera.fx, camera.fy, depth_noise)
    cov, residual = pnp_covariance(R, t, X[inliers], xn_in, camera.fx, camera.fy, depth_noise)
    return AbsolutePose(R, t, inliers, cov, residual, method)


def reprojection(R: np.ndarray, t: np.ndarray, X: np.ndarray, xn: np.ndarray, fx: float, fy: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel residuals ``r (N, 2)`` of keyframe points ``X`` seen at normalised ``xn``, their Jacobian ``J (N, 2, 6)``
    with respect to ``[dt, w]`` (``X_c = exp([w]x) R X + t + dt``) and ``d(pixel)/d(X_c)`` ``(N, 2, 3)``."""
    RX = X @ R.T
    Xc = RX + t
    z = Xc[:, 2]
    r = (Xc[:, :2] / z[:, None] - xn) * np.array([fx, fy])
    Jp = np.zeros((len(X), 2, 3))  # d(pixel)/d(Xc): [[fx/z, 0, -fx x/z^2], [0, fy/z, -fy y/z^2]]
    Jp[:, 0, 0], Jp[:, 0, 2] = fx / z, -fx * Xc[:, 0] / z**2
    Jp[:, 1, 1], Jp[:, 1, 2] = fy / z, -fy * Xc[:, 1] / z**2
    return r, Jp @ point_jacobian(RX), Jp


def point_jacobian(RX: np.ndarray) -> np.ndarray:
    """``(N, 3, 6)``: d X_c / d [dt, w] of points ``X_c = exp([w]x) R X + t + dt`` at ``RX`` = ``R X`` ``(N, 3)``:
    ``[I, -[R X]x]``."""
    n = len(RX)
    J = np.zeros((n, 3, 6))
    J[:, [0, 1, 2], [0, 1, 2]] = 1.0
    J[:, 0, 4], J[:, 0, 5], J[:, 1, 5] = RX[:, 2], -RX[:, 1], RX[:, 0]
    J[:, 1, 3], J[:, 2, 3], J[:, 2, 4] = -RX[:, 2], RX[:, 1], -RX[:, 0]
    return J


def residual_variance(r: np.ndarray) -> float:
    """``σ²`` (px²) of pixel residuals ``r (N, 2)`` of a 6-DoF fit: ``Σ r² / (2N - 6)``, at least ``(0.01 px)²``
    (exact synthetic fits)."""
    return max(float((r**2).sum()) / max(1, 2 * len(r) - 6), 1e-4)


def residual_information(R: np.ndarray, r: np.ndarray, Jp: np.ndarray, point_cov: np.ndarray,
                          sigma2: float | None = None) -> np.ndarray:
    """``(N, 2, 2)`` inverse covariances of the residuals: ``σ²`` (from the residuals themselves unless given) plus
    each point's own ``(3, 3)`` covariance ``point_cov`` (keyframe frame) seen through the projection (see
    :func:`pnp_covariance`)."""
    sigma2 = residual_variance(r) if sigma2 is None else sigma2
    A = Jp @ R  # d(pixel)/d(X), X in the keyframe frame
    return np.linalg.inv(sigma2 * np.eye(2) + A @ point_cov @ A.transpose(0, 2, 1))


def ray_covariance(X: np.ndarray, depth_noise: float) -> np.ndarray:
    """``(N, 3, 3)``: the covariance of keyframe points ``X`` (their camera frame) whose depth ``Z`` has the standard
    deviation ``depth_noise · Z²``, along their rays (structured light, or stereo's ``Z² σ_d / (f b)``).

    >>> ray_covariance(np.array([[0.0, 0.0, 2.0]]), 0.01)[0].diagonal().round(6).tolist()
    [0.0, 0.0, 0.0016]
    """
    Z = X[:, 2]
    ray = X / Z[:, None]  # d X / d Z
    return ((depth_noise * Z**2) ** 2)[:, None, None] * (ray[:, :, None] * ray[:, None, :])


def refine_weighted(R: np.ndarray, t: np.ndarray, X: np.ndarray, xn: np.ndarray, fx: float, fy: float,
                    depth_noise: float, iterations: int = 5, point_cov: np.ndarray | None = None,
                    huber: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The pose refined on its inliers by Gauss-Newton on residuals weighted by their covariance: a far point
    (small disparity, or deep structured-light depth) whose depth is uncertain along its ray counts less
    than a near one, instead of as if its depth were exact (RANSAC's refinement weighs all alike).
    ``point_cov`` ``(N, 3, 3)``: the points' covariances (keyframe frame) when they are not ``depth_noise``
    along their rays (:func:`ray_covariance`); ``huber`` > 0: Huber weights on the whitened residual norms
    (robust to a few wrong points)."""
    cov = ray_covariance(X, depth_noise) if point_cov is None else point_cov
    for _ in range(iterations):
        r, J, Jp = reprojection(R, t, X, xn, fx, fy)
        W = residual_information(R, r, Jp, cov)
        if huber > 0:
            m = np.sqrt(np.maximum(np.einsum("na,nab,nb->n", r, W, r), 1e-12))
            W = W * np.minimum(1.0, huber / m)[:, None, None]
        H = np.einsum("nai,nab,nbj->ij", J, W, J)
        g = np.einsum("nai,nab,nb->i", J, W, r)
        try:
            step = -np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            break
        R = cv2.Rodrigues(step[3:])[0] @ R
        t = t + step[:3]
        if np.abs(step).max() < 1e-10:
            break
    return R, t


def pnp_covariance(R: np.ndarray, t: np.ndarray, X: np.ndarray, xn: np.ndarray, fx: float, fy: float,
                   depth_noise: float = 0.0) -> tuple[np.ndarray, float]:
    """``(covariance (6, 6), median residual px)`` of a PnP pose from its inliers: ``(Σ Jᵢᵀ Sᵢ⁻¹ Jᵢ)⁻¹`` with
    ``Jᵢ`` the Jacobian of point i's pixel reprojection residual with respect to ``[dt, w]``
    (``X_c = exp([w]x) R X + t + dt``, the convention of the module docstring) and ``Sᵢ`` the residual's
    ``(2, 2)`` covariance: ``σ²``, the residual variance ``Σ r² / (2N - 6)`` (both images' keypoint noise, as the
    residuals show it), plus the keyframe point's depth noise ``depth_noise · Z²`` along its ray (structured-light
    depth, or stereo's ``Z² σ_d / (f b)``) seen through the projection, which the residuals barely show.
    It grows with fewer points, smaller spread, farther and noisier depth."""
    r, J, Jp = reprojection(R, t, X, xn, fx, fy)
    info = np.einsum("nai,nab,nbj->ij", J, residual_information(R, r, Jp, ray_covariance(X, depth_noise)), J)
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        cov = np.eye(6) * 1e6
    return 0.5 * (cov + cov.T), float(np.median(np.linalg.norm(r, axis=1)))
