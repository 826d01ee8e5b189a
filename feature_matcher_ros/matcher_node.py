"""Entry point of ``matcher_node``: ``ros2 run feature_matcher_ros matcher_node --ros-args ...`` or
``python -m feature_matcher_ros.matcher_node --ros-args --params-file config/matcher.yaml``.

Start-up problems (unknown backend, missing weights, CUDA asked for without CUDA, a bad parameter) end the
process with one clear line on stderr and exit code 2, never a traceback. ``--help`` prints the usage and
every parameter, then exits 0 without starting ROS.
"""

from __future__ import annotations

import argparse
import sys

USAGE_EXAMPLES = """\
examples:
  matcher_node --ros-args --params-file config/matcher.yaml
  matcher_node --ros-args -p backend:=sptd2 -p device:=auto
  matcher_node --ros-args -p backend:=eloftr -p weights:=/path/eloftr_outdoor.ckpt \\
      -r image:=/camera/color/image_raw -r camera_info:=/camera/color/camera_info
  ros2 param set /matcher_node max_matches 500      # live parameters, while it runs

topics: image, camera_info (in); matches, relative_pose, odometry, keyframe, debug_image, /diagnostics (out)
service: ~/reset (std_srvs/Trigger)
"""


def _spec_line(spec) -> str:
    """One parameter in the help: ``name  type = default  [read-only]  description (choices / range)``."""
    kind = {bool: "bool", int: "int", float: "double", str: "string"}.get(spec.type, spec.type.__name__)
    extra = []
    if spec.choices is not None:
        extra.append("|".join(str(c) for c in spec.choices))
    if spec.min is not None and spec.max is not None:
        extra.append(f"[{spec.min:g}, {spec.max:g}]")
    elif spec.min is not None:
        extra.append(f">= {spec.min:g}")
    elif spec.max is not None:
        extra.append(f"<= {spec.max:g}")
    text = spec.description + (f" ({'; '.join(extra)})" if extra else "")
    flag = "  read-only" if spec.read_only else ""
    return f"  {spec.name:<28} {kind} = {spec.default!r}{flag}\n      {text}"


def parameter_help() -> str:
    """The parameter list of ``--help``: the node's, the frontend's, then each installed backend's."""
    from .backends import available_backends, backend_class
    from .settings import FRONTEND_PARAMS, PRECISION_PARAM
    from .ros.node import NODE_PARAMS

    blocks = ["node parameters (read-only ones are set at start-up only):", *map(_spec_line, NODE_PARAMS),
              "frontend parameters (live):", *map(_spec_line, (*FRONTEND_PARAMS, PRECISION_PARAM))]
    for name in available_backends():
        try:
            specs = backend_class(name).PARAMS
        except Exception as exc:  # noqa: BLE001 - a broken optional backend must not break --help
            blocks.append(f"backend {name}: not loadable here ({type(exc).__name__}: {exc})")
            continue
        if specs:
            blocks.append(f"backend {name} parameters (live, declared only when backend is {name}):")
            blocks.extend(map(_spec_line, specs))
    return "\n".join(blocks)


def _wants_help(argv: list[str]) -> bool:
    """``-h``/``--help`` among the program's own arguments (those before ``--ros-args``)."""
    own = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    return "-h" in own or "--help" in own


def print_help() -> None:
    parser = argparse.ArgumentParser(
        prog="matcher_node",
        usage="matcher_node [-h] [--ros-args [--params-file FILE] [-p NAME:=VALUE ...] [-r FROM:=TO ...]]",
        description="Match every camera frame against the current keyframe and publish the correspondences, "
                    "the relative pose and chained odometry (ROS 2). Parameters come from a params file "
                    "(--ros-args --params-file config/matcher.yaml) and -p NAME:=VALUE overrides.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=USAGE_EXAMPLES + "\n" + parameter_help(),
    )
    parser.print_help()


def main(args: list[str] | None = None) -> int:
    argv = list(sys.argv if args is None else args)
    if _wants_help(argv):
        print_help()
        return 0

    from .ros.startup import exit_now_if_busy, init_rclpy, make_node, stop_on_signals, tear_down

    stop_on_signals()  # first: from here on SIGINT/SIGTERM never raise, they end the spin
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    if not init_rclpy(argv, "matcher_node"):
        return 2

    def build():
        from .ros.node import MatcherNode

        return MatcherNode()

    node, code = make_node(build, "matcher_node")
    if node is None:
        return code
    # The executor thread serves subscriptions, parameter services and the diagnostics timer; inference
    # runs on the node's own worker thread.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except ExternalShutdownException:  # SIGINT or SIGTERM: rclpy shut the context down
        pass
    finally:
        tear_down(node, executor)
    return exit_now_if_busy(node, 0)


if __name__ == "__main__":
    sys.exit(main())
