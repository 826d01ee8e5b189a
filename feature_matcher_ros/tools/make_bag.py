"""``fm-make-bag DATASET_DIR OUT``: a rosbag2 (mcap or sqlite3) from a sequence folder.

The folder has the ``../shared/data`` sequence layout (``images.txt``, ``images/``, ``intrinsics.yaml``,
optional ``groundtruth.txt``). The bag holds, stamped with the dataset's timestamps (plus ``--stamp-offset``):
``/camera/image_raw`` (sensor_msgs/Image), ``/camera/camera_info`` (sensor_msgs/CameraInfo) and
``/ground_truth/pose`` (geometry_msgs/PoseStamped: the camera's optical-frame pose in ``world``). RGB-D folders
add ``/camera/depth/image_raw`` (registered depth, ``16UC1`` millimetres or ``32FC1`` metres) with
``/camera/depth/camera_info`` (the colour camera's); stereo folders add ``/camera/right/image_raw`` and
``/camera/right/camera_info`` (``P[3] = -fx * baseline``; the left camera_info has ``P[3] = 0``). ``--mount X Y Z
ROLL PITCH YAW`` adds the camera's mounting on a robot as ``/tf_static`` (``--base-frame`` -> the camera frame,
the camera body at that pose, its optical frame the child; fm-eval and fm-replay ``--base-frame`` read it).
"""

from __future__ import annotations

import argparse
import sys

from ..evaluation.bagwrite import DEPTH_ENCODINGS, SequenceBagOptions, write_sequence_bag
from ..evaluation.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    d = SequenceBagOptions()
    p = argparse.ArgumentParser(prog="fm-make-bag", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", help="sequence folder (images.txt, intrinsics.yaml, groundtruth.txt)")
    p.add_argument("out", help="output bag folder (must not exist)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default=d.storage)
    p.add_argument("--compression", choices=("zstd", "none"), default=d.compression,
                   help="zstd: mcap chunk compression / sqlite3 per-message compression")
    p.add_argument("--encoding", choices=("auto", "mono8", "rgb8", "bgr8"), default=d.encoding,
                   help="image encoding (auto: rgb8 for colour files, mono8 for gray)")
    p.add_argument("--image-topic", default=d.image_topic)
    p.add_argument("--camera-info-topic", default=d.camera_info_topic)
    p.add_argument("--gt-topic", default=d.gt_topic, help="PoseStamped ground-truth topic ('' for none)")
    p.add_argument("--tf-topic", default=d.tf_topic, help="also write the ground truth as TF on this topic (e.g. /tf)")
    p.add_argument("--camera-frame", default=d.camera_frame, help="frame_id of images and camera info")
    p.add_argument("--world-frame", default=d.world_frame, help="frame_id of the ground-truth poses")
    p.add_argument("--depth-topic", default=d.depth_topic, help="RGB-D folders: registered depth images ('' for none)")
    p.add_argument("--depth-camera-info-topic", default=d.depth_camera_info_topic)
    p.add_argument("--depth-encoding", choices=DEPTH_ENCODINGS, default=d.depth_encoding,
                   help="16UC1: millimetres (RGB-D drivers, REP 118), 32FC1: metres")
    p.add_argument("--right-image-topic", default=d.right_image_topic,
                   help="stereo folders: the right camera ('' for none)")
    p.add_argument("--right-camera-info-topic", default=d.right_camera_info_topic)
    p.add_argument("--right-camera-frame", default=d.right_camera_frame, help="frame_id of the right camera")
    p.add_argument("--stamp-offset", default=d.stamp_offset, metavar="SECONDS",
                   help="added to every stamp (auto: 1 s when the first stamp is 0, as in KITTI)")
    p.add_argument("--frames", default="", metavar="START:STOP:STEP",
                   help="only these images (a Python slice of images.txt, e.g. 0:12:3)")
    p.add_argument("--mount", nargs=6, type=float, default=None, metavar=("X", "Y", "Z", "ROLL", "PITCH", "YAW"),
                   help="the camera's mounting on --base-frame (metres, radians; zero angles look along its x "
                        "axis), written once as /tf_static")
    p.add_argument("--base-frame", default=d.base_frame, help="the robot frame of --mount")
    p.add_argument("--there-and-back", action="store_true",
                   help="the even frames forward, then the odd frames backward (stamps keep increasing): the way "
                        "back revisits the same places from other viewpoints, where loops close")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        opts = SequenceBagOptions(
            storage=args.storage, compression=args.compression, encoding=args.encoding,
            image_topic=args.image_topic, camera_info_topic=args.camera_info_topic, gt_topic=args.gt_topic,
            tf_topic=args.tf_topic, camera_frame=args.camera_frame, world_frame=args.world_frame, frames=args.frames,
            depth_topic=args.depth_topic, depth_camera_info_topic=args.depth_camera_info_topic,
            depth_encoding=args.depth_encoding, right_image_topic=args.right_image_topic,
            right_camera_info_topic=args.right_camera_info_topic, right_camera_frame=args.right_camera_frame,
            stamp_offset=args.stamp_offset, mount=tuple(args.mount) if args.mount else None,
            base_frame=args.base_frame, there_and_back=args.there_and_back)
        info = write_sequence_bag(args.dataset, args.out, opts, progress=not args.quiet)
        topics = ", ".join(f"{t} [{m.split('/')[-1]}]" for t, m in info["topics"].items())
        extra = "".join(f", {info[k]} {what}"
                        for k, what in (("depth", "depth images"), ("right_images", "right images")) if info[k])
        offset = f", stamps + {info['stamp_offset_ns'] / 1e9:g} s" if info["stamp_offset_ns"] else ""
        print(f"wrote {info['bag']}: {info['images']} images{extra}, "
              f"{info['ground_truth']} ground-truth poses{offset}, "
              f"{info['storage']} ({info['compression']}), {info['bytes'] / 1e6:.1f} MB; topics {topics}")
        return 0

    return run_main("fm-make-bag", body)


if __name__ == "__main__":
    sys.exit(main())
