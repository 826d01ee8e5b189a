"""Edges for a pose-graph back-end: each new keyframe's pose relative to the keyframe it was matched against,
and loop closures found by matching a new keyframe against older ones kept for that purpose. ROS-free.

Loop closures (``loop.*`` parameters; ``loop.keyframes: 0``, the default, turns them off): every keyframe is kept
(the last ``loop.keyframes``). A new keyframe is matched against the kept keyframes at least
``loop.min_separation_s`` older (by stamp) whose position in the current estimate is within
``loop.max_distance`` (odometry units: metres in rgbd/stereo and with ``odometry.scale``, unit steps in mono),
nearest first, at most ``loop.max_candidates`` of them, exactly as a frame is matched against its keyframe (the
same matcher, NMS, ``max_matches``, and the metric PnP when the old keyframe has depth, else the monocular
pose). A candidate is a loop when its pose has at least ``loop.min_inliers`` inliers and, when the old keyframe
has depth, is the metric (PnP) pose, never the monocular fallback: that geometric check is what rejects false
loops; a back-end should still give loop edges a robust kernel.

An :class:`Edge` is ``T_from_to`` (the ``to`` keyframe's camera in the ``from`` keyframe's camera frame) with its
``(6, 6)`` covariance over ``[x y z rx ry rz]`` (the package's convention, :mod:`.se3`); monocular edges carry
their unknown scale as a huge variance along the translation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .keyframes import Keyframe
from .params import ParamSpec

LOOP_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("loop.keyframes", 0, "Keyframes kept for loop closure (0 = no loop detection).", min=0, max=100_000),
    ParamSpec("loop.min_separation_s", 10.0, "A loop candidate is at least this much older than the new keyframe "
              "(seconds of stamps).", min=0.0, max=1e6),
    ParamSpec("loop.max_distance", 3.0, "A loop candidate lies at most this far from the new keyframe in the current "
              "estimate (odometry units: metres when metric).", min=0.0, max=1e9),
    ParamSpec("loop.max_candidates", 3, "Candidates matched per new keyframe, nearest first.", min=1, max=100),
    ParamSpec("loop.min_inliers", 40, "Pose inliers a loop closure needs (its geometric verification).", min=5,
              max=100_000),
)


@dataclass
class Edge:
    """A relative pose between two keyframes (see the module docstring). ``kind``: ``keyframe`` (odometry) or
    ``loop``; ``inliers``: the pose's inliers; ``metric``: translation in metres (else unknown scale)."""

    from_stamp_ns: int
    to_stamp_ns: int
    T: np.ndarray
    covariance: np.ndarray
    kind: str
    inliers: int = 0
    metric: bool = False


class LoopStore:
    """The keyframes kept for loop closure, oldest first (a bounded deque; their features stay as cached)."""

    def __init__(self, capacity: int = 0) -> None:
        self._items: deque[Keyframe] = deque()
        self.capacity = int(capacity)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes for k in self._items)

    def add(self, keyframe: Keyframe) -> None:
        if self.capacity <= 0:
            return
        self._items.append(keyframe)
        while len(self._items) > self.capacity:
            self._items.popleft()

    def resize(self, capacity: int) -> None:
        self.capacity = int(capacity)
        while len(self._items) > max(self.capacity, 0):
            self._items.popleft()

    def clear(self) -> None:
        self._items.clear()

    def candidates(self, new: Keyframe, s: dict[str, Any]) -> list[Keyframe]:
        """The kept keyframes that may close a loop with ``new``: old enough, near enough, nearest first."""
        if self.capacity <= 0 or new.T_world is None:
            return []
        newest_allowed = new.stamp_ns - int(float(s["loop.min_separation_s"]) * 1e9)
        found = []
        for old in self._items:
            if old.stamp_ns > newest_allowed or old.T_world is None:
                continue
            distance = float(np.linalg.norm(old.T_world[:3, 3] - new.T_world[:3, 3]))
            if distance <= float(s["loop.max_distance"]):
                found.append((distance, old.stamp_ns, old))
        found.sort(key=lambda item: (item[0], item[1]))
        return [old for _, _, old in found[: int(s["loop.max_candidates"])]]


def verified_loops(candidates: Iterable[Keyframe], attempt: Callable[[Keyframe], Any], new_stamp_ns: int,
                   relative: Callable[[Any], tuple[np.ndarray, np.ndarray]], min_inliers: int) -> list[Edge]:
    """The candidates whose ``attempt(old)`` (the frontend's match + pose of the new keyframe against ``old``) has a
    pose with at least ``min_inliers`` inliers, as loop edges ``old -> new`` (``relative(pose)``: the new camera in
    the old camera's frame with its covariance)."""
    edges = []
    for old in candidates:
        att = attempt(old)
        if att.pose is None or att.pose.num_inliers < min_inliers:
            continue
        if old.depth is not None and not att.pose.metric:  # metric modes: PnP must verify it, not the fallback
            continue
        T, cov = relative(att.pose)
        edges.append(Edge(old.stamp_ns, new_stamp_ns, T, cov, "loop", att.pose.num_inliers, att.pose.metric))
    return edges
