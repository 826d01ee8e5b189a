"""What ``fm-tune`` searches and how it judges a trial: search spaces over node parameters, the objective,
constraints, and the parameter file of a trial. Optuna is imported only where a trial is suggested or
plotted: it is an evaluation tool, not a dependency of the node.

A search space file maps node parameters (dotted names, as in a parameter file) to a range or choices::

    sift.contrast_threshold: {low: 0.005, high: 0.08, log: true}
    sift.max_keypoints: {low: 512, high: 8192, log: true}    # an integer parameter: integers
    keyframe.parallax: {choices: [displacement, rotation_compensated]}

Only what ``fm-eval`` applies can be tuned: the frontend's and the chosen backend's parameters (not the node's
read-only ones, topics or QoS). A range must lie inside the parameter's bounds.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .cli import UsageError, read_yaml


@dataclass(frozen=True)
class Dimension:
    """One tuned parameter: a range (``low``..``high``, ``log`` scale) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial suggests for this parameter."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]{' log' if self.log else ''}"


#: the parameters worth tuning for every backend: geometry and keyframe policy, over what users try
COMMON_SPACE: dict[str, dict[str, Any]] = {
    "ransac.threshold_px": {"low": 0.3, "high": 4.0, "log": True},
    "keyframe.min_inliers": {"low": 20, "high": 400, "log": True},
    "keyframe.max_parallax_px": {"low": 15.0, "high": 200.0, "log": True},
}
#: and per backend: its detector budget and match filters
BACKEND_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "sift": {"sift.max_keypoints": {"low": 512, "high": 8192, "log": True},
             "sift.ratio": {"low": 0.6, "high": 0.95},
             "sift.contrast_threshold": {"low": 0.005, "high": 0.08, "log": True}},
    "orb": {"orb.max_keypoints": {"low": 500, "high": 8000, "log": True},
            "orb.ratio": {"low": 0.6, "high": 1.0},
            "orb.fast_threshold": {"low": 5, "high": 40, "log": True}},
    "eloftr": {"eloftr.threshold": {"low": 0.05, "high": 0.5, "log": True},
               "eloftr.mode": {"choices": ["full", "opt"]},
               "resize_long_edge": {"choices": [0, 480, 640]}},
    "sptd2": {"sptd2.top_k": {"low": 512, "high": 4096, "log": True},
              "sptd2.match_threshold": {"low": 0.0, "high": 0.9},
              "sptd2.ratio": {"low": 0.7, "high": 1.0}},
}
#: added in rgbd / stereo mode: the absolute pose's inlier threshold
METRIC_SPACE: dict[str, dict[str, Any]] = {"pnp.threshold_px": {"low": 0.5, "high": 8.0, "log": True}}


def tunable_specs(backend: str) -> dict[str, Any]:
    """name -> ParamSpec of what a trial may set: the frontend's parameters, ``precision`` and the backend's."""
    from ..settings import FRONTEND_PARAMS, PRECISION_PARAM, backend_class

    try:
        backend_params = backend_class(backend).PARAMS
    except (ValueError, ImportError, AttributeError) as exc:
        raise UsageError(f"backend {backend!r}: {exc}") from None
    return {p.name: p for p in (*FRONTEND_PARAMS, PRECISION_PARAM, *backend_params)}


def default_space(backend: str, input_mode: str = "mono") -> dict[str, dict[str, Any]]:
    """The curated search space of ``backend`` (and of the metric pose in rgbd / stereo)."""
    if backend not in BACKEND_SPACES:
        raise UsageError(f"no default search space for backend {backend!r}: give --space")
    space = {**BACKEND_SPACES[backend], **COMMON_SPACE}
    return {**space, **METRIC_SPACE} if input_mode != "mono" else space


def parse_space(raw: Mapping[str, Any], backend: str, source: str = "search space") -> list[Dimension]:
    """Check ``raw`` (name -> {low, high, log} or {choices}) against the parameters of ``backend``."""
    specs = tunable_specs(backend)
    if not isinstance(raw, Mapping) or not raw:
        raise UsageError(f"{source}: expected a mapping 'parameter: {{low: .., high: .., log: ..}}' or "
                         "'parameter: {choices: [..]}'")
    dims = []
    for name, entry in raw.items():
        spec = specs.get(name)
        if spec is None:
            raise UsageError(f"{source}: {name} cannot be tuned with backend {backend} (only the frontend's and "
                             "the backend's parameters apply offline; the node's, topics and QoS do not)")
        dims.append(_dimension(name, entry, spec, source))
    return dims


def _dimension(name: str, entry: Any, spec: Any, source: str) -> Dimension:
    if not isinstance(entry, Mapping) or not ({"choices"} <= set(entry) or {"low", "high"} <= set(entry)):
        raise UsageError(f"{source}: {name}: expected {{low: .., high: ..[, log: true]}} or {{choices: [..]}}")
    if "choices" in entry:
        choices = tuple(spec.coerce(v) for v in entry["choices"])
        for value in choices:
            if (why := spec.check(value)) is not None:
                raise UsageError(f"{source}: {why}")
        return Dimension(name, choices=choices)
    if spec.type not in (int, float):
        raise UsageError(f"{source}: {name} is a {spec.type.__name__}: give choices, not a range")
    low, high, log = entry["low"], entry["high"], bool(entry.get("log", False))
    for value in (low, high):
        if (why := spec.check(spec.coerce(int(value) if spec.type is int else float(value)))) is not None:
            raise UsageError(f"{source}: range of {name}: {why}")
    if not low < high or (log and low <= 0):
        raise UsageError(f"{source}: {name}: need low < high{' and low > 0 on a log scale' if log else ''}")
    return Dimension(name, low, high, log, integer=spec.type is int)


def load_space(path: str | None, backend: str, input_mode: str) -> list[Dimension]:
    """The search space of ``path`` (YAML), or the backend's default space."""
    if path is None:
        return parse_space(default_space(backend, input_mode), backend, f"default space of {backend}")
    return parse_space(read_yaml(path, "search space"), backend, f"search space {path}")


# -- objective and constraints -------------------------------------------------------------------------

#: metrics where less is better (errors, times); the others are maximised
MINIMISED = re.compile(r"error|ate_|rpe_|latency|_ms|wall_s|drift")
#: metrics that depend on how many runs share the cores
TIMING = re.compile(r"^(fps|latency.*|wall_s)$")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def direction(metric: str) -> str:
    """``minimize`` for errors and times, ``maximize`` for the rest (AUC, precision, fps, counts)."""
    return "minimize" if MINIMISED.search(metric) else "maximize"


@dataclass(frozen=True)
class Constraint:
    """``metric op value``, e.g. ``fps>=10``."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        m = re.fullmatch(r"\s*([A-Za-z0-9_@.%-]+?)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*", text)
        if m is None:
            raise UsageError(f"constraint {text!r}: expected METRIC OP VALUE with OP one of >= <= > <, "
                             "e.g. fps>=10")
        return cls(m.group(1), m.group(2), float(m.group(3)))

    @property
    def timing(self) -> bool:
        return bool(TIMING.match(self.metric))

    def holds(self, value: float | None) -> bool:
        return value is not None and math.isfinite(value) and _OPS[self.op](value, self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def mean_over_bags(rows: Sequence[dict[str, Any]], metric: str) -> float | None:
    """The mean of ``metric`` over the bags' rows (each bag once); None when a bag failed or lacks it."""
    values = [row.get(metric) for row in rows]
    if not values or any("error" in row for row in rows):
        return None
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) for v in values):
        return None
    return float(sum(values)) / len(values)


# -- parameter files -----------------------------------------------------------------------------------


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted names back into the nested mappings of a ROS parameter file."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def params_yaml(flat: Mapping[str, Any], comment: Sequence[str] = ()) -> str:
    """A ROS parameter file (``/**: ros__parameters:``) holding ``flat``, for ``--params-file``,
    ``ros2 param load`` and ``fm-eval --params``."""
    import yaml

    body = yaml.safe_dump({"/**": {"ros__parameters": nest(flat)}}, sort_keys=False, default_flow_style=False)
    return "".join(f"# {line}\n" for line in comment) + body
