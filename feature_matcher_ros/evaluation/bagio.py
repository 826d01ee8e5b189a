"""Reading and writing rosbag2 (mcap and sqlite3) with ``rosbags`` (pure Python, no ROS needed).

Reading: topic discovery (image, camera info, ground truth), image decoding, camera models from
``sensor_msgs/CameraInfo``, ground truth from ``PoseStamped``, ``PoseWithCovarianceStamped``,
``Odometry`` or ``TF`` (a frame's chain of parents, static links from ``/tf_static``).
Writing: a bag from a dataset folder in the ``../shared/data`` sequence layout (see ``make_bag``).

Every problem a user can cause (missing topic, no camera info, unknown encoding, truncated or
corrupt file) raises :class:`BagError` with a one-line message naming it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..datasets import Trajectory, read_sequence
from ..messages import (
    InputError, camera_info_to_model, decode_image, opencv_to_matcher_image, pose_to_matrix, stamp_to_ns,
    transform_to_matrix,
)
from ..se3 import rotation_to_quat

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

@contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """An open :class:`rosbags.rosbag2.Reader`; every failure becomes a :class:`BagError`."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    if path.is_file() and path.suffix not in (".mcap", ".db3"):
        raise BagError(f"{path} is not a rosbag2 (expected a bag folder, a .mcap or a .db3 file)")
    try:
        reader = Reader(path)
        reader.open()
    except BagError:
        raise
    except Exception as exc:  # noqa: BLE001 - rosbags raises many types for broken files
        raise BagError(f"cannot open bag {path}: {_describe(exc)} (truncated or corrupt file?)") from None
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


def _pick(types: dict[str, str], wanted: tuple[str, ...], what: str, option: str, given: str | None,
          prefer: tuple[str, ...] = ()) -> str | None:
    """The one topic of a type in ``wanted`` (or ``given``); BagError when missing or ambiguous."""
    listing = ", ".join(f"{t} [{m}]" for t, m in sorted(types.items())) or "none"
    if given:
        if given not in types:
            raise BagError(f"{what} topic {given} is not in the bag (topics: {listing})")
        if types[given] not in wanted:
            raise BagError(f"{what} topic {given} has type {types[given]}, expected one of {', '.join(wanted)}")
        return given
    candidates = sorted(t for t, m in types.items() if m in wanted)
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
    img = _pick(types, (IMAGE, COMPRESSED_IMAGE), "image", "--image-topic", image, prefer=("image_raw", "image_rect"))
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


# -- writing -------------------------------------------------------------------------------------------

@dataclass
class SequenceBagOptions:
    """How :func:`write_sequence_bag` lays out a bag (defaults are what ``fm-make-bag`` writes)."""

    storage: str = "mcap"                       # "mcap" | "sqlite3"
    compression: str = "zstd"                   # "zstd" | "none" (mcap: chunk compression, sqlite3: per message)
    encoding: str = "auto"                      # "auto" (rgb8 colour, mono8 gray) | "mono8" | "rgb8" | "bgr8"
    image_topic: str = "/camera/image_raw"
    camera_info_topic: str = "/camera/camera_info"
    gt_topic: str = "/ground_truth/pose"        # PoseStamped; "" for none
    tf_topic: str = ""                          # also write the ground truth as TF here (e.g. "/tf")
    camera_frame: str = "camera_optical_frame"
    world_frame: str = "world"
    frames: str = ""                            # python slice of the image list, e.g. "0:12:3" ("" = all)


def parse_slice(text: str) -> slice:
    """``"start:stop:step"`` (parts optional) -> slice; BagError when malformed."""
    parts = text.split(":") if text else []
    if len(parts) > 3:
        raise BagError(f"frames must look like START:STOP:STEP, got {text!r}")
    try:
        values = [int(p) if p.strip() else None for p in parts] + [None] * (3 - len(parts))
    except ValueError:
        raise BagError(f"frames must look like START:STOP:STEP with integers, got {text!r}") from None
    if values[2] is not None and values[2] <= 0:
        raise BagError(f"frames: the step must be positive, got {values[2]}")
    return slice(*values)


def _time(store: Any, stamp: int) -> Any:
    return store.types["builtin_interfaces/msg/Time"](sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000)


def _header(store: Any, stamp: int, frame_id: str) -> Any:
    return store.types["std_msgs/msg/Header"](stamp=_time(store, stamp), frame_id=frame_id)


def image_message(store: Any, image: np.ndarray, stamp: int, frame_id: str, encoding: str) -> Any:
    """``(H, W)`` gray or ``(H, W, 3)`` RGB uint8 -> ``sensor_msgs/Image`` in ``encoding``."""
    import cv2

    if encoding == "auto":
        encoding = "rgb8" if image.ndim == 3 else "mono8"
    if encoding == "mono8":
        data = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif encoding in ("rgb8", "bgr8"):
        data = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        if encoding == "bgr8":
            data = data[..., ::-1]
    else:
        raise BagError(f"cannot write image encoding {encoding!r} (choose auto, mono8, rgb8 or bgr8)")
    data = np.ascontiguousarray(data, dtype=np.uint8)
    h, w = data.shape[:2]
    channels = 1 if data.ndim == 2 else 3
    return store.types[IMAGE](header=_header(store, stamp, frame_id), height=h, width=w, encoding=encoding,
                              is_bigendian=0, step=w * channels, data=data.reshape(-1))


def camera_info_message(store: Any, camera: Any, stamp: int, frame_id: str) -> Any:
    """A :class:`CameraModel` -> ``sensor_msgs/CameraInfo`` (plumb_bob, or rational_polynomial for 8+ coefficients)."""
    dist = np.asarray(camera.dist, dtype=np.float64).reshape(-1)
    if len(dist) < 5:
        dist = np.concatenate([dist, np.zeros(5 - len(dist))])
    model = "rational_polynomial" if len(dist) > 5 else "plumb_bob"
    P = np.zeros((3, 4))
    P[:, :3] = camera.K
    roi = store.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return store.types[CAMERA_INFO](
        header=_header(store, stamp, frame_id), height=int(camera.height), width=int(camera.width),
        distortion_model=model, d=dist, k=np.asarray(camera.K, dtype=np.float64).reshape(-1),
        r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def _pose_parts(store: Any, T: np.ndarray) -> tuple[Any, Any]:
    q = rotation_to_quat(T[:3, :3])
    quat = store.types["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
    return T[:3, 3].astype(float), quat


def pose_stamped_message(store: Any, T: np.ndarray, stamp: int, frame_id: str) -> Any:
    p, quat = _pose_parts(store, T)
    point = store.types["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2])
    pose = store.types["geometry_msgs/msg/Pose"](position=point, orientation=quat)
    return store.types[POSE_STAMPED](header=_header(store, stamp, frame_id), pose=pose)


def tf_message(store: Any, T: np.ndarray, stamp: int, parent: str, child: str) -> Any:
    p, quat = _pose_parts(store, T)
    vec = store.types["geometry_msgs/msg/Vector3"](x=p[0], y=p[1], z=p[2])
    tr = store.types["geometry_msgs/msg/Transform"](translation=vec, rotation=quat)
    ts = store.types["geometry_msgs/msg/TransformStamped"](header=_header(store, stamp, parent),
                                                          child_frame_id=child, transform=tr)
    return store.types[TF](transforms=[ts])


def write_sequence_bag(dataset_dir: str | Path, out: str | Path, options: SequenceBagOptions | None = None,
                       progress: bool = False) -> dict:
    """Write a rosbag2 from a sequence folder: per frame (log time = the dataset stamp) a CameraInfo,
    an Image and, when the folder has ``groundtruth.txt``, a ground-truth PoseStamped (``T_world_camera``
    of the optical frame, ``header.frame_id`` = the world frame) and optionally a TF. Returns a summary."""
    opts = options or SequenceBagOptions()
    if opts.storage not in ("mcap", "sqlite3"):
        raise BagError(f"storage must be mcap or sqlite3, not {opts.storage!r}")
    if opts.compression not in ("zstd", "none"):
        raise BagError(f"compression must be zstd or none, not {opts.compression!r}")
    seq = read_sequence(dataset_dir)
    frames = seq.frames[parse_slice(opts.frames)] if opts.frames else seq.frames
    if not frames:
        raise BagError(f"frames {opts.frames!r} selects no image of {dataset_dir}")
    out = Path(out)
    if out.exists():
        raise BagError(f"{out} exists already; remove it or choose another output")
    writer = _bag_writer(out, opts, Path(dataset_dir).resolve().name)
    try:
        writer.open()
        topics = _sequence_topics(opts, seq.ground_truth is not None)
        connections = {t: writer.add_connection(t, msgtype, typestore=typestore()) for t, msgtype in topics.items()}
        if progress:
            from tqdm import tqdm

            frames = tqdm(frames, desc="fm-make-bag", unit="frame")
        counts = {t: 0 for t in topics}
        for stamp, path in frames:
            for topic, msg in _frame_messages(stamp, _load_image(path, seq.camera), seq, opts):
                if topic in connections:
                    writer.write(connections[topic], stamp, typestore().serialize_cdr(msg, topics[topic]))
                    counts[topic] += 1
        writer.close()
    except BaseException:
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass
        import shutil

        shutil.rmtree(out, ignore_errors=True)  # never leave half a bag behind
        raise
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    by_kind = {_KINDS[m]: counts[t] for t, m in topics.items()}
    return {"bag": str(out), "storage": opts.storage, "compression": opts.compression, "bytes": size,
            "topics": {opts.image_topic: IMAGE, **topics},
            **{k: by_kind.get(k, 0) for k in ("images", "camera_info", "ground_truth", "tf")}}


#: what the summary of :func:`write_sequence_bag` calls each message type's count
_KINDS = {IMAGE: "images", CAMERA_INFO: "camera_info", POSE_STAMPED: "ground_truth", TF: "tf"}


def _bag_writer(out: Path, opts: SequenceBagOptions, source: str) -> Any:
    """A rosbag2 writer (not yet open) with the storage, compression and provenance of ``opts``."""
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin

    plugin = StoragePlugin.MCAP if opts.storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(out, version=Writer.VERSION_LATEST, storage_plugin=plugin)
    if opts.compression == "zstd":
        mode = CompressionMode.STORAGE if opts.storage == "mcap" else CompressionMode.MESSAGE
        writer.set_compression(mode, CompressionFormat.ZSTD)
    writer.set_custom_data("feature_matcher_ros.source", source)
    writer.set_custom_data("feature_matcher_ros.made_by", "fm-make-bag")
    return writer


def _sequence_topics(opts: SequenceBagOptions, has_ground_truth: bool) -> dict[str, str]:
    """topic -> message type of what :func:`write_sequence_bag` writes (camera info first)."""
    topics = {opts.camera_info_topic: CAMERA_INFO, opts.image_topic: IMAGE}
    if has_ground_truth and opts.gt_topic:
        topics[opts.gt_topic] = POSE_STAMPED
    if has_ground_truth and opts.tf_topic:
        topics[opts.tf_topic] = TF
    return topics


def _load_image(path: Path, camera: Any) -> np.ndarray:
    """An image file as the node would see it (``(H, W)`` uint8 gray or ``(H, W, 3)`` uint8 RGB; 16-bit files
    stretched), checked against the camera's size."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise BagError(f"cannot read image {path}")
    try:
        image = opencv_to_matcher_image(image)
    except InputError as err:
        raise BagError(f"image {path}: {err}") from None
    if image.shape[:2] != (camera.height, camera.width):
        raise BagError(f"image {path} is {image.shape[1]}x{image.shape[0]} but intrinsics.yaml says "
                       f"{camera.width}x{camera.height}")
    return image


def _frame_messages(stamp: int, image: np.ndarray, seq: Any, opts: SequenceBagOptions) -> Iterator[tuple[str, Any]]:
    """``(topic, message)`` of one frame: camera info, image, and the ground truth at exactly its stamp."""
    store = typestore()
    yield opts.camera_info_topic, camera_info_message(store, seq.camera, stamp, opts.camera_frame)
    yield opts.image_topic, image_message(store, image, stamp, opts.camera_frame, opts.encoding)
    T = seq.ground_truth.at(stamp, max_gap_ns=0) if seq.ground_truth is not None else None
    if T is not None:
        yield opts.gt_topic, pose_stamped_message(store, T, stamp, opts.world_frame)
        yield opts.tf_topic, tf_message(store, T, stamp, opts.world_frame, opts.camera_frame)


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
