"""The ROS-free core of REP 105 odometry (base_odometry.py), on cases worked by hand: the camera's motion moved
to the base through its mounting, the covariance through the lever arm, the twist from two poses."""

import math

import numpy as np
import pytest

from feature_matcher_ros.base_odometry import (
    LOST_VARIANCE,
    BaseOdometry,
    Motion,
    base_pose,
    camera_mount,
    rpy_rotation,
    se3_log,
    twist,
)
from feature_matcher_ros.se3 import invert, rotation_from_rotvec, se3

MOUNT = camera_mount(0.1, 0.0, 0.2, 0.0, 0.0, 0.0)  # 10 cm ahead of the base, 20 cm up, looking forward


def Rz(a):
    return rotation_from_rotvec([0.0, 0.0, a])


def test_mount_axes_follow_rep_103():
    R = MOUNT[:3, :3]
    # optical z (forward) is the base's x, optical x (right) its -y, optical y (down) its -z
    assert np.allclose(R @ [0, 0, 1], [1, 0, 0]) and np.allclose(R @ [1, 0, 0], [0, -1, 0])
    assert np.allclose(R @ [0, 1, 0], [0, 0, -1]) and np.allclose(MOUNT[:3, 3], [0.1, 0.0, 0.2])
    # yaw 90 degrees: the camera looks to the left (the base's +y)
    left = camera_mount(0, 0, 0, 0, 0, math.pi / 2)
    assert np.allclose(left[:3, :3] @ [0, 0, 1], [0, 1, 0])
    assert np.allclose(rpy_rotation(0.1, 0.2, 0.3), Rz(0.3) @ rotation_from_rotvec([0, 0.2, 0])
                       @ rotation_from_rotvec([0.1, 0, 0]))


def test_forward_motion_of_the_camera_is_forward_motion_of_the_base():
    T, _ = base_pose(se3(np.eye(3), [0.0, 0.0, 1.0]), np.zeros((6, 6)), MOUNT, MOUNT)
    assert np.allclose(T, se3(np.eye(3), [1.0, 0.0, 0.0]))


def test_turning_in_place_moves_the_camera_on_a_circle_but_not_the_base():
    """The base turns 90 degrees left about its own z axis: the camera, 10 cm ahead, swings to (0, 0.1); in its
    own first frame it moved and turned. The base pose is the turn alone."""
    T_base = se3(Rz(math.pi / 2), [0.0, 0.0, 0.0])
    T_cam0_cam = invert(MOUNT) @ T_base @ MOUNT  # what the frontend sees
    assert np.linalg.norm(T_cam0_cam[:3, 3]) == pytest.approx(0.1 * math.sqrt(2))
    T, _ = base_pose(T_cam0_cam, np.zeros((6, 6)), MOUNT, MOUNT)
    assert np.allclose(T, T_base, atol=1e-12)


def test_camera_yaw_uncertainty_becomes_sideways_uncertainty_of_the_base_by_the_lever_arm():
    """Mount: a pure translation d = 0.5 m along x (no rotation). The camera at the origin, its yaw (rz) with
    variance s2 = 0.01. The base, d behind the camera, swings sideways by d * yaw: variance of y = d^2 s2 =
    0.0025; x and z unaffected; the yaw variance itself unchanged."""
    mount = se3(np.eye(3), [0.5, 0.0, 0.0])
    cov = np.zeros((6, 6))
    cov[5, 5] = 0.01
    T, out = base_pose(np.eye(4), cov, mount, mount)
    assert np.allclose(T, np.eye(4))
    assert out[1, 1] == pytest.approx(0.0025) and out[0, 0] == pytest.approx(0.0) and out[2, 2] == pytest.approx(0)
    assert out[5, 5] == pytest.approx(0.01) and out[1, 5] == pytest.approx(-0.005)


def test_camera_axes_rotate_the_covariance_into_the_base_axes():
    """A camera translation variance along its optical z (forward) is base x variance."""
    cov = np.diag([0.0, 0.0, 0.04, 0.0, 0.0, 0.0])
    _, out = base_pose(np.eye(4), cov, MOUNT, MOUNT)
    assert np.allclose(np.diag(out), [0.04, 0, 0, 0, 0, 0], atol=1e-12)


def test_se3_log_of_pure_translation_rotation_and_an_arc():
    assert np.allclose(se3_log(se3(np.eye(3), [0.05, 0, 0])), [0.05, 0, 0, 0, 0, 0])
    assert np.allclose(se3_log(se3(Rz(0.1), [0, 0, 0])), [0, 0, 0, 0, 0, 0.1])
    arc = se3(Rz(1.0), [math.sin(1.0), 1 - math.cos(1.0), 0.0])  # 1 s at 1 m/s forward, 1 rad/s left
    assert np.allclose(se3_log(arc), [1, 0, 0, 0, 0, 1])


def test_twist_of_constant_motions():
    v, cov = twist(se3(np.eye(3), [0.05, 0, 0]), np.diag([1e-4] * 3 + [1e-6] * 3), 0.1)
    assert np.allclose(v, [0.5, 0, 0, 0, 0, 0])
    assert np.allclose(np.diag(cov), [1e-2] * 3 + [1e-4] * 3)  # variances / dt^2
    v, _ = twist(se3(Rz(0.1), [0, 0, 0]), np.zeros((6, 6)), 0.2)
    assert np.allclose(v, [0, 0, 0, 0, 0, 0.5])


def _motion(stamp, kf, T, var=1e-4):
    return Motion(stamp, kf, T, np.diag([var] * 3 + [var / 100] * 3))


def test_odometry_of_the_base_with_twist_from_consecutive_frames():
    """The camera moves 0.05 m forward per 0.1 s frame against one keyframe: the base moves 0.05 m along x per
    frame, at 0.5 m/s in its own frame; a frame whose keyframe is the previous frame has a twist too."""
    odo = BaseOdometry()
    frames = [(0, 0, np.eye(4))]
    for k in (1, 2):
        frames.append((k * 10**8, 0, se3(np.eye(3), [0, 0, 0.05 * k])))
    steps = []
    for stamp, kf, T_kf_cur in frames:
        world = (T_kf_cur, np.zeros((6, 6)))
        motion = None if stamp == kf else _motion(stamp, kf, T_kf_cur)
        steps.append(odo.update(world, motion, MOUNT))
    assert np.allclose(steps[0].T_odom_base, np.eye(4)) and steps[0].twist is None
    assert steps[1].twist is None  # the frame before had no relative pose (it is the keyframe)
    assert np.allclose(steps[2].T_odom_base[:3, 3], [0.1, 0, 0])
    assert np.allclose(steps[2].twist, [0.5, 0, 0, 0, 0, 0])
    # variance of the difference of two independent 1e-4 estimates, along the base axes, over dt^2
    # (plus the rotation variances times the lever arms, 1e-6 of it)
    assert steps[2].twist_covariance[0, 0] == pytest.approx(2e-4 / 0.01, rel=1e-2)
    # the next frame against a new keyframe made from frame 2: relative to it directly
    step = odo.update((se3(np.eye(3), [0, 0, 0.15]), np.zeros((6, 6))),
                      _motion(3 * 10**8, 2 * 10**8, se3(np.eye(3), [0, 0, 0.05])), MOUNT)
    assert np.allclose(step.twist, [0.5, 0, 0, 0, 0, 0])
    # a frame against some other keyframe (relocalised): no twist
    step = odo.update((se3(np.eye(3), [0, 0, 0.2]), np.zeros((6, 6))),
                      _motion(4 * 10**8, 0, se3(np.eye(3), [0, 0, 0.2])), MOUNT)
    assert step.twist is None and step.twist_covariance is None


def test_lost_frames_set_pose_and_reset():
    odo = BaseOdometry()
    assert not odo.set_pose(np.eye(4), np.eye(6)) and odo.lost() is None  # nothing to anchor to yet
    odo.update((se3(np.eye(3), [0, 0, 1.0]), np.zeros((6, 6))), None, MOUNT)
    assert odo.update(None, None, MOUNT) is None  # lost: no pose
    lost = odo.lost()
    assert np.allclose(lost.T_odom_base[:3, 3], [1, 0, 0]) and np.allclose(lost.covariance, LOST_VARIANCE * np.eye(6))
    # the base is declared at (5, 2) facing +y; the camera then moves 1 m further along its axis
    T_set = se3(Rz(math.pi / 2), [5.0, 2.0, 0.0])
    assert odo.set_pose(T_set, 0.01 * np.eye(6))
    step = odo.update((se3(np.eye(3), [0, 0, 2.0]), np.zeros((6, 6))), None, MOUNT)
    assert np.allclose(step.T_odom_base, se3(Rz(math.pi / 2), [5.0, 3.0, 0.0]))
    # the anchor's yaw variance (0.01) moves the 1 m travelled since (along odom +y) sideways, along x: 0.01 + 1 *
    # 0.01; along the travel it adds nothing; its roll variance tilts it along z
    assert np.allclose(np.diag(step.covariance), [0.02, 0.01, 0.02, 0.01, 0.01, 0.01])
    odo.reset()  # the frontend was reset too: its next keyframe is its world's origin again
    other_mount = camera_mount(0.3, 0.0, 0.5, 0.0, 0.2, 0.0)
    step = odo.update((np.eye(4), np.zeros((6, 6))), None, other_mount)
    assert np.allclose(step.T_odom_base, np.eye(4))  # a new odom origin where the base is now
