"""``fm-static-transform``: publishes one static transform on ``/tf_static`` until stopped, like tf2_ros's
``static_transform_publisher`` (which is not on PyPI), for a robot without a URDF: the camera's mounting.

    fm-static-transform --x 0.1 --z 0.2 --roll 0.05 --frame-id base_link \
        --child-frame-id camera_rgb_optical_frame --optical

``--x --y --z`` (metres) and ``--roll --pitch --yaw`` (radians, fixed axes as tf2: yaw about z, then pitch about
y, then roll about x) place ``--child-frame-id`` in ``--frame-id``. With ``--optical`` they place the camera's
body (REP 103: x forward, z up) and the published child is its optical frame (z forward, x right, y down): a
camera with zero angles looks along the parent's x axis. SIGINT/SIGTERM end it with exit code 0.
"""

from __future__ import annotations

import argparse
import sys

from .base_odometry import camera_mount, rpy_rotation
from .se3 import se3

PROG = "fm-static-transform"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for axis in ("x", "y", "z", "roll", "pitch", "yaw"):
        p.add_argument(f"--{axis}", type=float, default=0.0)
    p.add_argument("--frame-id", required=True, help="the parent frame (e.g. base_link)")
    p.add_argument("--child-frame-id", required=True, help="the child frame (e.g. camera_rgb_optical_frame)")
    p.add_argument("--optical", action="store_true", help="the angles are the camera body's; the child is optical")
    return p


def main(args: list[str] | None = None) -> int:
    from .ros.startup import init_rclpy, non_ros_args, spin_until_stopped, stop_on_signals

    stop_on_signals()
    argv = list(sys.argv if args is None else args)
    rest = non_ros_args(argv, PROG)
    if rest is None:
        return 2
    o = build_parser().parse_args(rest[1:])
    T = (camera_mount(o.x, o.y, o.z, o.roll, o.pitch, o.yaw) if o.optical
         else se3(rpy_rotation(o.roll, o.pitch, o.yaw), [o.x, o.y, o.z]))
    if not init_rclpy(argv, PROG):
        return 2
    import rclpy

    from .ros.tf import TfBroadcaster, transform_msg

    node = rclpy.create_node("static_transform_publisher")
    TfBroadcaster(node, static=True).send([transform_msg(T, o.frame_id, o.child_frame_id, 0)])
    node.get_logger().info(f"{o.frame_id} -> {o.child_frame_id} on /tf_static")
    try:
        spin_until_stopped(lambda t: rclpy.spin_once(node, timeout_sec=t))
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
