"""The matcher node's outputs: its publishers and what publishing a frame's result needs between frames (the
keyframe last announced, the keyframe images ``debug_image`` draws).

The node makes one :class:`Outputs` when it creates its outputs and calls :meth:`Outputs.publish` from the
worker thread after each frame. The keyframe announcement (``keyframe``, then ``landmarks``) always goes
before ``matches``, ``relative_pose`` and ``odometry`` of the frames matched against it; a new keyframe's
pose-graph edges (``keyframe_edge``, then its ``loop_closure`` edges) follow the announcement.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header

from ..frontend import FrameResult
from . import conversions as cv
from .qos import latched_qos, output_qos
from .robot import OdometryOutput

EDGE_DEPTH = 100  # edges kept for late-joining back-ends


class PublishedFrame(Protocol):
    """What :meth:`Outputs.publish` needs of the input frame besides the result: its header and pixels."""

    header: Header
    pixels: np.ndarray


class Outputs:
    """The publishers (made by ``create_publisher``, e.g. a node's ``create_lifecycle_publisher``)."""

    def __init__(self, create_publisher: Callable[..., Any]) -> None:
        self.matches = create_publisher(PointCloud2, "matches", output_qos())
        self.pose = create_publisher(PoseWithCovarianceStamped, "relative_pose", output_qos())
        self.odom = create_publisher(Odometry, "odometry", output_qos())
        self.keyframe = create_publisher(PoseStamped, "keyframe", latched_qos())
        self.landmarks = create_publisher(PointCloud2, "landmarks", latched_qos())
        self.debug = create_publisher(Image, "debug_image", output_qos(depth=2))
        self.diagnostics = create_publisher(DiagnosticArray, "/diagnostics", output_qos())
        # pose-graph edges: reliable and transient-local, so a back-end started a little later misses none
        self.keyframe_edge = create_publisher(PoseWithCovarianceStamped, "keyframe_edge", latched_qos(EDGE_DEPTH))
        self.loop_closure = create_publisher(PoseWithCovarianceStamped, "loop_closure", latched_qos(EDGE_DEPTH))
        self.announced_keyframe: int | None = None
        self._keyframe_images: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def publishers(self) -> tuple:
        return (self.matches, self.pose, self.odom, self.keyframe, self.landmarks, self.debug, self.diagnostics,
                self.keyframe_edge, self.loop_closure)

    def reset(self) -> None:
        """Forget the announced keyframe and the keyframe images (a new stream starts)."""
        self.announced_keyframe = None
        self._keyframe_images.clear()

    def publish(self, frame: PublishedFrame, result: FrameResult, camera_frame: str, odom: OdometryOutput,
                cached: Iterable[int], debug_lines: int) -> bool:
        """Everything a frame's ``result`` gives: the keyframe announcement when the active keyframe changed,
        then ``matches``, ``relative_pose``, ``odometry`` (``odom``: the node's REP 105 odometry of the frame),
        and ``debug_image`` (with ``debug_lines`` matches drawn) when someone listens; ``cached`` are the stamps
        of the keyframes the frontend still holds. Returns whether a debug image was published."""
        if result.new_keyframe:  # kept for debug_image only while the keyframe is cached (never drawn after)
            self._keyframe_images[result.stamp_ns] = frame.pixels
            keep = set(cached) | {result.stamp_ns, result.keyframe_stamp_ns}
            for stamp in [s for s in self._keyframe_images if s not in keep]:
                del self._keyframe_images[stamp]
        if result.active_keyframe_stamp_ns != self.announced_keyframe:
            self._announce_keyframe(result, camera_frame, odom)
        if result.keyframe_edge is not None:
            self.keyframe_edge.publish(cv.edge_msg(result.keyframe_edge, camera_frame))
        for edge in result.loop_edges:
            self.loop_closure.publish(cv.edge_msg(edge, camera_frame))
        m = result.matches
        inliers = np.asarray(result.inliers, bool) if result.inliers is not None else np.zeros(len(m), bool)
        header = Header(stamp=frame.header.stamp, frame_id=frame.header.frame_id)
        self.matches.publish(cv.matches_to_cloud(
            m.kpts0, m.kpts1, m.scores, inliers, header, result.keyframe_stamp_ns, result.depth0))
        if result.pose is not None and result.keyframe_stamp_ns != result.stamp_ns:
            T_kf_cur, cov_kf_cur = result.pose.current_in_keyframe()
            self.pose.publish(cv.relative_pose_msg(
                T_kf_cur, cov_kf_cur, result.stamp_ns, camera_frame, result.keyframe_stamp_ns))
        step = odom.step
        if step is not None:
            self.odom.publish(cv.odometry_msg(step.T_odom_base, step.covariance, result.stamp_ns, odom.odom_frame,
                                              odom.child_frame, step.twist, step.twist_covariance))
        if self.debug.get_subscription_count() == 0:
            return False
        self.debug.publish(self._debug_image(frame, result, inliers, debug_lines))
        return True

    def _announce_keyframe(self, result: FrameResult, camera_frame: str, odom: OdometryOutput) -> None:
        """``keyframe`` (its pose in ``odom_frame``) and, when it has 3-D points, ``landmarks``: both latched,
        both sent before any frame matched against this keyframe."""
        stamp_ns = self.announced_keyframe = result.active_keyframe_stamp_ns
        self.keyframe.publish(cv.keyframe_msg(odom.keyframe_pose, stamp_ns, odom.odom_frame))
        if result.landmarks is not None:
            self.landmarks.publish(cv.landmarks_to_cloud(result.landmarks, stamp_ns, camera_frame))

    def _debug_image(self, frame: PublishedFrame, result: FrameResult, inliers: np.ndarray, lines: int) -> Image:
        """Keyframe (left) and current frame (right), inliers green, outliers red, best matches first."""
        def bgr(img: np.ndarray) -> np.ndarray:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)

        current = bgr(frame.pixels)
        kf_pixels = self._keyframe_images.get(result.keyframe_stamp_ns)
        left = bgr(kf_pixels) if kf_pixels is not None else np.zeros_like(current)
        h = max(left.shape[0], current.shape[0])
        canvas = np.zeros((h, left.shape[1] + current.shape[1], 3), np.uint8)
        canvas[: left.shape[0], : left.shape[1]] = left
        canvas[: current.shape[0], left.shape[1]:] = current
        m = result.matches
        for i in np.argsort(-m.scores)[:lines]:
            x0, y0 = m.kpts0[i]
            x1, y1 = m.kpts1[i]
            color = (0, 200, 0) if inliers[i] else (0, 0, 255)
            p0 = (int(round(x0)), int(round(y0)))
            p1 = (int(round(x1)) + left.shape[1], int(round(y1)))
            cv2.line(canvas, p0, p1, color, 1, cv2.LINE_AA)
            cv2.circle(canvas, p1, 2, color, -1, cv2.LINE_AA)
        text = (f"{result.status}  matches {len(m)}  inliers {int(inliers.sum())}  "
                f"{result.reason or result.keyframe_reason}")
        cv2.putText(canvas, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
        return cv.numpy_to_image(canvas, "bgr8", result.stamp_ns, frame.header.frame_id)
