"""se3: quaternions against Rodrigues and the TUM ground truth, the adjoint against the matrix exponential,
and first-order covariance propagation against Monte-Carlo sampling."""

import math

import cv2
import numpy as np
import pytest
from scipy.linalg import expm

from feature_matcher_ros.se3 import (
    adjoint,
    closest_rotation,
    compose_with_covariance,
    invert,
    invert_with_covariance,
    pose_matrix,
    quat_to_rotation,
    rotation_from_rotvec,
    rotation_to_quat,
    se3,
    skew,
)


@pytest.mark.parametrize("axis, angle", [((0, 0, 1), 0.3), ((1, 0, 0), math.pi), ((0, 1, 0), 3.0),
                                         ((0, 0, 1), math.pi - 1e-3), ((1, -2, 0.5), 2.5), ((0.2, 0.1, -1), 1e-7)])
def test_quaternion_is_rodrigues(axis, angle):
    """``(sin(a/2) n, cos(a/2))`` is the rotation by ``a`` about ``n``, both ways, in every branch of the
    matrix -> quaternion conversion (trace > 0, and each diagonal entry the largest)."""
    n = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    R = rotation_from_rotvec(angle * n)
    q = np.concatenate([math.sin(angle / 2) * n, [math.cos(angle / 2)]])
    np.testing.assert_allclose(quat_to_rotation(q), R, atol=1e-12)
    np.testing.assert_allclose(rotation_to_quat(R), q, atol=1e-9)
    assert rotation_to_quat(R)[3] >= 0


def test_quaternion_sign_and_scale_do_not_matter():
    q = np.array([0.1, -0.7, 0.2, 0.05])
    np.testing.assert_allclose(quat_to_rotation(-3.0 * q), quat_to_rotation(q), atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(rotation_to_quat(quat_to_rotation(q))), 1.0, atol=1e-15)
    for bad in ([0.0, 0.0, 0.0, 0.0], [math.nan, 0.0, 0.0, 1.0], [math.inf, 0.0, 0.0, 1.0]):
        with pytest.raises(ValueError, match="invalid quaternion"):
            quat_to_rotation(bad)


def test_tum_ground_truth_quaternions(shared):
    """Every pose of a TUM file: quaternion -> matrix -> quaternion gives the file's values (up to sign)."""
    for line in (shared / "data" / "tum_fr2_desk" / "groundtruth.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        v = np.array(line.split()[1:], np.float64)
        T = pose_matrix(v[:3], v[3:])
        np.testing.assert_allclose(T[:3, 3], v[:3])
        q = rotation_to_quat(T[:3, :3])
        assert min(np.abs(q - v[3:]).max(), np.abs(q + v[3:]).max()) < 1e-6
        np.testing.assert_allclose(invert(T) @ T, np.eye(4), atol=1e-12)


def test_closest_rotation_and_skew():
    R = rotation_from_rotvec([0.3, -0.2, 0.1])
    noisy = R + 1e-3 * np.random.default_rng(0).normal(size=(3, 3))
    C = closest_rotation(noisy)
    np.testing.assert_allclose(C @ C.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(C) > 0 and np.abs(C - R).max() < 5e-3
    a, b = np.array([0.3, -1.0, 2.0]), np.array([1.5, 0.2, -0.7])
    np.testing.assert_allclose(skew(a) @ b, np.cross(a, b), atol=1e-15)


def _hat(xi):
    """4x4 matrix of a twist ``[v, w]``."""
    M = np.zeros((4, 4))
    M[:3, :3] = skew(xi[3:])
    M[:3, 3] = xi[:3]
    return M


def test_adjoint_moves_twists_between_frames():
    """``T exp(xi) T^-1 == exp(Ad(T) xi)`` for twists ordered [translation, rotation]."""
    T = se3(rotation_from_rotvec([0.4, -0.3, 1.1]), [0.5, -2.0, 1.0])
    rng = np.random.default_rng(5)
    for _ in range(5):
        xi = rng.normal(size=6) * 0.3
        np.testing.assert_allclose(T @ expm(_hat(xi)) @ invert(T), expm(_hat(adjoint(T) @ xi)), atol=1e-10)


def _exp(w):
    return cv2.Rodrigues(np.asarray(w, np.float64).reshape(3, 1))[0]


def _log(R):
    return cv2.Rodrigues(R)[0].reshape(3)


def _assert_covariance_close(deltas, predicted):
    """Sample covariance of ``deltas`` equals ``predicted`` within 5 standard errors, entry by entry."""
    empirical = np.cov(np.asarray(deltas).T)
    d = np.diag(predicted)
    stderr = np.sqrt((np.outer(d, d) + predicted**2) / len(deltas))
    assert (np.abs(empirical - predicted) < 5 * stderr).all(), np.abs(empirical - predicted) / stderr


def test_inverse_and_composition_covariance_match_sampling():
    """First-order covariance propagation against Monte-Carlo sampling, in the RelativePose convention
    (``t_true = t + dt``, ``R_true = exp([w]x) @ R``)."""
    rng = np.random.default_rng(3)
    R, t = _exp([0.2, -0.4, 0.1]), np.array([0.3, -0.1, 0.9])
    A = rng.normal(size=(6, 6)) * 1e-3
    cov = A @ A.T
    T_inv, cov_inv = invert_with_covariance(R, t, cov)
    np.testing.assert_allclose(T_inv[:3, :3], R.T, atol=1e-12)
    np.testing.assert_allclose(T_inv[:3, 3], -R.T @ t, atol=1e-12)
    samples = rng.multivariate_normal(np.zeros(6), cov, size=20000)
    deltas = []
    for d in samples:
        Rt, tt = _exp(d[3:]) @ R, t + d[:3]
        Ri, ti = Rt.T, -Rt.T @ tt
        deltas.append(np.concatenate([ti - T_inv[:3, 3], _log(Ri @ T_inv[:3, :3].T)]))
    _assert_covariance_close(deltas, cov_inv)

    T_b = np.eye(4)
    T_b[:3, :3], T_b[:3, 3] = _exp([0.0, 0.3, -0.2]), [1.0, 0.5, -0.2]
    B = rng.normal(size=(6, 6)) * 1e-3
    cov_b = B @ B.T
    T_a = np.eye(4)
    T_a[:3, :3], T_a[:3, 3] = R, t
    T_ab, cov_ab = compose_with_covariance(T_a, cov, T_b, cov_b)
    np.testing.assert_allclose(T_ab, T_a @ T_b, atol=1e-12)
    samples_b = rng.multivariate_normal(np.zeros(6), cov_b, size=20000)
    deltas = []
    for da, db in zip(samples, samples_b):
        Ra, ta = _exp(da[3:]) @ R, t + da[:3]
        Rb, tb = _exp(db[3:]) @ T_b[:3, :3], T_b[:3, 3] + db[:3]
        Rc, tc = Ra @ Rb, Ra @ tb + ta
        deltas.append(np.concatenate([tc - T_ab[:3, 3], _log(Rc @ T_ab[:3, :3].T)]))
    _assert_covariance_close(deltas, cov_ab)
