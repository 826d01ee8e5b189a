"""A bag's images with their depth (``input_mode: rgbd``) or right image (``stereo``), paired by stamp offline
the way the node pairs them live: :class:`~feature_matcher_ros.ros.sync.StampSynchronizer` (message_filters'
ApproximateTimeSynchronizer policy) fed in the bag's log-time order, with the node's ``sync.queue_size`` and
``sync.slop_s``; depth decoded with the node's ``depth.scale``; the stereo rig from the two camera infos'
projection matrices, the left one becoming the (rectified) camera. ROS-free.

A pair the node would reject (depth of another size, no valid depth, no usable rig, a right image of another
size) is skipped and counted by reason, like the node's rejection counters; images and partners that leave
their queue unpaired are counted by input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..messages import InputError, decode_image, depth_to_metres, stamp_to_ns, stereo_rig_from_infos
from ..metric import StereoFrame
from ..params import ParamSpec
from ..sync import StampSynchronizer
from .bagio import BagError, BagTopics, Frame, camera_lookup, iter_frames, messages, read_cameras
from .cli import UsageError

INPUT_MODES = ("mono", "rgbd", "stereo")

#: the node parameters that choose and pair the metric inputs (the node's names, defaults and ranges:
#: ``ros/node.py`` NODE_PARAMS, which imports rclpy; a test keeps the two equal)
PAIRING_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("input_mode", "mono", "mono, rgbd or stereo.", choices=INPUT_MODES, read_only=True),
    ParamSpec("sync.queue_size", 10, "Messages kept per input while pairing by stamp.", min=1, max=1000,
              read_only=True),
    ParamSpec("sync.slop_s", 0.02, "Largest stamp difference paired (seconds; 0 = equal stamps).", min=0.0,
              max=10.0, read_only=True),
    ParamSpec("depth.scale", 0.001, "Metres per unit of 16-bit depth.", min=1e-9, max=1e3),
)


@dataclass
class Pairing:
    """How a run takes its metric input (the node-level parameters of :data:`PAIRING_PARAMS`)."""

    input_mode: str = "mono"
    queue_size: int = 10
    slop_s: float = 0.02
    depth_scale: float = 0.001

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Pairing:
        """From node parameters (dotted names; others ignored); :class:`UsageError` for a bad value."""
        values = {}
        for spec in PAIRING_PARAMS:
            value = spec.coerce(params.get(spec.name, spec.default))
            problem = spec.check(value)
            if problem:
                raise UsageError(problem)
            values[spec.name] = value
        return cls(values["input_mode"], values["sync.queue_size"], values["sync.slop_s"], values["depth.scale"])

    def describe(self) -> dict[str, Any]:
        return {"input_mode": self.input_mode, "sync.queue_size": self.queue_size, "sync.slop_s": self.slop_s,
                "depth.scale": self.depth_scale}


@dataclass
class PairingStats:
    """What pairing did: frames paired, messages that left their queue unpaired (by input), pairs rejected
    (by reason, the node's names)."""

    paired: int = 0
    unpaired: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def describe(self) -> dict[str, Any]:
        return {"paired": self.paired, "unpaired": dict(self.unpaired), "rejected": dict(self.rejected)}


@dataclass
class PairedFrame:
    """One image with its camera and, in rgbd / stereo, its depth (metres) or right image and rig."""

    frame: Frame
    depth: np.ndarray | None = None
    stereo: StereoFrame | None = None


def iter_input_frames(reader: Any, topics: BagTopics, pairing: Pairing, stats: PairingStats) -> Iterator[PairedFrame]:
    """The frames a run processes: every image (mono), or the images paired with their partner (rgbd / stereo)."""
    if pairing.input_mode == "mono":
        return (PairedFrame(frame) for frame in iter_frames(reader, topics))
    return _paired_frames(reader, topics, pairing, stats)


def _paired_frames(reader: Any, topics: BagTopics, pairing: Pairing, stats: PairingStats) -> Iterator[PairedFrame]:
    partner_topic = topics.depth if pairing.input_mode == "rgbd" else topics.right_image
    if partner_topic is None:
        raise BagError(f"input_mode {pairing.input_mode}: the bag's {pairing.input_mode} topics were not found")
    partner = "depth" if pairing.input_mode == "rgbd" else "right"
    decoder = _PairDecoder(reader, topics, pairing, stats)
    ready: list[tuple[Any, Any]] = []
    sync = StampSynchronizer(2, pairing.queue_size, pairing.slop_s, lambda image, other: ready.append((image, other)),
                             lambda index, _: stats.count(stats.unpaired, "image" if index == 0 else partner))
    images = 0
    for topic, _, msg in messages(reader, [topics.image, partner_topic]):
        if topic == topics.image:
            sync.add(0, stamp_to_ns(msg.header.stamp), (images, msg))
            images += 1
        else:
            sync.add(1, stamp_to_ns(msg.header.stamp), msg)
        for (index, image), other in ready:
            item = decoder.decode(index, image, other)
            if item is not None:
                yield item
        ready.clear()
    for index, queue in enumerate(sync.queues):  # still waiting at the end of the bag: never paired
        for _ in queue:
            stats.count(stats.unpaired, "image" if index == 0 else partner)


class _PairDecoder:
    """A paired image and partner -> :class:`PairedFrame`, as the node decodes them (None: rejected, counted)."""

    def __init__(self, reader: Any, topics: BagTopics, pairing: Pairing, stats: PairingStats) -> None:
        self.topics, self.pairing, self.stats = topics, pairing, stats
        self.camera_at = camera_lookup(read_cameras(reader, topics.camera_info))
        self.left_info_at = self.right_info_at = None
        if pairing.input_mode == "stereo":
            self.left_info_at = _message_lookup(reader, topics.camera_info)
            self.right_info_at = _message_lookup(reader, topics.right_camera_info)

    def decode(self, index: int, image_msg: Any, partner: Any) -> PairedFrame | None:
        stamp = stamp_to_ns(image_msg.header.stamp)
        try:
            image = decode_image(image_msg)
        except InputError as err:
            raise BagError(f"{self.topics.image}: {err}") from None
        camera = self.camera_at(stamp)
        if image.shape[:2] != (camera.height, camera.width):
            raise BagError(f"{self.topics.image}: image @{stamp} is {image.shape[1]}x{image.shape[0]} but the camera "
                           f"info says {camera.width}x{camera.height}")
        try:
            item = self._metric(Frame(index, stamp, image, camera), partner)
        except InputError as err:
            self.stats.count(self.stats.rejected, err.reason)
            return None
        self.stats.paired += 1
        return item

    def _metric(self, frame: Frame, partner: Any) -> PairedFrame:
        size = frame.image.shape[:2]
        if self.pairing.input_mode == "rgbd":
            depth = depth_to_metres(partner, self.pairing.depth_scale)
            if depth.shape != size:
                raise InputError("depth_size_mismatch", f"depth is {depth.shape[1]}x{depth.shape[0]}")
            if not np.isfinite(depth).any():
                raise InputError("depth_invalid", "no valid depth")
            return PairedFrame(frame, depth=depth)
        rig = stereo_rig_from_infos(self.left_info_at(frame.stamp_ns), self.right_info_at(frame.stamp_ns))
        right = decode_image(partner)
        if right.shape[:2] != size:
            raise InputError("stereo_mismatch", f"right image is {right.shape[1]}x{right.shape[0]}")
        frame.camera = rig.left
        return PairedFrame(frame, stereo=StereoFrame(right, rig))


def _message_lookup(reader: Any, topic: str):
    """``stamp_ns -> message`` of a camera-info topic (same stamp, else the latest before, else the first)."""
    found = [(stamp_to_ns(msg.header.stamp), msg) for _, _, msg in messages(reader, [topic])]
    if not found:
        raise BagError(f"camera info topic {topic} has no messages")
    return camera_lookup(found)
