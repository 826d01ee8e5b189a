"""A keyframe's metric side, as plain functions of explicit inputs: the depth of its matched points, the
absolute pose of a frame against them, the depth a stereo keyframe gets from its own left-right matches,
and its landmarks. ``s`` is the frontend's settings (``depth.*``, ``stereo.*``, ``pnp.*``, ``ransac.*``: see
:mod:`.settings`). ROS-free; :class:`~.frontend.Frontend` calls these per frame and per keyframe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .backends.base import Matches
from .camera import CameraModel
from .geometry import RelativePose, rotation_parallax_px
from .keyframes import Keyframe
from .metric import StereoRig, back_project, depth_at, estimate_absolute_pose, refine_right_x, stereo_depth_image
from .metric_window import carry_window, refine_with_window
from .stereo_calibration import OffsetFit, Stereo2View, fit_disparity_offset

Settings = Mapping[str, Any]


def keyframe_depth(kf: Keyframe, points: np.ndarray, s: Settings) -> np.ndarray | None:
    """``(N,)`` depth (metres, NaN = none) of the keyframe at ``points`` ``(N, 2)`` (original pixels); None
    when the keyframe has no depth."""
    if kf.depth is None:
        return None
    return depth_at(kf.depth, points, s["depth.lookup"], int(s["depth.window_px"]), s["depth.min_m"],
                    s["depth.max_m"])


def metric_pose(kf: Keyframe, camera: CameraModel, m: Matches, depth0: np.ndarray, s: Settings
                ) -> tuple[RelativePose | None, str]:
    """The pose of the frame seen by ``camera`` from the keyframe points of ``m`` with depth ``depth0`` (PnP):
    ``(pose, "")``, or ``(None, why)`` when the monocular pose must stand in (too few points with depth, no
    consensus); ``why`` starts with ``monocular pose:`` and becomes the frame's reason."""
    with_depth = int(np.isfinite(depth0).sum())
    if with_depth < s["pnp.min_points"]:
        return None, f"monocular pose: {with_depth} matches with depth (< pnp.min_points {s['pnp.min_points']})"
    X = back_project(kf.camera, m.kpts0, depth0)
    ap = estimate_absolute_pose(X, m.kpts1, camera, s["pnp.method"], s["pnp.threshold_px"], s["ransac.confidence"],
                                int(s["ransac.max_iterations"]), kf.depth_noise, bool(s["pnp.weighted"]))
    if ap is None:
        return None, f"monocular pose: the absolute pose found no consensus ({with_depth} matches with depth)"
    if kf.window is not None and int(s["pnp.window"]) > 0:
        ap.R, ap.t, _ = refine_with_window(ap, X, m.kpts0, m.kpts1, camera, kf.depth_noise, kf.window)
    inl = ap.inliers
    parallax = rotation_parallax_px(m.kpts0[inl], m.kpts1[inl], kf.camera, camera, ap.R)
    return RelativePose(ap.R, ap.t, inl, "pnp", ap.covariance, True, parallax, None, ap.method, ap.residual_px,
                        metric=True), ""


def depth_noise(stereo: StereoRig | None, s: Settings) -> float:
    """A new keyframe's depth noise over ``Z²`` (1/m): ``depth.noise`` (RGB-D), or a stereo rig's
    ``stereo.disparity_noise_px / (fx b)``."""
    if stereo is None:
        return float(s["depth.noise"])
    return float(s["stereo.disparity_noise_px"]) / (stereo.left.fx * stereo.baseline_m)


def stereo_keyframe_depth(rig: StereoRig, left_right: Matches, size: tuple[int, int], s: Settings,
                          images: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A stereo keyframe's sparse depth image ``(H, W)`` (metres, NaN = none) from its left-right matches
    (original pixels of the left image of ``size``), and the left pixels of those matches. With ``images``
    (left, right ``(H, W)`` uint8) and ``stereo.refine_px`` > 0 the right x of each match is refined by block
    matching first (:func:`~.metric.refine_right_x`; matches it cannot refine keep the matcher's x)."""
    kpts_right = left_right.kpts1
    if images is not None and int(s["stereo.refine_px"]) > 0:
        refined = refine_right_x(*images, left_right.kpts0, kpts_right, int(s["stereo.refine_px"]))
        kpts_right = np.array(kpts_right, np.float64)
        kpts_right[:, 0] = np.where(np.isfinite(refined), refined, kpts_right[:, 0])
    depth = stereo_depth_image(rig, left_right.kpts0, kpts_right, size, max_dv_px=s["stereo.max_dv_px"],
                               min_disparity_px=s["stereo.min_disparity_px"],
                               max_disparity_px=s["stereo.max_disparity_px"])
    return depth, left_right.kpts0


def keyframe_landmarks(kf: Keyframe, points: np.ndarray | None, detected: np.ndarray | None, s: Settings
                       ) -> np.ndarray:
    """``(K, 5)`` ``x y z u v`` float32 of the keyframe's points with depth: ``points`` (a stereo keyframe's
    triangulated pixels) if given, else ``detected`` (the backend's keypoints, in the pixels of the features'
    image), else (a detector-free backend) the centres of an 8-pixel grid."""
    if points is None and detected is not None:
        (ph, pw), (oh, ow) = kf.features.image_size, kf.image_size
        points = (detected.astype(np.float64) + 0.5) * np.array([ow / pw, oh / ph]) - 0.5
    elif points is None:
        ys, xs = np.mgrid[3.5:kf.image_size[0]:8, 3.5:kf.image_size[1]:8]
        points = np.column_stack([xs.ravel(), ys.ravel()])
    z = keyframe_depth(kf, points, s)
    ok = np.isfinite(z)
    X = back_project(kf.camera, points[ok], z[ok])
    return np.column_stack([X, points[ok]]).astype(np.float32)


def keyframe_window(kf: Keyframe, matched: Keyframe, m: Matches, depth0: np.ndarray | None,
                    pose: RelativePose | None, s: Settings) -> None:
    """Give a new metric keyframe ``kf`` its window (:mod:`.metric_window`) from the metric ``pose`` of its frame
    against the keyframe ``matched`` (matches ``m``, that keyframe's depth ``depth0`` at them); nothing when the
    pose is not metric or ``pnp.window`` is 0."""
    if kf.depth is None or pose is None or not pose.metric or depth0 is None or int(s["pnp.window"]) <= 0:
        return
    kf.window = carry_window(matched.camera, matched.depth_noise, matched.window, m, depth0, pose, int(s["pnp.window"]))


def disparity_offset_fit(kf0: Keyframe, kf1: Keyframe, m: Matches, depth0: np.ndarray | None,
                         pose: RelativePose | None, rig: StereoRig, s: Settings) -> OffsetFit | None:
    """The disparity offset that two stereo keyframes tell (:mod:`.stereo_calibration`): ``kf1`` made from a
    frame with the metric ``pose`` against ``kf0`` (matches ``m``, ``kf0``'s depth ``depth0`` at them); each
    keyframe's depth back to raw disparities with the offset it was made with. None without such a pose."""
    if pose is None or not pose.metric or depth0 is None or kf1.depth is None:
        return None
    inl = pose.inliers
    fb = rig.left.fx * rig.baseline_m
    z1 = keyframe_depth(kf1, m.kpts1[inl], s)
    with np.errstate(divide="ignore", invalid="ignore"):
        d0 = fb / depth0[inl] - kf0.disparity_offset_px
        d1 = fb / z1 - kf1.disparity_offset_px
    view = Stereo2View(m.kpts0[inl], m.kpts1[inl], d0, d1, pose.R, pose.t, rig.left.K, rig.baseline_m)
    return fit_disparity_offset(view, kf1.disparity_offset_px)
