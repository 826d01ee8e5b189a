"""The layers of docs/ARCHITECTURE.md, read from the code: every import in every module (also those inside
functions), relative ones resolved, against the rules.

- The runtime (the core, ``ros/`` and the node executables) never imports ``training``, ``measure`` or
  ``tools``: a robot's node carries no training or benchmark code.
- The core (everything but ``ros/``, the node executables and the commands) never imports rclpy or a ROS
  message package: it is usable from any Python program.
- The node (``ros/`` and the node executables) never imports ray or optuna (evaluation-time tools).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "feature_matcher_ros"
COMMANDS = ("tools", "measure", "training")
NODE = ("ros", "matcher_node", "lifecycle_matcher_node", "static_transform_node", "pose_graph_node")
ROS_PACKAGES = ("rclpy", "rcl_interfaces", "std_msgs", "std_srvs", "sensor_msgs", "geometry_msgs", "nav_msgs",
                "diagnostic_msgs", "lifecycle_msgs", "builtin_interfaces", "rosgraph_msgs", "tf2_msgs", "tf2_ros")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (``from . import x`` counts as ``<package>.x``)."""
    return imports_in(path.read_text(), _module_name(path), path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool) -> set[str]:
    """Every module the source of module ``name`` imports, absolute."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _modules(where) -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if where(p.relative_to(PACKAGE).parts))


RUNTIME = _modules(lambda parts: parts[0].removesuffix(".py") not in COMMANDS)
CORE = _modules(lambda parts: parts[0].removesuffix(".py") not in COMMANDS + NODE)
NODE_FILES = _modules(lambda parts: parts[0].removesuffix(".py") in NODE)


def _ids(paths):
    return [str(p.relative_to(PACKAGE)) for p in paths]


def test_the_layers_are_all_there():
    assert len(RUNTIME) > 40 and len(CORE) > 30 and len(NODE_FILES) > 10
    assert not set(CORE) & set(NODE_FILES)
    assert (PACKAGE / "training" / "sptd2" / "losses.py").is_file()


@pytest.mark.parametrize("path", RUNTIME, ids=_ids(RUNTIME))
def test_runtime_never_imports_training_measurement_or_commands(path):
    bad = sorted(m for m in imports_of(path) if m.split(".")[:2] in (["feature_matcher_ros", c] for c in COMMANDS))
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", CORE, ids=_ids(CORE))
def test_core_never_imports_ros(path):
    bad = sorted(m for m in imports_of(path)
                 if m.split(".")[0] in ROS_PACKAGES or m.startswith("feature_matcher_ros.ros"))
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", NODE_FILES, ids=_ids(NODE_FILES))
def test_node_never_imports_evaluation_engines(path):
    bad = sorted(m for m in imports_of(path) if m.split(".")[0] in ("ray", "optuna"))
    assert not bad, f"{path.name} imports {bad}"


def test_the_check_sees_nested_and_relative_imports():
    """A rule that cannot fail is no rule: imports inside functions, relative ones, from packages."""
    source = ("import rclpy.node\ndef f():\n    from .training.sptd2 import losses\n"
              "    from ..camera import CameraModel\n")
    found = imports_in(source, "feature_matcher_ros.ros.node", is_package=False)
    assert {"rclpy.node", "feature_matcher_ros.ros.training.sptd2.losses", "feature_matcher_ros.camera"} <= found
    found = imports_in("from . import sptd2\n", "feature_matcher_ros.training", is_package=True)
    assert "feature_matcher_ros.training.sptd2" in found
