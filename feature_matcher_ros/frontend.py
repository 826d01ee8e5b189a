"""The frontend: each frame is matched against a cached keyframe, its relative pose estimated, and the
keyframe policy applied. ROS-free; the node wraps one :class:`Frontend`.

Per frame (:meth:`Frontend.process`): convert to gray, resize (``resize_long_edge``), extract features once,
match against the active keyframe's cached features, keep the ``max_matches`` best (highest score), estimate
the pose keyframe -> current (:func:`.geometry.estimate_relative_pose`, keypoints undistorted), then:

* tracked: a new keyframe when the inliers or the parallax say so (:class:`.keyframes.KeyframePolicy`); the
  current frame's already-computed features are promoted (never re-extracted);
* lost: the other cached keyframes are tried, newest first (relocalisation); if none fits, the current frame
  becomes a new keyframe ("tracking lost").

Odometry: ``T_world_current = T_world_keyframe @ inv(se3(R, s * t))`` with ``s = odometry.scale``. Monocular
translation has no scale: with ``odometry.scale = 0`` (default, "unknown") unit-norm translations are chained
(``s = 1``) and ``FrameResult.odometry_scale_known`` is False, so positions are only a direction-consistent
sketch; rotations are exact compositions. A pure-rotation frame (homography model) contributes no translation.
A frame that loses tracking has ``T_world_current = None``; the keyframe made from it inherits the last known
pose (no motion assumed across the gap), and relocalising to a cached keyframe restores that keyframe's pose.

Example:
    >>> import numpy as np
    >>> from feature_matcher_ros.backends.sift import SiftBackend
    >>> from feature_matcher_ros.camera import CameraModel
    >>> fe = Frontend(SiftBackend(), {"max_matches": 500})
    >>> cam = CameraModel.from_matrix(160, 120, [[100, 0, 80], [0, 100, 60], [0, 0, 1]])
    >>> image = (np.random.default_rng(0).random((120, 160)) * 255).astype(np.uint8)
    >>> r = fe.process(image, 1_000, cam)
    >>> r.status, r.new_keyframe, r.reason
    ('init', True, 'first frame')
    >>> fe.update({"max_matches": 100, "ransac.threshold_px": -1.0})   # all or nothing
    'ransac.threshold_px: must be >= 0.1, got -1.0'
    >>> fe.settings["max_matches"]
    500
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import cv2
import numpy as np

from .backends import backend_class
from .backends.base import PRECISIONS, Backend, Features, Matches
from .backends.nms import nms_matches
from .camera import CameraModel
from .geometry import METHODS, RelativePose, estimate_relative_pose, invert, se3
from .keyframes import PARALLAX_MODES, Keyframe, KeyframeCache, KeyframePolicy, median_displacement_px
from .params import ParamSpec, check_changes

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
    ParamSpec("keyframe.min_inliers", 50, "New keyframe when the pose has fewer inliers than this.", min=5, max=100_000),
    ParamSpec("keyframe.max_parallax_px", 60.0, "New keyframe when the median inlier parallax exceeds this (px).",
              min=1.0, max=10_000.0),
    ParamSpec("keyframe.parallax", "displacement", "Parallax measure: displacement (median keypoint motion) or "
              "rotation_compensated (motion left after removing the rotation).", choices=PARALLAX_MODES),
    ParamSpec("tracking.min_inliers", 20, "Fewer pose inliers than this: tracking lost.", min=5, max=100_000),
    ParamSpec("keyframe_cache_size", 1, "Keyframes kept for relocalisation (1 = the active one only).", min=1, max=100),
    ParamSpec("odometry.scale", 0.0, "Metres per keyframe-to-frame translation for the chained odometry "
              "(0 = unknown: unit steps, marked unknown).", min=0.0, max=1000.0),
)
_FRONT_NAMES = frozenset(p.name for p in FRONTEND_PARAMS)
PRECISION_PARAM = ParamSpec("precision", "fp32", "Numeric precision of the backend (features are converted or dropped).",
                            choices=PRECISIONS)


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


@dataclass
class FrameResult:
    """What :meth:`Frontend.process` found for one frame (see the contract in the module docstring).

    Attributes beyond the contract: ``cache_size`` / ``cache_nbytes`` (keyframes held and their feature bytes
    after this frame), ``odometry_scale_known``, ``relocalisation_tried`` (stamps of the cached keyframes tried).
    """

    stamp_ns: int
    keyframe_stamp_ns: int
    frame_index: int
    keyframe_index: int
    matches: Matches
    inliers: np.ndarray
    pose: RelativePose | None
    reason: str
    new_keyframe: bool
    keyframe_reason: str
    status: str
    timings_ms: dict[str, float]
    T_world_current: np.ndarray | None
    cache_size: int = 0
    cache_nbytes: int = 0
    odometry_scale_known: bool = False
    relocalisation_tried: list[int] = field(default_factory=list)

    @property
    def num_inliers(self) -> int:
        return int(np.count_nonzero(self.inliers))


@dataclass
class _Attempt:
    """One keyframe-to-frame match + pose."""

    keyframe: Keyframe
    matches: Matches
    pose: RelativePose | None
    reason: str
    inliers: np.ndarray
    match_ms: float
    geometry_ms: float


def to_gray(image: Any) -> np.ndarray:
    """``(H, W)`` uint8 from ``(H, W)`` / ``(H, W, 1)`` gray or ``(H, W, 3|4)`` RGB(A) uint8; ValueError otherwise."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY)
    if image.ndim != 2 or min(image.shape) < 8:
        raise ValueError(f"image must be (H, W) gray or (H, W, 3) RGB with H, W >= 8, got shape {image.shape}")
    return np.ascontiguousarray(image)


class Frontend:
    """Keyframe-based matching and relative pose over a stream of frames (one camera)."""

    def __init__(self, backend: Backend, settings: Mapping[str, Any] | None = None) -> None:
        if not isinstance(backend, Backend):
            raise ValueError(f"backend must be a Backend, got {type(backend).__name__}")
        self.backend = backend
        # process() and update() may come from different threads (a ROS parameter callback): one at a time.
        self._lock = threading.RLock()
        self._settings: dict[str, Any] = {p.name: p.default for p in FRONTEND_PARAMS}
        self._cache = KeyframeCache(self._settings["keyframe_cache_size"])
        self._policy = self._make_policy(self._settings)
        self._reset()
        if settings:
            reason = self.update(dict(settings))
            if reason:
                raise ValueError(f"Frontend settings: {reason}")

    # -- parameters -------------------------------------------------------------------------------
    @property
    def settings(self) -> dict[str, Any]:
        """The current frontend parameter values (a copy)."""
        return dict(self._settings)

    def params(self) -> tuple[ParamSpec, ...]:
        """Every live parameter: the frontend's, the backend's and ``precision``."""
        precision = ParamSpec(PRECISION_PARAM.name, self.backend.precision, PRECISION_PARAM.description,
                              choices=PRECISIONS)
        return FRONTEND_PARAMS + tuple(self.backend.PARAMS) + (precision,)

    def values(self) -> dict[str, Any]:
        """Current values of every parameter in :meth:`params`."""
        return {**self._settings, **self.backend.settings, "precision": self.backend.precision}

    def _cross_check(self, merged: Mapping[str, Any]) -> str | None:
        if merged["nms.kernel_size"] > 1 and merged["nms.kernel_size"] % 2 == 0:
            return f"nms.kernel_size must be odd (or 0/1 for off), got {merged['nms.kernel_size']}"
        if merged["tracking.min_inliers"] > merged["keyframe.min_inliers"]:
            return (f"tracking.min_inliers ({merged['tracking.min_inliers']}) must be <= keyframe.min_inliers "
                    f"({merged['keyframe.min_inliers']})")
        backend_part = {k: merged[k] for k in self.backend.settings}
        reason = self.backend.validate(backend_part)
        return f"{self.backend.name}: {reason}" if reason else None

    def update(self, changes: Mapping[str, Any]) -> str | None:
        """Validate a batch of changes (frontend, backend and ``precision``) and apply all or none.

        Returns None when applied, else the reason nothing was changed. A ``precision`` change converts the
        cached keyframe features (``backend.convert_features``) or drops those that cannot be converted; a
        ``resize_long_edge`` change drops the cache (the next frame becomes the keyframe).
        """
        if not isinstance(changes, Mapping):
            return f"changes must be a mapping of parameter names to values, got {type(changes).__name__}"
        if not changes:
            return None
        with self._lock:
            return self._update(changes)

    def _update(self, changes: Mapping[str, Any]) -> str | None:
        merged, reason = check_changes(self.params(), self.values(), changes, self._cross_check)
        if reason:
            return reason
        front = {k: merged[k] for k in self._settings}
        back = {k: merged[k] for k in self.backend.settings}
        old_back = dict(self.backend.settings)
        try:
            if back != old_back:
                self.backend.apply(back)
            if merged["precision"] != self.backend.precision:
                self.backend.set_precision(merged["precision"])
        except Exception as exc:  # noqa: BLE001 - keep all-or-none even if a backend misbehaves
            try:
                self.backend.apply(old_back)
            except Exception:  # noqa: BLE001
                pass
            return f"{self.backend.name}: could not apply the change ({exc})"
        if front["resize_long_edge"] != self._settings["resize_long_edge"] and len(self._cache):
            self._drop_cache("resize_long_edge changed")
        self._settings = front
        self._cache.resize(front["keyframe_cache_size"])
        self._policy = self._make_policy(front)
        self._sync_cache()
        return None

    @staticmethod
    def _make_policy(s: Mapping[str, Any]) -> KeyframePolicy:
        return KeyframePolicy(s["keyframe.min_inliers"], s["keyframe.max_parallax_px"], s["tracking.min_inliers"],
                              s["keyframe.parallax"])

    # -- state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every keyframe and the odometry: the next frame is a first frame again."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self._cache.clear()
        self._frame_counter = 0
        self._keyframe_counter = 0
        self._pending_reason = "first frame"
        self._last_T_world: np.ndarray = np.eye(4)

    @property
    def keyframe(self) -> Keyframe | None:
        """The active keyframe (matched against), or None before the first frame."""
        return self._cache.active

    @property
    def cache(self) -> KeyframeCache:
        return self._cache

    @property
    def cache_nbytes(self) -> int:
        return self._cache.nbytes

    def _drop_cache(self, why: str) -> None:
        self._cache.clear()
        self._pending_reason = f"keyframe cache dropped ({why})"

    def _sync_cache(self) -> None:
        """Cached features follow the backend's precision/device (converted, or dropped when impossible)."""
        active = self._cache.active
        dropped = self._cache.sync(self.backend)
        if active is not None and any(k is active for k in dropped):
            # The active keyframe is gone: the next frame becomes the keyframe (the odometry continues).
            self._cache.clear()
            self._pending_reason = (f"keyframe cache dropped (features not convertible to "
                                    f"{self.backend.precision} on {self.backend.device})")

    # -- per frame --------------------------------------------------------------------------------
    def _prepare(self, image: Any, camera: Any) -> tuple[np.ndarray, np.ndarray, CameraModel]:
        gray = to_gray(image)
        if not isinstance(camera, CameraModel):
            raise ValueError(f"camera must be a CameraModel, got {type(camera).__name__}")
        bad = camera.problem()
        if bad:
            raise ValueError(f"camera: {bad}")
        h, w = gray.shape
        if (camera.width, camera.height) != (w, h):
            if abs(camera.width / camera.height - w / h) > 0.01:
                raise ValueError(f"camera is for {camera.width}x{camera.height} but the image is {w}x{h} "
                                 f"(different aspect ratio)")
            camera = camera.scaled(w, h)
        target = int(self._settings["resize_long_edge"])
        work = gray
        if target > 0 and max(h, w) != target:
            s = target / max(h, w)
            size = (max(8, round(w * s)), max(8, round(h * s)))
            work = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        return gray, work, camera

    def _attempt(self, kf: Keyframe, feats: Features, camera: CameraModel, image_size: tuple[int, int]) -> _Attempt:
        s = self._settings
        t0 = time.perf_counter()
        m = self.backend.match(kf.features, feats)
        # Back to original pixels of each image (the features may come from resized images).
        (ph0, pw0), (ph1, pw1) = kf.features.image_size, feats.image_size
        (oh0, ow0), (oh1, ow1) = kf.image_size, image_size
        if (ph0, pw0, ph1, pw1) != (oh0, ow0, oh1, ow1):
            m = m.scaled(ow0 / pw0, oh0 / ph0, ow1 / pw1, oh1 / ph1)
        if s["nms.kernel_size"] > 1:
            m = m.select(nms_matches(m.kpts0, m.scores, kf.image_size, kernel_size=int(s["nms.kernel_size"]),
                                     cell=int(s["nms.cell_px"]), threshold=float(s["nms.threshold"])))
        m = m.top_k(int(s["max_matches"]))
        t1 = time.perf_counter()
        pose, reason = None, ""
        if len(m) < s["keyframe.min_matches"]:
            reason = f"too few matches ({len(m)} < {s['keyframe.min_matches']})"
        else:
            pose, reason = estimate_relative_pose(
                m.kpts0, m.kpts1, kf.camera, camera, threshold_px=s["ransac.threshold_px"],
                confidence=s["ransac.confidence"], method=s["ransac.method"],
                homography_ratio=s["ransac.homography_ratio"], min_parallax_px=s["ransac.min_parallax_px"],
                max_iterations=s["ransac.max_iterations"], use_homography=s["ransac.homography"],
            )
        inliers = pose.inliers if pose is not None else np.zeros(len(m), bool)
        if pose is not None and self._policy.lost(pose.num_inliers):
            reason = f"too few inliers ({pose.num_inliers} < {self._policy.min_tracking_inliers})"
            pose = None
        t2 = time.perf_counter()
        return _Attempt(kf, m, pose, reason, inliers, 1e3 * (t1 - t0), 1e3 * (t2 - t1))

    def _new_keyframe(self, feats: Features, stamp_ns: int, frame_index: int, camera: CameraModel,
                      image_size: tuple[int, int], T_world: np.ndarray | None) -> Keyframe:
        kf = Keyframe(feats, stamp_ns, self._keyframe_counter, frame_index, camera, image_size,
                      None if T_world is None else T_world.copy())
        self._keyframe_counter += 1
        self._cache.add(kf)
        return kf

    def _world_pose(self, kf: Keyframe, pose: RelativePose) -> np.ndarray | None:
        if kf.T_world is None:
            return None
        scale = float(self._settings["odometry.scale"]) or 1.0
        t = pose.t * scale if pose.translation_known else np.zeros(3)
        return kf.T_world @ invert(se3(pose.R, t))

    def process(self, image: np.ndarray, stamp_ns: int, camera: CameraModel) -> FrameResult:
        """Match one frame against the keyframe, estimate its pose, apply the keyframe policy.

        Args:
            image: ``(H, W)`` uint8 gray or ``(H, W, 3)`` uint8 RGB.
            stamp_ns: the image stamp in integer nanoseconds.
            camera: intrinsics of ``image`` (rescaled automatically when the image has another size of the
                same aspect ratio).
        Raises:
            ValueError naming the problem for unusable input (image type/shape, camera, stamp); the state
            is untouched then.
        """
        with self._lock:
            return self._process(image, stamp_ns, camera)

    def _process(self, image: Any, stamp_ns: Any, camera: Any) -> FrameResult:
        t_start = time.perf_counter()
        if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)):
            raise ValueError(f"stamp_ns must be an integer (nanoseconds), got {type(stamp_ns).__name__}")
        stamp_ns = int(stamp_ns)
        gray, work, camera = self._prepare(image, camera)
        image_size = (int(gray.shape[0]), int(gray.shape[1]))
        t_pre = time.perf_counter()
        self._sync_cache()
        feats = self.backend.extract(work)
        t_ext = time.perf_counter()
        frame_index = self._frame_counter
        self._frame_counter += 1
        timings = {"preprocess": 1e3 * (t_pre - t_start), "extract": 1e3 * (t_ext - t_pre), "match": 0.0,
                   "geometry": 0.0}
        scale_known = float(self._settings["odometry.scale"]) > 0

        active = self._cache.active
        if active is None:  # first frame, or after a reset / a dropped cache
            reason = self._pending_reason
            kf = self._new_keyframe(feats, stamp_ns, frame_index, camera, image_size, self._last_T_world)
            return self._result(stamp_ns, kf.stamp_ns, frame_index, kf.index, Matches.empty(), np.zeros(0, bool),
                                None, reason, True, reason, "init", timings, t_start, kf.T_world, scale_known)

        att = self._attempt(active, feats, camera, image_size)
        timings["match"] += att.match_ms
        timings["geometry"] += att.geometry_ms
        tried: list[int] = []
        if att.pose is not None:
            T_world = self._world_pose(active, att.pose)
            parallax = (att.pose.parallax_px if self._settings["keyframe.parallax"] == "rotation_compensated"
                        else median_displacement_px(att.matches.kpts0, att.matches.kpts1, att.inliers))
            new_kf, kf_reason = self._policy.decide(att.pose.num_inliers, parallax)
            status = "tracking"
        else:
            found = None
            t_rel = time.perf_counter()
            for old in self._cache.older():
                tried.append(old.stamp_ns)
                cand = self._attempt(old, feats, camera, image_size)
                if cand.pose is not None:
                    found = cand
                    break
            timings["relocalise"] = 1e3 * (time.perf_counter() - t_rel)
            if found is not None:
                att = found
                self._cache.activate(att.keyframe)
                T_world = self._world_pose(att.keyframe, att.pose)
                new_kf, kf_reason = False, f"relocalised to keyframe @{att.keyframe.stamp_ns}"
                status = "relocalised"
            else:
                T_world = None
                new_kf, kf_reason = True, "tracking lost"
                status = "lost"

        kf_used = att.keyframe
        if T_world is not None:
            self._last_T_world = T_world
        if new_kf:
            self._new_keyframe(feats, stamp_ns, frame_index, camera, image_size,
                               T_world if T_world is not None else self._last_T_world)
        return self._result(stamp_ns, kf_used.stamp_ns, frame_index, kf_used.index, att.matches, att.inliers,
                            att.pose, att.reason, new_kf, kf_reason, status, timings, t_start, T_world, scale_known,
                            tried)

    def _result(self, stamp_ns, kf_stamp, frame_index, kf_index, matches, inliers, pose, reason, new_kf, kf_reason,
                status, timings, t_start, T_world, scale_known, tried=None) -> FrameResult:
        stages = getattr(self.backend, "timings_ms", None)
        if isinstance(stages, Mapping):
            for k, v in stages.items():
                timings.setdefault(f"{self.backend.name}.{k}", float(v))
        timings["total"] = 1e3 * (time.perf_counter() - t_start)
        return FrameResult(
            stamp_ns=stamp_ns, keyframe_stamp_ns=kf_stamp, frame_index=frame_index, keyframe_index=kf_index,
            matches=matches, inliers=inliers, pose=pose, reason=reason, new_keyframe=new_kf,
            keyframe_reason=kf_reason, status=status, timings_ms=timings,
            T_world_current=None if T_world is None else T_world.copy(), cache_size=len(self._cache),
            cache_nbytes=self._cache.nbytes, odometry_scale_known=scale_known, relocalisation_tried=tried or [],
        )
