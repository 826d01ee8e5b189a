"""Transforms between named frames, static and over time: what a tf2 ``Buffer`` does, ROS-free.

Each frame has one parent (the TF tree); :meth:`TransformBuffer.set` records ``T_parent_child``, for all time
(static, ``/tf_static``) or at a stamp (``/tf``). :meth:`TransformBuffer.lookup` composes the chain between two
frames at a stamp, interpolating time-stamped links between their samples (translation linearly, rotation by
slerp) and never extrapolating: a stamp after a link's newest sample is "not yet" (:meth:`wait` waits for it),
one before its oldest kept sample "too old". The ROS layer (:mod:`.ros.tf`) fills it from ``/tf`` and
``/tf_static``; on a robot with ``tf2_ros`` the node uses tf2's own buffer instead.

    >>> import numpy as np
    >>> from feature_matcher_ros.se3 import se3
    >>> buf = TransformBuffer()
    >>> buf.set("base_link", "camera", 0, se3(np.eye(3), [0.1, 0.0, 0.2]), static=True)
    >>> buf.set("odom", "base_link", 1_000, se3(np.eye(3), [1.0, 0.0, 0.0]))
    >>> buf.set("odom", "base_link", 3_000, se3(np.eye(3), [3.0, 0.0, 0.0]))
    >>> buf.lookup("odom", "camera", 2_000)[:3, 3].round(6).tolist()
    [2.1, 0.0, 0.2]
"""

from __future__ import annotations

import bisect
import threading
import time

import numpy as np

from .se3 import invert, quat_to_rotation, rotation_to_quat, se3


class TransformUnavailable(LookupError):
    """No transform between the frames at that stamp; ``reason`` is ``unknown`` (no chain), ``not_yet`` (a
    time-stamped link has no sample that late yet) or ``too_old`` (older than the kept samples)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Link:
    """``T_parent_child`` over time: one static transform, or samples by stamp."""

    def __init__(self, parent: str) -> None:
        self.parent = parent
        self.static: np.ndarray | None = None
        self.stamps: list[int] = []
        self.samples: list[np.ndarray] = []

    def at(self, stamp_ns: int, child: str) -> np.ndarray:
        if self.static is not None:
            return self.static
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            return self.samples[i]
        if i == len(self.stamps):
            raise TransformUnavailable("not_yet", f"{self.parent} -> {child}: no transform at {stamp_ns} ns yet "
                                                  f"(newest {self.stamps[-1] if self.stamps else 'none'})")
        if i == 0:
            raise TransformUnavailable("too_old", f"{self.parent} -> {child}: {stamp_ns} ns is before the oldest "
                                                  f"kept transform ({self.stamps[0]} ns)")
        w = (stamp_ns - self.stamps[i - 1]) / (self.stamps[i] - self.stamps[i - 1])
        return _interpolate(self.samples[i - 1], self.samples[i], w)


def _interpolate(T0: np.ndarray, T1: np.ndarray, w: float) -> np.ndarray:
    q0, q1 = rotation_to_quat(T0[:3, :3]), rotation_to_quat(T1[:3, :3])
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + w * (q1 - q0)
    else:
        theta = np.arccos(dot)
        q = (np.sin((1 - w) * theta) * q0 + np.sin(w * theta) * q1) / np.sin(theta)
    return se3(quat_to_rotation(q), (1 - w) * T0[:3, 3] + w * T1[:3, 3])


class TransformBuffer:
    """The TF tree (see the module docstring); thread-safe. ``cache_s``: how long time-stamped samples are kept
    (behind the newest of their link)."""

    def __init__(self, cache_s: float = 10.0) -> None:
        self.cache_ns = int(cache_s * 1e9)
        self._links: dict[str, _Link] = {}
        self._cond = threading.Condition()
        self.reparented: list[tuple[str, str, str]] = []  # (child, old parent, new parent): a tree with two parents

    def set(self, parent: str, child: str, stamp_ns: int, T: np.ndarray, static: bool = False) -> None:
        """Record ``T_parent_child`` (static: for all time). A child given another parent than before is
        re-parented (the latest wins, as in tf2) and the change noted in :attr:`reparented`."""
        T = np.asarray(T, np.float64)
        with self._cond:
            link = self._links.get(child)
            if link is None or link.parent != parent:
                if link is not None:
                    self.reparented.append((child, link.parent, parent))
                link = self._links[child] = _Link(parent)
            if static:
                link.static = T
            else:
                i = bisect.bisect_left(link.stamps, stamp_ns)
                if i < len(link.stamps) and link.stamps[i] == stamp_ns:
                    link.samples[i] = T
                else:
                    link.stamps.insert(i, stamp_ns)
                    link.samples.insert(i, T)
                cut = bisect.bisect_left(link.stamps, link.stamps[-1] - self.cache_ns)
                del link.stamps[:cut], link.samples[:cut]
            self._cond.notify_all()

    def parent(self, child: str) -> str | None:
        with self._cond:
            link = self._links.get(child)
            return link.parent if link is not None else None

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """``T_target_source`` ``(4, 4)`` at ``stamp_ns``; :class:`TransformUnavailable` says why not."""
        with self._cond:
            return self._lookup(target, source, stamp_ns)

    def wait(self, target: str, source: str, stamp_ns: int, timeout_s: float) -> np.ndarray:
        """:meth:`lookup`, waiting up to ``timeout_s`` for links that are unknown or not there yet."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                try:
                    return self._lookup(target, source, stamp_ns)
                except TransformUnavailable as exc:
                    left = deadline - time.monotonic()
                    if exc.reason == "too_old" or left <= 0:
                        raise
                    self._cond.wait(left)

    def _chain(self, frame: str) -> list[str]:
        """``frame`` and its ancestors up to its root."""
        chain, seen = [frame], {frame}
        while frame in self._links:
            frame = self._links[frame].parent
            if frame in seen:
                break  # a loop: stop at the first repeat
            chain.append(frame)
            seen.add(frame)
        return chain

    def _to_ancestor(self, chain: list[str], ancestor: str, stamp_ns: int) -> np.ndarray:
        """``T_ancestor_first`` along ``chain`` (which starts at ``first``)."""
        T = np.eye(4)
        for child in chain[: chain.index(ancestor)]:
            T = self._links[child].at(stamp_ns, child) @ T
        return T

    def _lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        up_source, up_target = self._chain(source), self._chain(target)
        common = next((f for f in up_source if f in set(up_target)), None)
        if common is None:
            raise TransformUnavailable("unknown", f"no transform connects {target} and {source}")
        T_common_source = self._to_ancestor(up_source, common, stamp_ns)
        T_common_target = self._to_ancestor(up_target, common, stamp_ns)
        return invert(T_common_target) @ T_common_source
