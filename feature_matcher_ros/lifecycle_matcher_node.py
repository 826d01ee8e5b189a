"""Entry point of ``lifecycle_matcher_node``, the managed variant of ``matcher_node``.

    python -m feature_matcher_ros.lifecycle_matcher_node [--activate] --ros-args --params-file config/matcher.yaml

It starts ``unconfigured``; a lifecycle manager (or ``ros2 lifecycle set <node> configure`` then
``activate``) drives it. ``--activate`` configures and activates it right away (exit code 2 when that
fails). The process ends after the ``shutdown`` transition, on SIGINT or on SIGTERM (exit code 0, however
many signals arrive).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from .ros.startup import init_rclpy, make_node, non_ros_args, stop_on_signals, stop_requested, tear_down


def main(args: list[str] | None = None) -> int:
    stop_on_signals()  # first: from here on SIGINT/SIGTERM never raise, they end the spin
    argv = sys.argv if args is None else args
    parser = argparse.ArgumentParser(prog="lifecycle_matcher_node", description=__doc__.split("\n\n")[0])
    parser.add_argument("--activate", action="store_true", help="configure and activate at start")
    rest = non_ros_args(argv, "lifecycle_matcher_node")
    if rest is None:
        return 2
    options = parser.parse_args(rest[1:])
    if not init_rclpy(argv, "lifecycle_matcher_node"):
        return 2
    import rclpy
    from lifecycle_msgs.msg import State
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn

    def build():
        from .ros.lifecycle_node import LifecycleMatcherNode

        return LifecycleMatcherNode()

    node, code = make_node(build, "lifecycle_matcher_node")
    if node is None:
        return code
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if options.activate:
            for step in (node.trigger_configure, node.trigger_activate):
                if stop_requested():  # a signal during start-up: end quietly
                    return 0
                if step() != TransitionCallbackReturn.SUCCESS and not stop_requested():
                    print(f"[lifecycle_matcher_node] cannot start: {step.__name__} failed (see the log above)",
                          file=sys.stderr, flush=True)
                    return 2
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.2)
            if node._state_machine.current_state[0] == State.PRIMARY_STATE_FINALIZED:
                break
    except ExternalShutdownException:  # SIGINT or SIGTERM: rclpy shut the context down
        pass
    finally:
        tear_down(node, executor)
    if any(t.is_alive() and t.name == "matcher_worker" for t in threading.enumerate()):
        # MatcherNode.close gave up waiting for a frame still being matched: end now, without the
        # interpreter's finalisation (C++ destructors abort while a thread is inside torch).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
