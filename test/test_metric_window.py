"""Metric poses refined over more than one keyframe (pnp.window): how earlier keyframes' points are carried into a
new keyframe's frame, what the refinement does with them on controlled geometry, and the Frontend on real stereo
frames with the window on and off."""

import numpy as np
import pytest

from feature_matcher_ros.backends.base import Matches
from feature_matcher_ros.backends.sift import SiftBackend
from feature_matcher_ros.camera import CameraModel
from feature_matcher_ros.frontend import Frontend
from feature_matcher_ros.geometry import RelativePose
from feature_matcher_ros.metric import StereoFrame, back_project, estimate_absolute_pose
from feature_matcher_ros.metric_window import WindowPoints, carry_window, refine_with_window, same_pixels
from feature_matcher_ros.se3 import rotation_from_rotvec

CAM = CameraModel.from_matrix(640, 480, [[500, 0, 320], [0, 500, 240], [0, 0, 1]])


def _scene(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(2, 6, n)])
    return X


def _project(X, R, t):
    Xc = X @ R.T + t
    return Xc[:, :2] / Xc[:, 2:3] * 500.0 + np.array([320.0, 240.0])


def test_same_pixels_is_one_to_many_and_within_tolerance():
    a = np.array([[10.0, 10.0], [10.2, 9.9], [10.0, 10.0], [30.0, 5.0], [10.6, 10.0]])
    b = np.array([[10.0, 10.0], [30.4, 5.0], [50.0, 50.0]])
    ia, ib = same_pixels(a, b)
    pairs = sorted(zip(ia.tolist(), ib.tolist()))
    assert pairs == [(0, 0), (1, 0), (2, 0), (3, 1)]  # 10.6 rounds to another pixel; 30.4 is within 0.5
    assert len(same_pixels(a, b[:0])[0]) == 0


def test_carried_points_are_in_the_new_keyframe_frame_with_rotated_covariance():
    """Keyframe A sees points; the new keyframe B is at X_B = R X_A + t. Its window must hold R X_A + t at B's
    pixels, the depth noise along A's rays turned by R, and the pose covariance added through [I, -[R X]x]."""
    X_A = _scene(30)
    R, t = rotation_from_rotvec([0.0, np.radians(20.0), 0.0]), np.array([0.4, 0.0, 0.1])
    kA, kB = _project(X_A, np.eye(3), np.zeros(3)), _project(X_A, R, t)
    m = Matches(kA, kB, np.ones(len(kA)))
    inl = np.ones(len(kA), bool)
    inl[:5] = False  # outliers are not carried
    pose = RelativePose(R, t, inl, "pnp", np.zeros((6, 6)), metric=True)
    w = carry_window(CAM, 0.01, None, m, X_A[:, 2].copy(), pose, depth=2)
    assert len(w) == 25 and (w.age == 1).all()
    np.testing.assert_allclose(w.X, X_A[5:] @ R.T + t, atol=1e-5)  # pixels are float32 in Matches
    np.testing.assert_allclose(w.pixels, kB[5:], atol=1e-4)
    # depth noise only: rank one, along A's rays turned into B's frame: (0.01 Z^2)^2 ray ray^T
    ray_B = (X_A[5:] / X_A[5:, 2:3]) @ R.T
    for c, r, Z in zip(w.cov, ray_B, X_A[5:, 2]):
        np.testing.assert_allclose(c, (0.01 * Z**2) ** 2 * np.outer(r, r), rtol=1e-4, atol=1e-12)
    # a pure translation uncertainty of the pose adds itself to every point
    cov = np.diag([1e-4, 4e-4, 9e-4, 0.0, 0.0, 0.0])
    w2 = carry_window(CAM, 0.0, None, m, X_A[:, 2].copy(), RelativePose(R, t, inl, "pnp", cov, metric=True), 2)
    np.testing.assert_allclose(w2.cov, np.broadcast_to(cov[:3, :3], w2.cov.shape), atol=1e-12)
    # one keyframe further: A's own window points seen at inlier pixels come along, one keyframe older; not
    # beyond the depth
    older = WindowPoints(kA[:10].copy(), X_A[:10] + 0.01, np.zeros((10, 3, 3)), np.ones(10, np.int64))
    w3 = carry_window(CAM, 0.01, older, m, X_A[:, 2].copy(), pose, depth=2)
    assert len(w3) == 25 + 5 and (w3.age[25:] == 2).all()
    np.testing.assert_allclose(w3.X[25:], (X_A[5:10] + 0.01) @ R.T + t, atol=1e-9)
    assert len(carry_window(CAM, 0.01, older, m, X_A[:, 2].copy(), pose, depth=1)) == 25


def test_refinement_uses_the_better_measurements_and_drops_wrong_ones():
    """The active keyframe's depths are 4 % too far (a scale error of this keyframe's depth); earlier keyframes
    measured the same points right, with a smaller noise. The window pulls the step towards the truth; a wrong
    earlier measurement is gated out."""
    rng = np.random.default_rng(1)
    X = _scene(150, seed=2)
    R, t = rotation_from_rotvec([0.01, -0.03, 0.0]), np.array([0.15, 0.0, 0.3])
    k0, k1 = _project(X, np.eye(3), np.zeros(3)), _project(X, R, t) + rng.normal(0, 0.3, (len(X), 2))
    X_kf = back_project(CAM, k0, X[:, 2] * 1.04)
    ap = estimate_absolute_pose(X_kf, k1, CAM, threshold_px=3.0, depth_noise=0.02, weighted=True)
    assert ap is not None and ap.inliers.sum() > 100
    err0 = np.linalg.norm(ap.t - t)
    cov = np.broadcast_to(np.eye(3) * 1e-6, (len(X), 3, 3)).copy()
    window = WindowPoints(k0.copy(), X.copy(), cov, np.ones(len(X), np.int64))
    window.X[:10] += np.array([0.0, 0.0, 1.5])  # ten wrong earlier measurements
    R1, t1, used = refine_with_window(ap, X_kf, k0, k1, CAM, 0.02, window)
    assert np.linalg.norm(t1 - t) < 0.5 * err0
    assert used <= ap.inliers.sum() - 8  # the wrong ones are not used
    # no earlier measurement at these pixels: the PnP pose as it was
    far = WindowPoints(k0 + 100.0, X.copy(), cov, np.ones(len(X), np.int64))
    R2, t2, used2 = refine_with_window(ap, X_kf, k0, k1, CAM, 0.02, far)
    assert used2 == 0 and np.array_equal(t2, ap.t)


@pytest.fixture(scope="module")
def kitti(kitti06_stereo):
    camera, rig, frames = kitti06_stereo
    return camera, rig, frames[:8]


def _run(kitti, window):
    camera, rig, frames = kitti
    fe = Frontend(SiftBackend(), {"pnp.window": window, "keyframe.max_parallax_px": 40.0}, input_mode="stereo")
    out = [fe.process(left, 1_000 + i, camera, stereo=StereoFrame(right, rig))
           for i, (left, right) in enumerate(frames)]
    return fe, out


def test_window_on_real_stereo_frames(kitti):
    """The Frontend on KITTI stereo frames: with the window on, each keyframe made from a metric pose carries its
    predecessors' points (never older than pnp.window keyframes), the poses move a little; off, nothing is carried
    and the poses are the PnP ones."""
    fe_on, on = _run(kitti, 2)
    fe_off, off = _run(kitti, 0)
    assert all(r.metric for r in on[1:]) and all(r.metric for r in off[1:])
    assert sum(r.new_keyframe for r in on) >= 3
    assert fe_on.keyframe.window is not None and 0 < fe_on.keyframe.window.age.max() <= 2
    assert fe_off.keyframe.window is None and all(k.window is None for k in fe_off.cache)
    moved = [np.linalg.norm(a.pose.t - b.pose.t) for a, b in zip(on[1:], off[1:])]
    assert max(moved) > 1e-5 and max(moved) < 0.1  # a refinement, not a different answer
    assert fe_on.update({"pnp.window": 9}) is not None  # outside its range: refused
