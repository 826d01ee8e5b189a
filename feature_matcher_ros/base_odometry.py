"""The camera's odometry as a robot's: REP 105 odometry of a base frame, with its twist. ROS-free.

The frontend chains camera poses in its world, the first keyframe's camera (optical) frame. A robot wants
``odom -> base_link``: the pose of its base frame (REP 103 axes: x forward, z up) in an odom frame, which here
is where the base frame was at the first keyframe (after a reset: the first keyframe since). With
``T_base_cam`` the camera's mounting on the base (from TF, possibly moving) at the first keyframe ``t0`` and at
``t``::

    T_odom_base(t) = T_base_cam(t0) · T_cam0_cam(t) · T_base_cam(t)⁻¹

Covariances are ``(6, 6)`` over ``[x y z rx ry rz]`` in ROS's order: translation additive in the parent frame,
rotation about the parent frame's axes (the package's convention, :mod:`.se3`); they go through the mounting to
first order, which moves uncertainty by the lever arm (a camera yaw error of σ becomes ``d·σ`` of sideways
position at a base ``d`` behind the camera). The mounting itself is taken as exact.

The twist is the base's velocity in its own frame (``child_frame_id``, as robot_localization and Nav2 read it):
from two consecutive frames whose relative poses share a keyframe (or when the second frame's keyframe is the
first frame), the base's motion ``ΔT = T_base(prev)⁻¹ · T_base(t)`` over ``dt`` gives ``twist = log(ΔT) / dt``
(exact for a constant twist), its covariance ``Σ_Δ / dt²`` in the current base frame. Any other pair (a keyframe
change to an older one, a loss) has no twist: ``None``, which the node publishes as unknown.

Example (a camera mounted 10 cm ahead of the base and 20 cm up, looking forward; it moves 1 m along its
optical axis, so the base moves 1 m forward)::

    >>> mount = camera_mount(0.1, 0.0, 0.2, 0.0, 0.0, 0.0)
    >>> T, _ = base_pose(se3(np.eye(3), [0.0, 0.0, 1.0]), np.zeros((6, 6)), mount, mount)
    >>> T[:3, 3].round(9).tolist(), np.allclose(T[:3, :3], np.eye(3))
    ([1.0, 0.0, 0.0], True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .se3 import compose_with_covariance, invert, invert_with_covariance, rotation_from_rotvec, se3, skew

# rtabmap's convention for "lost": the last pose, with this variance on the diagonal.
LOST_VARIANCE = 9999.0
# The optical frame's axes in a REP 103 body frame: z forward (x of the body), x right (-y), y down (-z).
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rpy_rotation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """``(3, 3)`` rotation of fixed-axis roll, pitch, yaw (radians) as tf2 and URDF use them:
    ``Rz(yaw) · Ry(pitch) · Rx(roll)``."""
    return (rotation_from_rotvec([0.0, 0.0, yaw]) @ rotation_from_rotvec([0.0, pitch, 0.0])
            @ rotation_from_rotvec([roll, 0.0, 0.0]))


def camera_mount(x: float, y: float, z: float, roll: float, pitch: float, yaw: float) -> np.ndarray:
    """``T_base_optical`` ``(4, 4)`` of a camera at ``(x, y, z)`` on the base whose body (REP 103 axes) is turned
    by ``roll pitch yaw``: zero angles look along the base's x axis. The optical frame is the camera body's
    with ROS's optical axes (z forward, x right, y down)."""
    return se3(rpy_rotation(roll, pitch, yaw) @ R_BODY_OPTICAL, [x, y, z])


def base_pose(T_world_cam: np.ndarray, cov_world_cam: np.ndarray, mount0: np.ndarray, mount: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """``T_odom_base`` ``(4, 4)`` and its covariance from the camera's pose in the frontend's world, with the
    mounting ``T_base_cam`` at the first keyframe (``mount0``) and now (``mount``)."""
    T, cov = compose_with_covariance(mount0, np.zeros((6, 6)), T_world_cam, cov_world_cam)
    return compose_with_covariance(T, cov, invert(mount), np.zeros((6, 6)))


def se3_log(T: np.ndarray) -> np.ndarray:
    """``(6,)`` twist coordinates ``[ρ, φ]`` of a rigid transform: ``T = exp(ξ)`` for the constant body twist
    ``ξ`` over unit time (``φ`` the rotation vector, ``ρ = V(φ)⁻¹ t``).

    >>> xi = se3_log(se3(rotation_from_rotvec([0, 0, 1.0]), [math.sin(1.0), 1 - math.cos(1.0), 0.0]))
    >>> (xi.round(9) + 0.0).tolist()   # one second of 1 m/s forward while turning at 1 rad/s
    [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    """
    R, t = np.asarray(T, np.float64)[:3, :3], np.asarray(T, np.float64)[:3, 3]
    cos = float(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))
    theta = math.acos(cos)
    if theta < 1e-9:
        return np.concatenate([t, np.zeros(3)])
    phi = theta / (2.0 * math.sin(theta)) * np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    W = skew(phi)
    V_inv = np.eye(3) - 0.5 * W + (1.0 - theta * math.sin(theta) / (2.0 * (1.0 - cos))) / theta**2 * (W @ W)
    return np.concatenate([V_inv @ t, phi])


def twist(delta: np.ndarray, delta_cov: np.ndarray, dt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The body twist ``[vx vy vz wx wy wz]`` of a motion ``delta`` (``T_prev_cur``, its covariance in the
    previous frame) over ``dt_s`` seconds, and its covariance in the current frame (first order)."""
    R = np.asarray(delta, np.float64)[:3, :3].T  # previous-frame axes -> current-frame axes
    J = np.zeros((6, 6))
    J[:3, :3] = R
    J[3:, 3:] = R
    return se3_log(delta) / dt_s, J @ np.asarray(delta_cov, np.float64) @ J.T / dt_s**2


@dataclass
class Motion:
    """A frame's pose in its keyframe's camera frame (``T_kf_cur`` and covariance), as the frontend chained it."""

    stamp_ns: int
    keyframe_stamp_ns: int
    T_kf_cur: np.ndarray
    covariance: np.ndarray


@dataclass
class BaseOdometryStep:
    """One frame's odometry of the base: pose and covariance in the odom frame; twist and its covariance in the
    base frame, or None when unknown."""

    T_odom_base: np.ndarray
    covariance: np.ndarray
    twist: np.ndarray | None = None
    twist_covariance: np.ndarray | None = None


class BaseOdometry:
    """The odometry of a base frame over a stream of frames (see the module docstring). With an identity mounting
    it is the camera's own odometry."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """The next frame's base pose is the odom origin (after the frontend's reset, or at the start)."""
        self._mount0: np.ndarray | None = None
        self._anchor: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # set_pose: pose, covariance, raw
        self._prev: tuple[Motion, np.ndarray] | None = None
        self._last_raw: tuple[np.ndarray, np.ndarray] | None = None
        self.last: BaseOdometryStep | None = None

    def set_pose(self, T_odom_base: np.ndarray, covariance: np.ndarray) -> bool:
        """At the last frame the base was at ``T_odom_base`` with ``covariance`` (robot_localization's
        ``set_pose``): later poses are that pose composed with the motion since, whose covariance is taken as the
        frontend's whole covariance (conservative: it includes what came before the anchor). False when no frame
        has a pose yet to anchor it to."""
        if self._last_raw is None:
            return False
        T_set = np.asarray(T_odom_base, np.float64)
        cov_set = np.asarray(covariance, np.float64).reshape(6, 6)
        self._anchor = (T_set, cov_set, self._last_raw[0])
        self.last = BaseOdometryStep(T_set.copy(), cov_set.copy())
        return True

    def update(self, world: tuple[np.ndarray, np.ndarray] | None, motion: Motion | None, mount: np.ndarray
               ) -> BaseOdometryStep | None:
        """The step of a frame with world pose ``world`` (camera, frontend's world; None when tracking is lost),
        relative pose ``motion`` (None without one) and mounting ``mount`` (``T_base_cam`` at its stamp)."""
        previous, self._prev = self._prev, ((motion, mount) if motion is not None else None)
        if world is None:
            return None
        if self._mount0 is None:
            self._mount0 = np.asarray(mount, np.float64)
        raw = base_pose(world[0], world[1], self._mount0, mount)
        self._last_raw = raw
        T, cov = raw
        if self._anchor is not None:
            T_set, cov_set, raw_at_set = self._anchor
            since, cov_since = compose_with_covariance(invert(raw_at_set), np.zeros((6, 6)), T, cov)
            T, cov = compose_with_covariance(T_set, cov_set, since, cov_since)
        step = BaseOdometryStep(T, cov)
        if previous is not None and motion is not None:
            step.twist, step.twist_covariance = _twist_between(previous, (motion, mount))
        self.last = step
        return step

    def base_of(self, T_world_cam: np.ndarray, mount: np.ndarray) -> np.ndarray:
        """``T_odom_base`` of any camera pose of the frontend's world (a keyframe's), mounted by ``mount``; the
        same odom frame and ``set_pose`` anchor as :meth:`update`'s."""
        mount0 = self._mount0 if self._mount0 is not None else np.asarray(mount, np.float64)
        T = mount0 @ np.asarray(T_world_cam, np.float64) @ invert(mount)
        if self._anchor is not None:
            T_set, _, raw_at_set = self._anchor
            T = T_set @ invert(raw_at_set) @ T
        return T

    def lost(self) -> BaseOdometryStep | None:
        """The last pose with :data:`LOST_VARIANCE` on the diagonal of its covariance, twist unknown (what
        ``odometry.publish_when_lost`` publishes); None before any pose."""
        if self.last is None:
            return None
        return BaseOdometryStep(self.last.T_odom_base.copy(), LOST_VARIANCE * np.eye(6))


def _twist_between(prev: tuple[Motion, np.ndarray], cur: tuple[Motion, np.ndarray]
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
    (a, mount_a), (b, mount_b) = prev, cur
    dt = (b.stamp_ns - a.stamp_ns) * 1e-9
    if dt <= 0:
        return None, None
    if b.keyframe_stamp_ns == a.keyframe_stamp_ns:  # both against one keyframe: prev⁻¹ · cur
        T_a_kf, cov_a_kf = invert_with_covariance(a.T_kf_cur[:3, :3], a.T_kf_cur[:3, 3], a.covariance)
        delta_cam, cov = compose_with_covariance(T_a_kf, cov_a_kf, b.T_kf_cur, b.covariance)
    elif b.keyframe_stamp_ns == a.stamp_ns:  # the previous frame became the keyframe
        delta_cam, cov = b.T_kf_cur, b.covariance
    else:
        return None, None
    delta, cov = compose_with_covariance(mount_a, np.zeros((6, 6)), delta_cam, cov)
    delta, cov = compose_with_covariance(delta, cov, invert(mount_b), np.zeros((6, 6)))
    return twist(delta, cov, dt)
