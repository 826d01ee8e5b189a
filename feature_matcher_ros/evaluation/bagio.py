"""Reading rosbag2 (mcap and sqlite3) and ROS 1 (``.bag``) recordings, and writing rosbag2, with ``rosbags``
(pure Python, no ROS needed).

Reading: topic discovery (image, camera info, ground truth; depth or the right camera of a stereo pair),
image decoding, camera models from ``sensor_msgs/CameraInfo``, ground truth from ``PoseStamped``,
``PoseWithCovarianceStamped``, ``Odometry`` or ``TF`` (a frame's chain of parents, static links from
``/tf_static``). A ROS 1 bag's messages are migrated to their ROS 2 (Kilted) form on reading
(:class:`Ros1Bag`), so everything after :func:`raw_messages` reads both kinds alike.
Writing: :mod:`.bagwrite`.

Every problem a user can cause (missing topic, no camera info, unknown encoding, truncated or
corrupt file) raises :class:`BagError` with a one-line message naming it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import Trajectory
from ..messages import (
    InputError,
    camera_info_to_model,
    decode_image,
    pose_to_matrix,
    stamp_to_ns,
    transform_to_matrix,
)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
POSE_COV_STAMPED = "geometry_msgs/msg/PoseWithCovarianceStamped"
ODOMETRY = "nav_msgs/msg/Odometry"
TF = "tf2_msgs/msg/TFMessage"
GT_TYPES = (POSE_STAMPED, POSE_COV_STAMPED, ODOMETRY, TF)

class BagError(Exception):
    """A bag that cannot be used as asked; the message says why (the tools exit with code 2)."""


@lru_cache(maxsize=1)
def typestore():
    """The message type store: ROS 2 Kilted (the distribution this package's wheels target)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


# -- opening -------------------------------------------------------------------------------------------

class Ros1Bag:
    """A ROS 1 ``.bag`` read through ``rosbags``' ``AnyReader``, with the reader interface :func:`open_bag`
    gives (``path``, ``connections``, ``messages``). Each message read is migrated from the bag's own type
    definitions to the ROS 2 Kilted type of the same name (``rosbags.convert``'s field migration: the
    header's ``seq`` goes, ``CameraInfo``'s ``D K R P`` become ``d k r p``) and serialised as CDR."""

    def __init__(self, path: Path) -> None:
        from rosbags.highlevel import AnyReader

        self.path = path
        self._reader = AnyReader([path])
        self._plans: dict[str, object] = {}

    def open(self) -> None:
        self._reader.open()

    def close(self) -> None:
        self._reader.close()

    @property
    def connections(self) -> list[Any]:
        return self._reader.connections

    def messages(self, connections: list[Any]) -> Iterator[tuple[Any, int, bytes]]:
        for conn, t, raw in self._reader.messages(connections=connections):
            yield conn, t, self._to_cdr(conn, raw)

    def _to_cdr(self, conn: Any, raw: bytes) -> bytes:
        from rosbags.convert.converter import migrate_bytes

        if conn.msgtype not in typestore().types:
            raise BagError(f"{conn.topic}: message type {conn.msgtype} has no ROS 2 form to read it as")
        return bytes(migrate_bytes(self._reader.typestore, typestore(), conn.msgtype, conn.msgtype, self._plans,
                                   raw, src_is2=False, dst_is2=True))


# The first bytes of each kind of bag file, and the suffix rosbags reads that kind by.
MAGIC = ((b"\x89MCAP", "mcap", ".mcap"), (b"SQLite format 3\x00", "sqlite3", ".db3"),
         (b"#ROSBAG V2.0", "ros1", ".bag"))
SUFFIXES = {kind: suffix for _, kind, suffix in MAGIC}


def bag_kind(path: str | Path) -> str:
    """What ``path`` is, whatever its name: ``rosbag2`` (a folder with ``metadata.yaml``), ``mcap``, ``sqlite3``
    or ``ros1`` (a file, by its first bytes); :class:`BagError` when it is none of them.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = (Path(folder) / "x.mcap").write_bytes(b"#ROSBAG V2.0 ...")
    ...     bag_kind(Path(folder) / "x.mcap")
    'ros1'
    """
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return "rosbag2"
        raise BagError(f"{path} is a folder without metadata.yaml: not a rosbag2 bag (give the folder ros2 bag "
                       "record wrote, or its .mcap / .db3 file)")
    with open(path, "rb") as f:
        head = f.read(16)
    for magic, kind, _ in MAGIC:
        if head.startswith(magic):
            return kind
    raise BagError(f"{path} is not a bag: neither mcap, sqlite3 (rosbag2) nor ROS 1 by its first bytes "
                   f"{head[:12]!r}")


@contextmanager
def _readable_name(path: Path, kind: str) -> Iterator[Path]:
    """``path``, or a link to it whose suffix names its kind (rosbags picks the reader by suffix)."""
    wanted = SUFFIXES.get(kind)
    if wanted is None or path.suffix == wanted:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="fm_bag_") as folder:
        link = Path(folder) / (path.stem + wanted)
        link.symlink_to(path.resolve())
        yield link


@contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """An open reader of a rosbag2 (:class:`rosbags.rosbag2.Reader`) or a ROS 1 bag (:class:`Ros1Bag`), chosen
    by what ``path`` is (:func:`bag_kind`), not by its name; every failure becomes a :class:`BagError`."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    kind = bag_kind(path)
    with _readable_name(path, kind) as readable:
        try:
            reader = Ros1Bag(readable) if kind == "ros1" else Reader(readable)
            reader.open()
        except BagError:
            raise
        except Exception as exc:  # noqa: BLE001 - rosbags raises many types for broken files
            raise BagError(f"cannot open bag {path}: {_describe(exc)} (truncated or corrupt file?)") from None
        reader.path = path  # messages name the user's path, not the link
        try:
            yield reader
        finally:
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - closing a broken bag must not hide the first error
                pass


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def raw_messages(reader: Any, topics: list[str]) -> Iterator[tuple[Any, int, bytes]]:
    """``(connection, log_time_ns, serialised bytes)`` of the given topics in log-time order; a read failure
    (truncated or corrupt file) becomes a :class:`BagError`."""
    it = reader.messages(connections=[c for c in reader.connections if c.topic in topics])
    while True:
        try:
            conn, t, raw = next(it)
        except StopIteration:
            return
        except BagError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BagError(f"bag {reader.path} is unreadable after some messages: {_describe(exc)} "
                           f"(truncated or corrupt file?)") from None
        yield conn, t, raw


def messages(reader: Any, topics: list[str]) -> Iterator[tuple[str, int, Any]]:
    """``(topic, log_time_ns, message)`` of the given topics in log-time order, deserialised; a read or
    decode failure becomes a :class:`BagError` naming the topic."""
    store = typestore()
    for conn, t, raw in raw_messages(reader, topics):
        try:
            msg = store.deserialize_cdr(raw, conn.msgtype)
        except Exception as exc:  # noqa: BLE001
            raise BagError(f"cannot decode a {conn.msgtype} message on {conn.topic}: {_describe(exc)}") from None
        yield conn.topic, t, msg


def topic_types(reader: Any) -> dict[str, str]:
    """topic -> message type, for every topic in the bag."""
    return {c.topic: c.msgtype for c in reader.connections}


def topic_counts(reader: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in reader.connections:
        counts[c.topic] = counts.get(c.topic, 0) + int(c.msgcount)
    return counts


# -- discovery -----------------------------------------------------------------------------------------

@dataclass
class BagTopics:
    """The topics an evaluation reads."""

    image: str
    image_type: str
    camera_info: str
    ground_truth: str | None
    ground_truth_type: str | None
    depth: str | None = None                # rgbd: the registered depth images
    right_image: str | None = None          # stereo: the rectified right camera
    right_camera_info: str | None = None


#: image topics named like these are a depth or right-camera stream, not the (left / colour) image
SECONDARY_IMAGE_WORDS = ("depth", "right")


def _pick(types: dict[str, str], wanted: tuple[str, ...], what: str, option: str, given: str | None,
          prefer: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> str | None:
    """The one topic of a type in ``wanted`` (or ``given``); BagError when missing or ambiguous. Among
    several, topics containing a word of ``exclude`` are passed over, then one containing ``prefer`` wins."""
    listing = ", ".join(f"{t} [{m}]" for t, m in sorted(types.items())) or "none"
    if given:
        if given not in types:
            raise BagError(f"{what} topic {given} is not in the bag (topics: {listing})")
        if types[given] not in wanted:
            raise BagError(f"{what} topic {given} has type {types[given]}, expected one of {', '.join(wanted)}")
        return given
    candidates = sorted(t for t, m in types.items() if m in wanted)
    kept = [t for t in candidates if not any(word in t for word in exclude)]
    if len(candidates) > 1 and kept:
        candidates = kept
    if len(candidates) > 1:
        preferred = [t for t in candidates if any(p in t for p in prefer)]
        if len(preferred) == 1:
            return preferred[0]
        raise BagError(f"several {what} topics ({', '.join(candidates)}): choose one with {option}")
    return candidates[0] if candidates else None


def discover_topics(reader: Any, image: str | None = None, camera_info: str | None = None,
                    ground_truth: str | None = None, need_ground_truth: bool = True) -> BagTopics:
    """Find the image, camera-info and ground-truth topics (explicit names win; otherwise the only
    topic of the right type). Raises :class:`BagError` naming what is missing or ambiguous."""
    types = topic_types(reader)
    counts = topic_counts(reader)
    listing = ", ".join(f"{t} [{m}]" for t, m in sorted(types.items())) or "none"
    img = _pick(types, (IMAGE, COMPRESSED_IMAGE), "image", "--image-topic", image, prefer=("image_raw", "image_rect"),
                exclude=SECONDARY_IMAGE_WORDS)
    if img is None:
        raise BagError(f"no image topic (sensor_msgs/msg/Image) in bag {reader.path} (topics: {listing})")
    if counts.get(img, 0) == 0:
        raise BagError(f"image topic {img} has no messages")
    info = camera_info
    if info is None:
        sibling = img.rsplit("/", 1)[0] + "/camera_info"
        if types.get(sibling) == CAMERA_INFO:
            info = sibling
    info = _pick(types, (CAMERA_INFO,), "camera info", "--camera-info-topic", info)
    if info is None:
        raise BagError(f"no camera info topic (sensor_msgs/msg/CameraInfo) in bag {reader.path}: "
                       f"the intrinsics are needed for the pose (topics: {listing})")
    if counts.get(info, 0) == 0:
        raise BagError(f"camera info topic {info} has no messages")
    gt = _pick(types, GT_TYPES, "ground-truth", "--gt-topic", ground_truth,
               prefer=("ground_truth", "groundtruth", "gt"))
    if gt is None and need_ground_truth:
        raise BagError(f"no ground-truth topic (PoseStamped, Odometry or TF) in bag {reader.path} "
                       f"(topics: {listing}); give a TUM file with --gt FILE")
    return BagTopics(img, types[img], info, gt, types.get(gt) if gt else None)


def discover_metric_topics(reader: Any, topics: BagTopics, mode: str, depth: str | None = None,
                           right_image: str | None = None, right_camera_info: str | None = None) -> BagTopics:
    """``topics`` with the second image stream of ``mode`` filled in: ``rgbd`` the depth topic (given, or the one
    image topic named ``*depth*``), ``stereo`` the right image (given, or the one named ``*right*``) and its
    camera info (given, or beside it). ``mono``: ``topics`` unchanged. :class:`BagError` naming what is missing."""
    if mode == "mono":
        return topics
    types = {t: m for t, m in topic_types(reader).items() if t != topics.image}
    word, option, given = ("depth", "--depth-topic", depth) if mode == "rgbd" else ("right", "--right-image-topic",
                                                                                    right_image)
    pool = types if given else {t: m for t, m in types.items() if word in t}
    found = _pick(pool, (IMAGE, COMPRESSED_IMAGE), f"{mode} {word} image", option, given)
    if found is None:
        listing = ", ".join(f"{t} [{m}]" for t, m in sorted(types.items())) or "none"
        raise BagError(f"input_mode {mode}: no {word} image topic in bag {reader.path} (an Image topic named "
                       f"*{word}*, or give {option}; topics: {listing})")
    if mode == "rgbd":
        return replace(topics, depth=found)
    info = right_camera_info or found.rsplit("/", 1)[0] + "/camera_info"
    if types.get(info) != CAMERA_INFO:
        raise BagError(f"input_mode stereo: no right camera info {info} (sensor_msgs/CameraInfo) in bag {reader.path}; "
                       "give --right-camera-info-topic")
    return replace(topics, right_image=found, right_camera_info=info)


# -- images and cameras --------------------------------------------------------------------------------

def _decode_image(msg: Any, topic: str) -> np.ndarray:
    """An ``Image`` or ``CompressedImage`` -> ``(H, W)`` uint8 gray or ``(H, W, 3)`` uint8 RGB, as the node
    decodes it (:func:`feature_matcher_ros.messages.decode_image`); BagError naming the topic."""
    try:
        return decode_image(msg)
    except InputError as err:
        raise BagError(f"{topic}: {err}") from None


def _camera(msg: Any, topic: str) -> Any:
    """A ``CameraInfo`` -> :class:`~feature_matcher_ros.camera.CameraModel`, as the node reads it."""
    try:
        return camera_info_to_model(msg)
    except InputError as err:
        raise BagError(f"{topic}: unusable camera info: {err}") from None


@dataclass
class Frame:
    """One image of a bag with its camera."""

    index: int
    stamp_ns: int
    image: np.ndarray   # (H, W) uint8 or (H, W, 3) uint8 RGB
    camera: Any         # CameraModel


def read_cameras(reader: Any, topic: str) -> list[tuple[int, Any]]:
    """``(stamp_ns, CameraModel)`` of every camera-info message, in bag order."""
    cams: list[tuple[int, Any]] = []
    last_key = None
    cam = None
    for _, _, msg in messages(reader, [topic]):
        key = (int(msg.width), int(msg.height), tuple(np.asarray(msg.k).tolist()), tuple(np.asarray(msg.d).tolist()),
               str(msg.distortion_model))
        if key != last_key:
            cam = _camera(msg, topic)
            last_key = key
        cams.append((stamp_to_ns(msg.header.stamp), cam))
    if not cams:
        raise BagError(f"camera info topic {topic} has no messages")
    return cams


def iter_frames(reader: Any, topics: BagTopics, stamps: set[int] | None = None) -> Iterator[Frame]:
    """The bag's images in order with the camera model valid for each (camera info with the same stamp,
    else the latest before it, else the first). ``stamps``: only these images (others skipped undecoded)."""
    cams = read_cameras(reader, topics.camera_info)
    by_stamp = {s: c for s, c in cams}
    cam_stamps = np.array([s for s, _ in cams], dtype=np.int64)
    order = np.argsort(cam_stamps, kind="stable")
    index = 0
    for topic, _, msg in messages(reader, [topics.image]):
        s = stamp_to_ns(msg.header.stamp)
        if stamps is not None and s not in stamps:
            index += 1
            continue
        cam = by_stamp.get(s)
        if cam is None:
            i = int(np.searchsorted(cam_stamps[order], s, side="right")) - 1
            cam = cams[order[max(i, 0)]][1]
        image = _decode_image(msg, topic)
        if image.shape[:2] != (cam.height, cam.width):  # the node refuses these too
            raise BagError(f"{topic}: image @{s} is {image.shape[1]}x{image.shape[0]} but the camera info says "
                           f"{cam.width}x{cam.height}")
        yield Frame(index, s, image, cam)
        index += 1


# -- ground truth --------------------------------------------------------------------------------------

def read_ground_truth(reader: Any, topic: str, child_frame: str | None = None) -> Trajectory:
    """Ground-truth camera poses ``T_world_camera`` from a topic.

    ``PoseStamped``/``PoseWithCovarianceStamped``/``Odometry``: the message pose, at its header stamp
    (the pose of the camera's optical frame in ``header.frame_id``). ``TF``: the transform chain from the
    root of the tree to ``child_frame`` (default: the image's ``header.frame_id``), dynamic links
    interpolated, static ones from ``/tf_static``.
    """
    types = topic_types(reader)
    msgtype = types.get(topic)
    if msgtype is None:
        raise BagError(f"ground-truth topic {topic} is not in the bag")
    if msgtype == TF:
        return _ground_truth_from_tf(reader, topic, child_frame)
    stamps, poses = [], []
    try:
        for _, _, msg in messages(reader, [topic]):
            pose = msg.pose.pose if msgtype in (ODOMETRY, POSE_COV_STAMPED) else msg.pose
            stamps.append(stamp_to_ns(msg.header.stamp))
            poses.append(pose_to_matrix(pose))
    except ValueError as exc:  # a bad quaternion
        raise BagError(f"ground-truth topic {topic}: {exc}") from None
    if not stamps:
        raise BagError(f"ground-truth topic {topic} has no messages")
    return Trajectory.from_lists(stamps, poses, source=f"{topic} [{msgtype}]")


def _ground_truth_from_tf(reader: Any, topic: str, child_frame: str | None) -> Trajectory:
    if not child_frame:
        raise BagError(f"ground truth from {topic} needs the camera frame: give --gt-frame FRAME")
    dynamic: dict[str, tuple[str, list[int], list[np.ndarray]]] = {}
    static: dict[str, tuple[str, np.ndarray]] = {}
    types = topic_types(reader)
    static_topics = [t for t, m in types.items() if m == TF and t.endswith("tf_static") and t != topic]
    try:
        for tp, _, msg in messages(reader, [topic, *static_topics]):
            for tr in msg.transforms:
                child = tr.child_frame_id.lstrip("/")
                parent = tr.header.frame_id.lstrip("/")
                if tp in static_topics:
                    static[child] = (parent, transform_to_matrix(tr.transform))
                else:
                    entry = dynamic.setdefault(child, (parent, [], []))
                    entry[1].append(stamp_to_ns(tr.header.stamp))
                    entry[2].append(transform_to_matrix(tr.transform))
    except ValueError as exc:  # a bad quaternion
        raise BagError(f"ground-truth topic {topic}: {exc}") from None
    child_frame = child_frame.lstrip("/")
    known = sorted(set(dynamic) | set(static))
    if child_frame not in known:
        raise BagError(f"frame {child_frame!r} is not a child frame in {topic} (frames: {', '.join(known) or 'none'})")
    # walk up: the chain of links from child_frame to the root
    chain: list[tuple[str, Any]] = []
    frame, seen = child_frame, set()
    while frame in dynamic or frame in static:
        if frame in seen:
            raise BagError(f"{topic}: the transform tree has a loop at {frame!r}")
        seen.add(frame)
        if frame in dynamic:
            parent, st, ps = dynamic[frame]
            chain.append(("dynamic", Trajectory.from_lists(st, ps, source=f"{topic} {parent}->{frame}")))
        else:
            parent, T = static[frame]
            chain.append(("static", T))
        frame = parent
    dyn = [c[1] for c in chain if c[0] == "dynamic"]
    if not dyn:
        raise BagError(f"{topic}: frame {child_frame!r} only has static transforms: no motion to compare with")
    base = max(dyn, key=len)  # sample at the densest moving link
    stamps, poses = [], []
    for s in base.stamps_ns:
        T = np.eye(4)
        ok = True
        for kind, link in chain:  # chain runs child -> root: T_root_child = L_n ... L_1
            M = link if kind == "static" else link.at(int(s))
            if M is None:
                ok = False
                break
            T = M @ T
        if ok:
            stamps.append(int(s))
            poses.append(T)
    return Trajectory.from_lists(stamps, poses, source=f"{topic} [TF {frame}->{child_frame}]")


def image_frame_id(reader: Any, image_topic: str) -> str:
    """The ``header.frame_id`` of the first image."""
    for _, _, msg in messages(reader, [image_topic]):
        return str(msg.header.frame_id)
    return ""


def camera_lookup(cams: list[tuple[int, Any]]):
    """A function ``stamp_ns -> CameraModel`` over :func:`read_cameras` output: the camera info with the
    same stamp, else the latest before it, else the first."""
    by_stamp = {s: c for s, c in cams}
    stamps = np.array(sorted(by_stamp), dtype=np.int64)

    def lookup(stamp: int) -> Any:
        cam = by_stamp.get(stamp)
        if cam is None:
            i = int(np.searchsorted(stamps, stamp, side="right")) - 1
            cam = by_stamp[int(stamps[max(i, 0)])]
        return cam

    return lookup


def read_mount(reader: Any, base_frame: str, camera_frame: str) -> np.ndarray:
    """``T_base_camera`` ``(4, 4)`` from the bag's static transforms (every ``TFMessage`` topic named
    ``*tf_static``): the camera's mounting on the robot, composed along the tree. :class:`BagError` when the bag
    has none connecting the two frames."""
    from ..transforms import TransformBuffer, TransformUnavailable

    buffer = TransformBuffer()
    static_topics = [t for t, m in topic_types(reader).items() if m == TF and t.endswith("tf_static")]
    try:
        for _, _, msg in messages(reader, static_topics) if static_topics else ():
            for tr in msg.transforms:
                buffer.set(tr.header.frame_id.lstrip("/"), tr.child_frame_id.lstrip("/"), 0,
                           transform_to_matrix(tr.transform), static=True)
    except ValueError as exc:  # a bad quaternion
        raise BagError(f"{static_topics}: {exc}") from None
    try:
        return buffer.lookup(base_frame.lstrip("/"), camera_frame.lstrip("/"), 0)
    except TransformUnavailable:
        where = ", ".join(static_topics) or "no /tf_static topic"
        raise BagError(f"the bag's static transforms ({where}) do not connect {base_frame} and {camera_frame}: "
                       "give the mounting with --mount X Y Z ROLL PITCH YAW") from None
