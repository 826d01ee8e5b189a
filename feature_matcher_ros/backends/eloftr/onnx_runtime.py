"""Efficient LoFTR through onnxruntime on an ``fm-export`` folder (the node's ``runtime: onnxruntime``).

The same backend as :class:`EfficientLoFTRBackend` to its callers (name ``eloftr``, the same parameters and
outputs), with the graphs of :mod:`.onnx_export` doing the work: a keyframe's features are the extraction
graph's outputs (numpy, cached by the frontend), each frame runs extraction and the mode's matching graph.
Images are resized to the export's size (keypoints mapped back as the torch backend does). What the export
fixed cannot change at run time: the precision, the modes it has, K; ``eloftr.threshold`` stays live.

Execution providers: TensorRT and CUDA where this onnxruntime has them and ``device`` is CUDA, else the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..base import Backend, Features, Matches
from ..onnx_providers import providers_for
from .backend import EfficientLoFTRBackend
from .onnx_export import FEATURES, MATCH_INPUTS, MATCH_OUTPUTS, read_sidecar


class OnnxEloftrBackend(EfficientLoFTRBackend):
    """Efficient LoFTR on onnxruntime. ``weights``: the export folder (with ``eloftr.json``)."""

    def __init__(self, device: str = "cpu", precision: str = "fp32", weights: str | None = None,
                 num_threads: int | None = None, mode: str | None = None, threshold: float | None = None,
                 **settings: Any) -> None:
        import onnxruntime as ort

        if weights is None:
            raise ValueError("eloftr: runtime onnxruntime needs weights = an fm-export folder")
        self.folder = Path(weights)
        self.sidecar = read_sidecar(self.folder)
        if precision != self.sidecar["precision"]:
            raise ValueError(f"eloftr: the export in {self.folder} is {self.sidecar['precision']}, not {precision}; "
                             f"export again with --precision {precision}")
        if mode is not None:
            settings["eloftr.mode"] = mode
        elif "eloftr.mode" not in settings:
            settings["eloftr.mode"] = self.sidecar["modes"][0]
        if threshold is not None:
            settings["eloftr.threshold"] = threshold
        elif "eloftr.threshold" not in settings:
            settings["eloftr.threshold"] = self.sidecar["default_thresholds"][settings["eloftr.mode"]]
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        self.providers = providers_for(device, self.folder, precision == "fp16")
        files = self.sidecar["files"]

        def session(name: str) -> Any:
            return ort.InferenceSession(str(self.folder / name), options, providers=self.providers)

        self._extract = {tuple(int(v) for v in key.split("x")): session(name) for key, name in files["extract"].items()}
        self._match = {mode: session(name) for mode, name in files["match"].items()}
        self.weights = str(self.folder)
        self.truncated_frames, self.last_candidates = 0, (0, 0)
        self._stage: dict[str, float] = {}
        Backend.__init__(self, device=device, precision=precision, **settings)

    # -- settings: what the export fixed ----------------------------------------------------------------
    def validate(self, settings: Mapping[str, Any]) -> str | None:
        reason = super().validate(settings)
        if reason:
            return reason
        merged = self.effective_settings(settings)
        where = f"the export in {self.folder}"
        if merged["eloftr.mode"] not in self._match:
            return f"eloftr.mode {merged['eloftr.mode']!r}: {where} has modes {sorted(self._match)} (fm-export --modes)"
        if not merged["eloftr.static"]:
            return f"eloftr.static false: {where} is the static path (runtime torch has the dynamic one)"
        k = merged["eloftr.max_candidates"]
        if k not in (0, self.sidecar["max_candidates"]):
            return f"eloftr.max_candidates {k}: {where} has K = {self.sidecar['max_candidates']} (fm-export)"
        return None

    def apply(self, settings: Mapping[str, Any]) -> None:
        Backend.apply(self, settings)

    @property
    def uses_graphs(self) -> bool:
        return False

    def set_precision(self, precision: str) -> None:
        if precision != self.sidecar["precision"]:
            raise ValueError(f"eloftr: the export in {self.folder} is {self.sidecar['precision']}; "
                             f"precision {precision} needs another fm-export")
        self.precision = precision

    def convert_features(self, feats: Features) -> Features | None:
        if feats.backend != self.name or feats.precision != self.precision:
            return None
        return feats if all(isinstance(feats.data.get(n), np.ndarray) for n in FEATURES) else None

    # -- per image / per pair ----------------------------------------------------------------------------
    def _network_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        import cv2

        gray = self.gray(image)
        h, w = gray.shape
        sizes = list(self._extract)  # (W, H), keyframe size first
        target = (w, h) if (w, h) in sizes else tuple(self.sidecar["frame_size"])
        if target != (w, h):
            interp = cv2.INTER_AREA if target[0] * target[1] < h * w else cv2.INTER_LINEAR
            gray = cv2.resize(gray, target, interpolation=interp)
        return gray, (h, w)

    def _extract_gray(self, gray: np.ndarray, size: tuple[int, int]) -> Features:
        import time

        session = self._extract.get((gray.shape[1], gray.shape[0]))
        if session is None:
            raise ValueError(f"eloftr: the export in {self.folder} has no extraction graph for "
                             f"{gray.shape[1]}x{gray.shape[0]} (it has {sorted(self.sidecar['files']['extract'])})")
        t0 = time.perf_counter()
        image = (gray.astype(np.float32) / np.float32(255.0))[None, None]
        outs = session.run(list(FEATURES), {"image": image})
        data: dict[str, Any] = dict(zip(FEATURES, outs))
        data["net_size"] = tuple(gray.shape)
        self._stage = {"extract.onnx": 1000.0 * (time.perf_counter() - t0)}
        return Features(self.name, tuple(int(s) for s in size), data, self.precision, self.device)

    def match(self, feats0: Features, feats1: Features) -> Matches:
        out = self.match_outputs(feats0, feats1)
        k = len(out["valid"])
        host = np.concatenate([out["mkpts0"], out["mkpts1"], out["mconf"][:, None], out["valid"][:, None],
                               np.full((k, 1), out["count"])], 1).astype(np.float32)
        return self._slot_matches(host, feats0, feats1)

    def match_outputs(self, feats0: Features, feats1: Features) -> dict[str, np.ndarray]:
        """The matching graph's fixed-K outputs (:data:`MATCH_OUTPUTS`, network pixels) for two features."""
        import time

        feats0, feats1 = self._own(feats0, "feats0"), self._own(feats1, "feats1")
        want = (tuple(self.sidecar["keyframe_size"][::-1]), tuple(self.sidecar["frame_size"][::-1]))
        if (tuple(feats0.data["net_size"]), tuple(feats1.data["net_size"])) != want:
            raise ValueError(f"eloftr: the export in {self.folder} matches {want[0][::-1]} keyframes with "
                             f"{want[1][::-1]} frames, not {feats0.data['net_size'][::-1]} with "
                             f"{feats1.data['net_size'][::-1]}")
        t0 = time.perf_counter()
        feed = {f"{n}{k}": d.data[n] for k, d in ((0, feats0), (1, feats1)) for n in FEATURES}
        feed["threshold"] = np.array(self.settings["eloftr.threshold"], np.float32)
        assert set(feed) == set(MATCH_INPUTS)
        outs = self._match[self.settings["eloftr.mode"]].run(list(MATCH_OUTPUTS), feed)
        self._stage = {"onnx": 1000.0 * (time.perf_counter() - t0)}
        return dict(zip(MATCH_OUTPUTS, outs))

    def match_pair(self, image0: np.ndarray, image1: np.ndarray) -> Matches:
        return self.match(self.extract(image0), self.extract(image1))

    @property
    def stage_ms(self) -> dict[str, float]:
        return dict(self._stage)

    @property
    def scratch_nbytes(self) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        return {**Backend.describe(self), "weights": self.weights, "runtime": "onnxruntime",
                "providers": ",".join(p if isinstance(p, str) else p[0] for p in self.providers)}
