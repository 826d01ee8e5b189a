"""The QoS profiles the node uses, chosen by name from a parameter.

``sensor_data``: best effort, keep last 5 (the camera-driver convention; a late frame is worth nothing).
``reliable``: reliable, keep last 5 (recorded data, tests, and large images on shared memory, where
best-effort samples can be dropped). ``system_default``: the middleware's default.
Outputs are reliable, keep last 10; the keyframe announcement is also transient-local so that a late
subscriber still learns the current keyframe.
"""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
    qos_profile_system_default,
)

INPUT_QOS_CHOICES = ("sensor_data", "reliable", "system_default")


def input_qos(name: str, depth: int = 5) -> QoSProfile:
    """The subscription profile called ``name`` (one of :data:`INPUT_QOS_CHOICES`)."""
    if name == "sensor_data":
        return qos_profile_sensor_data
    if name == "reliable":
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=depth,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
    if name == "system_default":
        return qos_profile_system_default
    raise ValueError(f"input_qos must be one of {list(INPUT_QOS_CHOICES)}, not {name!r}")


def output_qos(depth: int = 10) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def latched_qos(depth: int = 10) -> QoSProfile:
    """Reliable and transient-local: late subscribers get the last ``depth`` messages."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def best_effort_qos(depth: int = 50) -> QoSProfile:
    """Best effort, keep last ``depth``: for a watcher that must never slow the publisher down (an
    unreliable reader asks for no resends and matches reliable writers too)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT)
