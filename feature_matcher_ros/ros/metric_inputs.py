"""The matcher node's RGB-D and stereo inputs: the second image stream, paired with ``image`` by stamp, and
decoded into what the frontend takes (depth in metres, or the right image with its rig).

=========  ====================================================  ============================================
mode       extra subscriptions (relative names)                  what a paired frame carries to the frontend
=========  ====================================================  ============================================
``rgbd``   ``depth`` (Image ``16UC1``/``mono16``/``32FC1``;       depth in metres (``depth.scale`` metres per
           CompressedImage ``compressedDepth`` png with            16-bit unit), registered to ``image``
           ``compressed_input``)
``stereo`` ``right/image`` (Image, or CompressedImage with         the right image and the rig from both
           ``compressed_input``), ``right/camera_info``            camera_infos' ``P``; the left camera becomes
                                                                  the rectified one (``P``)
=========  ====================================================  ============================================

Pairing is :class:`~feature_matcher_ros.sync.StampSynchronizer` (message_filters' ApproximateTimeSynchronizer policy,
``sync.queue_size`` and ``sync.slop_s``). A message that leaves its queue unpaired is reported with the name
of its input (``image``, ``depth`` or ``right``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..camera import CameraModel
from ..messages import CameraInfoCache, InputError, decode_image, depth_to_metres, stamp_to_ns, stereo_rig_from_infos
from ..metric import StereoFrame
from ..sync import StampSynchronizer

# A depth image whose valid values have a median outside this range (metres) is probably in another unit.
PLAUSIBLE_DEPTH_M = (0.05, 100.0)


@dataclass
class MetricInput:
    """What goes with an image to the frontend: depth (rgbd) or the right image (stereo), and for stereo the
    rectified left camera that replaces ``camera_info``'s ``K``/``D``."""

    depth: np.ndarray | None = None
    stereo: StereoFrame | None = None
    camera: CameraModel | None = None
    warning: str = ""  # a problem that does not stop the frame (e.g. implausible depth units)


class PairedInputs:
    """The partner stream of ``image`` in ``mode`` (``rgbd`` or ``stereo``) on ``node``.

    Args:
        node: the rclpy node that subscribes.
        mode: ``rgbd`` or ``stereo``.
        qos: the input QoS profile.
        queue_size, slop_s: the pairing policy.
        compressed: partner images come as ``CompressedImage``.
        on_pair: ``(image_msg, arrived, partner_msg)`` for each pair.
        on_unpaired: ``(input_name, replaced)`` for each message that left its queue unpaired (``replaced``:
            a message of that input with the same stamp took its place).
        guard: wraps each subscription callback as the entry point it names (:class:`~.guard.EntryGuard`).
        on_arrival: ``(input_name, stamp_ns)`` for each partner message before it is queued (time jumps).
        on_invalid: ``(input_name, InputError)`` for an unusable ``right/camera_info``.
    """

    def __init__(self, node: Any, mode: str, qos: Any, queue_size: int, slop_s: float, compressed: bool,
                 on_pair: Callable[[Any, float, Any], None], on_unpaired: Callable[[str, bool], None],
                 guard: Callable[[str, Callable], Callable] = lambda where, fn: fn,
                 on_arrival: Callable[[str, int], None] = lambda which, stamp_ns: None,
                 on_invalid: Callable[[str, Any], None] = lambda which, error: None) -> None:
        if mode not in ("rgbd", "stereo"):
            raise ValueError(f"paired inputs are for rgbd or stereo, not {mode!r}")
        self.mode = mode
        self.partner = "depth" if mode == "rgbd" else "right"
        self.right_info = CameraInfoCache()
        self._on_pair, self._on_unpaired, self._on_arrival = on_pair, on_unpaired, on_arrival
        self._on_invalid = on_invalid
        self.sync = StampSynchronizer(2, queue_size, slop_s, self._paired, self._unpaired, self._replaced)
        msg_type = CompressedImage if compressed else Image
        topic, where = ("depth", "depth") if mode == "rgbd" else ("right/image", "right_image")
        self.subscriptions = [node.create_subscription(msg_type, topic, guard(where, self._on_partner), qos)]
        if mode == "stereo":
            self.subscriptions.append(node.create_subscription(
                CameraInfo, "right/camera_info", guard("right_camera_info", self._on_right_info), qos))

    def _on_right_info(self, msg: Any) -> None:
        error = self.right_info.update(msg)
        if error is not None:
            self._on_invalid("right_camera_info", error)

    def add_image(self, msg: Any, arrived: float) -> None:
        self.sync.add(0, stamp_to_ns(msg.header.stamp), (msg, arrived))

    def _on_partner(self, msg: Any) -> None:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if stamp_ns < 0:  # pairs with no image (a negative image stamp is rejected), and is no time jump
            self._on_unpaired(self.partner, False)
            return
        self._on_arrival(self.partner, stamp_ns)
        self.sync.add(1, stamp_ns, msg)

    def _paired(self, image: tuple[Any, float], partner: Any) -> None:
        self._on_pair(image[0], image[1], partner)

    def _unpaired(self, index: int, item: Any) -> None:
        self._on_unpaired("image" if index == 0 else self.partner, False)

    def _replaced(self, index: int, item: Any) -> None:
        self._on_unpaired("image" if index == 0 else self.partner, True)

    def destroy(self, node: Any) -> dict[str, int]:
        """Unsubscribe and forget what is queued; returns :meth:`clear`'s counts."""
        for sub in self.subscriptions:
            node.destroy_subscription(sub)
        self.subscriptions = []
        return self.clear()

    def clear(self) -> dict[str, int]:
        """Forget what waits for pairing; how many messages of each input were waiting (``image``, partner)."""
        images, partners = self.sync.clear()
        return {"image": images, self.partner: partners}

    @property
    def images_waiting(self) -> int:
        """Images in the pairing queue."""
        return len(self.sync.queues[0])

    def decode(self, partner: Any, size: tuple[int, int], left_info: Any, depth_scale: float) -> MetricInput:
        """The frontend's metric input for an image of ``size`` ``(H, W)``; :class:`InputError` with the
        reason when the partner cannot be used."""
        if self.mode == "rgbd":
            return _depth_input(partner, size, depth_scale)
        if self.right_info.message is None:
            raise InputError("no_right_camera_info", "no right/camera_info received yet")
        rig = stereo_rig_from_infos(left_info, self.right_info.message)
        right = decode_image(partner)
        if right.shape[:2] != size:
            raise InputError("stereo_mismatch", f"right image is {right.shape[1]}x{right.shape[0]}, the left "
                                                f"{size[1]}x{size[0]}")
        return MetricInput(stereo=StereoFrame(right, rig), camera=rig.left)


def _depth_input(msg: Any, size: tuple[int, int], scale: float) -> MetricInput:
    depth = depth_to_metres(msg, scale)
    if depth.shape != size:
        raise InputError("depth_size_mismatch", f"depth is {depth.shape[1]}x{depth.shape[0]}, the colour image "
                                                f"{size[1]}x{size[0]} (register depth to the colour camera)")
    valid = depth[np.isfinite(depth)]
    if valid.size == 0:
        raise InputError("depth_invalid", "the depth image has no valid measurement (all 0, NaN or inf)")
    median = float(np.median(valid))
    warning = ""
    if not PLAUSIBLE_DEPTH_M[0] <= median <= PLAUSIBLE_DEPTH_M[1]:
        warning = (f"depth values have a median of {median:.4g} m: another unit? (depth.scale = {scale} metres "
                   f"per 16-bit unit; 32FC1 must be metres)")
    return MetricInput(depth=depth, warning=warning)
