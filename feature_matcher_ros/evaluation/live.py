"""What the live node published, back into :class:`~.records.FrameRecord` (ROS-free: messages are
decoded with ``rosbags`` from their serialised bytes, e.g. as recorded by ``fm-replay``).

The node's outputs (see :mod:`feature_matcher_ros.ros.node`):

- ``matches`` (sensor_msgs/PointCloud2, header = the image's header): float32 ``x0 y0 x1 y1 score inlier``
  and uint32 ``kf_sec kf_nanosec`` (the keyframe's stamp) per match;
- ``relative_pose`` (geometry_msgs/PoseWithCovarianceStamped): the current camera in the keyframe camera's
  frame (``T_kf_cur``), ``header.frame_id`` = ``<camera_frame>@<keyframe stamp ns>``; only when there is a pose;
  in rgbd / stereo mode a metric pose (metres) is the one whose translation covariance is not the monocular
  "unknown scale" (:data:`~feature_matcher_ros.geometry.UNKNOWN_VARIANCE`);
- ``keyframe`` (geometry_msgs/PoseStamped): stamp = the stamp of each newly announced keyframe;
- ``/diagnostics`` (diagnostic_msgs/DiagnosticArray): counters and latency.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import UNKNOWN_VARIANCE
from ..messages import cloud_to_array, matches_keyframe_stamp, parse_keyframe_frame_id, pose_to_matrix, stamp_to_ns
from .bagio import typestore
from .records import FrameRecord

MATCHES = "sensor_msgs/msg/PointCloud2"
RELATIVE_POSE = "geometry_msgs/msg/PoseWithCovarianceStamped"
KEYFRAME = "geometry_msgs/msg/PoseStamped"
ODOMETRY = "nav_msgs/msg/Odometry"
DIAGNOSTICS = "diagnostic_msgs/msg/DiagnosticArray"

#: output name -> message type (the names are relative to the node's namespace, except /diagnostics)
OUTPUTS = {"matches": MATCHES, "relative_pose": RELATIVE_POSE, "keyframe": KEYFRAME, "odometry": ODOMETRY,
           "/diagnostics": DIAGNOSTICS}


@dataclass
class Received:
    """One output message as received: ``output`` (a key of :data:`OUTPUTS`), wall-clock receive time
    (``time.monotonic_ns`` of the receiver), the serialised CDR bytes."""

    output: str
    received_ns: int
    raw: bytes


@dataclass
class LiveFrame:
    """The node's outputs for one image stamp."""

    stamp_ns: int
    matches: Any = None                 # deserialised PointCloud2
    matches_received_ns: int | None = None
    pose: Any = None                    # deserialised PoseWithCovarianceStamped
    extra: dict = field(default_factory=dict)


def decode(received: Iterable[Received]) -> tuple[dict[int, LiveFrame], list[int], list[Any]]:
    """Group the outputs by image stamp. Returns ``(frames by stamp, announced keyframe stamps,
    diagnostics messages)``."""
    store = typestore()
    frames: dict[int, LiveFrame] = {}
    keyframes: list[int] = []
    diagnostics: list[Any] = []
    for item in received:
        msgtype = OUTPUTS.get(item.output)
        if msgtype is None:
            continue
        msg = store.deserialize_cdr(item.raw, msgtype)
        if item.output == "matches":
            s = stamp_to_ns(msg.header.stamp)
            fr = frames.setdefault(s, LiveFrame(s))
            fr.matches, fr.matches_received_ns = msg, item.received_ns
        elif item.output == "relative_pose":
            s = stamp_to_ns(msg.header.stamp)
            frames.setdefault(s, LiveFrame(s)).pose = msg
        elif item.output == "keyframe":
            keyframes.append(stamp_to_ns(msg.header.stamp))
        elif item.output == "/diagnostics":
            diagnostics.append(msg)
    return frames, keyframes, diagnostics


def diagnostics_values(diagnostics: Sequence[Any]) -> dict[str, str]:
    """The key/value pairs of the last diagnostics status."""
    for msg in reversed(list(diagnostics)):
        for status in msg.status:
            return {kv.key: kv.value for kv in status.values}
    return {}


def records_from_live(received: Iterable[Received], published: dict[int, int], cameras: dict[int, Any],
                      metric: bool = False) -> list[FrameRecord]:
    """One :class:`FrameRecord` per image the node answered (a ``matches`` message with its stamp).

    Args:
        received: the node's outputs.
        published: image stamp -> wall time it was published (``time.monotonic_ns``), for the
            end-to-end latency (publish -> matches received).
        cameras: image stamp -> CameraModel (from the bag's camera info).
        metric: the node ran in rgbd / stereo mode: its metric poses keep their translation in metres.
    """
    frames, keyframes, _ = decode(received)
    announced = sorted(set(keyframes))
    kf_set = set(announced)
    records: list[FrameRecord] = []
    for s in sorted(frames):
        fr = frames[s]
        if fr.matches is None or (published and s not in published):
            continue
        pts = cloud_to_array(fr.matches)
        kf_stamp = matches_keyframe_stamp(pts)
        if kf_stamp is None and fr.pose is not None:
            kf_stamp = _keyframe_stamp(str(fr.pose.header.frame_id))
        if kf_stamp is None:  # no matches, no pose: the latest keyframe announced before this frame
            earlier = [k for k in announced if k < s]
            kf_stamp = earlier[-1] if earlier else s
        R = t = None
        metric_pose = metric and fr.pose is not None and _metric_covariance(fr.pose.pose.covariance)
        if fr.pose is not None:
            T_kf_cur = pose_to_matrix(fr.pose.pose.pose)
            T_cur_kf = np.linalg.inv(T_kf_cur)
            R = T_cur_kf[:3, :3]
            t = T_cur_kf[:3, 3]
            n = float(np.linalg.norm(t))
            t = t / n if n > 0 and not metric_pose else t
        kp0 = np.stack([pts["x0"], pts["y0"]], axis=1) if len(pts) else np.zeros((0, 2))
        kp1 = np.stack([pts["x1"], pts["y1"]], axis=1) if len(pts) else np.zeros((0, 2))
        inl = (pts["inlier"] > 0.5) if len(pts) else np.zeros(0, bool)
        latency = float("nan")
        if s in published and fr.matches_received_ns is not None:
            latency = (fr.matches_received_ns - published[s]) / 1e6
        records.append(FrameRecord(
            stamp_ns=s, keyframe_stamp_ns=kf_stamp, kpts0=kp0, kpts1=kp1, inliers=inl, R=R, t=t,
            reason="" if R is not None else ("first frame" if kf_stamp == s else "no pose published"),
            new_keyframe=s in kf_set, latency_ms=latency, camera=cameras.get(s), metric=metric_pose))
    return records


def _metric_covariance(covariance: Any) -> bool:
    """A pose covariance whose translation block is not the monocular unknown scale."""
    cov = np.asarray(covariance, np.float64).reshape(6, 6)
    return bool(np.all(np.isfinite(cov[:3, :3])) and np.max(np.diag(cov)[:3]) < 0.1 * UNKNOWN_VARIANCE)


def _keyframe_stamp(frame_id: str) -> int | None:
    """The keyframe stamp of a ``<camera_frame>@<stamp ns>`` name, or None."""
    try:
        return parse_keyframe_frame_id(frame_id)[1]
    except ValueError:
        return None
