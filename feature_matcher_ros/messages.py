"""Decoding ROS messages into numpy and core types, without ROS: the node, the tools and the bag readers share it.

Works on anything with the message's field names: rclpy messages (``sensor_msgs.msg.Image`` ...) and the
``rosbags`` deserialised messages alike (``data`` as bytes, ``array.array`` or a numpy array). Building rclpy
messages is :mod:`feature_matcher_ros.ros.conversions`' job.

* ``Image``: :func:`image_to_numpy` (the pixels as sent, per :data:`ENCODINGS`: ``mono8 8UC1 mono16 16UC1 rgb8
  bgr8 rgba8 bgra8``, any row padding in ``step``, either byte order), then what a consumer makes of them:
  :func:`to_matcher_image` (uint8 gray or RGB; ``mono16``/``16UC1`` stretched so the frame's maximum is 255).
  A new consumer (e.g. depth in metres) adds its own converter next to it; new layouts go into ``ENCODINGS``.
* ``CompressedImage``: :func:`compressed_to_numpy` (anything OpenCV decodes); :func:`decode_image` takes either.
* Depth (``Image`` ``16UC1``/``mono16``/``32FC1``, or ``CompressedImage`` from compressed_depth_image_transport,
  PNG form): :func:`depth_to_metres`.
* ``CameraInfo``: :func:`camera_info_to_model` and :class:`CameraInfoCache`; a rectified stereo pair's two:
  :func:`stereo_rig_from_infos`.
* ``PointCloud2``: :func:`cloud_to_array`; ``Pose``/``Transform``: :func:`pose_to_matrix`/:func:`transform_to_matrix`;
  stamps: :func:`stamp_to_ns`; keyframe frame names: :func:`keyframe_frame_id`/:func:`parse_keyframe_frame_id`.

Every problem with an input raises :class:`InputError`, whose ``reason`` is a short key (``unknown_encoding``,
``zero_size``, ``short_data``, ``bad_step``, ``decode_failed``, ``bad_camera_info``, ``no_camera_info``,
``size_mismatch``, ``bad_cloud``, ``depth_encoding``, ``depth_decode_failed``, ``stereo_baseline``,
``stereo_mismatch``) that the node counts in its diagnostics.

Example (any object with Image's fields will do; rows padded to 4 bytes):
    >>> from types import SimpleNamespace
    >>> msg = SimpleNamespace(encoding="mono8", height=2, width=3, step=4, is_bigendian=0,
    ...                       data=bytes([1, 2, 3, 0, 4, 5, 6, 0]))
    >>> image_to_numpy(msg).tolist()
    [[1, 2, 3], [4, 5, 6]]
    >>> parse_keyframe_frame_id(keyframe_frame_id("camera", 1311868169163498000))
    ('camera', 1311868169163498000)
"""

from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np

from .camera import CameraModel, camera_from_info
from .loops import Edge
from .metric import StereoRig
from .se3 import pose_matrix

NS_PER_S = 1_000_000_000

#: Image encoding -> (numpy dtype, channels): how the bytes of a ``sensor_msgs/Image`` are laid out.
ENCODINGS = {
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "32FC1": (np.float32, 1),
}
# What the matcher takes from each encoding: kept as is, converted to RGB, or stretched to 8 bits.
_MATCHER_AS_IS = ("mono8", "8UC1", "rgb8")
_MATCHER_TO_RGB = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB}
_MATCHER_STRETCHED = ("mono16", "16UC1")
#: Depth image encodings: 16-bit integers in units of ``scale`` metres (REP 118: millimetres), or float metres.
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
# compressed_depth_image_transport's ConfigHeader before the PNG data: format (int32), depthParam[2] (float32)
_COMPRESSED_DEPTH_HEADER = 12

#: ``sensor_msgs/PointField`` datatype code -> numpy type (without byte order).
POINTFIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


class InputError(ValueError):
    """A message that cannot be used. ``reason``: short key for counting; ``str(err)``: the details."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- stamps and frame names -------------------------------------------------------------------------
def stamp_to_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` (``sec``, ``nanosec``) in integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def keyframe_frame_id(camera_frame: str, keyframe_stamp_ns: int) -> str:
    """The frame name of the camera at the keyframe's stamp: ``<camera_frame>@<stamp in ns>``."""
    return f"{camera_frame}@{int(keyframe_stamp_ns)}"


def parse_keyframe_frame_id(frame_id: str) -> tuple[str, int]:
    """``(camera_frame, keyframe_stamp_ns)`` from a :func:`keyframe_frame_id` name; ValueError otherwise."""
    camera_frame, sep, stamp = frame_id.rpartition("@")
    if not sep or not stamp.isdigit():
        raise ValueError(f"{frame_id!r} does not name a keyframe (expected '<camera_frame>@<stamp_ns>')")
    return camera_frame, int(stamp)


# -- images ---------------------------------------------------------------------------------------
def image_to_numpy(msg: Any) -> np.ndarray:
    """The pixels of an ``Image`` as ``(H, W)`` (one channel) or ``(H, W, C)`` (channels in the encoding's
    order), dtype per :data:`ENCODINGS`, without row padding, in native byte order (always a copy)."""
    if msg.encoding not in ENCODINGS:
        raise InputError("unknown_encoding", f"unsupported image encoding {msg.encoding!r} "
                                             f"(supported: {', '.join(sorted(ENCODINGS))})")
    dtype, channels = ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise InputError("zero_size", f"image is {width}x{height} pixels")
    pixel_bytes = channels * np.dtype(dtype).itemsize
    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise InputError("bad_step", f"step {step} < width {width} x {pixel_bytes} bytes per pixel")
    size = len(msg.data)
    if size < step * height:
        raise InputError("short_data", f"image data has {size} bytes, step {step} x height {height} needs "
                                       f"{step * height}")
    rows = np.frombuffer(msg.data, dtype=np.uint8, count=step * height).reshape(height, step)[:, :row_bytes]
    pixels = np.array(rows, order="C").view(dtype)  # a copy: never a view of the message's buffer
    if np.dtype(dtype).itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big"):
        pixels = pixels.byteswap()
    return pixels.reshape((height, width) if channels == 1 else (height, width, channels))


def to_matcher_image(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """What the frontend takes from :func:`image_to_numpy`'s pixels: ``(H, W)`` uint8 gray or ``(H, W, 3)``
    uint8 RGB. 16-bit gray is stretched linearly so that the frame's largest value becomes 255 (16-bit cameras
    rarely use the full range; a fixed shift would leave most images black)."""
    if encoding in _MATCHER_STRETCHED:
        top = int(pixels.max()) if pixels.size else 0
        return (pixels.astype(np.float32) * (255.0 / max(top, 1))).round().astype(np.uint8)
    if encoding in _MATCHER_AS_IS:
        return pixels
    if encoding in _MATCHER_TO_RGB:
        return cv2.cvtColor(pixels, _MATCHER_TO_RGB[encoding])
    raise InputError("unknown_encoding", f"unsupported image encoding {encoding!r}")


def opencv_to_matcher_image(decoded: np.ndarray) -> np.ndarray:
    """An image as OpenCV decodes a file (``IMREAD_UNCHANGED``: gray, BGR or BGRA; 8 or 16 bit) -> ``(H, W)``
    uint8 gray or ``(H, W, 3)`` uint8 RGB; 16-bit images become gray, stretched as :func:`to_matcher_image`."""
    if decoded.dtype == np.uint16:
        if decoded.ndim == 3:
            decoded = cv2.cvtColor(np.ascontiguousarray(decoded[:, :, :3]), cv2.COLOR_BGR2GRAY)
        return to_matcher_image(decoded, "mono16")
    if decoded.dtype != np.uint8:
        raise InputError("unknown_encoding", f"compressed image decodes to {decoded.dtype}, expected 8 or 16 bit")
    if decoded.ndim == 2:
        return decoded
    return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB if decoded.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def compressed_to_numpy(msg: Any) -> np.ndarray:
    """A ``CompressedImage`` (JPEG, PNG, anything OpenCV reads) as ``(H, W)`` uint8 gray or ``(H, W, 3)``
    uint8 RGB."""
    if len(msg.data) == 0:
        raise InputError("zero_size", f"compressed image ({msg.format!r}) has no data")
    decoded = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise InputError("decode_failed", f"OpenCV could not decode the compressed image (format {msg.format!r})")
    return opencv_to_matcher_image(decoded)


def decode_image(msg: Any) -> np.ndarray:
    """An ``Image`` or a ``CompressedImage`` (it has ``format``) as the frontend takes it: ``(H, W)`` uint8 gray
    or ``(H, W, 3)`` uint8 RGB."""
    if hasattr(msg, "format"):
        return compressed_to_numpy(msg)
    return to_matcher_image(image_to_numpy(msg), msg.encoding)


def depth_to_metres(msg: Any, scale: float = 0.001) -> np.ndarray:
    """A depth image as ``(H, W)`` float32 metres along the optical axis, NaN where there is no measurement
    (0, NaN, inf). ``Image``: ``16UC1``/``mono16`` times ``scale`` (metres per unit; 0.001 for millimetres),
    ``32FC1`` in metres. ``CompressedImage`` in compressed_depth_image_transport's form (format
    ``"<encoding>; compressedDepth png"``: a 12-byte header, then a PNG of raw 16-bit depth, or for ``32FC1``
    of quantised inverse depth ``q`` with ``depth = A / (q - B)``); its ``rvl`` form is not decoded.

    >>> from types import SimpleNamespace
    >>> msg = SimpleNamespace(encoding="16UC1", height=1, width=3, step=6, is_bigendian=0,
    ...                       data=np.array([0, 1500, 65535], "<u2").tobytes())
    >>> [round(float(v), 4) for v in depth_to_metres(msg)[0]]
    [nan, 1.5, 65.535]
    """
    if hasattr(msg, "format"):
        depth = _compressed_depth(msg, scale)
    else:
        if msg.encoding not in DEPTH_ENCODINGS:
            raise InputError("depth_encoding", f"depth encoding {msg.encoding!r} is not a depth image "
                                               f"(supported: {', '.join(DEPTH_ENCODINGS)})")
        raw = image_to_numpy(msg)
        depth = raw.astype(np.float32) * np.float32(scale if raw.dtype == np.uint16 else 1.0)
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def _compressed_depth(msg: Any, scale: float) -> np.ndarray:
    encoding, _, method = msg.format.partition(";")
    encoding, method = encoding.strip(), method.strip()
    if encoding not in DEPTH_ENCODINGS:
        raise InputError("depth_encoding", f"compressed depth format {msg.format!r} names no depth encoding")
    if method and "compressedDepth png" not in method:
        raise InputError("depth_decode_failed", f"compressed depth format {msg.format!r}: only the png form of "
                                                "compressedDepth is decoded (set the publisher's format to png)")
    data = bytes(msg.data)
    if len(data) <= _COMPRESSED_DEPTH_HEADER:
        raise InputError("depth_decode_failed", f"compressed depth image has {len(data)} bytes")
    quant_a, quant_b = np.frombuffer(data[4:_COMPRESSED_DEPTH_HEADER], "<f4")
    decoded = cv2.imdecode(np.frombuffer(data[_COMPRESSED_DEPTH_HEADER:], np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.dtype != np.uint16 or decoded.ndim != 2:
        raise InputError("depth_decode_failed", "the compressed depth PNG does not decode to one 16-bit channel")
    if encoding != "32FC1":
        return decoded.astype(np.float32) * np.float32(scale)
    q = decoded.astype(np.float32)
    with np.errstate(divide="ignore"):
        return np.where(q > 0, quant_a / (q - quant_b), np.nan).astype(np.float32)


# -- camera info ------------------------------------------------------------------------------------
def camera_info_to_model(msg: Any) -> CameraModel:
    """The camera of a ``CameraInfo`` at the resolution its images have (ROI and binning applied, REP 104).

    ``plumb_bob`` and ``rational_polynomial`` use OpenCV's coefficient order, so ``d`` is taken as is.
    Raises :class:`InputError` (``bad_camera_info``) when the message cannot describe a usable camera.
    """
    try:
        return camera_from_info(msg)
    except ValueError as exc:
        raise InputError("bad_camera_info", str(exc)) from None


def stereo_rig_from_infos(left: Any, right: Any) -> StereoRig:
    """The rectified pair of two ``CameraInfo`` (left = reference): both cameras from their projection
    matrices ``P`` (rectified images, no distortion), the baseline from ``P_right[0, 3] = -fx * b`` (relative to
    the left's ``P[0, 3]``, normally 0). :class:`InputError` ``stereo_baseline`` when it is missing, zero or
    negative, ``stereo_mismatch`` when the two disagree on size or rectified intrinsics (fx, fy, cy).

    >>> from types import SimpleNamespace
    >>> info = lambda tx: SimpleNamespace(width=640, height=480, p=[500.0, 0, 320, tx, 0, 500, 240, 0, 0, 0, 1, 0])
    >>> round(stereo_rig_from_infos(info(0.0), info(-60.0)).baseline_m, 6)
    0.12
    """
    size = (int(left.width), int(left.height))
    if (int(right.width), int(right.height)) != size:
        raise InputError("stereo_mismatch", f"left camera_info is {size[0]}x{size[1]}, the right one "
                                            f"{right.width}x{right.height}")
    P_l, P_r = (np.asarray(m.p, np.float64).reshape(3, 4) for m in (left, right))
    for side, P in (("left", P_l), ("right", P_r)):
        if not np.all(np.isfinite(P)) or P[0, 0] <= 0 or P[1, 1] <= 0:
            raise InputError("stereo_mismatch", f"the {side} camera_info has no rectified projection matrix P")
    if any(abs(P_l[i, j] - P_r[i, j]) > 1e-3 * P_l[0, 0] for i, j in ((0, 0), (1, 1), (1, 2))):
        raise InputError("stereo_mismatch", f"left and right rectified intrinsics differ (fx fy cy: "
                                            f"{P_l[0, 0]} {P_l[1, 1]} {P_l[1, 2]} vs "
                                            f"{P_r[0, 0]} {P_r[1, 1]} {P_r[1, 2]})")
    baseline = -(P_r[0, 3] - P_l[0, 3]) / P_r[0, 0]
    if not baseline > 0:
        raise InputError("stereo_baseline", f"the right camera_info gives no positive baseline (P[3] = "
                                            f"{P_r[0, 3]}; a rectified right camera has P[3] = -fx * baseline)")
    camera = CameraModel.from_matrix(size[0], size[1], P_l[:, :3])
    return StereoRig(camera, float(P_r[0, 0]), float(P_r[0, 2]), float(baseline))


class CameraInfoCache:
    """The latest ``camera_info``, converted once (the stand-in for a message_filters synchroniser).

    Images are paired with the most recent camera_info, whatever its stamp: intrinsics rarely change, and
    waiting for exact stamps would stall on drivers that publish camera_info at a lower rate.
    """

    def __init__(self) -> None:
        self.camera: CameraModel | None = None
        self.error: InputError | None = None
        self.message: Any = None  # the latest message itself (a stereo rig reads its projection matrix)
        self.received = 0

    def update(self, msg: Any) -> InputError | None:
        """Take ``msg``; returns the problem with it (kept until a good one arrives) or None."""
        self.received += 1
        self.message = msg
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


# -- point clouds and poses ---------------------------------------------------------------------------
def cloud_to_array(msg: Any) -> np.ndarray:
    """The points of a ``PointCloud2`` as a structured array of shape ``(height * width,)``, one named column
    per field (the sensor_msgs_py ``read_points`` stand-in); rows may be padded."""
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in POINTFIELD_DTYPES:
            raise InputError("bad_cloud", f"PointField {f.name!r} has unknown datatype {f.datatype}")
        names.append(f.name)
        base = order + POINTFIELD_DTYPES[f.datatype]
        formats.append(base if f.count <= 1 else (base, (int(f.count),)))
        offsets.append(int(f.offset))
    height, width, point_step = int(msg.height), int(msg.width), int(msg.point_step)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    data = bytes(msg.data)
    if height > 1:  # rows may be padded
        rows = np.frombuffer(data, np.uint8, count=int(msg.row_step) * height).reshape(height, int(msg.row_step))
        data = np.ascontiguousarray(rows[:, : point_step * width]).tobytes()
    return np.frombuffer(data, dtype=dtype, count=width * height)


def matches_keyframe_stamp(points: np.ndarray) -> int | None:
    """The keyframe stamp (ns) of a ``matches`` cloud's points (:func:`cloud_to_array`: ``kf_sec``,
    ``kf_nanosec`` on every point), None for an empty cloud or one without those fields."""
    if not len(points) or "kf_sec" not in (points.dtype.names or ()):
        return None
    return int(points["kf_sec"][0]) * 1_000_000_000 + int(points["kf_nanosec"][0])


def pose_to_matrix(pose: Any) -> np.ndarray:
    """A ``geometry_msgs/Pose`` (``position``, ``orientation``) -> ``(4, 4)``; ValueError for a bad quaternion."""
    p, o = pose.position, pose.orientation
    return pose_matrix((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))


def transform_to_matrix(transform: Any) -> np.ndarray:
    """A ``geometry_msgs/Transform`` (``translation``, ``rotation``) -> ``(4, 4)``; ValueError for a bad
    quaternion."""
    t, r = transform.translation, transform.rotation
    return pose_matrix((t.x, t.y, t.z), (r.x, r.y, r.z, r.w))


def edge_from_message(msg: Any, kind: str) -> tuple[Edge, str]:
    """A ``keyframe_edge`` (``kind = "keyframe"``) or ``loop_closure`` (``"loop"``) ``PoseWithCovarianceStamped``
    as ``(edge, camera frame)``: a keyframe edge whose covariance is marked unknown (``covariance[0] < 0``) is a
    ``lost`` edge. ValueError for a frame id that names no keyframe, a bad quaternion or a non-finite
    covariance."""
    camera_frame, from_ns = parse_keyframe_frame_id(msg.header.frame_id)
    cov = np.asarray(msg.pose.covariance, np.float64).reshape(6, 6)
    if kind != "loop" and cov[0, 0] < 0:
        kind = "lost"
    elif not np.all(np.isfinite(cov)):
        raise ValueError(f"{kind} edge from {msg.header.frame_id}: covariance is not finite")
    return Edge(from_ns, stamp_to_ns(msg.header.stamp), pose_to_matrix(msg.pose.pose), cov, kind), camera_frame
