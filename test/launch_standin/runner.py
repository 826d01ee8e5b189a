"""Evaluate a launch file with the stand-in, like ``ros2 launch PKG FILE NAME:=VALUE ...`` would."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch.actions import DeclareLaunchArgument, OpaqueFunction  # noqa: E402
from launch_ros.actions import Node  # noqa: E402

from launch import LaunchContext, LaunchDescription  # noqa: E402


def _value(item, context):
    return item.perform(context) if hasattr(item, "perform") else item


def describe(launch_file: Path, **arguments: str) -> tuple[dict[str, DeclareLaunchArgument], list[Node]]:
    """The declared arguments and the nodes the file starts, every substitution resolved. An argument
    that the file does not declare is an error (a typo would otherwise be silently ignored)."""
    spec = importlib.util.spec_from_file_location(f"launch_file_{launch_file.stem.replace('.', '_')}", launch_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    declared = {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    unknown = set(arguments) - set(declared)
    if unknown:
        raise ValueError(f"{launch_file.name} declares no argument(s) {sorted(unknown)}")
    context = LaunchContext({**{n: d.default_value for n, d in declared.items()}, **arguments})
    nodes: list[Node] = []
    for entity in description.entities:
        produced = entity.execute(context) if isinstance(entity, OpaqueFunction) else [entity]
        for node in produced:
            if isinstance(node, Node):
                node.namespace = _value(node.namespace, context) if node.namespace is not None else ""
                node.parameters = [p if isinstance(p, dict) else _value(p, context) for p in node.parameters]
                node.remappings = [(_value(a, context), _value(b, context)) for a, b in node.remappings]
                nodes.append(node)
    return declared, nodes


def command(node: Node, python_module: str) -> list[str]:
    """The command line ``launch_ros`` builds for ``node`` (the executable run as ``python -m``)."""
    cmd = [sys.executable, "-m", python_module, *node.other.get("arguments", []), "--ros-args"]
    if node.name:
        cmd += ["-r", f"__node:={node.name}"]
    if node.namespace:
        cmd += ["-r", f"__ns:=/{node.namespace.strip('/')}"]
    for params in node.parameters:
        if isinstance(params, dict):
            for key, value in params.items():
                text = str(value).lower() if isinstance(value, bool) else str(value)
                cmd += ["-p", f"{key}:={text}"]
        else:
            cmd += ["--params-file", str(params)]
    for source, target in node.remappings:
        cmd += ["-r", f"{source}:={target}"]
    return cmd
