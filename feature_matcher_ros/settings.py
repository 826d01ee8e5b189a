"""The frontend's settings: its parameter specs (the node declares them as ROS parameters), the input modes,
how a flat settings mapping splits between node, frontend and backend, and the rules across parameters that
one spec cannot say. ROS-free; :class:`~.frontend.Frontend` validates every change with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from .backends import backend_class
from .backends.base import PRECISIONS
from .geometry import METHODS
from .keyframes import PARALLAX_MODES
from .loops import LOOP_PARAMS
from .metric import DEPTH_LOOKUPS, PNP_METHODS
from .params import ParamSpec

# Metric input (RGB-D depth or a rectified stereo pair): how keyframe points get their depth, and the PnP.
METRIC_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("depth.lookup", "nearest", "Keypoint depth: nearest valid depth within depth.window_px, or bilinear "
              "where all four neighbours are valid and agree (measured: docs/benchmarks.md).", choices=DEPTH_LOOKUPS),
    ParamSpec("depth.window_px", 2, "Search radius of the nearest lookup (pixels).", min=0, max=16),
    ParamSpec("depth.min_m", 0.1, "Depths below this (metres) count as missing.", min=0.0, max=1000.0),
    ParamSpec("depth.max_m", 10.0, "Depths above this (metres) count as missing.", min=0.01, max=10000.0),
    ParamSpec("stereo.max_dv_px", 1.0, "Left-right matches must lie on the same row within this (pixels).",
              min=0.0, max=50.0),
    ParamSpec("stereo.refine_px", 2, "Refine each left-right match's disparity by block matching along the row "
              "within this many pixels (sub-pixel, ORB-SLAM2's stereo refinement; 0 = the matcher's keypoints).",
              min=0, max=16),
    ParamSpec("stereo.min_disparity_px", 1.0, "Smallest disparity triangulated (pixels; sets the far limit).",
              min=0.01, max=10000.0),
    ParamSpec("stereo.max_disparity_px", 512.0, "Largest disparity triangulated (pixels; sets the near limit).",
              min=0.01, max=10000.0),
    ParamSpec("stereo.disparity_offset_px", 0.0, "Added to every stereo disparity (pixels): the error of the right "
              "camera's principal point cx, if known (until stereo.self_calibrate has an estimate).",
              min=-20.0, max=20.0),
    ParamSpec("stereo.self_calibrate", True, "Estimate the disparity offset online from consecutive metric stereo "
              "keyframes (the median of their fits; feature_matcher_ros/stereo_calibration.py) and use it for new "
              "keyframes (false: stereo.disparity_offset_px as set)."),
    ParamSpec("stereo.self_calibrate_min_pairs", 5, "Keyframe pairs fitted before the self-calibrated offset is "
              "used.", min=3, max=1000),
    ParamSpec("stereo.self_calibrate_max_sd_px", 0.06, "The self-calibrated offset is used once the standard error "
              "of its median (from the pairs' scatter) is at most this (pixels; 0.06 px is a 0.3 % depth error at "
              "20 px disparity).", min=0.0, max=10.0),
    ParamSpec("depth.noise", 0.0015, "RGB-D depth noise for the pose covariance: the standard deviation of a depth "
              "Z is depth.noise * Z^2 (1/m; about 0.0015 for Kinect-class structured light).", min=0.0, max=1.0),
    ParamSpec("stereo.disparity_noise_px", 0.5, "Stereo disparity noise for the pose covariance (pixels): depth "
              "standard deviation Z^2 * this / (fx * baseline).", min=0.0, max=100.0),
    ParamSpec("pnp.method", "poselib", "Absolute pose: poselib (LO-RANSAC + refinement) or opencv "
              "(solvePnPRansac + LM).", choices=PNP_METHODS),
    ParamSpec("pnp.threshold_px", 2.0, "Reprojection inlier threshold of the absolute pose (pixels).",
              min=0.1, max=50.0),
    ParamSpec("pnp.weighted", True, "Refine the absolute pose on its inliers with each point weighted by its depth "
              "noise (depth.noise, stereo.disparity_noise_px): far points count less (false: as RANSAC left it)."),
    ParamSpec("pnp.window", 0, "Refine each metric pose on the points that this many earlier keyframes measured "
              "at the keyframe's matched keypoints too, with their depth noise and the poses between "
              "(feature_matcher_ros/metric_window.py; 0 = the active keyframe's depth alone).", min=0, max=8),
    ParamSpec("pnp.min_points", 12, "Fewer keyframe-to-frame matches with depth than this: monocular pose for "
              "that frame (said in its reason).", min=6, max=100_000),
)

FRONTEND_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("max_matches", 0, "Keep at most this many matches, highest score first (0 = all).", min=0, max=1_000_000),
    ParamSpec("nms.kernel_size", 0, "CasMTR max-pool NMS window over the matches' keyframe positions, in "
              "cells (odd; 0 or 1 = off): a well-spread match set.", min=0, max=31),
    ParamSpec("nms.cell_px", 4, "NMS grid cell in pixels (CasMTR runs it at 1/4 or 1/2 resolution).", min=1, max=64),
    ParamSpec("nms.threshold", 0.0, "With NMS on, keep only matches scoring strictly above this "
              "(in the backend's score units).", min=-1e9, max=1e9),
    ParamSpec("resize_long_edge", 0, "Resize images so the long edge has this many pixels before extraction (0 = off).",
              min=0, max=4096),
    ParamSpec("ransac.method", "poselib", "Robust estimator: poselib (LO-RANSAC + refinement) or magsac (OpenCV USAC).",
              choices=METHODS),
    ParamSpec("ransac.threshold_px", 1.0, "Inlier threshold in pixels (epipolar / homography transfer error).",
              min=0.1, max=50.0),
    ParamSpec("ransac.confidence", 0.999, "RANSAC success probability.", min=0.5, max=0.999999),
    ParamSpec("ransac.max_iterations", 10000, "RANSAC iteration cap.", min=10, max=1_000_000),
    ParamSpec("ransac.homography", True, "Also fit a homography (planar scenes, pure rotation)."),
    ParamSpec("ransac.homography_ratio", 0.8, "The homography wins when its inliers >= this fraction of the "
              "essential matrix's.", min=0.0, max=1.0),
    ParamSpec("ransac.min_parallax_px", 1.0, "A winning homography with at most this rotation-compensated "
              "parallax (px) is a pure rotation (translation unknown).", min=0.0, max=100.0),
    ParamSpec("keyframe.min_matches", 20, "Fewer matches than this: no pose, tracking lost.", min=5, max=100_000),
    ParamSpec("keyframe.min_inliers", 50, "New keyframe when the pose has fewer inliers than this.", min=5,
              max=100_000),
    ParamSpec("keyframe.max_parallax_px", 60.0, "New keyframe when the median inlier parallax exceeds this (px).",
              min=1.0, max=10_000.0),
    ParamSpec("keyframe.parallax", "displacement", "Parallax measure: displacement (median keypoint motion) or "
              "rotation_compensated (motion left after removing the rotation).", choices=PARALLAX_MODES),
    ParamSpec("tracking.min_inliers", 20, "Fewer pose inliers than this: tracking lost.", min=5, max=100_000),
    ParamSpec("keyframe_cache_size", 1, "Keyframes kept for relocalisation (1 = the active one only).", min=1, max=100),
    ParamSpec("odometry.scale", 0.0, "mono only: metres per keyframe-to-frame translation for the chained "
              "odometry (0 = unknown: unit steps, marked unknown); refused in rgbd/stereo (metric).", min=0.0,
              max=1000.0),
    ParamSpec("pose.floor_m", 0.01, "Metric poses: added (in quadrature) to each translation standard deviation, "
              "for what the PnP covariance cannot see (calibration, stamps, rolling shutter); measured so that the "
              "NEES against ground truth is about 6 (docs/robot.md).", min=0.0, max=100.0),
    ParamSpec("pose.floor_rad", 0.004, "Every pose: added (in quadrature) to each rotation standard deviation "
              "(radians), like pose.floor_m.", min=0.0, max=3.2),
) + METRIC_PARAMS + LOOP_PARAMS
INPUT_MODES = ("mono", "rgbd", "stereo")
PRECISION_PARAM = ParamSpec("precision", "fp32", "Numeric precision of the backend (features are converted or "
                            "dropped).", choices=PRECISIONS)


class SettingsParts(NamedTuple):
    """A flat settings mapping split by who takes each name (see :func:`split_settings`)."""

    node: dict[str, Any]
    frontend: dict[str, Any]
    backend: dict[str, Any]


def split_settings(settings: Mapping[str, Any], backend: str) -> SettingsParts:
    """Split ``settings`` (dotted names, e.g. a ROS params file or a node's parameters) by who takes them:
    ``frontend``: the frontend's parameters and ``precision`` (what :meth:`Frontend.update` takes besides the
    backend's); ``backend``: the parameters of the backend named ``backend`` (``ValueError`` for an unknown
    name); ``node``: the rest (``backend``, ``device``, ``weights``, topics, QoS, other backends' parameters).

    >>> split_settings({"backend": "sift", "max_matches": 9, "sift.ratio": 0.7, "orb.levels": 4}, "sift")
    SettingsParts(node={'backend': 'sift', 'orb.levels': 4}, frontend={'max_matches': 9}, backend={'sift.ratio': 0.7})
    """
    backend_names = {p.name for p in backend_class(backend).PARAMS}
    frontend_names = {p.name for p in (*FRONTEND_PARAMS, PRECISION_PARAM)}
    parts = SettingsParts({}, {}, {})
    for name, value in settings.items():
        part = parts.backend if name in backend_names else parts.frontend if name in frontend_names else parts.node
        part[name] = value
    return parts


def cross_check(merged: Mapping[str, Any], input_mode: str, backend: Any) -> str | None:
    """Why the values ``merged`` (every frontend and backend parameter) cannot go together in ``input_mode``
    with ``backend``, or None: rules across parameters, then the backend's own ``validate``."""
    if merged["nms.kernel_size"] > 1 and merged["nms.kernel_size"] % 2 == 0:
        return f"nms.kernel_size must be odd (or 0/1 for off), got {merged['nms.kernel_size']}"
    if merged["depth.min_m"] >= merged["depth.max_m"]:
        return f"depth.min_m ({merged['depth.min_m']}) must be < depth.max_m ({merged['depth.max_m']})"
    if merged["stereo.min_disparity_px"] >= merged["stereo.max_disparity_px"]:
        return (f"stereo.min_disparity_px ({merged['stereo.min_disparity_px']}) must be < "
                f"stereo.max_disparity_px ({merged['stereo.max_disparity_px']})")
    if input_mode != "mono" and merged["odometry.scale"] != 0:
        return (f"odometry.scale applies to input_mode mono only; {input_mode} poses are metric "
                f"(got {merged['odometry.scale']})")
    if merged["tracking.min_inliers"] > merged["keyframe.min_inliers"]:
        return (f"tracking.min_inliers ({merged['tracking.min_inliers']}) must be <= keyframe.min_inliers "
                f"({merged['keyframe.min_inliers']})")
    reason = backend.validate({k: merged[k] for k in backend.settings})
    return f"{backend.name}: {reason}" if reason else None
