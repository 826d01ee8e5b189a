"""Writing a rosbag2 from a dataset folder in the ``../shared/data`` sequence layout (``fm-make-bag``), and
the message builders it uses (also handy for writing bags in tests)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import DatasetError, parse_stamp, read_sequence
from ..messages import InputError, opencv_to_matcher_image
from ..se3 import rotation_to_quat
from .bagio import CAMERA_INFO, IMAGE, POSE_STAMPED, TF, BagError, typestore


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
    depth_topic: str = "/camera/depth/image_raw"            # RGB-D folders ("" for none)
    depth_camera_info_topic: str = "/camera/depth/camera_info"
    depth_encoding: str = "16UC1"               # "16UC1" (millimetres, like RGB-D drivers) | "32FC1" (metres)
    right_image_topic: str = "/camera/right/image_raw"      # stereo folders ("" for none)
    right_camera_info_topic: str = "/camera/right/camera_info"
    right_camera_frame: str = "camera_right_optical_frame"
    stamp_offset: str = "auto"                  # seconds added to every stamp; auto: 1 s when the first is <= 0
    mount: tuple[float, ...] | None = None      # x y z roll pitch yaw of the camera on base_frame -> /tf_static
    base_frame: str = "base_link"
    there_and_back: bool = False                # the even frames forward, then the odd ones backward


DEPTH_ENCODINGS = ("16UC1", "32FC1")


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


def depth_message(store: Any, depth_png: np.ndarray, units_per_m: float, stamp: int, frame_id: str,
                  encoding: str) -> Any:
    """A dataset depth PNG (``(H, W)`` uint16, ``value / units_per_m`` metres, 0 = none) -> ``sensor_msgs/Image``:
    ``16UC1`` in millimetres (REP 118, what RGB-D drivers publish; rounded, 0 = none) or ``32FC1`` in metres
    (NaN = none)."""
    metres = depth_png.astype(np.float64) / units_per_m
    if encoding == "16UC1":
        data = np.where(depth_png > 0, np.clip(np.rint(metres * 1000.0), 1, 65535), 0).astype("<u2")
    elif encoding == "32FC1":
        data = np.where(depth_png > 0, metres, np.nan).astype("<f4")
    else:
        raise BagError(f"depth encoding must be one of {', '.join(DEPTH_ENCODINGS)}, not {encoding!r}")
    h, w = data.shape
    return store.types[IMAGE](header=_header(store, stamp, frame_id), height=h, width=w, encoding=encoding,
                              is_bigendian=0, step=w * data.itemsize, data=data.reshape(-1).view(np.uint8))


def camera_info_message(store: Any, camera: Any, stamp: int, frame_id: str, tx_px: float = 0.0) -> Any:
    """A :class:`CameraModel` -> ``sensor_msgs/CameraInfo`` (plumb_bob, or rational_polynomial for 8+ coefficients).
    ``P = [K | (tx_px, 0, 0)]``: a rectified stereo pair's right camera has ``tx_px = -fx * baseline``."""
    dist = np.asarray(camera.dist, dtype=np.float64).reshape(-1)
    if len(dist) < 5:
        dist = np.concatenate([dist, np.zeros(5 - len(dist))])
    model = "rational_polynomial" if len(dist) > 5 else "plumb_bob"
    P = np.zeros((3, 4))
    P[:, :3] = camera.K
    P[0, 3] = tx_px
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
    """Write a rosbag2 from a sequence folder: per frame (log time = the stamp) a CameraInfo, an Image,
    for an RGB-D folder the registered depth Image and its CameraInfo (the colour one), for a stereo folder
    the right Image and CameraInfo (``P[3] = -fx * baseline``), and, when the folder has ``groundtruth.txt``,
    a ground-truth PoseStamped (``T_world_camera`` of the optical frame in the world frame) and optionally a
    TF. Stamps are the dataset's plus the stamp offset. Returns a summary."""
    opts = options or SequenceBagOptions()
    _check_options(opts)
    seq = read_sequence(dataset_dir)
    frames = seq.frames[parse_slice(opts.frames)] if opts.frames else seq.frames
    if len(frames) < (2 if opts.there_and_back else 1):
        raise BagError(f"frames {opts.frames!r} selects {len(frames)} images of {dataset_dir}")
    if seq.depth is not None and opts.depth_topic and not seq.depth.registered:
        raise BagError(f"{dataset_dir}: the depth images are not registered to the colour camera "
                       "(depth_registered: true in intrinsics.yaml); only registered depth can be written")
    out = Path(out)
    if out.exists():
        raise BagError(f"{out} exists already; remove it or choose another output")
    offset = stamp_offset_ns(opts.stamp_offset, seq.frames[0][0])
    topics = _sequence_topics(opts, seq)
    writer = _bag_writer(out, opts, Path(dataset_dir).resolve().name, offset)
    try:
        counts = _write_frames(writer, topics, frames, seq, opts, offset, progress)
    except BaseException:
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass
        import shutil

        shutil.rmtree(out, ignore_errors=True)  # never leave half a bag behind
        raise
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    by_kind = {kind: counts[t] for t, (_, kind) in topics.items()}
    return {"bag": str(out), "storage": opts.storage, "compression": opts.compression, "bytes": size,
            "stamp_offset_ns": offset, "topics": {t: msgtype for t, (msgtype, _) in topics.items()},
            **{k: by_kind.get(k, 0) for k in KINDS}}


#: what the summary of :func:`write_sequence_bag` counts, by kind of topic
KINDS = ("images", "camera_info", "ground_truth", "tf", "depth", "depth_camera_info", "right_images",
         "right_camera_info", "mount")
MOUNT_TOPIC = "/tf_static"


def _check_options(opts: SequenceBagOptions) -> None:
    if opts.storage not in ("mcap", "sqlite3"):
        raise BagError(f"storage must be mcap or sqlite3, not {opts.storage!r}")
    if opts.compression not in ("zstd", "none"):
        raise BagError(f"compression must be zstd or none, not {opts.compression!r}")
    if opts.depth_encoding not in DEPTH_ENCODINGS:
        raise BagError(f"depth encoding must be one of {', '.join(DEPTH_ENCODINGS)}, not {opts.depth_encoding!r}")


def stamp_offset_ns(text: str, first_stamp_ns: int) -> int:
    """The offset added to every stamp: ``auto`` is 1 s when the sequence's first stamp is <= 0 (KITTI's start
    at 0, which ROS reads as "no stamp"), else 0; otherwise ``text`` seconds."""
    if text == "auto":
        return 1_000_000_000 if first_stamp_ns <= 0 else 0
    try:
        return parse_stamp(text)
    except DatasetError:
        raise BagError(f"stamp offset must be 'auto' or seconds, got {text!r}") from None


def frame_order(frames: list[tuple[int, Path]], there_and_back: bool = False) -> list[tuple[int, Path, int]]:
    """``(dataset stamp, image, written stamp)`` per frame in bag order. There and back: the even frames forward,
    then the odd frames backward; written stamps follow the dataset's intervals, always increasing (the way back
    takes as long as the way out).

    >>> [(s, p, w) for s, p, w in frame_order([(10, "a"), (20, "b"), (30, "c"), (40, "d"), (50, "e")], True)]
    [(10, 'a', 10), (30, 'c', 30), (50, 'e', 50), (40, 'd', 60), (20, 'b', 80)]
    """
    if there_and_back:
        frames = list(frames[0::2]) + list(frames[1::2])[::-1]
    order, written = [], None
    for stamp, path in frames:
        written = stamp if written is None else written + abs(stamp - order[-1][0])
        order.append((stamp, path, written))
    return order


def _write_frames(writer: Any, topics: dict[str, tuple[str, str]], frames: list, seq: Any,
                  opts: SequenceBagOptions, offset: int, progress: bool) -> dict[str, int]:
    """Open ``writer``, write every frame's messages (in :func:`frame_order`), close it; the message count per
    topic."""
    writer.open()
    connections = {t: writer.add_connection(t, msgtype, typestore=typestore()) for t, (msgtype, _) in topics.items()}
    order = frame_order(frames, opts.there_and_back)
    extra = _extra_files(seq)
    counts = {t: 0 for t in topics}
    if MOUNT_TOPIC in connections and order:  # the camera's mounting, once, before the first frame
        from ..base_odometry import camera_mount

        first = order[0][2] + offset
        msg = tf_message(typestore(), camera_mount(*opts.mount), first, opts.base_frame, opts.camera_frame)
        writer.write(connections[MOUNT_TOPIC], first, typestore().serialize_cdr(msg, TF))
        counts[MOUNT_TOPIC] += 1
    if progress:
        from tqdm import tqdm

        order = tqdm(order, desc="fm-make-bag", unit="frame")
    for stamp, path, written in order:
        for topic, msg in _frame_messages(stamp, path, extra.get(stamp, {}), seq, opts, written + offset):
            if topic in connections:
                writer.write(connections[topic], written + offset, typestore().serialize_cdr(msg, topics[topic][0]))
                counts[topic] += 1
    writer.close()
    return counts


def _bag_writer(out: Path, opts: SequenceBagOptions, source: str, offset: int) -> Any:
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
    writer.set_custom_data("feature_matcher_ros.stamp_offset_ns", str(offset))
    return writer


def _sequence_topics(opts: SequenceBagOptions, seq: Any) -> dict[str, tuple[str, str]]:
    """topic -> (message type, kind) of what :func:`write_sequence_bag` writes (camera info first)."""
    wanted = [(opts.camera_info_topic, CAMERA_INFO, "camera_info"), (opts.image_topic, IMAGE, "images")]
    if seq.depth is not None and opts.depth_topic:
        wanted += [(opts.depth_camera_info_topic, CAMERA_INFO, "depth_camera_info"), (opts.depth_topic, IMAGE, "depth")]
    if seq.stereo is not None and opts.right_image_topic:
        wanted += [(opts.right_camera_info_topic, CAMERA_INFO, "right_camera_info"),
                   (opts.right_image_topic, IMAGE, "right_images")]
    if seq.ground_truth is not None:
        wanted += [(opts.gt_topic, POSE_STAMPED, "ground_truth"), (opts.tf_topic, TF, "tf")]
    if opts.mount is not None:
        if len(opts.mount) != 6:
            raise BagError(f"mount needs x y z roll pitch yaw, got {list(opts.mount)}")
        wanted.append((MOUNT_TOPIC, TF, "mount"))
    named = [w for w in wanted if w[0]]  # '' = not written (no ground truth, no TF, ...)
    topics = {topic: (msgtype, kind) for topic, msgtype, kind in named}
    if len(topics) != len(named) or not opts.image_topic or not opts.camera_info_topic:
        raise BagError(f"topic names must be distinct, image and camera info not empty: {[w[0] for w in wanted]}")
    return topics


def _extra_files(seq: Any) -> dict[int, dict[str, Path]]:
    """stamp -> the depth / right image file of that frame (same stamps as the images)."""
    extra: dict[int, dict[str, Path]] = {}
    for kind, part in (("depth", seq.depth), ("right", seq.stereo)):
        for stamp, path in (part.frames if part is not None else []):
            extra.setdefault(stamp, {})[kind] = path
    return extra


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


def _frame_messages(stamp: int, path: Path, extra: dict[str, Path], seq: Any, opts: SequenceBagOptions,
                    when: int) -> Iterator[tuple[str, Any]]:
    """``(topic, message)`` of one frame (``stamp`` in the dataset): camera info, image, depth or the right camera
    when the folder has them, and the ground truth at exactly its stamp; message stamps are ``when``."""
    store = typestore()
    yield opts.camera_info_topic, camera_info_message(store, seq.camera, when, opts.camera_frame)
    yield opts.image_topic, image_message(store, _load_image(path, seq.camera), when, opts.camera_frame, opts.encoding)
    if "depth" in extra and opts.depth_topic:
        yield opts.depth_camera_info_topic, camera_info_message(store, seq.camera, when, opts.camera_frame)
        yield opts.depth_topic, depth_message(store, _load_depth(extra["depth"], seq.camera), seq.depth.scale, when,
                                              opts.camera_frame, opts.depth_encoding)
    if "right" in extra and opts.right_image_topic:
        right = seq.stereo.camera
        yield opts.right_camera_info_topic, camera_info_message(store, right, when, opts.right_camera_frame,
                                                                tx_px=-right.fx * seq.stereo.baseline_m)
        yield opts.right_image_topic, image_message(store, _load_image(extra["right"], right), when,
                                                    opts.right_camera_frame, opts.encoding)
    T = seq.ground_truth.at(stamp, max_gap_ns=0) if seq.ground_truth is not None else None
    if T is not None:
        yield opts.gt_topic, pose_stamped_message(store, T, when, opts.world_frame)
        yield opts.tf_topic, tf_message(store, T, when, opts.world_frame, opts.camera_frame)


def _load_depth(path: Path, camera: Any) -> np.ndarray:
    """A 16-bit depth PNG, checked against the camera's size."""
    import cv2

    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth is None or depth.dtype != np.uint16 or depth.ndim != 2:
        raise BagError(f"depth image {path} is not a 16-bit single-channel PNG")
    if depth.shape != (camera.height, camera.width):
        raise BagError(f"depth image {path} is {depth.shape[1]}x{depth.shape[0]} but intrinsics.yaml says "
                       f"{camera.width}x{camera.height}")
    return depth
