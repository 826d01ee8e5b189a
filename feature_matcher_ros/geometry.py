"""Two-view geometry: robust relative pose (essential matrix or homography) and pose errors.

Conventions: a relative pose "0 -> 1" is ``R, t`` with ``X1 = R @ X0 + t`` (OpenCV camera frame, x right,
y down, z forward); SE(3) matrices, quaternions and covariance propagation are in :mod:`.se3`.

:func:`estimate_relative_pose` undistorts the keypoints with each camera (:meth:`CameraModel.normalize`),
converts the pixel threshold to normalised units with the mean focal length, and fits

* an essential matrix with OpenCV USAC MAGSAC (``method="magsac"``, ``cv2.findEssentialMat`` + ``cv2.recoverPose``)
  or PoseLib (``method="poselib"``, ``poselib.estimate_relative_pose``: LO-RANSAC + 5-point + bundle refinement);
* a homography with the same robust estimator.

Model selection: the homography wins when its inliers are at least ``homography_ratio`` of the essential
matrix's (the scene is planar, or the motion is a rotation). Then, if the rotation-compensated parallax of the
homography inliers is at most ``min_parallax_px`` (no measurable translation), the pose is a pure rotation
(fitted to the inlier rays) and the translation is unknown (``t = 0``, ``translation_known = False``);
otherwise (planar scene, or a small baseline) the essential matrix's pose is kept (measured better than the
homography decomposition on TUM), and the homography is decomposed only when no essential matrix was found.

Example:
    >>> import numpy as np
    >>> from feature_matcher_ros.se3 import invert, rotation_from_rotvec
    >>> R = rotation_from_rotvec([0.0, 0.1, 0.0]); t = np.array([0.2, 0.0, 0.0])
    >>> T = se3(R, t)
    >>> np.allclose(invert(T) @ T, np.eye(4))
    True
    >>> round(rotation_error_deg(R, np.eye(3)), 3)   # 0.1 rad
    5.73
    >>> pose_error_auc([1.0, 2.0, float("inf")], thresholds=(5,))   # a failure counts as infinite error
    [0.533...]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .camera import CameraModel
from .se3 import closest_rotation, invert_with_covariance, se3, skew

METHODS = ("magsac", "poselib")
# Variance given to what a monocular two-view pose cannot observe (the translation scale, or the whole
# translation for a pure rotation). Units: (unit-translation)^2; anything >> 1 reads as "unknown".
UNKNOWN_VARIANCE = 1e6
MIN_POINTS = 5


@dataclass
class RelativePose:
    """Relative pose keyframe (0) -> current (1): ``X1 = R @ X0 + t``.

    Attributes:
        R: ``(3, 3)`` rotation.
        t: ``(3,)`` unit-norm translation direction (monocular: the scale is unknown); zeros when
            ``translation_known`` is False (pure rotation: the direction is unobservable); metres when
            ``metric`` (absolute pose from 3-D keyframe points, :mod:`.metric`).
        inliers: ``(N,)`` bool over the input matches (inliers of the chosen model).
        model: ``"essential"``, ``"homography"`` or ``"pnp"`` (metric).
        covariance: ``(6, 6)`` over ``[tx, ty, tz, rx, ry, rz]``: translation in unit-translation units
            (metres when ``metric``), rotation as a small rotation vector ``w`` with ``R_true = exp([w]x) @ R``
            (radians^2). Monocular: the variance along ``t`` (scale) is :data:`UNKNOWN_VARIANCE`; see
            :func:`pose_covariance`; metric: :func:`~feature_matcher_ros.metric.pnp_covariance`.
        translation_known: False when the motion is a pure rotation (``t`` is zeros).
        parallax_px: median rotation-compensated displacement of the inliers, in pixels (the translation's
            visible effect; ~0 for a pure rotation).
        H: ``(3, 3)`` homography ``kpts0 -> kpts1`` in undistorted pixels of each camera
            (``K1 @ Hn @ inv(K0)``) when one was fitted, else None.
        method: the robust estimator used (``"magsac"`` or ``"poselib"``).
        residual_px: median residual of the inliers in pixels (Sampson or transfer error).
        num_essential_inliers, num_homography_inliers: inlier counts of the two candidate models.
        metric: the translation is in metres (RGB-D or stereo keyframe points), not a unit direction.
    """

    R: np.ndarray
    t: np.ndarray
    inliers: np.ndarray
    model: str
    covariance: np.ndarray
    translation_known: bool = True
    parallax_px: float = 0.0
    H: np.ndarray | None = None
    method: str = "poselib"
    residual_px: float = 0.0
    num_essential_inliers: int = 0
    num_homography_inliers: int = 0
    metric: bool = False

    @property
    def num_inliers(self) -> int:
        return int(np.count_nonzero(self.inliers))

    @property
    def T(self) -> np.ndarray:
        """``(4, 4)`` ``T_current_keyframe`` with the unit (or zero) translation."""
        return se3(self.R, self.t)

    def current_in_keyframe(self, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """The current camera in the keyframe camera's frame: ``T_keyframe_current`` ``(4, 4)`` (the inverse of
        :attr:`T`, translation times ``scale``) and its ``(6, 6)`` covariance (translation rows and columns times
        ``scale``; a metric pose is in metres already and ignores ``scale``), to first order
        (:func:`~feature_matcher_ros.se3.invert_with_covariance`)."""
        scale = 1.0 if self.metric else scale
        t = self.t * scale if self.translation_known else np.zeros(3)
        cov = np.asarray(self.covariance, np.float64).copy()
        cov[:3, :] *= scale
        cov[:, :3] *= scale
        return invert_with_covariance(self.R, t, cov)


# ---------------------------------------------------------------------------------------------------
# Errors and the AUC
# ---------------------------------------------------------------------------------------------------
def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle of ``R_est^T @ R_gt`` in degrees (0..180)."""
    c = (np.trace(np.asarray(R_est).T @ np.asarray(R_gt)) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(c, -1.0, 1.0))))


def translation_angle_error_deg(t_est: np.ndarray, t_gt: np.ndarray, sign_invariant: bool = False) -> float:
    """Angle between two translation directions in degrees; ``inf`` when either is (near) zero, so that an
    unknown translation counts as a failure. ``sign_invariant``: ``min(a, 180 - a)``, the SuperGlue/LoFTR
    evaluation convention (it forgives the essential matrix's sign ambiguity)."""
    a, b = np.asarray(t_est, np.float64).reshape(3), np.asarray(t_gt, np.float64).reshape(3)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12 or not (math.isfinite(na) and math.isfinite(nb)):
        return math.inf
    ang = math.degrees(math.acos(float(np.clip(a @ b / (na * nb), -1.0, 1.0))))
    return min(ang, 180.0 - ang) if sign_invariant else ang


def pose_error_auc(errors_deg: Iterable[float], thresholds: Sequence[float] = (5, 10, 20)) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalised to [0, 1].

    The SuperGlue/LoFTR definition: sort the per-pair errors (usually ``max(rotation, translation angle)``),
    recall at error ``e_i`` is ``i / n``, integrate the step-free (linear) curve from 0 to the threshold and
    divide by the threshold. Failed estimates must be passed as ``inf`` (they count in ``n`` but never in
    the recall).
    """
    errs = np.sort(np.asarray(list(errors_deg), dtype=np.float64))
    errs = np.where(np.isnan(errs), np.inf, errs)
    n = len(errs)
    if n == 0:
        return [0.0 for _ in thresholds]
    recall = np.arange(1, n + 1) / n
    e = np.concatenate([[0.0], errs])
    r = np.concatenate([[0.0], recall])
    out = []
    for thr in thresholds:
        k = int(np.searchsorted(e, thr))  # e[:k] < thr
        xs = np.concatenate([e[:k], [thr]])
        ys = np.concatenate([r[:k], [r[k - 1]]])
        out.append(float(np.trapezoid(ys, xs) / thr))
    return out


# ---------------------------------------------------------------------------------------------------
# Epipolar helpers (normalised coordinates)
# ---------------------------------------------------------------------------------------------------
def essential_from_pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``E = [t]x R`` (so that ``x1^T E x0 = 0``)."""
    return skew(t) @ np.asarray(R, np.float64)


def _homog(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def symmetric_epipolar_distance(x0: np.ndarray, x1: np.ndarray, E: np.ndarray) -> np.ndarray:
    """``(N,)`` squared symmetric epipolar distance of ``(N, 2)`` normalised points under ``E``:
    ``(x1^T E x0)^2 * (1 / |(E x0)_{12}|^2 + 1 / |(E^T x1)_{12}|^2)`` (LoFTR's ``symmetric_epipolar_distance``
    definition; multiply by focal^2 for pixels^2)."""
    p0, p1 = _homog(np.asarray(x0, np.float64)), _homog(np.asarray(x1, np.float64))
    Ex0 = p0 @ E.T
    Etx1 = p1 @ E
    num = np.sum(p1 * Ex0, axis=1) ** 2
    return num * (1.0 / (Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + 1e-30) + 1.0 / (Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2 + 1e-30))


def sampson_distance(x0: np.ndarray, x1: np.ndarray, E: np.ndarray) -> np.ndarray:
    """``(N,)`` Sampson distance (not squared) of normalised points under ``E``, normalised units."""
    p0, p1 = _homog(np.asarray(x0, np.float64)), _homog(np.asarray(x1, np.float64))
    Ex0 = p0 @ E.T
    Etx1 = p1 @ E
    num = np.sum(p1 * Ex0, axis=1) ** 2
    den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2 + 1e-30
    return np.sqrt(num / den)


def homography_transfer_error(x0: np.ndarray, x1: np.ndarray, H: np.ndarray) -> np.ndarray:
    """``(N,)`` distance between ``H x0`` and ``x1`` (same units as the points)."""
    p = _homog(np.asarray(x0, np.float64)) @ np.asarray(H, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        q = p[:, :2] / p[:, 2:3]
    d = np.linalg.norm(q - np.asarray(x1, np.float64), axis=1)
    return np.where(np.isfinite(d), d, np.inf)


# ---------------------------------------------------------------------------------------------------
# Robust estimators on normalised coordinates
# ---------------------------------------------------------------------------------------------------
def _virtual_camera(f: float) -> dict:
    # PoseLib works in pixels of a pinhole camera: normalised points scaled by f, principal point at 0.
    return {"model": "PINHOLE", "width": 0, "height": 0, "params": [f, f, 0.0, 0.0]}


def _fit_essential(x0, x1, f, thr_px, confidence, method, max_iters):
    """-> (R, t, inliers) or None."""
    if method == "poselib":
        import poselib

        cam = _virtual_camera(f)
        pose, info = poselib.estimate_relative_pose(
            x0 * f, x1 * f, cam, cam,
            {"max_epipolar_error": thr_px, "success_prob": confidence, "max_iterations": max_iters,
             "min_iterations": 100},  # PoseLib's default 1000 costs 3-4x the time for no measured gain
            {},
        )
        inl = np.asarray(info.get("inliers", []), dtype=bool)
        if len(inl) != len(x0) or inl.sum() < MIN_POINTS:
            return None
        t = np.asarray(pose.t, np.float64)
        n = np.linalg.norm(t)
        if not np.isfinite(n) or n < 1e-12:
            return None
        return np.asarray(pose.R, np.float64), t / n, inl
    E, mask = cv2.findEssentialMat(
        x0, x1, np.eye(3), method=cv2.USAC_MAGSAC, prob=confidence, threshold=thr_px / f, maxIters=max_iters
    )
    if E is None or mask is None or E.shape[0] < 3:
        return None
    best = None
    for k in range(E.shape[0] // 3):  # several solutions may be stacked; keep the one with most support
        Ek = E[3 * k:3 * k + 3]
        m = mask.copy()
        # The distance overload with a huge limit: the default one drops points farther than 50 baselines,
        # which is most of the scene for a hand-held camera at 10 Hz (2 cm baseline, 1-2 m depth).
        n_ok, R, t, m, _ = cv2.recoverPose(Ek, x0, x1, np.eye(3), distanceThresh=1e9, mask=m)
        if best is None or n_ok > best[0]:
            best = (n_ok, R, t.reshape(3), mask.reshape(-1).astype(bool))
    n_ok, R, t, inl = best
    if inl.sum() < MIN_POINTS or n_ok == 0:
        return None
    return R, t / np.linalg.norm(t), inl


def _fit_homography(p0, p1, thr_px, confidence, method, max_iters):
    """-> (H, inliers) for points in pixel-like units (``thr_px`` applies to them directly), or None.

    Both estimators get pixel-scaled points: OpenCV's MAGSAC homography is unreliable on normalised
    coordinates (measured on oxford_graffiti: 2-15 px grid error there vs 0.4-1.9 px on pixels)."""
    if method == "poselib":
        import poselib

        H, info = poselib.estimate_homography(
            p0, p1,
            {"max_reproj_error": thr_px, "success_prob": confidence, "max_iterations": max_iters,
             "min_iterations": 100},
            {},
        )
        inl = np.asarray(info.get("inliers", []), dtype=bool)
        H = np.asarray(H, np.float64)
    else:
        H, mask = cv2.findHomography(p0, p1, cv2.USAC_MAGSAC, thr_px, maxIters=max_iters, confidence=confidence)
        if H is None or mask is None:
            return None
        inl = mask.reshape(-1).astype(bool)
    if len(inl) != len(p0) or inl.sum() < 4 or not np.all(np.isfinite(H)) or abs(np.linalg.det(H)) < 1e-12:
        return None
    return H / np.cbrt(np.linalg.det(H)), inl


def _rotation_from_rays(b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """Kabsch: the rotation ``R`` minimising ``sum |b1 - R b0|^2`` over ``(N, 3)`` unit rays."""
    return closest_rotation(b1.T @ b0)


def _rays(x: np.ndarray) -> np.ndarray:
    r = _homog(x)
    return r / np.linalg.norm(r, axis=1, keepdims=True)


def _rotation_parallax(x0: np.ndarray, x1: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``(N,)`` distance (normalised units) between ``x1`` and ``x0`` rotated by ``R`` (the translation's share)."""
    p = _homog(x0) @ R.T
    with np.errstate(divide="ignore", invalid="ignore"):
        q = p[:, :2] / p[:, 2:3]
    d = np.linalg.norm(q - x1, axis=1)
    return np.where(np.isfinite(d) & (p[:, 2] > 0), d, np.inf)


def rotation_parallax_px(kpts0: np.ndarray, kpts1: np.ndarray, cam0: CameraModel, cam1: CameraModel,
                         R: np.ndarray) -> float:
    """Median displacement in pixels between ``kpts1`` and ``kpts0`` rotated by ``R`` (what the translation
    moved them; ~0 for a pure rotation); 0 for no points."""
    if len(kpts0) == 0:
        return 0.0
    d = _rotation_parallax(cam0.normalize(np.asarray(kpts0, np.float64)), cam1.normalize(np.asarray(kpts1, np.float64)),
                           R)
    return float(np.median(d)) * 0.5 * (cam0.focal + cam1.focal)


def _planar_pose(Hn, x0, x1, inl_h, f, thr_px, ess):
    """The motion of a planar (or low-parallax) scene with measurable translation: the essential matrix's
    solution when there is one (the 5-point solver copes with planes), else the homography decomposition with
    the plane in front of camera 0 that most matches agree with (Sampson distance < ``thr_px``).
    -> (R, unit t) or None."""
    if ess is not None:
        # Measured on tum_fr2_desk stride-1 pairs (2 cm baseline, where the homography wins at ~2 px parallax):
        # re-scoring the decompositions against the essential matrix lowered AUC@5 from 0.32 to 0.29 (poselib),
        # so the essential matrix's pose is kept whenever there is one.
        return ess[0], ess[1]
    cands = []
    _, Rs, ts, normals = cv2.decomposeHomographyMat(Hn, np.eye(3))
    r0 = _homog(x0[inl_h])
    for R, t, nrm in zip(Rs, ts, normals):
        t = t.reshape(3)
        if np.linalg.norm(t) < 1e-9 or np.mean(r0 @ nrm.reshape(3) > 0) < 0.9:
            continue
        cands.append((R, t / np.linalg.norm(t)))
    best, best_support = None, -1
    for R, t in cands:
        support = int(np.sum(sampson_distance(x0, x1, essential_from_pose(R, t)) * f < thr_px))
        if support > best_support:
            best, best_support = (R, t), support
    return best


def pose_covariance(
    R: np.ndarray, t: np.ndarray, x1_inliers: np.ndarray, focal: float, residual_px: float,
    parallax_px: float, translation_known: bool = True,
) -> np.ndarray:
    """A first-order ``(6, 6)`` covariance over ``[tx, ty, tz, rx, ry, rz]`` (documented approximation).

    * Rotation: each inlier ray ``b`` (current camera) bounds the rotation about the two axes orthogonal to
      it with angular noise ``s = sigma_px / focal``; information ``sum (I - b b^T) / s^2``, covariance its
      inverse. ``sigma_px`` is the robust (1.4826 * median) inlier residual, floored at 0.1 px. This is the
      pure-rotation Fisher information: it ignores the rotation-translation coupling (optimistic for wide
      baselines by a small factor).
    * Translation (unit direction): the two directions orthogonal to ``t`` get ``(sigma_px / parallax_px)^2 / n``
      (a direction error of one noise-to-parallax ratio, averaged over ``n`` inliers; capped at 1); the
      direction along ``t`` -- the unobservable monocular scale -- gets :data:`UNKNOWN_VARIANCE`.
    * Unknown translation (pure rotation): the whole translation block is ``UNKNOWN_VARIANCE * I``.
    Cross terms are zero.
    """
    n = max(len(x1_inliers), 1)
    sigma_px = max(1.4826 * float(residual_px), 0.1)
    s = sigma_px / focal
    b = _rays(np.asarray(x1_inliers, np.float64).reshape(-1, 2))
    info = (n * np.eye(3) - b.T @ b) / (s * s)
    try:
        cov_r = np.linalg.inv(info + 1e-9 * np.eye(3))
    except np.linalg.LinAlgError:
        cov_r = np.eye(3) * UNKNOWN_VARIANCE
    cov = np.zeros((6, 6))
    cov[3:, 3:] = 0.5 * (cov_r + cov_r.T)
    tn = np.linalg.norm(t)
    if translation_known and tn > 0:
        u = np.asarray(t, np.float64) / tn
        perp = min((sigma_px / max(parallax_px, sigma_px)) ** 2 / n, 1.0)
        cov[:3, :3] = perp * (np.eye(3) - np.outer(u, u)) + UNKNOWN_VARIANCE * np.outer(u, u)
    else:
        cov[:3, :3] = UNKNOWN_VARIANCE * np.eye(3)
    return cov


# ---------------------------------------------------------------------------------------------------
# The entry points
# ---------------------------------------------------------------------------------------------------
def _check_points(kpts0, kpts1) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        k0 = np.asarray(kpts0, dtype=np.float64)
        k1 = np.asarray(kpts1, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return np.zeros((0, 2)), np.zeros((0, 2)), f"keypoints are not numeric arrays ({exc})"
    if k0.ndim != 2 or k0.shape[1] != 2 or k1.shape != k0.shape:
        return k0, k1, f"keypoints must be two (N, 2) arrays of equal length, got {k0.shape} and {k1.shape}"
    if not (np.all(np.isfinite(k0)) and np.all(np.isfinite(k1))):
        return k0, k1, "keypoints contain NaN or infinite values"
    return k0, k1, ""


def estimate_homography(
    kpts0: np.ndarray, kpts1: np.ndarray, threshold_px: float = 2.0, confidence: float = 0.999,
    method: str = "poselib", max_iterations: int = 10000,
) -> tuple[np.ndarray | None, np.ndarray, str]:
    """A robust pixel homography ``kpts0 -> kpts1`` (no camera needed; for planar targets).

    Returns ``(H (3, 3) with H[2, 2] = 1, inliers (N,) bool, "")`` or ``(None, zeros, reason)``.
    """
    k0, k1, why = _check_points(kpts0, kpts1)
    n = len(k0) if k0.ndim == 2 else 0
    if why:
        return None, np.zeros(n, bool), why
    if method not in METHODS:
        return None, np.zeros(n, bool), f"method must be one of {list(METHODS)}, got {method!r}"
    if n < 4:
        return None, np.zeros(n, bool), f"too few matches ({n} < 4)"
    fit = _fit_homography(k0, k1, threshold_px, confidence, method, max_iterations)
    if fit is None:
        return None, np.zeros(n, bool), "homography estimation failed"
    H, inl = fit
    return H / H[2, 2], inl, ""


def estimate_relative_pose(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    cam0: CameraModel,
    cam1: CameraModel,
    threshold_px: float = 1.0,
    confidence: float = 0.999,
    method: str = "poselib",
    homography_ratio: float = 0.8,
    min_parallax_px: float = 1.0,
    homography_threshold_factor: float = 2.0,
    max_iterations: int = 10000,
    use_homography: bool = True,
) -> tuple[RelativePose | None, str]:
    """Relative pose keyframe (0) -> current (1) from pixel matches.

    Args:
        kpts0, kpts1: ``(N, 2)`` matched pixels in image 0 and image 1 (distorted pixels as observed).
        cam0, cam1: their cameras (distortion is removed here).
        threshold_px: inlier threshold in pixels (epipolar Sampson distance / homography transfer error),
            converted to normalised units with the mean focal length of both cameras.
        confidence: RANSAC success probability.
        method: ``"poselib"`` (PoseLib LO-RANSAC + refinement; the default: more accurate on the shared
            data, see measure/bench_geometry.py) or ``"magsac"`` (OpenCV USAC MAGSAC).
        homography_ratio: the homography wins when ``inliers_H >= homography_ratio * inliers_E``.
        homography_threshold_factor: the homography's inlier threshold is this times ``threshold_px``: its
            transfer error is 2-D and carries the noise of both images, the Sampson distance is 1-D
            (2.0 ~ sqrt(2) * sqrt(chi2_2 / chi2_1) at 95 %).
        min_parallax_px: a winning homography whose inliers move at most this much once the rotation is
            removed (median, pixels) is a pure rotation: ``t`` unknown.
        max_iterations: RANSAC iteration cap.
        use_homography: False fits the essential matrix only.
    Returns:
        ``(pose, "")`` or ``(None, reason)``.
    """
    k0, k1, why = _check_points(kpts0, kpts1)
    if not why:
        why = _check_pose_settings(len(k0), cam0, cam1, threshold_px, confidence, method)
    if why:
        return None, why
    models, why = _fit_models(k0, k1, cam0, cam1, threshold_px, confidence, method, max_iterations,
                              homography_threshold_factor if use_homography else None)
    if models is None:
        return None, why
    return _select_model(models, cam0, cam1, threshold_px, homography_ratio, min_parallax_px)


def _check_pose_settings(n: int, cam0: Any, cam1: Any, threshold_px: float, confidence: float, method: str) -> str:
    """Why :func:`estimate_relative_pose` cannot run with these cameras and settings on ``n`` matches, or ''."""
    if method not in METHODS:
        return f"method must be one of {list(METHODS)}, got {method!r}"
    for name, cam in (("cam0", cam0), ("cam1", cam1)):
        if not isinstance(cam, CameraModel):
            return f"{name} must be a CameraModel, got {type(cam).__name__}"
        bad = cam.problem()
        if bad:
            return f"{name}: {bad}"
    if not (threshold_px > 0 and math.isfinite(threshold_px)):
        return f"threshold_px must be a positive number, got {threshold_px!r}"
    if not (0.0 < confidence < 1.0):
        return f"confidence must be in (0, 1), got {confidence!r}"
    if n < MIN_POINTS:
        return f"too few matches ({n} < {MIN_POINTS})"
    return ""


@dataclass
class _Models:
    """Both candidate models, fitted on the matches that stay finite once undistorted.

    ``x0, x1``: ``(M, 2)`` normalised points; ``kept``: ``(N,)`` bool, which input matches they are; ``f``: the
    mean focal length (pixels per normalised unit); ``essential``: ``(R, unit t, inliers (M,))`` or None;
    ``homography``: ``(Hn (3, 3) in normalised coordinates, inliers (M,))`` or None."""

    x0: np.ndarray
    x1: np.ndarray
    kept: np.ndarray
    f: float
    method: str
    essential: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    homography: tuple[np.ndarray, np.ndarray] | None

    def count(self, model: tuple | None) -> int:
        return int(model[-1].sum()) if model is not None else 0

    def full_mask(self, inliers: np.ndarray) -> np.ndarray:
        """``(N,)`` bool over the input matches from ``(M,)`` inliers of the kept ones."""
        m = np.zeros(len(self.kept), bool)
        m[np.nonzero(self.kept)[0][inliers]] = True
        return m


def _fit_models(k0, k1, cam0, cam1, threshold_px, confidence, method, max_iterations,
                homography_factor) -> tuple[_Models | None, str]:
    """Undistort, then fit the essential matrix and (``homography_factor`` not None) the homography with
    ``homography_factor * threshold_px``."""
    f = 0.5 * (cam0.focal + cam1.focal)
    x0, x1 = cam0.normalize(k0), cam1.normalize(k1)
    ok = np.all(np.isfinite(x0), axis=1) & np.all(np.isfinite(x1), axis=1)
    if ok.sum() < MIN_POINTS:
        return None, "too few matches after undistortion"
    x0c, x1c = np.ascontiguousarray(x0[ok]), np.ascontiguousarray(x1[ok])
    ess = _fit_essential(x0c, x1c, f, threshold_px, confidence, method, max_iterations)
    hom = None
    if homography_factor is not None:
        S, Si = np.diag([f, f, 1.0]), np.diag([1.0 / f, 1.0 / f, 1.0])
        hom = _fit_homography(x0c * f, x1c * f, homography_factor * threshold_px, confidence, method, max_iterations)
        if hom is not None:
            hom = (Si @ hom[0] @ S, hom[1])
    if ess is None and hom is None:
        return None, "no essential matrix or homography found"
    return _Models(x0c, x1c, ok, f, method, ess, hom), ""


def _select_model(m: _Models, cam0: CameraModel, cam1: CameraModel, threshold_px: float, homography_ratio: float,
                  min_parallax_px: float) -> tuple[RelativePose | None, str]:
    """The homography when it explains at least ``homography_ratio`` of the essential matrix's inliers (then a
    pure rotation when the parallax is at most ``min_parallax_px``), else the essential matrix."""
    n_e, n_h = m.count(m.essential), m.count(m.homography)
    translation_known = True
    if m.homography is not None and n_h >= homography_ratio * n_e and n_h >= MIN_POINTS:
        Hn, inl = m.homography
        R, t, translation_known, parallax = _homography_motion(m, threshold_px, min_parallax_px)
        model = "homography"
        residual = float(np.median(homography_transfer_error(m.x0[inl], m.x1[inl], Hn))) * m.f
    elif m.essential is None:
        return None, "essential matrix estimation failed"
    else:
        R, t, inl = m.essential
        model = "essential"
        residual = float(np.median(sampson_distance(m.x0[inl], m.x1[inl], essential_from_pose(R, t)))) * m.f
        parallax = float(np.median(_rotation_parallax(m.x0[inl], m.x1[inl], R))) * m.f
    if int(inl.sum()) < MIN_POINTS:
        return None, f"too few inliers ({int(inl.sum())} < {MIN_POINTS})"
    H_px = None
    if m.homography is not None:
        H_px = cam1.K @ m.homography[0] @ np.linalg.inv(cam0.K)
        H_px = H_px / H_px[2, 2]
    cov = pose_covariance(R, t, m.x1[inl], m.f, residual, parallax, translation_known)
    return RelativePose(
        R=np.asarray(R, np.float64), t=np.asarray(t, np.float64).reshape(3), inliers=m.full_mask(inl), model=model,
        covariance=cov, translation_known=translation_known, parallax_px=parallax, H=H_px, method=m.method,
        residual_px=residual, num_essential_inliers=n_e, num_homography_inliers=n_h,
    ), ""


def _homography_motion(m: _Models, threshold_px: float,
                       min_parallax_px: float) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """``(R, t, translation_known, parallax_px)`` when the homography wins: a pure rotation (``t = 0``) when the
    rotation-compensated parallax of its inliers is at most ``min_parallax_px`` or no planar motion is found,
    else the planar motion (:func:`_planar_pose`)."""
    Hn, inl = m.homography
    R_rot = _rotation_from_rays(_rays(m.x0[inl]), _rays(m.x1[inl]))
    parallax = float(np.median(_rotation_parallax(m.x0[inl], m.x1[inl], R_rot))) * m.f
    planar = None
    if parallax > min_parallax_px:
        planar = _planar_pose(Hn, m.x0, m.x1, inl, m.f, threshold_px, m.essential)
    if planar is None:
        return R_rot, np.zeros(3), False, parallax
    return planar[0], planar[1], True, parallax
