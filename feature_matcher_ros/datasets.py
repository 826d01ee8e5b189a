"""Reading the ``../shared/data`` layouts and TUM trajectory files (ROS-free; ``shared/data/README.md``).

* :func:`parse_stamp` / :func:`format_stamp`: the one timestamp parser: decimal seconds as written in the text
  files <-> exact integer nanoseconds (no float rounding).
* :class:`Trajectory`, :func:`read_tum`, :func:`write_tum`: ``T_world_frame`` poses at stamps; TUM files
  ``timestamp tx ty tz qx qy qz qw``.
* :func:`read_sequence` -> :class:`Sequence`: ``images.txt``, ``intrinsics.yaml``, ``groundtruth.txt``, and the
  RGB-D (``depth/``, ``depth.txt``, ``depth_scale``) and stereo (``images_right/``, ``images_right.txt``,
  ``stereo:``) additions when a folder has them.
* :func:`read_pose_pairs` -> :class:`PosePair`: ``pairs.txt`` with relative poses; :func:`pair_camera`.

Every problem with a file raises :class:`DatasetError` naming the file (and line).

Example:
    >>> parse_stamp("1311868169.163498"), format_stamp(1311868169163498000)
    (1311868169163498000, '1311868169.163498000')
    >>> from feature_matcher_ros.resources import data_dir
    >>> seq = read_sequence(data_dir() / "tum_fr2_desk")
    >>> len(seq.frames), seq.frames[0][0], seq.frames[0][1].name, (seq.camera.width, seq.camera.height)
    (20, 1311868169163498000, '1311868169.163498.png', (640, 480))
    >>> seq.ground_truth.at(seq.frames[0][0])[:3, 3].tolist(), seq.depth is None, seq.stereo is None
    ([-0.060679, -2.108206, 1.502909], True, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from .camera import CameraModel
from .se3 import pose_matrix, rotation_to_quat

NS_PER_S = 1_000_000_000


class DatasetError(ValueError):
    """A dataset folder, listing or trajectory that cannot be used (the message names the file and line)."""


# -- stamps ---------------------------------------------------------------------------------------
def parse_stamp(text: str) -> int:
    """Seconds as written in a text file (``"1311868169.163498"``, ``"0.104499"``, ``"1e3"``) -> exact integer
    nanoseconds. Raises :class:`DatasetError` for anything else.

    >>> parse_stamp("-0.5"), parse_stamp("12")
    (-500000000, 12000000000)
    """
    try:
        value = Decimal(text.strip()) * NS_PER_S
        return int(value.to_integral_value())
    except (InvalidOperation, ValueError, OverflowError):
        raise DatasetError(f"not a timestamp: {text!r}") from None


def format_stamp(stamp_ns: int) -> str:
    """Integer nanoseconds -> ``"sec.nanosec"`` with all nine decimals (exact, no float rounding)."""
    sign = "-" if stamp_ns < 0 else ""
    sec, nsec = divmod(abs(int(stamp_ns)), NS_PER_S)
    return f"{sign}{sec}.{nsec:09d}"


def _rows(path: Path) -> Iterable[tuple[int, list[str]]]:
    """``(line number, whitespace-separated fields)`` of the lines that are neither blank nor ``#`` comments."""
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, line.split()


# -- trajectories ---------------------------------------------------------------------------------
@dataclass
class Trajectory:
    """Poses ``T_world_frame`` at stamps (sorted; the first pose of a repeated stamp is kept).

    Attributes:
        stamps_ns: ``(N,)`` int64, strictly increasing.
        poses: ``(N, 4, 4)`` float64.
        source: where it came from (for messages).
    """

    stamps_ns: np.ndarray
    poses: np.ndarray
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stamps_ns = np.asarray(self.stamps_ns, dtype=np.int64).reshape(-1)
        self.poses = np.asarray(self.poses, dtype=np.float64).reshape(-1, 4, 4)
        if len(self.stamps_ns) != len(self.poses):
            raise DatasetError(f"{self.source}: {len(self.stamps_ns)} stamps but {len(self.poses)} poses")
        order = np.argsort(self.stamps_ns, kind="stable")
        self.stamps_ns, self.poses = self.stamps_ns[order], self.poses[order]
        if len(self.stamps_ns) > 1:
            keep = np.concatenate([[True], np.diff(self.stamps_ns) > 0])
            self.stamps_ns, self.poses = self.stamps_ns[keep], self.poses[keep]

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def moved(self, T_frame_other: np.ndarray) -> Trajectory:
        """The trajectory of another frame rigidly attached to this one: ``T_world_other = T_world_frame @
        T_frame_other`` at every stamp (e.g. a robot's base from its camera's, with ``inv(T_base_camera)``)."""
        return Trajectory(self.stamps_ns.copy(), self.poses @ np.asarray(T_frame_other, np.float64),
                          source=f"{self.source} (moved)", notes=list(self.notes))

    @classmethod
    def from_lists(cls, stamps: Iterable[int], poses: Iterable[np.ndarray], source: str = "") -> Trajectory:
        stamps, poses = list(stamps), list(poses)
        return cls(np.array(stamps, dtype=np.int64), np.array(poses).reshape(-1, 4, 4), source)

    def at(self, stamp_ns: int, max_gap_ns: int = 100_000_000) -> np.ndarray | None:
        """The ``(4, 4)`` pose at ``stamp_ns``: the exact sample, or interpolated (linear position, slerp
        rotation) between the two bracketing samples when they are at most ``max_gap_ns`` apart; else None."""
        if len(self) == 0:
            return None
        i = int(np.searchsorted(self.stamps_ns, stamp_ns))
        if i < len(self) and self.stamps_ns[i] == stamp_ns:
            return self.poses[i].copy()
        if i == 0 or i == len(self):
            return None
        t0, t1 = int(self.stamps_ns[i - 1]), int(self.stamps_ns[i])
        if t1 - t0 > max_gap_ns:
            return None
        from scipy.spatial.transform import Rotation, Slerp

        a = (stamp_ns - t0) / (t1 - t0)
        T0, T1 = self.poses[i - 1], self.poses[i]
        slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([T0[:3, :3], T1[:3, :3]])))
        T = np.eye(4)
        T[:3, :3] = slerp([a]).as_matrix()[0]
        T[:3, 3] = (1 - a) * T0[:3, 3] + a * T1[:3, 3]
        return T

    def relative(self, stamp0_ns: int, stamp1_ns: int, max_gap_ns: int = 100_000_000) -> np.ndarray | None:
        """``T_1_0`` ``(4, 4)`` (maps frame-0 points into frame 1: ``X1 = R X0 + t``), or None."""
        T0, T1 = self.at(stamp0_ns, max_gap_ns), self.at(stamp1_ns, max_gap_ns)
        if T0 is None or T1 is None:
            return None
        return np.linalg.inv(T1) @ T0

    def by_stamp(self) -> dict[int, np.ndarray]:
        """``{stamp_ns: (4, 4) pose}`` of the samples."""
        return {int(s): T.copy() for s, T in zip(self.stamps_ns, self.poses)}


def read_tum(path: str | Path) -> Trajectory:
    """A TUM trajectory file (``t tx ty tz qx qy qz qw`` per line, ``#`` comments; commas allowed)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"ground-truth file {path} does not exist")
    stamps, poses = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 8:
            raise DatasetError(f"{path}:{number}: expected 8 columns (t tx ty tz qx qy qz qw), got {len(parts)}")
        try:
            values = [float(p) for p in parts[1:]]
            stamps.append(parse_stamp(parts[0]))
            poses.append(pose_matrix(values[:3], values[3:]))
        except ValueError as exc:  # DatasetError is one
            raise DatasetError(f"{path}:{number}: {exc}") from None
    if not stamps:
        raise DatasetError(f"{path}: no poses in the file")
    return Trajectory.from_lists(stamps, poses, source=str(path))


def write_tum(path: str | Path, traj: Trajectory) -> Path:
    """Write ``traj`` as a TUM file (stamps with nine decimals, quaternion scalar-last with ``qw >= 0``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    for stamp, T in zip(traj.stamps_ns, traj.poses):
        values = " ".join(f"{v:.9f}" for v in (*T[:3, 3], *rotation_to_quat(T[:3, :3])))
        lines.append(f"{format_stamp(int(stamp))} {values}")
    path.write_text("\n".join(lines) + "\n")
    return path


# -- sequences ------------------------------------------------------------------------------------
def read_frame_list(listing: str | Path, root: str | Path | None = None) -> list[tuple[int, Path]]:
    """``timestamp[s] path`` lines (``images.txt``, ``depth.txt``, ``images_right.txt``) -> ``[(stamp_ns,
    path)]`` in file order, paths relative to ``root`` (default: the listing's folder), each checked to exist."""
    listing = Path(listing)
    root = listing.parent if root is None else Path(root)
    frames: list[tuple[int, Path]] = []
    for number, parts in _rows(listing):
        if len(parts) < 2:
            raise DatasetError(f"{listing}:{number}: expected 'timestamp path', got {' '.join(parts)!r}")
        try:
            stamp = parse_stamp(parts[0])
        except DatasetError as exc:
            raise DatasetError(f"{listing}:{number}: {exc}") from None
        path = root / parts[1]
        if not path.is_file():
            raise DatasetError(f"{listing}:{number}: image {path} does not exist")
        frames.append((stamp, path))
    if not frames:
        raise DatasetError(f"{listing} lists no images")
    return frames


@dataclass
class Depth:
    """The depth images of an RGB-D sequence (``depth.txt``; one per colour image, same stamps)."""

    frames: list[tuple[int, Path]]
    scale: float            # PNG value per metre: depth[m] = value / scale; 0 = no measurement
    registered: bool        # True: on the colour image's pixel grid, with the colour camera's K


@dataclass
class Stereo:
    """The right camera of a rectified stereo pair (``images_right.txt``; same stamps as the left images).
    ``X_right = X_left - [baseline_m, 0, 0]``; depth ``Z = fx * baseline_m / (u_left - u_right)``."""

    frames: list[tuple[int, Path]]
    baseline_m: float
    camera: CameraModel     # the right camera (same size as the left, no distortion)


@dataclass
class Sequence:
    """A sequence folder: the (left / colour) camera's frames in time order and what belongs to them.

    Attributes:
        root: the folder.
        frames: ``[(stamp_ns, image path)]`` from ``images.txt``.
        camera: from ``intrinsics.yaml``.
        ground_truth: ``groundtruth.txt`` (``T_world_camera``), or None when the folder has none.
        depth: RGB-D folders (``depth.txt``), else None.
        stereo: stereo folders (``images_right.txt`` and ``stereo:``), else None.
    """

    root: Path
    frames: list[tuple[int, Path]]
    camera: CameraModel
    ground_truth: Trajectory | None = None
    depth: Depth | None = None
    stereo: Stereo | None = None


def read_sequence(folder: str | Path) -> Sequence:
    """A sequence folder of ``../shared/data`` (see the module docstring); :class:`DatasetError` naming the
    missing or bad file."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not (root / "images.txt").is_file():
        raise DatasetError(f"{root} is not a sequence folder: images.txt is missing")
    frames = read_frame_list(root / "images.txt", root)
    try:
        camera = CameraModel.from_yaml(root / "intrinsics.yaml")
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    gt = read_tum(root / "groundtruth.txt") if (root / "groundtruth.txt").is_file() else None
    extra = _intrinsics_extras(root / "intrinsics.yaml")
    return Sequence(root, frames, camera, gt, _read_depth(root, frames, extra),
                    _read_stereo(root, frames, camera, extra))


def _intrinsics_extras(path: Path) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(path.read_text())
    return {k: doc[k] for k in ("depth_scale", "depth_registered", "stereo") if k in doc}


def _same_stamps(listing: Path, frames: list[tuple[int, Path]], left: list[tuple[int, Path]]) -> None:
    if [s for s, _ in frames] != [s for s, _ in left]:
        raise DatasetError(f"{listing}: the timestamps differ from images.txt (same stamps, same order expected)")


def _positive(value: Any, what: str, path: Path) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (number > 0 and math.isfinite(number)):
        raise DatasetError(f"{path}: {what} must be a positive number, got {value!r}")
    return number


def _read_depth(root: Path, left: list[tuple[int, Path]], extra: dict[str, Any]) -> Depth | None:
    listing = root / "depth.txt"
    if not listing.is_file():
        return None
    frames = read_frame_list(listing, root)
    _same_stamps(listing, frames, left)
    scale = _positive(extra.get("depth_scale"), "depth_scale", root / "intrinsics.yaml")
    return Depth(frames, scale, bool(extra.get("depth_registered", False)))


def _read_stereo(root: Path, left: list[tuple[int, Path]], camera: CameraModel,
                 extra: dict[str, Any]) -> Stereo | None:
    listing = root / "images_right.txt"
    if not listing.is_file():
        return None
    frames = read_frame_list(listing, root)
    _same_stamps(listing, frames, left)
    rig = extra.get("stereo")
    yaml_path = root / "intrinsics.yaml"
    if not isinstance(rig, dict):
        raise DatasetError(f"{yaml_path}: a stereo folder needs a 'stereo:' block (baseline_m, right_fx ...)")
    fx, fy, cx, cy = (_positive(rig.get(f"right_{k}"), f"stereo.right_{k}", yaml_path)
                      for k in ("fx", "fy", "cx", "cy"))
    right = CameraModel.from_matrix(camera.width, camera.height, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    return Stereo(frames, _positive(rig.get("baseline_m"), "stereo.baseline_m", yaml_path), right)


# -- pairs with relative pose -----------------------------------------------------------------------
@dataclass
class PosePair:
    """One line of a ``pairs.txt``: images (absolute paths), ``(3, 3)`` intrinsics and ``(4, 4)`` ``T_0to1``
    (``X1 = R X0 + t``)."""

    image0: Path
    image1: Path
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: np.ndarray


def read_pose_pairs(folder: str | Path) -> list[PosePair]:
    """``folder/pairs.txt`` in the layout ``img0 img1 K0[9] K1[9] T_0to1[16]`` (row-major)."""
    folder = Path(folder)
    listing = folder / "pairs.txt"
    out = []
    for number, tok in _rows(listing):
        if len(tok) != 2 + 9 + 9 + 16:
            raise DatasetError(f"{listing}:{number}: expected 36 fields, got {len(tok)}")
        try:
            v = np.array(tok[2:], np.float64)
        except ValueError as exc:
            raise DatasetError(f"{listing}:{number}: {exc}") from None
        out.append(PosePair(folder / tok[0], folder / tok[1], v[:9].reshape(3, 3), v[9:18].reshape(3, 3),
                            v[18:].reshape(4, 4)))
    return out


def pair_camera(folder: str | Path, K: np.ndarray, image_path: str | Path) -> CameraModel:
    """The camera of a pair image: the folder's ``intrinsics.yaml`` (with its distortion) when its K is this
    one, else a pinhole camera with ``K`` at the image's size."""
    yaml_path = Path(folder) / "intrinsics.yaml"
    if yaml_path.is_file():
        cam = CameraModel.from_yaml(yaml_path)
        if np.allclose(cam.K, K, atol=1e-3):
            return cam
    import cv2

    image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetError(f"cannot read image {image_path}")
    h, w = image.shape
    return CameraModel.from_matrix(w, h, K)
