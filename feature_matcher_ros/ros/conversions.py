"""numpy and core types -> rclpy messages: the small stand-ins for cv_bridge and sensor_msgs_py this package needs.

Images (``sensor_msgs/Image`` in any encoding of :data:`~feature_matcher_ros.messages.ENCODINGS`, rows padded to
a given ``step``), ``CompressedImage`` (PNG or JPEG), ``CameraInfo`` from a
:class:`~feature_matcher_ros.camera.CameraModel`, and the node's outputs: ``PointCloud2`` matches,
``PoseWithCovarianceStamped``, ``Odometry`` and ``PoseStamped``. Decoding messages (the other direction, also for
bags) is :mod:`feature_matcher_ros.messages`.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ..camera import CameraModel
from ..loops import Edge
from ..messages import ENCODINGS, POINTFIELD_DTYPES, keyframe_frame_id
from ..se3 import rotation_to_quat


# -- stamps ---------------------------------------------------------------------------------------
def ns_to_stamp(ns: int) -> Time:
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# -- images ---------------------------------------------------------------------------------------
def numpy_to_image(
    pixels: np.ndarray, encoding: str, stamp_ns: int = 0, frame_id: str = "", step: int | None = None
) -> Image:
    """An ``Image`` holding ``pixels`` (shape as :func:`~feature_matcher_ros.messages.image_to_numpy` returns),
    rows padded to ``step`` bytes when given."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not supported; use one of {sorted(ENCODINGS)}")
    dtype, channels = ENCODINGS[encoding]
    pixels = np.ascontiguousarray(pixels, dtype=dtype)
    height, width = pixels.shape[:2]
    row_bytes = width * channels * np.dtype(dtype).itemsize
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ValueError(f"step {step} < {row_bytes} bytes per row")
    rows = np.zeros((height, step), np.uint8)
    rows[:, :row_bytes] = pixels.reshape(height, -1).view(np.uint8)
    msg = Image()
    msg.header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)
    msg.height, msg.width, msg.step = height, width, step
    msg.encoding = encoding
    msg.is_bigendian = sys.byteorder == "big"
    msg.data = rows.tobytes()
    return msg


def numpy_to_compressed(
    rgb_or_gray: np.ndarray, fmt: str = "png", stamp_ns: int = 0, frame_id: str = ""
) -> CompressedImage:
    """A ``CompressedImage`` (``png`` or ``jpeg``) of an RGB or gray uint8 image."""
    image = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode("." + ("jpg" if fmt in ("jpeg", "jpg") else fmt), image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {fmt} image")
    msg = CompressedImage()
    msg.header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)
    msg.format = fmt
    msg.data = data.tobytes()
    return msg


# -- camera info ------------------------------------------------------------------------------------
def model_to_camera_info(camera: CameraModel, stamp_ns: int = 0, frame_id: str = "", tx: float = 0.0) -> CameraInfo:
    """A ``CameraInfo`` for ``camera`` (``plumb_bob``; P = [K | (tx, 0, 0)]: for the right camera of a
    rectified pair ``tx = -fx * baseline``)."""
    msg = CameraInfo()
    msg.header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)
    msg.width, msg.height = int(camera.width), int(camera.height)
    dist = np.zeros(5) if camera.dist is None or len(camera.dist) == 0 else np.asarray(camera.dist, np.float64)
    msg.distortion_model = "plumb_bob" if len(dist) <= 5 else "rational_polynomial"
    msg.d = [float(v) for v in dist]
    msg.k = [float(v) for v in np.asarray(camera.K, np.float64).reshape(-1)]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = np.zeros((3, 4))
    P[:, :3] = camera.K
    P[0, 3] = tx
    msg.p = [float(v) for v in P.reshape(-1)]
    return msg


# -- matches as PointCloud2 ---------------------------------------------------------------------------
MATCH_FIELDS = ("x0", "y0", "x1", "y1", "score", "inlier")
_MATCH_DTYPE = np.dtype(
    [(name, "<f4") for name in MATCH_FIELDS] + [("kf_sec", "<u4"), ("kf_nanosec", "<u4"), ("z0", "<f4")]
)
_LANDMARK_DTYPE = np.dtype([(name, "<f4") for name in ("x", "y", "z", "u", "v")])
_NUMPY_TO_POINTFIELD = {v: k for k, v in POINTFIELD_DTYPES.items()}


def matches_to_cloud(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    scores: np.ndarray,
    inliers: np.ndarray,
    header: Header,
    keyframe_stamp_ns: int,
    z0: np.ndarray | None = None,
) -> PointCloud2:
    """An unorganised ``PointCloud2`` (height 1, width N): float32 ``x0 y0`` (keyframe pixel), ``x1 y1``
    (current pixel), ``score``, ``inlier`` (1.0 or 0.0), uint32 ``kf_sec kf_nanosec`` (the keyframe's
    stamp, the same in every point) and float32 ``z0``, the keyframe point's depth in metres (NaN where
    unknown, and everywhere in monocular mode). ``header`` is the current image's header."""
    n = len(scores)
    points = np.zeros(n, _MATCH_DTYPE)
    points["z0"] = np.nan if z0 is None else z0
    if n:
        points["x0"], points["y0"] = kpts0[:, 0], kpts0[:, 1]
        points["x1"], points["y1"] = kpts1[:, 0], kpts1[:, 1]
        points["score"] = scores
        points["inlier"] = np.asarray(inliers, bool).astype(np.float32)
        stamp = ns_to_stamp(keyframe_stamp_ns)
        points["kf_sec"], points["kf_nanosec"] = stamp.sec, stamp.nanosec
    return array_to_cloud(points, header)


def landmarks_to_cloud(landmarks: np.ndarray, keyframe_stamp_ns: int, camera_frame: str) -> PointCloud2:
    """A keyframe's landmarks ``(K, 5)`` as a ``PointCloud2``: float32 ``x y z`` (metres, keyframe camera
    frame) and ``u v`` (keyframe pixel). Stamped with the keyframe's stamp, frame_id
    ``<camera_frame>@<keyframe stamp ns>`` like ``relative_pose``."""
    points = np.zeros(len(landmarks), _LANDMARK_DTYPE)
    for k, name in enumerate(_LANDMARK_DTYPE.names):
        points[name] = landmarks[:, k]
    header = Header(stamp=ns_to_stamp(keyframe_stamp_ns), frame_id=keyframe_frame_id(camera_frame, keyframe_stamp_ns))
    return array_to_cloud(points, header)


def array_to_cloud(points: np.ndarray, header: Header) -> PointCloud2:
    """A ``PointCloud2`` (height 1) from a structured little-endian numpy array."""
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, len(points)
    msg.fields = [
        PointField(name=name, offset=points.dtype.fields[name][1],
                   datatype=_NUMPY_TO_POINTFIELD[points.dtype.fields[name][0].str.lstrip("<|>=")], count=1)
        for name in points.dtype.names
    ]
    msg.is_bigendian = False
    msg.point_step = points.dtype.itemsize
    msg.row_step = msg.point_step * len(points)
    msg.is_dense = True
    msg.data = points.tobytes()
    return msg


# -- poses ---------------------------------------------------------------------------------------
def matrix_to_pose(T: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in T[:3, 3])
    qx, qy, qz, qw = (float(v) for v in rotation_to_quat(T[:3, :3]))
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw
    return pose


def _covariance_list(cov: np.ndarray) -> list[float]:
    cov = np.asarray(cov, np.float64).reshape(6, 6)
    cov = np.where(np.isfinite(cov), cov, 1e12)
    return [float(v) for v in (0.5 * (cov + cov.T)).reshape(-1)]


def relative_pose_msg(
    T_kf_cur: np.ndarray, covariance: np.ndarray, stamp_ns: int, camera_frame: str, keyframe_stamp_ns: int
) -> PoseWithCovarianceStamped:
    """The current camera's pose in the keyframe camera's frame (REP 103 parent/child: parent = keyframe).

    ``header.stamp`` = the current image's stamp; ``header.frame_id`` = ``<camera_frame>@<keyframe stamp ns>``.
    ``covariance``: 6x6 over ``[x, y, z, rx, ry, rz]`` of this (published) pose.
    """
    msg = PoseWithCovarianceStamped()
    msg.header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=keyframe_frame_id(camera_frame, keyframe_stamp_ns))
    msg.pose.pose = matrix_to_pose(T_kf_cur)
    msg.pose.covariance = _covariance_list(covariance)
    return msg


def edge_msg(edge: Edge, camera_frame: str) -> PoseWithCovarianceStamped:
    """A pose-graph edge (:class:`~feature_matcher_ros.loops.Edge`) as ``keyframe_edge`` / ``loop_closure`` publish
    it: the ``to`` keyframe's camera in the ``from`` keyframe camera's frame, ``header.frame_id`` =
    ``<camera_frame>@<from stamp ns>``, ``header.stamp`` = the ``to`` keyframe's stamp. A ``lost`` edge (no
    measurement: the front-end's guess) has every diagonal covariance entry -1 (unknown)."""
    cov = -np.eye(6) if edge.kind == "lost" else edge.covariance
    return relative_pose_msg(edge.T, cov, edge.to_stamp_ns, camera_frame, edge.from_stamp_ns)


def odometry_msg(
    T_world_cur: np.ndarray, covariance: np.ndarray, stamp_ns: int, world_frame: str, child_frame: str,
    twist: np.ndarray | None = None, twist_covariance: np.ndarray | None = None,
) -> Odometry:
    """The pose of ``child_frame`` in ``world_frame`` and its twist ``[vx vy vz wx wy wz]`` in ``child_frame``;
    without a twist it is zero and marked unknown (covariance[0] = -1)."""
    msg = Odometry()
    msg.header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=world_frame)
    msg.child_frame_id = child_frame
    msg.pose.pose = matrix_to_pose(T_world_cur)
    msg.pose.covariance = _covariance_list(covariance)
    if twist is None:
        twist_cov = [0.0] * 36
        twist_cov[0] = -1.0
        msg.twist.covariance = twist_cov
        return msg
    v = msg.twist.twist
    v.linear.x, v.linear.y, v.linear.z, v.angular.x, v.angular.y, v.angular.z = (float(x) for x in twist)
    msg.twist.covariance = _covariance_list(twist_covariance)
    return msg


def keyframe_msg(T_world_kf: np.ndarray, keyframe_stamp_ns: int, world_frame: str) -> PoseStamped:
    """The keyframe announcement: ``header.stamp`` = the keyframe's stamp, pose = the keyframe camera in
    ``world_frame``."""
    msg = PoseStamped()
    msg.header = Header(stamp=ns_to_stamp(keyframe_stamp_ns), frame_id=world_frame)
    msg.pose = matrix_to_pose(T_world_kf)
    return msg
