"""Rotations and rigid transforms: quaternions, SE(3) matrices and first-order covariance propagation.

Conventions (the whole package uses them): ``T_a_b`` is a ``(4, 4)`` matrix mapping points from frame b to
frame a. Quaternions are Hamilton, scalar last ``(qx, qy, qz, qw)`` as in TUM files and ROS messages.
A pose covariance is ``(6, 6)`` over ``[tx, ty, tz, rx, ry, rz]``: an additive translation error and a
rotation error ``w`` applied on the left, ``R_true = exp([w]x) @ R`` (the convention of
:class:`~feature_matcher_ros.geometry.RelativePose` and of the ``relative_pose`` / ``odometry`` topics).

Example:
    >>> import numpy as np
    >>> R = rotation_from_rotvec([0.0, 0.0, np.pi / 2])          # 90 deg about z
    >>> rotation_to_quat(R).round(6).tolist()
    [0.0, 0.0, 0.707107, 0.707107]
    >>> T = se3(R, [1.0, 2.0, 3.0])
    >>> np.allclose(invert(T) @ T, np.eye(4))
    True
    >>> T_inv, cov = invert_with_covariance(R, [1.0, 2.0, 3.0], np.diag([1e-4] * 3 + [1e-6] * 3))
    >>> np.allclose(T_inv, invert(T)), cov.shape
    (True, (6, 6))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import cv2
import numpy as np


def se3(R: np.ndarray, t: Iterable[float]) -> np.ndarray:
    """``(4, 4)`` homogeneous transform from a ``(3, 3)`` rotation and a ``(3,)`` translation."""
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, dtype=np.float64)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid ``(4, 4)`` transform (uses ``R^T``, not a general matrix inverse)."""
    T = np.asarray(T, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def skew(v: Iterable[float]) -> np.ndarray:
    """``(3, 3)`` cross-product matrix: ``skew(a) @ b == cross(a, b)``.

    >>> skew([1.0, 2.0, 3.0]) @ np.array([4.0, 5.0, 6.0])
    array([-3.,  6., -3.])
    """
    x, y, z = np.asarray(v, dtype=np.float64).reshape(3)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def rotation_from_rotvec(w: Iterable[float]) -> np.ndarray:
    """Rodrigues: ``(3,)`` axis * angle (radians) -> ``(3, 3)``."""
    return cv2.Rodrigues(np.asarray(w, dtype=np.float64).reshape(3, 1))[0]


def rotvec_from_rotation(R: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rotation_from_rotvec`: ``(3, 3)`` -> ``(3,)`` axis * angle (radians)."""
    return cv2.Rodrigues(np.asarray(R, dtype=np.float64).reshape(3, 3))[0].reshape(3)


def pose_error(T_est: np.ndarray, T_true: np.ndarray) -> np.ndarray:
    """``(6,)`` error ``[dt, w]`` of an estimate in the covariance convention (module docstring):
    ``t_true = t_est + dt`` and ``R_true = exp([w]x) @ R_est``."""
    T_est, T_true = np.asarray(T_est, np.float64), np.asarray(T_true, np.float64)
    return np.concatenate([T_true[:3, 3] - T_est[:3, 3], rotvec_from_rotation(T_true[:3, :3] @ T_est[:3, :3].T)])


def nees(T_est: np.ndarray, T_true: np.ndarray, covariance: np.ndarray) -> float:
    """Normalised estimation error squared ``eᵀ Σ⁻¹ e`` of :func:`pose_error` (χ²(6) when ``Σ`` is right).

    >>> round(nees(se3(np.eye(3), [0.1, 0.0, 0.0]), np.eye(4), np.diag([0.01] + [1.0] * 5)), 9)   # one sigma off
    1.0
    """
    e = pose_error(T_est, T_true)
    return float(e @ np.linalg.solve(np.asarray(covariance, np.float64).reshape(6, 6), e))


def quat_to_rotation(q: Sequence[float]) -> np.ndarray:
    """Quaternion ``(qx, qy, qz, qw)`` (scalar last; normalised here) -> ``(3, 3)`` rotation.

    Raises ValueError for a quaternion that is not finite or has (almost) zero norm.

    >>> quat_to_rotation([0.0, 0.0, 0.0, 2.0]).tolist() == np.eye(3).tolist()
    True
    """
    q = np.asarray(q, dtype=np.float64).reshape(4)
    norm = float(np.linalg.norm(q))
    if not math.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"invalid quaternion {q.tolist()}")
    x, y, z, w = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotation_to_quat(R: np.ndarray) -> np.ndarray:
    """``(3, 3)`` rotation -> ``(4,)`` unit quaternion ``(qx, qy, qz, qw)`` with ``qw >= 0``."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    else:  # the largest diagonal entry picks the numerically safe component
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 1e-300))
        q = [0.0, 0.0, 0.0, (R[k, j] - R[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def closest_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation nearest to a ``(3, 3)`` matrix ``M`` in the Frobenius norm."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def pose_matrix(position: Sequence[float], quat_xyzw: Sequence[float]) -> np.ndarray:
    """``(3,)`` translation and ``(4,)`` scalar-last quaternion -> ``(4, 4)`` pose (ValueError for a bad
    quaternion)."""
    return se3(quat_to_rotation(quat_xyzw), position)


def adjoint(T: np.ndarray) -> np.ndarray:
    """``(6, 6)`` adjoint of ``T`` for twists ordered ``[translation, rotation]``: a twist ``xi`` given in
    frame b becomes ``adjoint(T_a_b) @ xi`` in frame a (``T exp(xi) T^-1 = exp(Ad xi)``)."""
    T = np.asarray(T, np.float64)
    R, t = T[:3, :3], T[:3, 3]
    A = np.zeros((6, 6))
    A[:3, :3] = R
    A[:3, 3:] = skew(t) @ R
    A[3:, 3:] = R
    return A


def invert_with_covariance(R: np.ndarray, t: Iterable[float], covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``T_b_a`` ``(4, 4)`` and its ``(6, 6)`` covariance from ``T_a_b = (R, t)`` with covariance
    ``covariance`` (the module's convention), to first order."""
    R = np.asarray(R, np.float64)
    t = np.asarray(t, np.float64).reshape(3)
    T = np.eye(4)
    T[:3, :3] = R.T
    T[:3, 3] = -R.T @ t
    J = np.zeros((6, 6))
    J[:3, :3] = -R.T
    J[:3, 3:] = -R.T @ skew(t)
    J[3:, 3:] = -R.T
    return T, J @ np.asarray(covariance, np.float64).reshape(6, 6) @ J.T


def compose_with_covariance(
    T_a: np.ndarray, cov_a: np.ndarray, T_b: np.ndarray, cov_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``T_a @ T_b`` ``(4, 4)`` and its ``(6, 6)`` covariance (independent inputs; the module's
    convention), to first order."""
    Ra = T_a[:3, :3]
    Ja = np.eye(6)
    Ja[:3, 3:] = -skew(Ra @ T_b[:3, 3])
    Jb = np.zeros((6, 6))
    Jb[:3, :3] = Ra
    Jb[3:, 3:] = Ra
    return T_a @ T_b, Ja @ cov_a @ Ja.T + Jb @ cov_b @ Jb.T
