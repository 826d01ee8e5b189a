"""Entry point of ``matcher_node``: ``ros2 run feature_matcher_ros matcher_node --ros-args ...`` or
``python -m feature_matcher_ros.matcher_node --ros-args --params-file config/matcher.yaml``.

Start-up problems (unknown backend, missing weights, CUDA asked for without CUDA, a bad parameter) end the
process with one clear line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=sys.argv if args is None else args)
    try:
        from .ros.node import MatcherNode

        node = MatcherNode()
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 130
    except Exception as exc:  # noqa: BLE001 - start-up errors end in one clear line
        print(f"[matcher_node] cannot start: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    # The executor thread serves subscriptions, parameter services and the diagnostics timer; inference
    # runs on the node's own worker thread.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
