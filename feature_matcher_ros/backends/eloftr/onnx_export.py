"""Efficient LoFTR as ONNX graphs, the streaming split with fixed shapes (``fm-export``).

A folder holds:

* ``extract_<W>x<H>.onnx``: ``image (1, 1, H, W)`` float in [0, 1] -> ``feat``, ``lat1``, ``lat2`` (what
  :meth:`EfficientLoFTR.extract` caches for a keyframe), one graph per image size (keyframe and frame);
* ``match_<mode>.onnx``: the keyframe's and the frame's features and ``threshold`` (0-d) -> ``mkpts0``,
  ``mkpts1`` ``(K, 2)``, ``mconf``, ``valid`` ``(K,)``, ``count`` (0-d), ``i_ids``, ``j_ids`` ``(K,)`` (the
  coarse cells): :meth:`EfficientLoFTR.match_static`
  with its plain-operator coarse matching and whole-map fine FPN, one graph per mode;
* ``eloftr.json``: the sidecar (sizes, K, modes, default thresholds, precision, the checkpoint's sha256,
  the files).

The threshold is an input, so it stays a live parameter; the mode picks the graph. Graphs are written by
torch's ``torch.export``-based exporter (opset 18).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import DEFAULT_THRESHOLDS, MODES
from .fine import _upsample_matrix
from .model import FEATURES, EfficientLoFTR

SIDECAR = "eloftr.json"
OPSET = 18
MATCH_INPUTS = tuple(f"{n}{k}" for k in (0, 1) for n in FEATURES) + ("threshold",)
MATCH_OUTPUTS = ("mkpts0", "mkpts1", "mconf", "valid", "count", "i_ids", "j_ids")


class ExtractGraph(nn.Module):
    """``image`` -> ``(feat, lat1, lat2)``."""

    def __init__(self, model: EfficientLoFTR) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.extract(image)
        return tuple(out[n] for n in FEATURES)


class MatchGraph(nn.Module):
    """Both images' features and the threshold -> the fixed-K outputs of :data:`MATCH_OUTPUTS`."""

    def __init__(self, model: EfficientLoFTR, mode: str, k: int) -> None:
        super().__init__()
        self.model, self.mode, self.k = model, mode, k

    def forward(self, feat0, lat10, lat20, feat1, lat11, lat21, threshold) -> tuple[torch.Tensor, ...]:
        out = self.model.match_static({"feat": feat0, "lat1": lat10, "lat2": lat20},
                                      {"feat": feat1, "lat1": lat11, "lat2": lat21},
                                      self.mode, threshold, self.k, export=True)
        return tuple(out[n] for n in ("mkpts0_f", "mkpts1_f", "mconf", "valid", "count", "i_ids", "j_ids"))


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def size_name(size: tuple[int, int]) -> str:
    """``(W, H)`` -> ``"WxH"``."""
    return f"{size[0]}x{size[1]}"


def _export(module: nn.Module, args: tuple, path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=True, opset_version=OPSET, input_names=list(inputs),
                          output_names=list(outputs), external_data=False, verbose=False)


@dataclass
class ExportSpec:
    """What to export: keyframes of ``size`` and frames of ``frame_size`` (``(W, H)``, multiples of 32;
    default ``size``), the modes, K (0: half the frame's coarse cells), the model's precision and the
    checkpoint it came from (hashed into the sidecar)."""

    size: tuple[int, int]
    frame_size: tuple[int, int] | None = None
    modes: tuple[str, ...] = MODES
    max_candidates: int = 0
    precision: str = "fp32"
    weights: str | Path | None = None


def export_eloftr(model: EfficientLoFTR, out_dir: str | Path, spec: ExportSpec) -> dict[str, Any]:
    """Write the graphs and the sidecar (``model`` in the spec's precision); returns the sidecar."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size, modes, weights = spec.size, spec.modes, spec.weights
    frame_size = spec.frame_size or size
    m = model.config.size_multiple
    for s in (size, frame_size):
        if s[0] % m or s[1] % m or min(s) < m:
            raise ValueError(f"fm-export: sizes must be multiples of {m}, got {size_name(s)}")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise ValueError(f"fm-export: modes must be among {list(MODES)}, got {list(modes)}")
    model = _fresh_copy(model)
    device = model.device
    extract = ExtractGraph(model).eval()
    files: dict[str, Any] = {"extract": {}, "match": {}}
    for s in dict.fromkeys((size, frame_size)):
        name = f"extract_{size_name(s)}.onnx"
        _export(extract, (torch.rand(1, 1, s[1], s[0], device=device),), out / name, ("image",), FEATURES)
        files["extract"][size_name(s)] = name
    # two different images: the exporter would take one tensor passed twice for one input
    f0, f1 = (_example_features(model, s) for s in (size, frame_size))
    k = model.candidate_count(f0, f1, spec.max_candidates)
    for mode in modes:
        name = f"match_{mode}.onnx"
        args = (*(f0[n] for n in FEATURES), *(f1[n] for n in FEATURES),
                torch.tensor(DEFAULT_THRESHOLDS[mode], device=device))
        _export(MatchGraph(model, mode, k).eval(), args, out / name, MATCH_INPUTS, MATCH_OUTPUTS)
        files["match"][mode] = name
    _upsample_matrix.cache_clear()  # it holds tensors made while tracing
    sidecar = {
        "format": 1, "backend": "eloftr", "keyframe_size": list(size), "frame_size": list(frame_size),
        "max_candidates": k, "modes": list(modes), "default_thresholds": {mo: DEFAULT_THRESHOLDS[mo] for mo in modes},
        "precision": spec.precision, "weights": None if weights is None else Path(weights).name,
        "weights_sha256": None if weights is None else sha256(weights), "opset": OPSET,
        "torch": torch.__version__, "files": files,
    }
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n")
    return sidecar


def _fresh_copy(model: EfficientLoFTR) -> EfficientLoFTR:
    """A copy of ``model`` with its lazy tables empty: tables made in inference mode cannot be traced, and
    those made while tracing must not reach the caller's model (cleared again after the export)."""
    model = copy.deepcopy(model)
    if model.loftr_coarse.rope is not None:
        model.loftr_coarse.rope._tables.clear()
    _upsample_matrix.cache_clear()
    return model


def _example_features(model: EfficientLoFTR, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The features of a random ``size`` image, as normal (not inference-mode) tensors for tracing."""
    with torch.inference_mode():
        got = model.extract(torch.rand(1, 1, size[1], size[0], device=model.device))
    return {k: v.clone() for k, v in got.items()}


def read_sidecar(folder: str | Path) -> dict[str, Any]:
    """The sidecar of an export folder; a ValueError saying what is wrong when it is not one."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        raise ValueError(f"eloftr: runtime onnxruntime needs weights = an fm-export folder; {folder} has no {SIDECAR}")
    sidecar = json.loads(path.read_text())
    if sidecar.get("backend") != "eloftr" or sidecar.get("format") != 1:
        raise ValueError(f"eloftr: {path} is not an Efficient LoFTR export (format 1)")
    return sidecar
