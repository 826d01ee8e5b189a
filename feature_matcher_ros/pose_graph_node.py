"""``pose_graph_node``: the SLAM back-end for ``matcher_node`` (GTSAM pose graph with loop closures; see
:mod:`feature_matcher_ros.ros.graph_node`). Start both with ``ros2 launch feature_matcher_ros slam.launch.py``.

    pose_graph_node --ros-args -p base_frame:=base_link -r keyframe_edge:=/matcher_node/keyframe_edge ...

SIGINT/SIGTERM end it with exit code 0.
"""

from __future__ import annotations

import sys

PROG = "pose_graph_node"


def print_help() -> None:
    import argparse

    from .pose_graph import GRAPH_PARAMS

    params = "\n".join(f"  {p.name} (default {p.default!r}): {p.description}" for p in GRAPH_PARAMS)
    argparse.ArgumentParser(
        prog=PROG, usage=f"{PROG} [-h] [--ros-args [--params-file FILE] [-p NAME:=VALUE ...] [-r FROM:=TO ...]]",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="parameters (read-only):\n" + params).print_help()


def main(args: list[str] | None = None) -> int:
    from .ros.startup import init_rclpy, make_node, non_ros_args, spin_until_stopped, stop_on_signals

    stop_on_signals()  # first: from here on SIGINT/SIGTERM never raise, they end the spin
    argv = list(sys.argv if args is None else args)
    rest = non_ros_args(argv, PROG)
    if rest is None:
        return 2
    if "-h" in rest[1:] or "--help" in rest[1:]:
        print_help()
        return 0
    if not init_rclpy(argv, PROG):
        return 2
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    def build():
        from .ros.graph_node import PoseGraphNode

        return PoseGraphNode()

    node, code = make_node(build, PROG)
    if node is None:
        return code
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        spin_until_stopped(lambda t: executor.spin_once(timeout_sec=t))
    finally:
        node.close()
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
