"""Start-up and tear-down shared by the node executables: bad ROS arguments and failing node
construction end in one clear line and exit code 2."""

from __future__ import annotations

import sys
from typing import Any, Callable


def _bad_arguments(prog: str, exc: Exception) -> None:
    print(f"[{prog}] cannot start: bad ROS arguments ({type(exc).__name__}: {exc}); see {prog} --help",
          file=sys.stderr, flush=True)


def non_ros_args(argv: list[str], prog: str) -> list[str] | None:
    """``argv`` without its ROS arguments, or None (after one line on stderr) when they do not parse."""
    from rclpy.utilities import remove_ros_args

    try:
        return remove_ros_args(argv)
    except Exception as exc:  # noqa: BLE001 - e.g. UnknownROSArgsError
        _bad_arguments(prog, exc)
        return None


def init_rclpy(argv: list[str], prog: str) -> bool:
    """``rclpy.init(args=argv)``; False (after one line on stderr) when the ROS arguments are bad."""
    import rclpy

    try:
        rclpy.init(args=argv)
    except Exception as exc:  # noqa: BLE001 - e.g. UnknownROSArgsError
        _bad_arguments(prog, exc)
        return False
    return True


def make_node(factory: Callable[[], Any], prog: str) -> tuple[Any, int]:
    """``(factory(), 0)`` after :func:`init_rclpy`; on failure ``(None, code)`` with rclpy shut down: 130 on
    Ctrl-C, 2 with one ``cannot start`` line on stderr otherwise."""
    import rclpy

    try:
        return factory(), 0
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return None, 130
    except Exception as exc:  # noqa: BLE001 - start-up errors end in one clear line
        print(f"[{prog}] cannot start: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return None, 2


def tear_down(node: Any, executor: Any) -> None:
    """Stop the node's worker (``close``), then take the node off the executor and shut rclpy down."""
    import rclpy

    node.close()
    executor.remove_node(node)
    node.destroy_node()
    rclpy.try_shutdown()
