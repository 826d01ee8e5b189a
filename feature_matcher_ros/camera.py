"""A pinhole camera with OpenCV radial-tangential distortion: pixels <-> undistorted normalised coordinates.

Pixels follow the OpenCV convention (origin at the centre of the top-left pixel, x right, y down).
Normalised coordinates are ``(X/Z, Y/Z)`` of the ray in the camera frame, with the distortion removed,
which is what the essential-matrix and homography estimators in :mod:`.geometry` work on.

Example:
    >>> import numpy as np
    >>> cam = CameraModel.from_matrix(640, 480, np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]))
    >>> cam.normalize(np.array([[320.0, 240.0], [820.0, 240.0]])).round(6).tolist()
    [[0.0, 0.0], [1.0, 0.0]]
    >>> cam.scaled(320, 240).K[0].tolist()   # half size: fx halves, cx follows (x + 0.5) * s - 0.5
    [250.0, 0.0, 159.75]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# Lengths of an OpenCV distortion vector (k1 k2 p1 p2 [k3 [k4 k5 k6 [s1..s4 [tx ty]]]]).
_DIST_LENGTHS = (0, 4, 5, 8, 12, 14)
# Iterative undistortion: OpenCV's default (5 iterations) is too coarse for strong distortion such as the
# TUM freiburg2 camera (k3 = 0.92); this converges to well below 1e-3 px there.
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)


@dataclass
class CameraModel:
    """Intrinsics of one image size.

    Attributes:
        width, height: image size in pixels the intrinsics apply to.
        K: ``(3, 3)`` float64 pinhole matrix ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``.
        dist: ``(n,)`` float64 OpenCV distortion ``[k1, k2, p1, p2, k3, ...]`` (n in 0, 4, 5, 8, 12, 14);
            all zeros means the images are already undistorted.
    """

    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray = field(default_factory=lambda: np.zeros(5))

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64)
        self.dist = np.zeros(0) if self.dist is None else np.asarray(self.dist, dtype=np.float64).reshape(-1)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_matrix(cls, width: int, height: int, K: Any, dist: Any = None) -> CameraModel:
        """From a 3x3 matrix (anything array-like with 9 numbers) and optional distortion."""
        K = np.asarray(K, dtype=np.float64)
        if K.size != 9:
            raise ValueError(f"CameraModel: K must have 9 entries (3x3), got shape {K.shape}")
        return cls(int(width), int(height), K.reshape(3, 3), np.zeros(5) if dist is None else dist)

    @classmethod
    def from_yaml(cls, path: str | Path) -> CameraModel:
        """Read an ``intrinsics.yaml``.

        Two layouts are understood: the ``../shared/data`` one (``width``, ``height``, ``fx``, ``fy``, ``cx``,
        ``cy``, ``distortion: [k1, k2, p1, p2, k3]``) and the ROS ``camera_calibration`` one
        (``image_width``, ``image_height``, ``camera_matrix: {data: [9]}``, ``distortion_coefficients: {data}``).
        Raises ``ValueError`` naming the missing or bad field.
        """
        import yaml

        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ValueError(f"cannot read camera file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ValueError(f"camera file {path} is not valid YAML: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValueError(f"camera file {path}: expected a mapping at the top level")

        def need(key: str) -> Any:
            if key not in doc:
                raise ValueError(f"camera file {path}: missing field {key!r}")
            return doc[key]

        try:
            if "camera_matrix" in doc:  # ROS camera_calibration layout
                K = np.asarray(need("camera_matrix")["data"], dtype=np.float64)
                dist = np.asarray((doc.get("distortion_coefficients") or {}).get("data", []), dtype=np.float64)
                cam = cls.from_matrix(need("image_width"), need("image_height"), K, dist)
            else:
                model = doc.get("model", "pinhole")
                if model != "pinhole":
                    raise ValueError(f"camera file {path}: model {model!r} is not supported (only 'pinhole')")
                dmodel = doc.get("distortion_model", "radtan")
                if dmodel not in ("radtan", "plumb_bob", "rational_polynomial", "none"):
                    raise ValueError(f"camera file {path}: distortion_model {dmodel!r} is not supported")
                fx, fy, cx, cy = (float(need(k)) for k in ("fx", "fy", "cx", "cy"))
                K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
                dist = np.asarray(doc.get("distortion") or [], dtype=np.float64)
                cam = cls.from_matrix(int(need("width")), int(need("height")), K, dist)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"camera file {path}: malformed field ({exc})") from exc
        reason = cam.problem()
        if reason:
            raise ValueError(f"camera file {path}: {reason}")
        return cam

    # -- checks and accessors ---------------------------------------------------------------------
    def problem(self) -> str | None:
        """Why this camera cannot be used (size, NaN, non-positive focal, bad distortion), or None."""
        if not (isinstance(self.width, (int, np.integer)) and isinstance(self.height, (int, np.integer))):
            return f"image size must be integers, got {self.width!r} x {self.height!r}"
        if self.width <= 0 or self.height <= 0:
            return f"image size must be positive, got {self.width} x {self.height}"
        if self.K.shape != (3, 3):
            return f"K must be 3x3, got shape {self.K.shape}"
        if not np.all(np.isfinite(self.K)):
            return "K has NaN or infinite entries"
        if not (self.K[0, 0] > 0 and self.K[1, 1] > 0):
            return f"focal lengths must be positive, got fx={self.K[0, 0]}, fy={self.K[1, 1]}"
        if self.K[1, 0] != 0 or self.K[2, 0] != 0 or self.K[2, 1] != 0 or self.K[2, 2] != 1:
            return f"K must be upper triangular with K[2,2] = 1, got {self.K.tolist()}"
        if len(self.dist) not in _DIST_LENGTHS:
            return f"distortion must have one of {_DIST_LENGTHS[1:]} coefficients, got {len(self.dist)}"
        if not np.all(np.isfinite(self.dist)):
            return "distortion has NaN or infinite entries"
        return None

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def focal(self) -> float:
        """Mean focal length in pixels (converts pixel thresholds to normalised units)."""
        return 0.5 * (self.fx + self.fy)

    @property
    def has_distortion(self) -> bool:
        return bool(np.any(self.dist != 0))

    # -- transforms -------------------------------------------------------------------------------
    def scaled(self, width: int, height: int) -> CameraModel:
        """The same camera for the image resized to ``width x height`` (distortion is scale-free).

        A pixel centre maps as ``x' = (x + 0.5) * s - 0.5``, the convention of ``Matches.scaled``.
        """
        if width <= 0 or height <= 0:
            raise ValueError(f"CameraModel.scaled: size must be positive, got {width} x {height}")
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[0, 1] *= sx
        K[1, 1] *= sy
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return CameraModel(int(width), int(height), K, self.dist.copy())

    def normalize(self, pts: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixels -> ``(N, 2)`` float64 undistorted normalised coordinates."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0:
            return np.zeros((0, 2))
        if not self.has_distortion:
            y = (pts[:, 1] - self.cy) / self.fy
            x = (pts[:, 0] - self.cx - self.K[0, 1] * y) / self.fx
            return np.stack([x, y], axis=1)
        out = cv2.undistortPoints(pts.reshape(-1, 1, 2), self.K, self.dist, criteria=_UNDISTORT_CRITERIA)
        return out.reshape(-1, 2).astype(np.float64)

    def project(self, xn: np.ndarray) -> np.ndarray:
        """``(N, 2)`` undistorted normalised coordinates -> ``(N, 2)`` float64 pixels (applies distortion)."""
        xn = np.asarray(xn, dtype=np.float64).reshape(-1, 2)
        if len(xn) == 0:
            return np.zeros((0, 2))
        if not self.has_distortion:
            u = self.fx * xn[:, 0] + self.K[0, 1] * xn[:, 1] + self.cx
            v = self.fy * xn[:, 1] + self.cy
            return np.stack([u, v], axis=1)
        rays = np.concatenate([xn, np.ones((len(xn), 1))], axis=1)
        out, _ = cv2.projectPoints(rays.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), self.K, self.dist)
        return out.reshape(-1, 2)


#: ``sensor_msgs/CameraInfo.distortion_model`` values whose ``d`` is in OpenCV's coefficient order.
CAMERA_INFO_MODELS = ("", "plumb_bob", "rational_polynomial")


def camera_from_info(msg: Any) -> CameraModel:
    """The camera of a ``sensor_msgs/CameraInfo``-shaped message at the resolution its images have.

    Works on any object with CameraInfo's fields (an rclpy message, a ``rosbags`` message): ``width``,
    ``height``, ``k``, ``d``, ``distortion_model``, ``roi``, ``binning_x``, ``binning_y``. Region of interest
    and binning are applied as REP 104 says. Raises ValueError naming the problem when the message cannot
    describe a usable camera.
    """
    if msg.distortion_model not in CAMERA_INFO_MODELS:
        raise ValueError(
            f"distortion model {msg.distortion_model!r} is not supported; use plumb_bob or rational_polynomial"
        )
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3).copy()
    dist = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    width, height = int(msg.width), int(msg.height)
    roi = msg.roi
    if roi.width and roi.height and (roi.width, roi.height) != (width, height):
        K[0, 2] -= roi.x_offset
        K[1, 2] -= roi.y_offset
        width, height = int(roi.width), int(roi.height)
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    if bx > 1 or by > 1:
        K[0, :] /= bx
        K[1, :] /= by
        width, height = width // bx, height // by
    if not np.all(np.isfinite(dist)):
        raise ValueError(f"distortion coefficients are not finite: {dist.tolist()}")
    camera = CameraModel.from_matrix(width, height, K, dist if dist.size else None)
    problem = camera.problem()
    if problem:
        raise ValueError(f"camera_info is unusable: {problem}")
    return camera
