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


def _facts(spec) -> tuple[str, str]:
    """``(type, allowed)`` of a spec as ``--help`` and ``docs/parameters.md`` show them: ``double`` and
    ``[0.1, 50]``; ``string`` and ``sift|orb``; empty when anything of the type goes."""
    kind = {bool: "bool", int: "int", float: "double", str: "string"}.get(spec.type, spec.type.__name__)
    if spec.choices is not None:
        return kind, "|".join(str(c) for c in spec.choices)
    if spec.min is not None and spec.max is not None:
        return kind, f"[{spec.min:g}, {spec.max:g}]"
    if spec.min is not None:
        return kind, f">= {spec.min:g}"
    if spec.max is not None:
        return kind, f"<= {spec.max:g}"
    return kind, ""


def _spec_line(spec) -> str:
    """One parameter in the help: ``name  type = default  [read-only]  description (choices / range)``."""
    kind, allowed = _facts(spec)
    text = spec.description + (f" ({allowed})" if allowed else "")
    flag = "  read-only" if spec.read_only else ""
    return f"  {spec.name:<28} {kind} = {spec.default!r}{flag}\n      {text}"


def parameter_groups() -> list[tuple[str, tuple]]:
    """The node's parameters as ``(heading, specs)``: the node's, the frontend's, then each installed
    backend's (a backend that cannot load here gets a heading saying why and no specs)."""
    from .backends import available_backends, backend_class
    from .ros.node import NODE_PARAMS
    from .settings import FRONTEND_PARAMS, PRECISION_PARAM

    groups = [("node parameters (read-only ones are set at start-up only)", NODE_PARAMS),
              ("frontend parameters (live)", (*FRONTEND_PARAMS, PRECISION_PARAM))]
    for name in available_backends():
        try:
            specs = backend_class(name).PARAMS
        except Exception as exc:  # noqa: BLE001 - a broken optional backend must not break --help
            groups.append((f"backend {name}: not loadable here ({type(exc).__name__}: {exc})", ()))
            continue
        if specs:
            groups.append((f"backend {name} parameters (live, declared only when backend is {name})", specs))
    return groups


def parameter_help() -> str:
    """The parameter list of ``--help``."""
    blocks = []
    for heading, specs in parameter_groups():
        blocks.append(heading + (":" if specs else ""))
        blocks.extend(map(_spec_line, specs))
    return "\n".join(blocks)


def parameters_markdown() -> str:
    """``docs/parameters.md``: the same groups and facts as ``--help``, as tables (``make docs`` writes it;
    ``test/test_docs.py`` fails when the file is out of date)."""
    lines = ["# matcher_node parameters", "",
             "Generated from the parameter specs by `make docs` (`matcher_node --parameters-markdown`), the same "
             "code", "as `matcher_node --help`; `test/test_docs.py` fails when this file is out of date. Read-only "
             "parameters", "are set at start-up (params file, `-p`, launch file); the others can also change while "
             "the node runs", "(`ros2 param set`), whole, from the next frame. `config/matcher.yaml` lists every "
             "default.", ""]
    for heading, specs in parameter_groups():
        lines += [f"## {heading[0].upper()}{heading[1:]}", ""]
        if not specs:
            continue
        lines += ["| name | type | default | allowed | change | meaning |", "|---|---|---|---|---|---|"]
        for spec in specs:
            kind, allowed = _facts(spec)
            text = spec.description.replace("|", "\\|")
            lines.append(f"| `{spec.name}` | {kind} | `{spec.default!r}` | {allowed.replace('|', ', ') or '–'} | "
                         f"{'read-only' if spec.read_only else 'live'} | {text} |")
        lines.append("")
    return "\n".join(lines)


def _own_args(argv: list[str]) -> list[str]:
    """The program's own arguments (those before ``--ros-args``)."""
    return argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]


def _wants_help(argv: list[str]) -> bool:
    own = _own_args(argv)
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
    if "--parameters-markdown" in _own_args(argv):
        print(parameters_markdown(), end="")
        return 0

    from .ros.startup import exit_now_if_busy, init_rclpy, make_node, spin_until_stopped, stop_on_signals, tear_down

    stop_on_signals()  # first: from here on SIGINT/SIGTERM never raise, they end the spin
    from rclpy.executors import SingleThreadedExecutor

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
        spin_until_stopped(lambda t: executor.spin_once(timeout_sec=t))  # until SIGINT or SIGTERM
    finally:
        tear_down(node, executor)
    return exit_now_if_busy(node, 0)


if __name__ == "__main__":
    sys.exit(main())
