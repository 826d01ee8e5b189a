"""Messages <-> numpy: the small stand-ins for cv_bridge and sensor_msgs_py this package needs.

Images (``sensor_msgs/Image``): ``mono8``, ``mono16``, ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` (and the
aliases ``8UC1``/``16UC1``), any row padding in ``step``, either byte order. ``CompressedImage`` is decoded
with OpenCV. ``CameraInfo`` becomes a :class:`~feature_matcher_ros.camera.CameraModel`. Results become
``PointCloud2``, ``PoseWithCovarianceStamped``, ``Odometry`` and ``PoseStamped`` messages.

Every problem with an input raises :class:`InputError`, whose ``reason`` is a short key
(``unknown_encoding``, ``zero_size``, ``short_data``, ...) that the node counts in its diagnostics.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointField
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from ..camera import CameraModel, camera_from_info
from ..se3 import pose_matrix, rotation_to_quat

# encoding -> (numpy dtype, channels)
ENCODINGS = {
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
}


class InputError(ValueError):
    """A message the node cannot use. ``reason``: short key for counting; ``str(err)``: the details."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- stamps ---------------------------------------------------------------------------------------
def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# -- images ---------------------------------------------------------------------------------------
def image_to_numpy(msg: Image) -> np.ndarray:
    """The pixels of ``msg`` as ``(H, W)`` (mono) or ``(H, W, C)`` (colour, channels in the encoding's
    order), dtype uint8 or uint16, without row padding, in native byte order (always a copy)."""
    if msg.encoding not in ENCODINGS:
        raise InputError(
            "unknown_encoding",
            f"image encoding {msg.encoding!r} is not supported; use one of {sorted(ENCODINGS)}",
        )
    dtype, channels = ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise InputError("zero_size", f"image is {width}x{height} pixels")
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise InputError(
            "bad_step", f"step {step} < width {width} x {channels * np.dtype(dtype).itemsize} bytes per pixel"
        )
    data = msg.data
    size = len(data)
    if size < step * height:
        raise InputError(
            "short_data", f"image data has {size} bytes, step {step} x height {height} needs {step * height}"
        )
    buf = np.frombuffer(data, dtype=np.uint8, count=step * height)
    rows = buf.reshape(height, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(rows).view(dtype)
    if np.dtype(dtype).itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big"):
        pixels = pixels.byteswap()
    shape = (height, width) if channels == 1 else (height, width, channels)
    return pixels.reshape(shape)


def to_matcher_image(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """What the frontend takes: ``(H, W)`` uint8 gray or ``(H, W, 3)`` uint8 RGB.

    ``mono16`` is stretched linearly so that the frame's largest value becomes 255 (16-bit cameras
    rarely use the full range; a fixed shift would leave most images black).
    """
    if encoding in ("mono16", "16UC1"):
        top = int(pixels.max()) if pixels.size else 0
        return (pixels.astype(np.float32) * (255.0 / max(top, 1))).round().astype(np.uint8)
    if encoding in ("mono8", "8UC1", "rgb8"):
        return pixels
    if encoding == "bgr8":
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if encoding == "rgba8":
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
    if encoding == "bgra8":
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
    raise InputError("unknown_encoding", f"image encoding {encoding!r} is not supported")


def numpy_to_image(
    pixels: np.ndarray, encoding: str, stamp_ns: int = 0, frame_id: str = "", step: int | None = None
) -> Image:
    """An ``Image`` holding ``pixels`` (shape as :func:`image_to_numpy` returns), rows padded to ``step``
    bytes when given."""
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


def compressed_to_numpy(msg: CompressedImage) -> np.ndarray:
    """A ``CompressedImage`` (JPEG, PNG, anything OpenCV reads) as ``(H, W)`` uint8 gray or ``(H, W, 3)``
    uint8 RGB."""
    if len(msg.data) == 0:
        raise InputError("zero_size", f"compressed image ({msg.format!r}) has no data")
    decoded = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise InputError("decode_failed", f"OpenCV could not decode the compressed image (format {msg.format!r})")
    if decoded.dtype == np.uint16:
        if decoded.ndim == 3:
            decoded = cv2.cvtColor(np.ascontiguousarray(decoded[:, :, :3]), cv2.COLOR_BGR2GRAY)
        return to_matcher_image(decoded, "mono16")
    if decoded.dtype != np.uint8:
        raise InputError("unknown_encoding", f"compressed image decodes to {decoded.dtype}, expected 8 or 16 bit")
    if decoded.ndim == 2:
        return decoded
    if decoded.shape[2] == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


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
def camera_info_to_model(msg: CameraInfo) -> CameraModel:
    """The camera of ``msg`` at the resolution its images have (ROI and binning applied, REP 104).

    ``plumb_bob`` and ``rational_polynomial`` use OpenCV's coefficient order, so ``d`` is taken as is.
    Raises :class:`InputError` (``bad_camera_info``) when the message cannot describe a usable camera.
    """
    try:
        return camera_from_info(msg)
    except ValueError as exc:
        raise InputError("bad_camera_info", str(exc)) from None


def model_to_camera_info(camera: CameraModel, stamp_ns: int = 0, frame_id: str = "") -> CameraInfo:
    """A ``CameraInfo`` for ``camera`` (``plumb_bob``; P = [K | 0])."""
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
    msg.p = [float(v) for v in P.reshape(-1)]
    return msg


class CameraInfoCache:
    """The latest ``camera_info``, converted once (the stand-in for a message_filters synchroniser).

    Images are paired with the most recent camera_info, whatever its stamp: intrinsics rarely change, and
    waiting for exact stamps would stall on drivers that publish camera_info at a lower rate.
    """

    def __init__(self) -> None:
        self.camera: CameraModel | None = None
        self.error: InputError | None = None
        self.received = 0

    def update(self, msg: CameraInfo) -> InputError | None:
        """Take ``msg``; returns the problem with it (kept until a good one arrives) or None."""
        self.received += 1
        try:
            self.camera, self.error = camera_info_to_model(msg), None
        except InputError as err:
            self.camera, self.error = None, err
        return self.error

    def camera_for(self, width: int, height: int) -> CameraModel:
        """The camera for an image of ``width`` x ``height``; :class:`InputError` when there is none."""
        if self.error is not None:
            raise self.error
        if self.camera is None:
            raise InputError("no_camera_info", "no camera_info received yet; images wait for one")
        if (self.camera.width, self.camera.height) != (width, height):
            raise InputError(
                "size_mismatch",
                f"image is {width}x{height} but camera_info says {self.camera.width}x{self.camera.height}",
            )
        return self.camera


# -- matches as PointCloud2 ---------------------------------------------------------------------------
MATCH_FIELDS = ("x0", "y0", "x1", "y1", "score", "inlier")
_MATCH_DTYPE = np.dtype(
    [(name, "<f4") for name in MATCH_FIELDS] + [("kf_sec", "<u4"), ("kf_nanosec", "<u4")]
)
# PointField datatype codes
_POINTFIELD_TYPES = {
    PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
    PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8",
}
_NUMPY_TO_POINTFIELD = {v: k for k, v in _POINTFIELD_TYPES.items()}


def matches_to_cloud(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    scores: np.ndarray,
    inliers: np.ndarray,
    header: Header,
    keyframe_stamp_ns: int,
) -> PointCloud2:
    """An unorganised ``PointCloud2`` (height 1, width N): float32 ``x0 y0`` (keyframe pixel), ``x1 y1``
    (current pixel), ``score``, ``inlier`` (1.0 or 0.0), and uint32 ``kf_sec kf_nanosec`` (the keyframe's
    stamp, the same in every point). ``header`` is the current image's header."""
    n = len(scores)
    points = np.zeros(n, _MATCH_DTYPE)
    if n:
        points["x0"], points["y0"] = kpts0[:, 0], kpts0[:, 1]
        points["x1"], points["y1"] = kpts1[:, 0], kpts1[:, 1]
        points["score"] = scores
        points["inlier"] = np.asarray(inliers, bool).astype(np.float32)
        stamp = ns_to_stamp(keyframe_stamp_ns)
        points["kf_sec"], points["kf_nanosec"] = stamp.sec, stamp.nanosec
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


def cloud_to_array(msg: PointCloud2) -> np.ndarray:
    """The points of a ``PointCloud2`` as a structured numpy array of shape ``(height * width,)``, one
    named column per field (the sensor_msgs_py ``read_points`` stand-in)."""
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for field in msg.fields:
        if field.datatype not in _POINTFIELD_TYPES:
            raise InputError("bad_cloud", f"PointField {field.name!r} has unknown datatype {field.datatype}")
        names.append(field.name)
        base = order + _POINTFIELD_TYPES[field.datatype]
        formats.append(base if field.count <= 1 else (base, (field.count,)))
        offsets.append(field.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    count = msg.width * msg.height
    data = bytes(msg.data)
    if msg.height > 1:  # rows may be padded
        rows = np.frombuffer(data, np.uint8, count=msg.row_step * msg.height).reshape(msg.height, msg.row_step)
        data = np.ascontiguousarray(rows[:, : msg.point_step * msg.width]).tobytes()
    return np.frombuffer(data, dtype=dtype, count=count)


# -- poses ---------------------------------------------------------------------------------------
def matrix_to_pose(T: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in T[:3, 3])
    qx, qy, qz, qw = (float(v) for v in rotation_to_quat(T[:3, :3]))
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw
    return pose


def pose_to_matrix(pose: Pose) -> np.ndarray:
    o, p = pose.orientation, pose.position
    return pose_matrix((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))


def _covariance_list(cov: np.ndarray) -> list[float]:
    cov = np.asarray(cov, np.float64).reshape(6, 6)
    cov = np.where(np.isfinite(cov), cov, 1e12)
    return [float(v) for v in (0.5 * (cov + cov.T)).reshape(-1)]


def keyframe_frame_id(camera_frame: str, keyframe_stamp_ns: int) -> str:
    """The frame name of the camera at the keyframe's stamp: ``<camera_frame>@<stamp in ns>``."""
    return f"{camera_frame}@{int(keyframe_stamp_ns)}"


def parse_keyframe_frame_id(frame_id: str) -> tuple[str, int]:
    """``(camera_frame, keyframe_stamp_ns)`` from a :func:`keyframe_frame_id` name."""
    camera_frame, sep, stamp = frame_id.rpartition("@")
    if not sep or not stamp.isdigit():
        raise ValueError(f"{frame_id!r} does not name a keyframe (expected '<camera_frame>@<stamp_ns>')")
    return camera_frame, int(stamp)


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


def odometry_msg(
    T_world_cur: np.ndarray, covariance: np.ndarray, stamp_ns: int, world_frame: str, camera_frame: str
) -> Odometry:
    """The chained pose of the camera in ``world_frame``; twist left zero and marked unknown (-1)."""
    msg = Odometry()
    msg.header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=world_frame)
    msg.child_frame_id = camera_frame
    msg.pose.pose = matrix_to_pose(T_world_cur)
    msg.pose.covariance = _covariance_list(covariance)
    twist_cov = [0.0] * 36
    twist_cov[0] = -1.0
    msg.twist.covariance = twist_cov
    return msg


def keyframe_msg(T_world_kf: np.ndarray, keyframe_stamp_ns: int, world_frame: str) -> PoseStamped:
    """The keyframe announcement: ``header.stamp`` = the keyframe's stamp, pose = the keyframe camera in
    ``world_frame``."""
    msg = PoseStamped()
    msg.header = Header(stamp=ns_to_stamp(keyframe_stamp_ns), frame_id=world_frame)
    msg.pose = matrix_to_pose(T_world_kf)
    return msg
