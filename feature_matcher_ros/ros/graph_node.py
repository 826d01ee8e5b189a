"""``pose_graph_node``: the front-end's keyframe and loop edges into a GTSAM pose graph
(:class:`~feature_matcher_ros.pose_graph.PoseGraph`), the optimised keyframe path, ``/diagnostics`` and, with a
``base_frame``, ``map -> odom`` on ``/tf`` (REP 105: the front-end owns ``odom -> base_link``).

Inputs (relative names, remapped by ``launch/slam.launch.py`` onto the front-end's): ``keyframe_edge`` and
``loop_closure`` (``PoseWithCovarianceStamped``, see :func:`~feature_matcher_ros.messages.edge_from_message`),
``keyframe`` (the front-end's keyframe pose in odom: the base's when it runs with a ``base_frame``) and
``odometry`` (its stamps time ``map -> odom``). A loop edge whose keyframes the graph does not have yet waits
(edges travel on two topics); a keyframe or lost edge from a keyframe the graph does not know means the
front-end started again (a reset, a time jump): the graph starts again too. Every edge updates the graph
(iSAM2, one update per edge) and republishes the path (latched). The camera's mounting comes from TF at each
keyframe's stamp without waiting (the executor that would deliver it is this one); ``map -> odom`` follows once
it is known.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry, Path
from rclpy.node import Node
from std_msgs.msg import Header

from ..loops import Edge
from ..messages import edge_from_message, pose_to_matrix, stamp_to_ns
from ..pose_graph import GRAPH_PARAMS, PoseGraph, map_to_odom
from ..transforms import TransformUnavailable
from . import conversions as cv
from .guard import EntryGuard, faults_from_env
from .outputs import EDGE_DEPTH
from .parameters import declare
from .qos import latched_qos, output_qos
from .tf import TfBroadcaster, transform_msg, transform_source

MAX_PENDING_LOOPS = 100
MAX_KEYFRAME_POSES = 100_000


class PoseGraphNode(Node):
    """See the module docstring."""

    def __init__(self, name: str = "pose_graph_node") -> None:
        super().__init__(name)
        self.values = declare(self, GRAPH_PARAMS)
        self.guard = EntryGuard(self.get_logger().error, faults=faults_from_env())
        self.counts: dict[str, int] = {"edges": 0, "invalid": 0, "restarts": 0, "loops_waiting_dropped": 0}
        self._new_graph()
        self.path_pub = self.create_publisher(Path, "pose_graph/path", latched_qos(1))
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", output_qos())
        base = str(self.values["base_frame"])
        self.tf = transform_source(self, self.guard) if base else None
        self.broadcaster = TfBroadcaster(self) if base else None
        self.create_subscription(PoseWithCovarianceStamped, "keyframe_edge",
                                 self.guard("keyframe_edge", lambda m: self._on_edge(m, "keyframe")),
                                 latched_qos(EDGE_DEPTH))
        self.create_subscription(PoseWithCovarianceStamped, "loop_closure",
                                 self.guard("loop_closure", lambda m: self._on_edge(m, "loop")),
                                 latched_qos(EDGE_DEPTH))
        self.create_subscription(PoseStamped, "keyframe", self.guard("keyframe", self._on_keyframe), latched_qos())
        self.create_subscription(Odometry, "odometry", self.guard("odometry", self._on_odometry), output_qos())
        self.create_timer(1.0, self.guard("diagnostics", self._publish_diagnostics))
        self.get_logger().info(f"ready: pose graph (GTSAM iSAM2), loops {self.values['loop_kernel']}, "
                               + (f"map -> odom for {base}" if base else "no transform (base_frame empty)"))

    # -- state ------------------------------------------------------------------------------------------
    def _new_graph(self) -> None:
        gate = float(self.values["loop_gate"]) or float("inf")
        self.graph = PoseGraph(str(self.values["loop_kernel"]), loop_gate=gate)
        self.pending: list[Edge] = []
        self.camera_frame = ""
        self.origin_mount: np.ndarray | None = None
        self.T_map_odom: np.ndarray | None = None
        self.keyframe_poses: OrderedDict[int, np.ndarray] = OrderedDict()

    # -- inputs -----------------------------------------------------------------------------------------
    def _on_edge(self, msg: Any, kind: str) -> None:
        try:
            edge, camera_frame = edge_from_message(msg, kind)
        except ValueError as exc:
            self.counts["invalid"] += 1
            self.get_logger().warning(f"invalid {kind} edge ignored: {exc}", throttle_duration_sec=5.0)
            return
        self.counts["edges"] += 1
        self.camera_frame = camera_frame
        if edge.kind == "loop":
            self.pending.append(edge)
            del self.pending[:-MAX_PENDING_LOOPS]
        else:
            if self.graph.keys and not self.graph.has(edge.from_stamp_ns):
                self.counts["restarts"] += 1
                self.get_logger().warning("an edge from an unknown keyframe: the front-end started again, so does "
                                          "the graph")
                self._new_graph()
                self.camera_frame = camera_frame
            self.graph.update([edge])
        ready = [e for e in self.pending if self.graph.has(e.from_stamp_ns) and self.graph.has(e.to_stamp_ns)]
        if ready:
            self.pending = [e for e in self.pending if e not in ready]
            self.graph.update(ready)
        self._publish_path()
        self._update_map_to_odom()

    def _on_keyframe(self, msg: Any) -> None:
        self.keyframe_poses[stamp_to_ns(msg.header.stamp)] = pose_to_matrix(msg.pose)
        while len(self.keyframe_poses) > MAX_KEYFRAME_POSES:
            self.keyframe_poses.popitem(last=False)
        self._update_map_to_odom()

    def _on_odometry(self, msg: Any) -> None:
        """``map -> odom`` at each odometry stamp (so lookups at the front-end's stamps find it)."""
        if self.broadcaster is not None and self.T_map_odom is not None:
            self.broadcaster.send([transform_msg(self.T_map_odom, str(self.values["map_frame"]),
                                                 str(self.values["odom_frame"]), stamp_to_ns(msg.header.stamp))])

    # -- outputs ----------------------------------------------------------------------------------------
    def _mount(self, stamp_ns: int) -> np.ndarray | None:
        """``T_base_camera`` at ``stamp_ns`` (identity without ``base_frame``), None while TF does not know it."""
        if self.tf is None:
            return np.eye(4)
        try:
            return self.tf.lookup(str(self.values["base_frame"]), self.camera_frame, stamp_ns, 0.0)
        except TransformUnavailable:
            return None

    def _origin(self) -> tuple[int, np.ndarray] | None:
        """The graph's origin keyframe and the camera's mounting there (looked up once)."""
        if not self.graph.keys:
            return None
        origin = next(iter(self.graph.keys))
        if self.origin_mount is None:
            self.origin_mount = self._mount(origin)
        return None if self.origin_mount is None else (origin, self.origin_mount)

    def _update_map_to_odom(self) -> None:
        """From the newest keyframe with an optimised pose, a front-end pose and a known mounting."""
        found = self._origin()
        if found is None or self.tf is None:
            return
        estimate = self.graph.estimate()
        for stamp in sorted((s for s in estimate if s in self.keyframe_poses), reverse=True):
            mount = self._mount(stamp)
            if mount is not None:
                self.T_map_odom = map_to_odom(estimate[stamp], found[1], mount, self.keyframe_poses[stamp])
                return

    def _publish_path(self) -> None:
        found = self._origin()
        if found is None:
            return
        header = Header(stamp=cv.ns_to_stamp(max(self.graph.keys)), frame_id=str(self.values["map_frame"]))
        path = Path(header=header)
        for stamp, X in sorted(self.graph.estimate().items()):
            mount = self._mount(stamp) if self.tf is not None else np.eye(4)
            mount = found[1] if mount is None else mount
            pose = PoseStamped(header=Header(stamp=cv.ns_to_stamp(stamp), frame_id=header.frame_id))
            pose.pose = cv.matrix_to_pose(found[1] @ X @ np.linalg.inv(mount))
            path.poses.append(pose)
        self.path_pub.publish(path)

    def _publish_diagnostics(self) -> None:
        stats = self.graph.stats
        values = {"keyframes": stats.keyframes, "keyframe_edges": stats.keyframe_edges,
                  "lost_edges": stats.lost_edges, "loop_closures_accepted": stats.loops_accepted,
                  "loop_closures_rejected": stats.loops_rejected, "loop_closures_waiting": len(self.pending),
                  "optimise_ms_median": round(stats.optimise_ms_median, 3),
                  "optimise_ms_last": round(stats.optimise_ms[-1], 3) if stats.optimise_ms else float("nan"),
                  "map_to_odom": self.T_map_odom is not None, **self.counts,
                  **{f"internal_error.{k}": v for k, v in self.guard.counts.items()}}
        level = DiagnosticStatus.WARN if self.guard.counts or self.counts["invalid"] else DiagnosticStatus.OK
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: pose graph", hardware_id="gtsam",
                                  message=f"{stats.keyframes} keyframes, {stats.loops_accepted} loop closures",
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        self.diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                                     status=[status]))

    def close(self) -> None:
        if self.tf is not None:
            self.tf.destroy(self)
