"""Odometry by chaining keyframe poses: ``T_world_current = T_world_keyframe @ T_keyframe_current``.

The world frame is the first keyframe's camera frame. Every keyframe remembers its world pose and
covariance, so a frame matched against any cached keyframe (also after relocalisation) chains from the
right place. Monocular translation has no scale: with ``scale`` 0 each keyframe step is unit length and
its along-track variance stays huge (``geometry.UNKNOWN_VARIANCE``), i.e. translation is marked unknown in
the covariance; with ``scale`` > 0 each unit step is that many metres.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..se3 import compose_with_covariance, invert_with_covariance

MAX_KEYFRAMES = 64
# Extra rotation/translation uncertainty when the chain restarts after tracking was lost.
LOST_VARIANCE = 1e6


class OdometryChain:
    def __init__(self) -> None:
        self._keyframes: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def reset(self) -> None:
        self._keyframes.clear()
        self._last = None

    def keyframe_pose(self, stamp_ns: int) -> np.ndarray | None:
        entry = self._keyframes.get(stamp_ns)
        return None if entry is None else entry[0]

    def _remember(self, stamp_ns: int, T: np.ndarray, cov: np.ndarray) -> None:
        self._keyframes[stamp_ns] = (T, cov)
        while len(self._keyframes) > MAX_KEYFRAMES:
            self._keyframes.popitem(last=False)

    def add(self, result, scale: float) -> tuple[np.ndarray, np.ndarray] | None:
        """The world pose ``(4, 4)`` and covariance ``(6, 6)`` of ``result``'s frame (a
        :class:`~feature_matcher_ros.frontend.FrameResult`), or None when it has no pose."""
        stamp, kf = result.stamp_ns, result.keyframe_stamp_ns
        given = getattr(result, "T_world_current", None)  # the frontend's own chained pose, if it has one
        if kf == stamp:
            # A keyframe made without matching: the first frame (the origin), or the first after the keyframe
            # cache was dropped (the chain continues from the last pose).
            T = np.asarray(given, np.float64) if given is not None else np.eye(4)
            out = (T, self._last[1].copy() if self._last is not None else np.zeros((6, 6)))
        elif result.pose is None or kf not in self._keyframes:
            if result.new_keyframe and self._last is not None:
                # Tracking lost: the new keyframe starts where the camera was last seen, very uncertain.
                T, cov = self._last
                self._remember(stamp, T, cov + LOST_VARIANCE * np.eye(6))
            return None
        else:
            pose = result.pose
            s = scale if scale > 0 else 1.0
            cov = np.asarray(pose.covariance, np.float64).copy()
            cov[:3, :] *= s
            cov[:, :3] *= s
            T_kf_cur, cov_kf_cur = invert_with_covariance(pose.R, s * np.asarray(pose.t, np.float64), cov)
            T_world_kf, cov_world_kf = self._keyframes[kf]
            out = compose_with_covariance(T_world_kf, cov_world_kf, T_kf_cur, cov_kf_cur)
            if given is not None:  # same chain, computed by the frontend: its pose, our covariance
                out = (np.asarray(given, np.float64), out[1])
        if result.new_keyframe:
            self._remember(stamp, *out)
        self._last = out
        return out
