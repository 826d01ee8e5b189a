"""The node's robot side (REP 105): the camera's mounting looked up from TF at each frame's stamp, the odometry
of ``base_frame`` in ``odom_frame`` with its twist (:class:`~feature_matcher_ros.base_odometry.BaseOdometry`),
``~/set_pose``, and the ``odom_frame -> base_frame`` transform on ``/tf``.

With ``base_frame: ''`` the odometry stays the camera's (child frame = the camera frame), no transform is
looked up and none is broadcast: a robot's camera frame already has a parent in its TF tree. Frames from a camera
whose mounting is not known (yet) at their stamp are rejected as ``no_transform`` by the node, never matched with
an identity mounting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base_odometry import BaseOdometry, BaseOdometryStep, Motion
from ..frontend import FrameResult
from ..messages import pose_to_matrix
from .tf import TfBroadcaster, transform_msg, transform_source


@dataclass
class OdometryOutput:
    """What a frame publishes as odometry: the step (None: nothing), its frames, and the active keyframe's pose in
    ``odom_frame`` (the base's when ``base_frame`` is set)."""

    step: BaseOdometryStep | None
    odom_frame: str
    child_frame: str
    keyframe_pose: np.ndarray


class RobotOdometry:
    """The node's REP 105 odometry (see the module docstring); ``values`` are the node's parameter values."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.odometry = BaseOdometry()
        self.source: Any = None
        self.broadcaster: TfBroadcaster | None = None

    @property
    def base_frame(self) -> str:
        return str(self.values["base_frame"])

    def create_outputs(self, node: Any, create_publisher: Callable[..., Any]) -> None:
        if self.base_frame and self.values["publish_tf"]:
            self.broadcaster = TfBroadcaster(node, create_publisher=create_publisher)

    def output_publishers(self) -> tuple:
        return (self.broadcaster.publisher,) if self.broadcaster is not None else ()

    def destroy_outputs(self) -> None:
        self.broadcaster = None

    def create_inputs(self, node: Any, guard: Callable[[str, Callable], Callable]) -> None:
        if self.base_frame:
            self.source = transform_source(node, guard)

    def destroy_inputs(self, node: Any) -> None:
        if self.source is not None:
            self.source.destroy(node)
            self.source = None

    def reset(self) -> None:
        self.odometry.reset()

    def mount(self, camera_frame: str, stamp_ns: int) -> np.ndarray:
        """``T_base_cam`` at ``stamp_ns`` (identity without ``base_frame``), waiting up to ``tf.timeout_s``;
        :class:`~feature_matcher_ros.transforms.TransformUnavailable` when it is not known."""
        if not self.base_frame:
            return np.eye(4)
        return self.source.lookup(self.base_frame, camera_frame, stamp_ns, float(self.values["tf.timeout_s"]))

    def step(self, result: FrameResult, mount: np.ndarray, camera_frame: str) -> OdometryOutput:
        """The odometry of a processed frame (lost: nothing, or with ``odometry.publish_when_lost`` the last pose
        with variance 9999)."""
        world = (None if result.T_world_current is None
                 else (result.T_world_current, result.cov_world_current))
        motion = None
        if result.relative is not None and result.keyframe_stamp_ns != result.stamp_ns:
            motion = Motion(result.stamp_ns, result.keyframe_stamp_ns, *result.relative)
        step = self.odometry.update(world, motion, mount)
        if step is None and self.values["odometry.publish_when_lost"]:
            step = self.odometry.lost()
        T_world_kf = result.T_world_active_keyframe
        keyframe = np.eye(4) if T_world_kf is None else self.odometry.base_of(T_world_kf, mount)
        return OdometryOutput(step, str(self.values["odom_frame"]), self.base_frame or camera_frame, keyframe)

    def broadcast(self, output: OdometryOutput, stamp_ns: int) -> None:
        """``odom_frame -> base_frame`` on ``/tf`` at the frame's stamp (when there is a pose and ``publish_tf``)."""
        if self.broadcaster is not None and output.step is not None:
            self.broadcaster.send([transform_msg(output.step.T_odom_base, output.odom_frame, output.child_frame,
                                                 stamp_ns)])

    def set_pose(self, msg: Any) -> str | None:
        """``~/set_pose`` (geometry_msgs/PoseWithCovarianceStamped of the base in ``odom_frame``); why it was not
        applied, or None."""
        odom = str(self.values["odom_frame"])
        if msg.header.frame_id not in ("", odom):
            return f"set_pose is in frame {msg.header.frame_id!r}, not odom_frame {odom!r}"
        T = pose_to_matrix(msg.pose.pose)
        cov = np.asarray(msg.pose.covariance, np.float64).reshape(6, 6)
        if not np.all(np.isfinite(cov)):
            return "set_pose covariance is not finite"
        if not self.odometry.set_pose(T, cov):
            return "no frame has a pose yet to set it from"
        return None
