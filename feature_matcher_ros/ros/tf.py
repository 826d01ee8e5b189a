"""TF for the node: listening to ``/tf`` and ``/tf_static``, looking up the camera's mounting at a stamp, and
broadcasting ``odom -> base_link`` (and, for ``fm-static-transform``, static transforms).

Which implementation runs where: on a robot with ``tf2_ros`` (ROS 2 installed), the lookups go through tf2's
own ``Buffer`` and ``TransformListener`` (:class:`Tf2Source`); in the development venv, where ``tf2_ros`` is not
on PyPI, through :class:`TfListener`, a small listener of this package with the same QoS as tf2's (``/tf``:
reliable, volatile, depth 100; ``/tf_static``: reliable, transient local) filling a
:class:`~feature_matcher_ros.transforms.TransformBuffer`. Both answer :meth:`lookup` the same way. The messages
are ``tf2_msgs/TFMessage``: the robot's ``tf2_msgs``, or in the venv the one ``make venv`` builds
(``msg_packages/tf2_msgs``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..messages import stamp_to_ns, transform_to_matrix
from ..se3 import rotation_to_quat
from ..transforms import TransformBuffer, TransformUnavailable
from .conversions import ns_to_stamp

TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_STATIC_PUB_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.TRANSIENT_LOCAL)


def tf_message_type() -> type:
    """``tf2_msgs/TFMessage``; ImportError with what to do when it is missing."""
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError as exc:
        raise ImportError("tf2_msgs is not installed: on a robot install ros-<distro>-tf2-msgs (rosdep); in the "
                          "development venv run make venv, which builds it (msg_packages/tf2_msgs)") from exc
    return TFMessage


def transform_msg(T: np.ndarray, parent: str, child: str, stamp_ns: int) -> TransformStamped:
    """``geometry_msgs/TransformStamped`` of ``T_parent_child``."""
    msg = TransformStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = parent
    msg.child_frame_id = child
    t = msg.transform.translation
    t.x, t.y, t.z = (float(v) for v in np.asarray(T)[:3, 3])
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = (float(v) for v in rotation_to_quat(np.asarray(T)[:3, :3]))
    return msg


class TfListener:
    """``/tf`` and ``/tf_static`` into a :class:`TransformBuffer` (this package's listener; see the module
    docstring). ``guard`` wraps the subscription callbacks (the node's entry-point guard)."""

    def __init__(self, node: Any, buffer: TransformBuffer | None = None,
                 guard: Callable[[str, Callable], Callable] = lambda where, fn: fn) -> None:
        self.buffer = buffer or TransformBuffer()
        TFMessage = tf_message_type()
        self.subscriptions = [
            node.create_subscription(TFMessage, "/tf", guard("tf", lambda m: self._take(m, False)), TF_QOS),
            node.create_subscription(TFMessage, "/tf_static", guard("tf_static", lambda m: self._take(m, True)),
                                     TF_STATIC_QOS),
        ]

    def _take(self, msg: Any, static: bool) -> None:
        for t in msg.transforms:
            self.buffer.set(t.header.frame_id, t.child_frame_id, stamp_to_ns(t.header.stamp),
                            transform_to_matrix(t.transform), static)

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float) -> np.ndarray:
        """``T_target_source`` at ``stamp_ns``, waiting up to ``timeout_s``; :class:`TransformUnavailable`."""
        return self.buffer.wait(target, source, stamp_ns, timeout_s)

    def destroy(self, node: Any) -> None:
        for sub in self.subscriptions:
            node.destroy_subscription(sub)
        self.subscriptions = []


class Tf2Source:
    """The same lookups through ``tf2_ros`` (a robot's ROS install)."""

    def __init__(self, node: Any) -> None:
        import tf2_ros

        self._tf2 = tf2_ros
        self.buffer = tf2_ros.Buffer()
        self.listener = tf2_ros.TransformListener(self.buffer, node)

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float) -> np.ndarray:
        from rclpy.duration import Duration
        from rclpy.time import Time

        try:
            t = self.buffer.lookup_transform(target, source, Time(nanoseconds=stamp_ns),
                                             timeout=Duration(nanoseconds=int(timeout_s * 1e9)))
        except (self._tf2.LookupException, self._tf2.ConnectivityException) as exc:
            raise TransformUnavailable("unknown", str(exc)) from None
        except self._tf2.ExtrapolationException as exc:
            raise TransformUnavailable("not_yet", str(exc)) from None
        return transform_to_matrix(t.transform)

    def destroy(self, node: Any) -> None:
        self.listener.unregister()


def transform_source(node: Any, guard: Callable[[str, Callable], Callable] = lambda where, fn: fn,
                     prefer_tf2: bool = True) -> TfListener | Tf2Source:
    """tf2_ros's buffer when it imports (and ``prefer_tf2``), else this package's :class:`TfListener`."""
    if prefer_tf2:
        try:
            return Tf2Source(node)
        except ImportError:
            pass
    return TfListener(node, guard=guard)


class TfBroadcaster:
    """Publishes transforms on ``/tf`` (or, ``static``, on ``/tf_static``: every transform given so far in one
    latched message, as tf2's static broadcaster does)."""

    def __init__(self, node: Any, static: bool = False,
                 create_publisher: Callable[..., Any] | None = None) -> None:
        self.static = static
        self._message = tf_message_type()
        create = create_publisher or node.create_publisher
        self.publisher = create(self._message, "/tf_static" if static else "/tf",
                                TF_STATIC_PUB_QOS if static else TF_QOS)
        self._static: dict[str, TransformStamped] = {}

    def send(self, transforms: Iterable[TransformStamped]) -> None:
        transforms = list(transforms)
        if self.static:
            self._static.update((t.child_frame_id, t) for t in transforms)
            transforms = list(self._static.values())
        self.publisher.publish(self._message(transforms=transforms))
