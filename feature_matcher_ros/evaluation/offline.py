"""Running the :class:`~feature_matcher_ros.frontend.Frontend` over a bag, offline and deterministically,
with the settings of a node parameter file.

A parameter file is the ROS form (``/**: {ros__parameters: {...}}`` or ``node_name: {ros__parameters: ...}``,
nested mappings flattened to dotted names). ``backend``, ``device``, ``precision`` and ``weights`` pick
and build the backend; names the frontend or that backend knows become their settings; ``input_mode``,
``sync.*`` and ``depth.scale`` say how the metric input is paired and decoded (:mod:`.pairing`); the rest
(topics, QoS, other backends' parameters) does not apply offline and is listed in the run's ``ignored``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bagio import BagTopics
from .cli import UsageError, read_yaml
from .pairing import PAIRING_PARAMS, Pairing, PairingStats, iter_input_frames
from .records import FrameRecord

#: parameters that choose and build the backend rather than tune it
BUILD_KEYS = ("backend", "device", "precision", "weights", "runtime")
DEFAULT_BACKEND = "sift"


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load_params_file(path: str | Path, node_name: str = "matcher_node") -> dict[str, Any]:
    """The ``ros__parameters`` of a ROS parameter file that apply to ``node_name`` (``/**`` sections and
    sections named like the node, later ones win), flattened to dotted names."""
    path = Path(path)
    doc = read_yaml(path, "parameter file")
    if not isinstance(doc, dict):
        raise UsageError(f"parameter file {path}: expected '<node or /**>: ros__parameters: {{...}}' at the top")
    sections = [(k, v) for k, v in doc.items() if isinstance(v, dict) and isinstance(v.get("ros__parameters"), dict)]
    if not sections:
        raise UsageError(f"parameter file {path}: no 'ros__parameters' section "
                         f"(expected '/**:' or '{node_name}:' then 'ros__parameters:')")
    wanted = [v for k, v in sections if str(k) in ("/**", "**") or str(k).rstrip("/").split("/")[-1] == node_name]
    if not wanted:
        if len(sections) > 1:
            names = ", ".join(str(k) for k, _ in sections)
            raise UsageError(f"parameter file {path}: sections {names}, none for node {node_name!r} or /**")
        wanted = [sections[0][1]]
    params: dict[str, Any] = {}
    for section in wanted:
        params.update(_flatten(section["ros__parameters"]))
    return params


def default_params_file() -> Path | None:
    """The node's shipped parameter file (``config/matcher.yaml``), when present."""
    from ..resources import config_file

    path = config_file("matcher.yaml")
    return path if path.is_file() else None


@dataclass
class RunSpec:
    """One configuration to evaluate."""

    name: str
    backend: str
    device: str = "cpu"
    precision: str = "fp32"
    weights: str | None = None
    runtime: str = "torch"
    backend_settings: dict[str, Any] = field(default_factory=dict)
    frontend_settings: dict[str, Any] = field(default_factory=dict)
    params_files: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    pairing: Pairing = field(default_factory=Pairing)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "device": self.device, "precision": self.precision,
                "weights": self.weights, "runtime": self.runtime, "backend_settings": self.backend_settings,
                "frontend_settings": self.frontend_settings, "params_files": self.params_files,
                "ignored_parameters": self.ignored, "pairing": self.pairing.describe()}


def make_run_spec(params: dict[str, Any], backend: str | None = None, device: str | None = None,
                  name: str | None = None, params_files: Iterable[str] = ()) -> RunSpec:
    """Split node parameters into backend choice, backend settings and frontend settings.
    ``backend``/``device`` (command-line options) override the file."""
    from ..settings import split_settings

    chosen = str(backend or params.get("backend") or DEFAULT_BACKEND)
    try:
        node, frontend, backend_settings = split_settings(params, chosen)
    except (ValueError, ImportError, AttributeError) as exc:
        raise UsageError(f"backend {chosen!r}: {exc}") from None
    precision = frontend.pop("precision", None)
    return RunSpec(name=name or chosen, backend=chosen,
                   device=str(device or params.get("device") or "cpu"),
                   precision=str(precision or "fp32"),
                   weights=(str(params["weights"]) if params.get("weights") else None),
                   runtime=str(params.get("runtime") or "torch"),
                   backend_settings=backend_settings, frontend_settings=frontend,
                   params_files=[str(p) for p in params_files],
                   ignored=[key for key in node if key not in BUILD_KEYS and key not in _PAIRING_NAMES],
                   pairing=Pairing.from_params(node))


_PAIRING_NAMES = {spec.name for spec in PAIRING_PARAMS}


def build_frontend(spec: RunSpec) -> Any:
    """A fresh :class:`~feature_matcher_ros.frontend.Frontend` for ``spec``; bad settings -> UsageError."""
    from ..backends import create_backend
    from ..frontend import Frontend

    try:
        backend = create_backend(spec.backend, device=spec.device, precision=spec.precision,
                                 weights=spec.weights, runtime=spec.runtime, **spec.backend_settings)
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as exc:
        raise UsageError(f"run {spec.name}: cannot create backend {spec.backend!r}: {exc}") from None
    spec.device = str(backend.device)
    try:
        return Frontend(backend, dict(spec.frontend_settings), spec.pairing.input_mode)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"run {spec.name}: bad frontend settings: {exc}") from None


def seed_everything(seed: int = 0) -> None:
    """Fix the random number generators RANSAC and the backends may use (runs repeat exactly)."""
    import sys

    import cv2

    random.seed(seed)
    np.random.seed(seed)
    cv2.setRNGSeed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


@dataclass
class OfflineRun:
    """What :func:`run_offline` gives."""

    records: list[FrameRecord]
    wall_s: float           # time spent in Frontend.process, all frames
    first_camera: Any = None
    pairing: PairingStats = field(default_factory=PairingStats)


def run_offline(reader: Any, topics: BagTopics, frontend: Any, total: int | None = None,
                progress: bool = True, desc: str = "fm-eval",
                on_frame: Callable[[FrameRecord], None] | None = None, pairing: Pairing | None = None) -> OfflineRun:
    """Every image of the bag through ``frontend.process`` in order, with its depth or right image in the
    metric modes of ``pairing`` (``topics`` must then name them); one :class:`FrameRecord` each (latency = wall
    time of ``process``). A metric frame the frontend refuses is counted (``processing_error``) and skipped."""
    pairing = pairing or Pairing()
    stats = PairingStats()
    frames: Iterable = iter_input_frames(reader, topics, pairing, stats)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="frame", leave=False)
    seed_everything(0)
    records: list[FrameRecord] = []
    wall = 0.0
    first_camera = None
    try:
        for item in frames:
            frame = item.frame
            first_camera = first_camera or frame.camera
            t0 = time.perf_counter()
            try:
                result = frontend.process(frame.image, frame.stamp_ns, frame.camera, item.depth, item.stereo)
            except ValueError:
                if pairing.input_mode == "mono":
                    raise
                stats.count(stats.rejected, "processing_error")
                continue
            dt = time.perf_counter() - t0
            wall += dt
            rec = FrameRecord.from_frame_result(result, frame.camera, latency_ms=dt * 1000.0)
            records.append(rec)
            if on_frame:
                on_frame(rec)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return OfflineRun(records, wall, first_camera, stats)
