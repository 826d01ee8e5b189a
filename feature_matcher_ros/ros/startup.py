"""Start-up of the node executables: bad ROS arguments end in one clear line and exit code 2."""

from __future__ import annotations

import sys


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
