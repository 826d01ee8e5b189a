"""One evaluated frame, whatever produced it: the offline :class:`~feature_matcher_ros.frontend.Frontend`
or the live node (read back from its published messages)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FrameRecord:
    """What one frame gave, in the form the metrics need.

    Attributes:
        stamp_ns: the image's header stamp.
        keyframe_stamp_ns: the stamp of the keyframe it was matched against (``== stamp_ns`` when it
            was not matched: first frame or a restart).
        kpts0: ``(N, 2)`` float32 keyframe pixels of the matches (original image pixels).
        kpts1: ``(N, 2)`` float32 current-image pixels of the matches.
        inliers: ``(N,)`` bool, the pose estimate's inliers (all False without a pose).
        R: ``(3, 3)`` keyframe -> current rotation, or None when the estimate failed.
        t: ``(3,)`` keyframe -> current translation, or None: a unit vector, or metres when ``metric``.
        reason: why there is no pose ("" with a pose).
        new_keyframe: this frame became a keyframe.
        status: the frontend status ("init", "tracking", "lost", "relocalised"; "" when unknown).
        latency_ms: processing time (offline: the frontend's total; live: image publish -> result).
        timings_ms: per-stage timings when known.
        camera: the frame's :class:`~feature_matcher_ros.camera.CameraModel`.
        n_matches: number of matches (may exceed ``len(kpts0)`` when the points were not kept).
        n_inliers: number of inliers (likewise).
        metric: the pose is metric (RGB-D / stereo absolute pose), ``t`` in metres.
        covariance: ``(6, 6)`` of the current camera in the keyframe's frame (``T_keyframe_current``, the inverse
            of ``[R | t]``) over ``[x y z rx ry rz]`` (:mod:`~feature_matcher_ros.se3`), for metric poses; else None.
        edges: the pose-graph edges this frame gave (:class:`~feature_matcher_ros.loops.Edge`: a new keyframe's
            edge, then its loop closures).
        T_world_keyframe: a new keyframe's pose in the frontend's world (None for other frames).
    """

    stamp_ns: int
    keyframe_stamp_ns: int
    kpts0: np.ndarray
    kpts1: np.ndarray
    inliers: np.ndarray
    R: np.ndarray | None
    t: np.ndarray | None
    reason: str = ""
    new_keyframe: bool = False
    status: str = ""
    latency_ms: float = float("nan")
    timings_ms: dict[str, float] = field(default_factory=dict)
    camera: Any = None
    n_matches: int = -1
    n_inliers: int = -1
    metric: bool = False
    covariance: np.ndarray | None = None
    edges: list = field(default_factory=list)
    T_world_keyframe: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.stamp_ns = int(self.stamp_ns)
        self.keyframe_stamp_ns = int(self.keyframe_stamp_ns)
        self.kpts0 = np.asarray(self.kpts0, dtype=np.float32).reshape(-1, 2)
        self.kpts1 = np.asarray(self.kpts1, dtype=np.float32).reshape(-1, 2)
        self.inliers = np.asarray(self.inliers, dtype=bool).reshape(-1)
        if len(self.inliers) != len(self.kpts0):
            self.inliers = np.zeros(len(self.kpts0), dtype=bool)
        if self.n_matches < 0:
            self.n_matches = len(self.kpts0)
        if self.n_inliers < 0:
            self.n_inliers = int(self.inliers.sum())

    @property
    def is_pair(self) -> bool:
        """Matched against a keyframe (an evaluated keyframe-to-frame pair)."""
        return self.keyframe_stamp_ns != self.stamp_ns

    @property
    def has_pose(self) -> bool:
        return self.R is not None and self.t is not None

    @classmethod
    def from_frame_result(cls, result: Any, camera: Any, latency_ms: float | None = None) -> FrameRecord:
        """From a :class:`~feature_matcher_ros.frontend.FrameResult`."""
        pose = result.pose
        timings = {k: float(v) for k, v in dict(result.timings_ms or {}).items()}
        return cls(
            stamp_ns=result.stamp_ns,
            keyframe_stamp_ns=result.keyframe_stamp_ns,
            kpts0=result.matches.kpts0,
            kpts1=result.matches.kpts1,
            inliers=result.inliers if result.inliers is not None else np.zeros(len(result.matches), bool),
            R=None if pose is None else np.asarray(pose.R, dtype=np.float64),
            t=None if pose is None else np.asarray(pose.t, dtype=np.float64).reshape(3),
            reason=result.reason,
            new_keyframe=bool(result.new_keyframe),
            status=result.status,
            latency_ms=float(latency_ms if latency_ms is not None else timings.get("total", float("nan"))),
            timings_ms=timings,
            camera=camera,
            metric=bool(result.metric),
            covariance=pose.current_in_keyframe()[1] if pose is not None and pose.metric else None,
            edges=([result.keyframe_edge] if result.keyframe_edge is not None else []) + list(result.loop_edges),
            T_world_keyframe=result.T_world_active_keyframe if result.new_keyframe else None,
        )
