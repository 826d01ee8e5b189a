"""The frontend: each frame is matched against a cached keyframe, its relative pose estimated, and the
keyframe policy applied. ROS-free; the node wraps one :class:`Frontend`.

Per frame (:meth:`Frontend.process`): convert to gray, resize (``resize_long_edge``), extract features once,
match against the active keyframe's cached features, keep the ``max_matches`` best (highest score), estimate
the pose keyframe -> current (:func:`.geometry.estimate_relative_pose`, keypoints undistorted), then:

* tracked: a new keyframe when the inliers or the parallax say so (:class:`.keyframes.KeyframePolicy`); the
  current frame's already-computed features are promoted (never re-extracted);
* lost: the other cached keyframes are tried, newest first (relocalisation); if none fits, the current frame
  becomes a new keyframe ("tracking lost").

Odometry: ``T_world_current = T_world_keyframe @ inv(se3(R, s * t))`` with ``s = odometry.scale``; the world is
the first keyframe's camera frame. Monocular translation has no scale: with ``odometry.scale = 0`` (default,
"unknown") unit-norm translations are chained (``s = 1``) and ``FrameResult.odometry_scale_known`` is False, so
positions are only a direction-consistent sketch; rotations are exact compositions. A pure-rotation frame
(homography model) contributes no translation. Each keyframe keeps its world pose and its covariance, and
``cov_world_current`` is the keyframe's composed with the frame's relative pose (:mod:`.se3`, first order; the
along-track variance stays ``geometry.UNKNOWN_VARIANCE``, scaled by ``s``, so an unknown scale shows there).
A frame that loses tracking has no world pose (``None``); the keyframe made from it inherits the last known pose
(no motion assumed across the gap) with :data:`LOST_VARIANCE` added to every variance, and relocalising to a
cached keyframe restores that keyframe's pose. A keyframe made without matching (first frame, after a reset or a
dropped cache) starts where the odometry last was, with its covariance.

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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from .backends.base import PRECISIONS, Backend, Features, Matches, gray_image
from .backends.nms import nms_matches
from .camera import CameraModel
from .geometry import RelativePose, estimate_relative_pose
from .keyframes import Keyframe, KeyframeCache, KeyframePolicy, median_displacement_px
from .loops import Edge, LoopStore, verified_loops
from .metric import StereoFrame
from .metric_keyframe import (
    depth_noise,
    disparity_offset_fit,
    keyframe_depth,
    keyframe_landmarks,
    keyframe_window,
    metric_pose,
    stereo_keyframe_depth,
)
from .params import ParamSpec, check_changes
from .se3 import compose_with_covariance, invert
from .settings import FRONTEND_PARAMS, INPUT_MODES, PRECISION_PARAM, cross_check
from .stereo_calibration import DisparityOffset

# Added to every variance of the world pose of a keyframe made when tracking was lost.
LOST_VARIANCE = 1e6


@dataclass
class FrameResult:
    """What :meth:`Frontend.process` found for one frame (see the contract in the module docstring).

    Attributes beyond the contract: ``cache_size`` / ``cache_nbytes`` (keyframes held and their feature bytes
    after this frame), ``odometry_scale_known``, ``relocalisation_tried`` (stamps of the cached keyframes tried).
    World poses (see the module docstring): ``T_world_current`` ``(4, 4)`` and ``cov_world_current`` ``(6, 6)``
    over ``[x, y, z, rx, ry, rz]`` (None when tracking is lost); ``T_world_active_keyframe`` ``(4, 4)``, the pose
    of :attr:`active_keyframe_stamp_ns`. Metric input: ``depth0`` ``(N,)`` the keyframe depth (metres) of each
    match's keyframe point, NaN where unknown (None for a monocular keyframe); ``landmarks`` ``(K, 5)`` ``x y z u
    v`` of the active keyframe (None when it has no 3-D points, see :class:`~.keyframes.Keyframe`). ``relative``:
    ``(T_keyframe_current (4, 4), covariance (6, 6))`` of the camera as the world pose chained it (translation
    times ``odometry.scale`` in mono), None without a pose. For a back-end (:mod:`.loops`): ``keyframe_edge``, a
    new keyframe's pose relative to the keyframe it was matched against (None for a keyframe made without a pose:
    the first, after a reset or a loss), and ``loop_edges``, the loop closures found for it.
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
    cov_world_current: np.ndarray | None = None
    T_world_active_keyframe: np.ndarray | None = None
    depth0: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    relative: tuple[np.ndarray, np.ndarray] | None = None
    keyframe_edge: Edge | None = None
    loop_edges: list[Edge] = field(default_factory=list)

    @property
    def metric(self) -> bool:
        """The pose is metric (absolute pose from the keyframe's depth), translation in metres."""
        return self.pose is not None and self.pose.metric

    @property
    def num_inliers(self) -> int:
        return int(np.count_nonzero(self.inliers))

    @property
    def active_keyframe_stamp_ns(self) -> int:
        """The keyframe that is active after this frame: this frame when it became one, else the one matched."""
        return self.stamp_ns if self.new_keyframe else self.keyframe_stamp_ns


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
    depth0: np.ndarray | None = None
    depth_ms: float = 0.0


@dataclass
class _Frame:
    """The frame being processed: its features and where they come from, and its metric input (depth in
    metres on its pixel grid, or the right image of a rectified pair)."""

    features: Features
    stamp_ns: int
    index: int
    camera: CameraModel
    image_size: tuple[int, int]
    depth: np.ndarray | None = None
    stereo: StereoFrame | None = None
    gray: np.ndarray | None = None  # the (H, W) uint8 image (stereo: the left one, for the disparity refinement)


@dataclass
class _Outcome:
    """How a frame ends: the attempt kept (None: made a keyframe without matching), the keyframe policy's
    decision and the world pose ``(T (4, 4), cov (6, 6))`` or None."""

    attempt: _Attempt | None
    status: str
    reason: str
    new_keyframe: bool
    keyframe_reason: str
    world: tuple[np.ndarray, np.ndarray] | None
    tried: list[int] = field(default_factory=list)


class Frontend:
    """Keyframe-based matching and relative pose over a stream of frames (one camera)."""

    def __init__(self, backend: Backend, settings: Mapping[str, Any] | None = None, input_mode: str = "mono") -> None:
        if not isinstance(backend, Backend):
            raise ValueError(f"backend must be a Backend, got {type(backend).__name__}")
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, not {input_mode!r}")
        self.backend = backend
        # mono: relative poses up to scale; rgbd / stereo: metric poses from the keyframes' depth (odometry.scale
        # then has no meaning and is refused)
        self.input_mode = input_mode
        # process() and update() may come from different threads (a ROS parameter callback): one at a time.
        self._lock = threading.RLock()
        self._settings: dict[str, Any] = {p.name: p.default for p in FRONTEND_PARAMS}
        self._cache = KeyframeCache(self._settings["keyframe_cache_size"])
        self._loops = LoopStore(self._settings["loop.keyframes"])
        self._policy = _policy(self._settings)
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
        merged, reason = check_changes(self.params(), self.values(), changes,
                                       lambda m: cross_check(m, self.input_mode, self.backend))
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
        self._loops.resize(front["loop.keyframes"])
        self._policy = _policy(front)
        self._sync_cache()
        return None

    # -- state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every keyframe and the odometry: the next frame is a first frame again."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self._cache.clear()
        self._loops.clear()
        self._frame_counter = 0
        self._keyframe_counter = 0
        self._pending_reason = "first frame"
        # the last known world pose and its covariance (where a keyframe made without matching starts)
        self._last_world: tuple[np.ndarray, np.ndarray] = (np.eye(4), np.zeros((6, 6)))
        self._previous_keyframe: Keyframe | None = None  # the last keyframe made (a lost edge starts there)
        self._disparity = DisparityOffset()  # the stereo rig's self-calibrated disparity offset

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
    def _attempt(self, kf: Keyframe, frame: _Frame) -> _Attempt:
        s = self._settings
        t0 = time.perf_counter()
        m = self.backend.match(kf.features, frame.features)
        # Back to original pixels of each image (the features may come from resized images).
        m = _to_original(m, kf.features.image_size, kf.image_size, frame.features.image_size, frame.image_size)
        if s["nms.kernel_size"] > 1:
            m = m.select(nms_matches(m.kpts0, m.scores, kf.image_size, kernel_size=int(s["nms.kernel_size"]),
                                     cell=int(s["nms.cell_px"]), threshold=float(s["nms.threshold"])))
        m = m.top_k(int(s["max_matches"]))
        t1 = time.perf_counter()
        depth0 = keyframe_depth(kf, m.kpts0, s)
        t_depth = time.perf_counter()
        pose, reason, fallback = None, "", ""
        if len(m) < s["keyframe.min_matches"]:
            reason = f"too few matches ({len(m)} < {s['keyframe.min_matches']})"
        elif depth0 is not None:
            pose, fallback = metric_pose(kf, frame.camera, m, depth0, s)
        if pose is None and not reason:  # monocular keyframe, or the metric pose said why not
            pose, reason = _mono_pose(kf.camera, frame.camera, m, s)
            reason = fallback if pose is not None and fallback else reason
        if pose is not None:
            pose = _with_noise_floor(pose, s)
        inliers = pose.inliers if pose is not None else np.zeros(len(m), bool)
        if pose is not None and self._policy.lost(pose.num_inliers):
            reason = f"too few inliers ({pose.num_inliers} < {self._policy.min_tracking_inliers})"
            pose = None
        t2 = time.perf_counter()
        return _Attempt(kf, m, pose, reason, inliers, 1e3 * (t1 - t0), 1e3 * (t2 - t_depth), depth0,
                        1e3 * (t_depth - t1))

    def _new_keyframe(self, frame: _Frame, world: tuple[np.ndarray, np.ndarray], timings: dict[str, float]
                      ) -> Keyframe:
        t0 = time.perf_counter()
        offset = self.disparity_offset_px if frame.stereo else 0.0
        depth, points = self._frame_depth(frame, offset)
        kf = Keyframe(frame.features, frame.stamp_ns, self._keyframe_counter, frame.index, frame.camera,
                      frame.image_size, T_world=world[0].copy(), covariance=world[1].copy(), depth=depth,
                      depth_noise=depth_noise(frame.stereo.rig if frame.stereo else None, self._settings),
                      disparity_offset_px=offset)
        if depth is not None:
            detected = self.backend.keypoints(kf.features) if points is None else None
            kf.landmarks = keyframe_landmarks(kf, points, detected, self._settings)
            timings["keyframe_depth"] = 1e3 * (time.perf_counter() - t0)
        self._keyframe_counter += 1
        self._cache.add(kf)
        return kf

    def _keyframe_edge(self, kf: Keyframe, att: _Attempt | None) -> Edge | None:
        """The new keyframe's edge: its pose against the keyframe it was matched with, or (made without a pose:
        lost, a dropped cache; or in rgbd/stereo with only the monocular fallback, whose scale is unknown and whose
        few inliers make even its rotation unreliable) a ``lost`` edge from the previous keyframe with the world
        poses' guess; None for the first keyframe (after a reset too)."""
        previous, self._previous_keyframe = self._previous_keyframe, kf
        if att is not None and att.pose is not None and (att.pose.metric or att.keyframe.depth is None):
            return Edge(att.keyframe.stamp_ns, kf.stamp_ns, *_relative(att.pose, self._settings), "keyframe",
                        att.pose.num_inliers, att.pose.metric)
        if previous is None or previous.T_world is None or kf.T_world is None:
            return None
        guess = invert(previous.T_world) @ kf.T_world
        return Edge(previous.stamp_ns, kf.stamp_ns, guess, LOST_VARIANCE * np.eye(6), "lost")

    def _frame_depth(self, frame: _Frame, offset: float) -> tuple[np.ndarray | None, np.ndarray | None]:
        """A new keyframe's depth image (metres, original pixels) and, for stereo, its triangulated pixels.
        Stereo: the right image is extracted and matched to the left once, here (never per frame); the disparity
        ``offset`` (:attr:`disparity_offset_px`) moves the right principal point."""
        if frame.stereo is None:
            return frame.depth, None
        _, work_right, _ = prepare_image(frame.stereo.image, frame.camera, int(self._settings["resize_long_edge"]))
        m = self.backend.match(frame.features, self.backend.extract(work_right))
        m = _to_original(m, frame.features.image_size, frame.image_size, frame.features.image_size, frame.image_size)
        rig = replace(frame.stereo.rig, right_cx=frame.stereo.rig.right_cx + offset)
        return stereo_keyframe_depth(rig, m, frame.image_size, self._settings, (frame.gray, frame.stereo.image))

    @property
    def disparity_offset_px(self) -> float:
        """The offset added to new stereo keyframes' disparities: the self-calibrated one (with
        ``stereo.self_calibrate`` on) once ``stereo.self_calibrate_min_pairs`` keyframe pairs were fitted and
        their median is known within ``stereo.self_calibrate_max_sd_px``, else ``stereo.disparity_offset_px``."""
        s, est = self._settings, self._disparity  # read without the lock (diagnostics): each is replaced whole
        value = est.value()
        if (s["stereo.self_calibrate"] and value is not None and est.count >= s["stereo.self_calibrate_min_pairs"]
                and est.sd() <= s["stereo.self_calibrate_max_sd_px"]):
            return value
        return float(s["stereo.disparity_offset_px"])

    @property
    def disparity_offset_fits(self) -> int:
        """Keyframe pairs in the self-calibrated disparity offset (:mod:`.stereo_calibration`)."""
        return self._disparity.count

    def _calibrate_stereo(self, frame: _Frame, kf: Keyframe, att: _Attempt | None, timings: dict[str, float]) -> None:
        """Fit the disparity offset on a new stereo keyframe and the keyframe its frame was tracked against."""
        if frame.stereo is None or att is None or not self._settings["stereo.self_calibrate"]:
            return
        t0 = time.perf_counter()
        self._disparity.add(disparity_offset_fit(att.keyframe, kf, att.matches, att.depth0, att.pose,
                                                 frame.stereo.rig, self._settings))
        timings["stereo_calibration"] = 1e3 * (time.perf_counter() - t0)

    def _add_stage_ms(self, timings: dict[str, float]) -> None:
        """The backend's own stage timings of its last call, as ``<backend>.<stage>``."""
        for k, v in self.backend.stage_ms.items():
            timings.setdefault(f"{self.backend.name}.{k}", float(v))

    def process(self, image: np.ndarray, stamp_ns: int, camera: CameraModel, depth: np.ndarray | None = None,
                stereo: StereoFrame | None = None) -> FrameResult:
        """Match one frame against the keyframe, estimate its pose, apply the keyframe policy.

        Args:
            image: ``(H, W)`` uint8 gray or ``(H, W, 3)`` uint8 RGB.
            stamp_ns: the image stamp in integer nanoseconds.
            camera: intrinsics of ``image`` (rescaled automatically when the image has another size of the
                same aspect ratio).
            depth: RGB-D: ``(H, W)`` float depth in metres registered to ``image`` (0, NaN, inf = none).
            stereo: a rectified pair: the right image and the rig (``image`` is the left one).
            A keyframe made from a frame with depth or a right image has 3-D points: frames matched against it
            get a metric pose (PnP), or the monocular one when too few matches have depth (said in the reason).
        Raises:
            ValueError naming the problem for unusable input (image type/shape, camera, stamp, depth size,
            stereo rig); the state is untouched then.
        """
        with self._lock:
            return self._process(image, stamp_ns, camera, depth, stereo)

    def _process(self, image: Any, stamp_ns: Any, camera: Any, depth: Any = None, stereo: Any = None) -> FrameResult:
        t_start = time.perf_counter()
        if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)):
            raise ValueError(f"stamp_ns must be an integer (nanoseconds), got {type(stamp_ns).__name__}")
        gray, work, camera = prepare_image(image, camera, int(self._settings["resize_long_edge"]))
        size = (int(gray.shape[0]), int(gray.shape[1]))
        depth, stereo = _check_metric_input(depth, stereo, size)
        t_pre = time.perf_counter()
        self._sync_cache()
        feats = self.backend.extract(work)
        timings = {"preprocess": 1e3 * (t_pre - t_start), "extract": 1e3 * (time.perf_counter() - t_pre),
                   "match": 0.0, "geometry": 0.0}
        self._add_stage_ms(timings)
        frame = _Frame(feats, int(stamp_ns), self._frame_counter, camera, size, depth, stereo, gray)
        self._frame_counter += 1
        active = self._cache.active
        if active is None:  # first frame, or after a reset / a dropped cache: a keyframe where the odometry was
            reason = self._pending_reason
            outcome = _Outcome(None, "init", reason, True, reason, self._last_world)
        else:
            outcome = self._track(frame, active, timings)
        return self._finish(frame, outcome, timings, t_start)

    def _track(self, frame: _Frame, active: Keyframe, timings: dict[str, float]) -> _Outcome:
        """Match against the active keyframe; when that fails, relocalise; else tracking is lost."""
        att = self._attempt(active, frame)
        timings["match"] += att.match_ms
        timings["geometry"] += att.geometry_ms
        if att.depth0 is not None:
            timings["depth"] = att.depth_ms
        self._add_stage_ms(timings)
        if att.pose is not None:
            parallax = (att.pose.parallax_px if self._settings["keyframe.parallax"] == "rotation_compensated"
                        else median_displacement_px(att.matches.kpts0, att.matches.kpts1, att.inliers))
            new_kf, kf_reason = self._policy.decide(att.pose.num_inliers, parallax)
            return _Outcome(att, "tracking", att.reason, new_kf, kf_reason,
                            _world_pose(active, att.pose, self._settings))
        found, tried = self._relocalise(frame, timings)
        if found is None:
            return _Outcome(att, "lost", att.reason, True, "tracking lost", None, tried)
        self._cache.activate(found.keyframe)
        return _Outcome(found, "relocalised", found.reason, False,
                        f"relocalised to keyframe @{found.keyframe.stamp_ns}",
                        _world_pose(found.keyframe, found.pose, self._settings), tried)

    def _relocalise(self, frame: _Frame, timings: dict[str, float]) -> tuple[_Attempt | None, list[int]]:
        """The first older cached keyframe (newest first) the frame has a pose against, and the stamps tried."""
        t_rel = time.perf_counter()
        found, tried = None, []
        for old in self._cache.older():
            tried.append(old.stamp_ns)
            cand = self._attempt(old, frame)
            if cand.pose is not None:
                found = cand
                break
        timings["relocalise"] = 1e3 * (time.perf_counter() - t_rel)
        return found, tried

    def _finish(self, frame: _Frame, outcome: _Outcome, timings: dict[str, float], t_start: float) -> FrameResult:
        """Remember the world pose, make the keyframe the policy asked for, and build the result."""
        if outcome.world is not None:
            self._last_world = outcome.world
        new_kf = None
        if outcome.new_keyframe:
            T, cov = self._last_world
            if outcome.status == "lost":  # where the camera was last seen; where it is now is very uncertain
                cov = cov + LOST_VARIANCE * np.eye(6)
            new_kf = self._new_keyframe(frame, (T, cov), timings)
        att, world = outcome.attempt, outcome.world
        if new_kf is not None and att is not None:
            keyframe_window(new_kf, att.keyframe, att.matches, att.depth0, att.pose, self._settings)
            self._calibrate_stereo(frame, new_kf, att, timings)
        loops = []
        if new_kf is not None:
            loops = _loop_closures(self._loops, new_kf, lambda old: self._attempt(old, frame), self._settings, timings)
        edge = self._keyframe_edge(new_kf, att) if new_kf is not None else None
        used = att.keyframe if att is not None else new_kf
        active = new_kf if new_kf is not None else used
        timings["total"] = 1e3 * (time.perf_counter() - t_start)
        return FrameResult(
            stamp_ns=frame.stamp_ns, keyframe_stamp_ns=used.stamp_ns, frame_index=frame.index,
            keyframe_index=used.index, matches=att.matches if att else Matches.empty(),
            inliers=att.inliers if att else np.zeros(0, bool), pose=att.pose if att else None,
            reason=outcome.reason, new_keyframe=outcome.new_keyframe, keyframe_reason=outcome.keyframe_reason,
            status=outcome.status, timings_ms=timings, T_world_current=None if world is None else world[0].copy(),
            cov_world_current=None if world is None else world[1].copy(),
            T_world_active_keyframe=_copy(active.T_world), cache_size=len(self._cache),
            cache_nbytes=self._cache.nbytes,
            odometry_scale_known=(bool(att and att.pose and att.pose.metric)
                                  or float(self._settings["odometry.scale"]) > 0),
            relocalisation_tried=outcome.tried, depth0=att.depth0 if att else None,
            landmarks=active.landmarks, relative=_relative(att.pose, self._settings) if att and att.pose else None,
            keyframe_edge=edge, loop_edges=loops,
        )


def _loop_closures(store: LoopStore, kf: Keyframe, attempt: Any, s: Mapping[str, Any], timings: dict[str, float]
                   ) -> list[Edge]:
    """Loop closures of a new keyframe against the kept ones (:mod:`.loops`; ``attempt(old)`` matches the new
    keyframe's frame against ``old``); then it is kept too."""
    t0 = time.perf_counter()
    edges = verified_loops(store.candidates(kf, s), attempt, kf.stamp_ns, lambda pose: _relative(pose, s),
                           int(s["loop.min_inliers"]))
    store.add(kf)
    if store.capacity > 0:
        timings["loops"] = 1e3 * (time.perf_counter() - t0)
    return edges


def _policy(s: Mapping[str, Any]) -> KeyframePolicy:
    return KeyframePolicy(s["keyframe.min_inliers"], s["keyframe.max_parallax_px"], s["tracking.min_inliers"],
                          s["keyframe.parallax"])


def _mono_pose(camera0: CameraModel, camera1: CameraModel, m: Matches, s: Mapping[str, Any]
               ) -> tuple[RelativePose | None, str]:
    """The monocular relative pose keyframe -> frame of ``m`` with the ``ransac.*`` settings."""
    return estimate_relative_pose(
        m.kpts0, m.kpts1, camera0, camera1, threshold_px=s["ransac.threshold_px"],
        confidence=s["ransac.confidence"], method=s["ransac.method"],
        homography_ratio=s["ransac.homography_ratio"], min_parallax_px=s["ransac.min_parallax_px"],
        max_iterations=s["ransac.max_iterations"], use_homography=s["ransac.homography"],
    )


def _with_noise_floor(pose: RelativePose, s: Mapping[str, Any]) -> RelativePose:
    """``pose`` with ``pose.floor_rad`` (every pose) and ``pose.floor_m`` (metric poses) added in quadrature to its
    standard deviations: what the estimators' covariances cannot see (:mod:`.settings`)."""
    floor_t = float(s["pose.floor_m"]) if pose.metric else 0.0
    floor = np.diag([floor_t**2] * 3 + [float(s["pose.floor_rad"]) ** 2] * 3)
    return replace(pose, covariance=np.asarray(pose.covariance, np.float64) + floor)


def _world_pose(kf: Keyframe, pose: RelativePose, s: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """``T_world_current`` ``(4, 4)`` and its ``(6, 6)`` covariance: the keyframe's world pose composed with the
    inverse of ``pose``, its translation (and translation covariance) scaled by ``odometry.scale`` (ignored
    by a metric pose)."""
    if kf.T_world is None:
        return None
    return compose_with_covariance(kf.T_world, kf.covariance, *_relative(pose, s))


def _relative(pose: RelativePose, s: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The current camera in the keyframe's frame as the odometry chains it (``odometry.scale`` applied)."""
    return pose.current_in_keyframe(float(s["odometry.scale"]) or 1.0)


def prepare_image(image: Any, camera: Any, resize_long_edge: int) -> tuple[np.ndarray, np.ndarray, CameraModel]:
    """``(gray, work, camera)``: the image as ``(H, W)`` uint8 gray, the one features are extracted from
    (resized to ``resize_long_edge`` when not 0) and ``camera`` at the image's size (same aspect ratio);
    ValueError for an unusable image or camera."""
    gray = gray_image(image, "image")
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
    work = gray
    if resize_long_edge > 0 and max(h, w) != resize_long_edge:
        scale = resize_long_edge / max(h, w)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        work = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return gray, work, camera


def _check_metric_input(depth: Any, stereo: Any, size: tuple[int, int]
                        ) -> tuple[np.ndarray | None, StereoFrame | None]:
    """Depth as float32 metres of the image's size, a stereo frame whose right image (returned gray) has the
    left's size and whose rig can triangulate; ValueError otherwise."""
    if depth is not None:
        depth = np.asarray(depth)
        if depth.shape != size or not np.issubdtype(depth.dtype, np.floating):
            raise ValueError(f"depth must be a float (H, W) image of the colour image's size {size[1]}x{size[0]} "
                             f"(metres), got {depth.dtype} {depth.shape}")
        depth = depth.astype(np.float32, copy=False)
    if stereo is not None:
        if not isinstance(stereo, StereoFrame):
            raise ValueError(f"stereo must be a StereoFrame, got {type(stereo).__name__}")
        problem = stereo.rig.problem()
        if problem:
            raise ValueError(f"stereo: {problem}")
        right = gray_image(stereo.image, "stereo: the right image")  # checked before any state changes
        if right.shape != size:
            raise ValueError(f"stereo: the right image is {right.shape}, the left {size}")
        stereo = replace(stereo, image=right)
    return depth, stereo


def _to_original(m: Matches, work0: tuple[int, int], size0: tuple[int, int], work1: tuple[int, int],
                 size1: tuple[int, int]) -> Matches:
    """Matches between (possibly resized) work images mapped back to the original pixels ``(H, W)``."""
    (ph0, pw0), (ph1, pw1), (oh0, ow0), (oh1, ow1) = work0, work1, size0, size1
    if (ph0, pw0, ph1, pw1) == (oh0, ow0, oh1, ow1):
        return m
    return m.scaled(ow0 / pw0, oh0 / ph0, ow1 / pw1, oh1 / ph1)


def _copy(T: np.ndarray | None) -> np.ndarray | None:
    return None if T is None else T.copy()
