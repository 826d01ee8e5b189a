"""A pose-graph back-end on GTSAM: keyframe poses as ``Pose3`` variables, the front-end's edges as
``BetweenFactorPose3``, incremental optimisation with ``ISAM2``. ROS-free (``pose_graph_node`` and
``fm-eval --pose-graph`` run the same code).

- Variables are the keyframes' camera poses in the graph's world, the first keyframe's camera frame (a prior
  holds it at the identity). A new keyframe's initial estimate is the previous estimate chained with its edge.
- Keyframe edges (:class:`~.loops.Edge`, ``kind = "keyframe"``) are Gaussian; a keyframe made after a loss
  (``kind = "lost"``: no measured edge, the front-end's guess) gets a between factor of variance
  :data:`LOST_VARIANCE` so that the graph stays connected while loops can pull it into place.
- Loop edges get a robust kernel (Cauchy by default) and a consistency gate: a loop whose Mahalanobis distance
  against the current estimate (the loop's covariance plus the estimate's marginals of both ends) exceeds the
  χ²(6) quantile ``loop_gate`` is rejected and counted.
- Covariances come in ROS's order ``[x y z rx ry rz]`` (translation in the parent frame, rotation about its axes:
  the package's convention, :mod:`.se3`); GTSAM's ``Pose3`` tangent is ``[rx ry rz tx ty tz]`` in the local
  (body) frame: :func:`gtsam_covariance` reorders and rotates (first order). Monocular edges keep their unknown
  scale as the huge variance along the translation that the front-end gives them (no ``Similarity3``: the
  metric modes need none, and mono loops then fix the rotations while the scale stays open, as it is).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .loops import Edge
from .params import ParamSpec
from .se3 import invert

LOST_VARIANCE = 1e4
MIN_VARIANCE = 1e-10
PRIOR_VARIANCE = 1e-10
CHI2_6_999 = 22.458  # χ²(6) 99.9 % quantile
KERNEL_WIDTH = math.sqrt(CHI2_6_999)  # a loop inside the gate stays (nearly) quadratic


GRAPH_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("map_frame", "map", "The map frame (REP 105) of the path and of map -> odom.", read_only=True),
    ParamSpec("odom_frame", "odom", "The front-end's odom frame.", read_only=True),
    ParamSpec("base_frame", "", "The front-end's base_frame: set, map -> odom is broadcast on /tf (the camera "
              "mounting looked up from TF); empty, no transform is broadcast (the path is the camera's).",
              read_only=True),
    ParamSpec("loop_kernel", "cauchy", "Robust kernel of the loop edges.", choices=("cauchy", "huber", "none"),
              read_only=True),
    ParamSpec("loop_gate", CHI2_6_999, "A loop whose squared Mahalanobis distance against the current estimate "
              "exceeds this is rejected (χ²(6) quantile; 0 = no gate).", min=0.0, max=1e9, read_only=True),
)


def gtsam_covariance(T: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """The ``(6, 6)`` covariance of a pose ``T`` in GTSAM's ``Pose3`` tangent ``[rx ry rz tx ty tz]`` (body frame)
    from the package's / ROS's ``[x y z rx ry rz]`` (parent frame): ``J P Σ Pᵀ Jᵀ`` with ``P`` the reordering and
    ``J = blockdiag(Rᵀ, Rᵀ)``.

    >>> from feature_matcher_ros.se3 import rotation_from_rotvec, se3
    >>> T = se3(rotation_from_rotvec([0, 0, np.pi / 2]), [1.0, 0.0, 0.0])   # turned 90 degrees left
    >>> cov = np.diag([0.04, 0.01, 0.0, 0.0, 0.0, 0.0009])                  # x, y in the parent; yaw
    >>> np.diag(gtsam_covariance(T, cov)).round(6).tolist()     # body: the parent's y is the body's -x
    [0.0, 0.0, 0.0009, 0.01, 0.04, 0.0]
    """
    R = np.asarray(T, np.float64)[:3, :3]
    P = np.zeros((6, 6))
    P[:3, 3:] = np.eye(3)
    P[3:, :3] = np.eye(3)
    J = np.zeros((6, 6))
    J[:3, :3] = R.T
    J[3:, 3:] = R.T
    out = J @ P @ np.asarray(covariance, np.float64).reshape(6, 6) @ P.T @ J.T
    return 0.5 * (out + out.T)


def _noise(gtsam, cov: np.ndarray):
    """A Gaussian noise model of ``cov`` with its eigenvalues clamped to ``[MIN_VARIANCE, LOST_VARIANCE]``: an
    unknown monocular scale (variance 1e6 along the translation) next to a tight rotation would otherwise make
    the system too ill-conditioned for iSAM2's Cholesky."""
    values, vectors = np.linalg.eigh(0.5 * (cov + cov.T))
    values = np.clip(values, MIN_VARIANCE, LOST_VARIANCE)
    return gtsam.noiseModel.Gaussian.Covariance((vectors * values) @ vectors.T)


@dataclass
class GraphStats:
    keyframes: int = 0
    keyframe_edges: int = 0
    lost_edges: int = 0
    loops_accepted: int = 0
    loops_rejected: int = 0
    optimise_ms: list[float] = field(default_factory=list)

    @property
    def optimise_ms_median(self) -> float:
        return float(np.median(self.optimise_ms)) if self.optimise_ms else float("nan")


class PoseGraph:
    """The graph (see the module docstring). ``loop_kernel``: ``cauchy``, ``huber`` or ``none``; ``loop_gate``:
    the χ²(6) quantile a loop must stay under (``inf`` = no gate)."""

    def __init__(self, loop_kernel: str = "cauchy", kernel_width: float = KERNEL_WIDTH,
                 loop_gate: float = CHI2_6_999) -> None:
        import gtsam

        self._gtsam = gtsam
        if loop_kernel not in ("cauchy", "huber", "none"):
            raise ValueError(f"loop_kernel must be cauchy, huber or none, not {loop_kernel!r}")
        self.loop_kernel, self.kernel_width, self.loop_gate = loop_kernel, float(kernel_width), float(loop_gate)
        params = gtsam.ISAM2Params()
        params.relinearizeSkip = 1  # relinearise at every update: a robust loop's weight changes as poses move
        params.setRelinearizeThreshold(0.01)
        params.setFactorization("QR")  # Cholesky calls a lost edge next to a monocular one indeterminate
        self.isam = gtsam.ISAM2(params)
        self.keys: dict[int, int] = {}  # keyframe stamp -> variable key
        self.stats = GraphStats()
        self.loops: list[Edge] = []  # the accepted ones
        self._factors = gtsam.NonlinearFactorGraph()
        self._values = gtsam.Values()
        self._estimate: dict[int, np.ndarray] = {}
        self._loop_pending = False

    # -- building ---------------------------------------------------------------------------------------------
    def _add_variable(self, stamp_ns: int, T_initial: np.ndarray) -> int:
        key = len(self.keys)
        self.keys[stamp_ns] = key
        self._values.insert(key, self._gtsam.Pose3(np.asarray(T_initial, np.float64)))
        self._estimate[stamp_ns] = np.asarray(T_initial, np.float64)
        self.stats.keyframes += 1
        return key

    def add_first(self, stamp_ns: int) -> None:
        """The first keyframe: the graph's origin, held by a prior."""
        key = self._add_variable(stamp_ns, np.eye(4))
        self._factors.add(self._gtsam.PriorFactorPose3(key, self._gtsam.Pose3(), _noise(
            self._gtsam, PRIOR_VARIANCE * np.eye(6))))

    def add_edge(self, edge: Edge) -> bool:
        """A keyframe, lost or loop edge; a keyframe/lost edge to a new keyframe adds it (the first edge's
        ``from`` becomes the origin when the graph is empty). False when the edge cannot be placed (a loop to an
        unknown keyframe, a gated loop)."""
        if not self.keys:
            self.add_first(edge.from_stamp_ns)
        if edge.from_stamp_ns not in self.keys:
            return False
        if edge.kind == "loop":
            return self._add_loop(edge)
        T_from = self._estimate[edge.from_stamp_ns]
        if edge.to_stamp_ns not in self.keys:
            self._add_variable(edge.to_stamp_ns, T_from @ edge.T)
        cov = LOST_VARIANCE * np.eye(6) if edge.kind == "lost" else gtsam_covariance(edge.T, edge.covariance)
        self._between(edge, _noise(self._gtsam, cov))
        if edge.kind == "lost":
            self.stats.lost_edges += 1
        else:
            self.stats.keyframe_edges += 1
        return True

    def _between(self, edge: Edge, noise) -> None:
        g = self._gtsam
        self._factors.add(g.BetweenFactorPose3(self.keys[edge.from_stamp_ns], self.keys[edge.to_stamp_ns],
                                               g.Pose3(np.asarray(edge.T, np.float64)), noise))

    def _add_loop(self, edge: Edge) -> bool:
        if edge.to_stamp_ns not in self.keys:
            return False
        if self._factors.size():  # the gate needs the marginals of both ends: solve what is pending first
            self._solve()
        g = self._gtsam
        cov = gtsam_covariance(edge.T, edge.covariance)
        if math.isfinite(self.loop_gate) and self.mahalanobis(edge, cov) > self.loop_gate:
            self.stats.loops_rejected += 1
            return False
        noise = _noise(g, cov)
        if self.loop_kernel == "cauchy":
            noise = g.noiseModel.Robust.Create(g.noiseModel.mEstimator.Cauchy.Create(self.kernel_width), noise)
        elif self.loop_kernel == "huber":
            noise = g.noiseModel.Robust.Create(g.noiseModel.mEstimator.Huber.Create(self.kernel_width), noise)
        self._between(edge, noise)
        self.loops.append(edge)
        self.stats.loops_accepted += 1
        self._loop_pending = True
        return True

    def mahalanobis(self, edge: Edge, cov: np.ndarray) -> float:
        """Squared Mahalanobis distance of a loop against the current estimate of its ends (their marginals
        added, correlations ignored: conservative)."""
        g = self._gtsam
        T_from, T_to = (self._estimate[s] for s in (edge.from_stamp_ns, edge.to_stamp_ns))
        predicted = g.Pose3(np.linalg.inv(T_from) @ T_to)
        error = g.Pose3.Logmap(g.Pose3(np.asarray(edge.T, np.float64)).between(predicted))
        total = cov.copy()
        for stamp in (edge.from_stamp_ns, edge.to_stamp_ns):
            try:
                total += self.isam.marginalCovariance(self.keys[stamp])
            except (RuntimeError, IndexError):  # not in the solved system (cannot happen after _solve)
                pass
        return float(error @ np.linalg.solve(total + 1e-12 * np.eye(6), error))

    # -- solving ----------------------------------------------------------------------------------------------
    def update(self, edges: list[Edge]) -> list[bool]:
        """Add ``edges`` (:meth:`add_edge`) and optimise; the whole step's milliseconds go to
        ``stats.optimise_ms``. Whether each edge was placed."""
        t0 = time.perf_counter()
        placed = [self.add_edge(edge) for edge in edges]
        self._solve()
        self.stats.optimise_ms.append(1e3 * (time.perf_counter() - t0))
        return placed

    def optimise(self) -> float:
        """Add what is pending to iSAM2 and update the estimate; the milliseconds it took."""
        t0 = time.perf_counter()
        self._solve()
        ms = 1e3 * (time.perf_counter() - t0)
        self.stats.optimise_ms.append(ms)
        return ms

    def _solve(self) -> None:
        if not (self._factors.size() or self._values.size()):
            return
        self.isam.update(self._factors, self._values)
        if self._loop_pending:
            self.isam.update()  # one more relinearisation step after a loop: it moves many poses at once
            self._loop_pending = False
        self._factors = self._gtsam.NonlinearFactorGraph()
        self._values = self._gtsam.Values()
        result = self.isam.calculateEstimate()
        self._estimate = {stamp: result.atPose3(key).matrix() for stamp, key in self.keys.items()}

    def has(self, stamp_ns: int) -> bool:
        return stamp_ns in self.keys

    def estimate(self) -> dict[int, np.ndarray]:
        """The keyframes' optimised camera poses ``T_world_camera`` (world = the first keyframe's camera)."""
        return dict(self._estimate)


def map_to_odom(X_kf: np.ndarray, mount_origin: np.ndarray, mount_kf: np.ndarray, T_odom_base_kf: np.ndarray
                ) -> np.ndarray:
    """``T_map_odom`` (REP 105) from one keyframe: its optimised camera pose ``X_kf`` in the graph's world (the
    origin keyframe's camera), the camera's mounting ``T_base_camera`` at the origin keyframe and at this one, and
    the front-end's pose of the base in odom at this keyframe. The map frame is where the base was at the origin
    keyframe, as odom's is: map = odom until loops move the estimate.

    ``T_map_base = M₀ X M⁻¹`` and ``T_map_odom = T_map_base T_odom_base⁻¹``.

    >>> M = np.eye(4); M[:3, 3] = [0.2, 0.0, 0.5]                        # the camera 20 cm ahead, 50 cm up
    >>> X = np.eye(4); X[:3, 3] = [0.0, 0.0, 2.0]                        # the graph: 2 m along the optical axis
    >>> odom = M @ X @ invert(M); odom[0, 3] += 0.1                      # the front-end drifted 10 cm
    >>> map_to_odom(X, M, M, odom)[:3, 3].round(6).tolist()
    [-0.1, 0.0, 0.0]
    """
    T_map_base = mount_origin @ X_kf @ invert(mount_kf)
    return T_map_base @ invert(T_odom_base_kf)
