"""Watch a running matcher from outside, through the ROS graph: where it listens, what it publishes and
when each output arrives, and what its ``/diagnostics`` say.

Used by ``fm-stress`` and the robustness and shutdown tests. Nothing about the node is configured here:
its input topics and their QoS are read from the graph, so remappings and the node's own naming need no
settings, and every output that carries a ``header`` is watched, whatever its type.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import ReliabilityPolicy

from ..messages import stamp_to_ns
from .client import HelperNode
from .qos import best_effort_qos, output_qos

IMAGE_TYPE = "sensor_msgs/msg/Image"
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
_SKIP_OUTPUTS = {"/rosout", "/parameter_events", "/diagnostics"}


class _Process(Protocol):
    def alive(self) -> bool: ...


@dataclass
class Observation:
    """What the monitor saw, all times in ``time.monotonic`` seconds unless named ``_ns``."""

    outputs: dict[int, float] = field(default_factory=dict)  # image stamp ns -> first output's arrival (wall ns)
    diagnostics: dict[str, str] = field(default_factory=dict)  # latest values of the node's status


class Monitor(HelperNode):
    """A helper node that finds the matcher ``node_name`` (in ``namespace``) in the graph and records
    its outputs and diagnostics.

    ``image_topics()``/``info_topics()`` say where the node listens; :meth:`watch_outputs` subscribes to
    what it publishes (best effort, so the watcher never slows the node down); :meth:`snapshot` is a
    copy of what was seen so far.
    """

    def __init__(self, node_name: str, namespace: str = "/") -> None:
        super().__init__(f"fm_monitor_{os.getpid()}_{node_name}")
        self.target, self.namespace = node_name, namespace
        self.obs = Observation()
        self._subs: dict[str, object] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, output_qos(50))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        """Keep the latest values of the node's status (or of the first matcher status seen, when the
        status name does not carry the node's name)."""
        for status in msg.status:
            text = f"{status.name} {status.hardware_id}"
            values = {kv.key: kv.value for kv in status.values}
            if self.target in text or ("frames_dropped" in values and not self.obs.diagnostics):
                with self._cond:
                    self.obs.diagnostics = values

    # -- graph ----------------------------------------------------------------------------------
    def _by_node(self, fn: Any) -> list[tuple[str, list[str]]]:
        try:
            return fn(self.target, self.namespace)
        except Exception:  # noqa: BLE001 - node not in the graph yet
            return []

    def subscriptions(self) -> list[tuple[str, list[str]]]:
        return self._by_node(self.node.get_subscriber_names_and_types_by_node)

    def publications(self) -> list[tuple[str, list[str]]]:
        return self._by_node(self.node.get_publisher_names_and_types_by_node)

    def image_topics(self) -> list[str]:
        return [t for t, types in self.subscriptions() if IMAGE_TYPE in types]

    def info_topics(self) -> list[str]:
        return [t for t, types in self.subscriptions() if INFO_TYPE in types]

    def wait_for_node(self, timeout: float, proc: _Process | None = None) -> bool:
        """True once the node subscribes to an image topic (False on timeout or when ``proc`` exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.image_topics():
                return True
            if proc is not None and not proc.alive():
                return False
            time.sleep(0.1)
        return False

    def input_reliable(self, topic: str) -> bool:
        """Whether the node's subscription on ``topic`` asks for reliable delivery."""
        for info in self.node.get_subscriptions_info_by_topic(topic):
            if info.node_name == self.target and info.qos_profile.reliability == ReliabilityPolicy.RELIABLE:
                return True
        return False

    # -- outputs --------------------------------------------------------------------------------
    def watch_outputs(self) -> list[str]:
        """Subscribe to every output of the node that has a ``header``; returns the topics."""
        for topic, types in self.publications():
            if topic in _SKIP_OUTPUTS or topic in self._subs or not types:
                continue
            cls = _message_class(types[0])
            if cls is None or "header" not in cls.get_fields_and_field_types():
                continue
            self._subs[topic] = self.node.create_subscription(cls, topic, self._on_output, best_effort_qos(50))
        return sorted(self._subs)

    def _on_output(self, msg: Any) -> None:
        """The first arrival (wall ns) of any output for each image stamp."""
        now = time.time_ns()
        stamp = stamp_to_ns(msg.header.stamp)
        with self._cond:
            self.obs.outputs.setdefault(stamp, now)

    def snapshot(self) -> Observation:
        with self._cond:
            return Observation(dict(self.obs.outputs), dict(self.obs.diagnostics))


def _message_class(type_name: str) -> Any:
    """``"pkg/msg/Type"`` -> the Python class, or None when it cannot be imported."""
    try:
        pkg, kind, name = type_name.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ValueError, ImportError, AttributeError):
        return None
