"""Entry point of ``lifecycle_matcher_node``, the managed variant of ``matcher_node``.

    python -m feature_matcher_ros.lifecycle_matcher_node [--activate] --ros-args --params-file config/matcher.yaml

It starts ``unconfigured``; a lifecycle manager (or ``ros2 lifecycle set <node> configure`` then
``activate``) drives it. ``--activate`` configures and activates it right away (exit code 2 when that
fails). The process ends after the ``shutdown`` transition, on SIGINT or on SIGTERM (exit code 0, however
many signals arrive).
"""

from __future__ import annotations

import argparse
import sys

from .ros.startup import (
    exit_now_if_busy,
    init_rclpy,
    make_node,
    non_ros_args,
    spin_until_stopped,
    stop_on_signals,
    stop_requested,
    tear_down,
)

PROG = "lifecycle_matcher_node"


def _configure_and_activate(node) -> bool:
    """``--activate``: False (after one line on stderr) when configure or activate failed, unless a signal
    stopped the start-up (the spin that follows then ends at once)."""
    from rclpy.lifecycle import TransitionCallbackReturn

    for step in (node.trigger_configure, node.trigger_activate):
        if stop_requested():
            return True
        if step() != TransitionCallbackReturn.SUCCESS and not stop_requested():
            print(f"[{PROG}] cannot start: {step.__name__} failed (see the log above)", file=sys.stderr, flush=True)
            return False
    return True


def main(args: list[str] | None = None) -> int:
    stop_on_signals()  # first: from here on SIGINT/SIGTERM never raise, they end the spin
    argv = sys.argv if args is None else args
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--activate", action="store_true", help="configure and activate at start")
    rest = non_ros_args(argv, PROG)
    if rest is None:
        return 2
    options = parser.parse_args(rest[1:])
    if not init_rclpy(argv, PROG):
        return 2
    from rclpy.executors import SingleThreadedExecutor

    def build():
        from .ros.lifecycle_node import LifecycleMatcherNode

        return LifecycleMatcherNode()

    node, code = make_node(build, PROG)
    if node is None:
        return code
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    started = not options.activate

    def run(timeout: float) -> None:  # --activate: configure and activate first; then spin
        nonlocal code, started
        if not started:
            started = True
            if not _configure_and_activate(node):
                code = 2
                return
        executor.spin_once(timeout_sec=timeout)

    try:  # until the shutdown transition (node.finished), a signal, or a failed --activate
        spin_until_stopped(run, done=lambda: code == 2 or node.finished.done())
    finally:
        tear_down(node, executor)
    return exit_now_if_busy(node, code)


if __name__ == "__main__":
    sys.exit(main())
