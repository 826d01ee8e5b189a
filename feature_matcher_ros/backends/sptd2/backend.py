"""SPTD2 as a frontend backend: per-image keypoints + descriptors (cacheable), mutual-NN matching."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...params import ParamSpec
from ..base import Backend, Features, Matches, torch_dtype
from ..nms import nms_matches
from .inference import (
    MAX_KEYPOINTS,
    SCORE_LEVELS,
    DetectionConfig,
    detect_and_describe,
    image_to_tensor,
    mutual_nearest_neighbours,
)

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "sptd2_fast_distill.pt"


def default_weights() -> Path:
    """The shipped trained weights (``feature_matcher_ros/weights/sptd2_fast_distill.pt``)."""
    return DEFAULT_WEIGHTS


class SPTD2Backend(Backend):
    """SPTD2 keypoints (Wang et al., IJCAI 2021), trained in this package; see ``weights/sptd2_fast_distill.md``.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, ``fp16`` or ``bf16`` (checked with a test forward pass at start-up; a
            combination torch cannot run raises a RuntimeError naming it).
        weights: checkpoint path; None = the shipped ``sptd2_fast_distill.pt``; ``"random"`` = an untrained
            network of the small size, ``"random:VARIANT"`` of that size (for comparisons only).
        onnx: run ``extract`` through onnxruntime instead of torch (``match`` is unchanged): a folder written by
            :mod:`.onnx_export` (its ``sptd2.json`` lists one export per image size) or one exported ``.onnx``
            file. An image of a size no export takes is a ValueError (no silent resizing: export that size or
            set the frontend's ``resize_long_edge`` to give it). The settings baked into the export
            (``sptd2.top_k``, ``nms_radius``, ``detection_threshold``, ``key_threshold``, ``score_levels``) default
            to the export's values and cannot change (:meth:`validate` rejects it, naming the export). On ``cpu``
            onnxruntime runs on its CPU provider with torch's thread count, otherwise on CUDA/TensorRT where
            this onnxruntime has them; features land on ``device`` as with torch.
        settings: the ``sptd2.*`` parameters below.
    """

    name: ClassVar[str] = "sptd2"
    MIN_IMAGE_SIDE: ClassVar[int] = 16  # its trunk pools to 1/16
    PARAMS: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("sptd2.top_k", 2048, "Keypoints kept per image (best fused scores after NMS).", min=1,
                  max=MAX_KEYPOINTS),
        ParamSpec("sptd2.nms_radius", 1, "Keypoint NMS radius in pixels (window 2r+1; 1: the 3x3 window); "
                  "0 = off.", min=0, max=16),
        ParamSpec("sptd2.score_levels", "auto", "Score map keypoints are detected on: all (the levels' average), "
                  "fine (the finest level alone), auto (fine for weights that score level 1 at full resolution, "
                  "as sptd2_fast_distill.pt does; else all).", choices=("auto", *SCORE_LEVELS)),
        ParamSpec("sptd2.detection_threshold", 0.0, "Minimum detector score of a keypoint (the levels' average).",
                  min=0.0, max=1.0),
        ParamSpec("sptd2.match_threshold", 0.0, "Minimum cosine similarity of a mutual-NN match.", min=-1.0, max=1.0),
        ParamSpec("sptd2.ratio", 1.0, "Lowe ratio on descriptor distances, both directions (1.0 = off).", min=0.1,
                  max=1.0),
        ParamSpec("sptd2.match_nms_kernel", 0, "CasMTR max-pool NMS over matches (odd kernel in 4 px cells; 0 = off).",
                  min=0, max=15),
        ParamSpec("sptd2.key_threshold", 0.8, "Attention key threshold tau on the normalised soft score.", min=0.0,
                  max=1.0),
    )

    def __init__(self, device: str = "cpu", precision: str = "fp32", weights: str | Path | None = None,
                 onnx: str | Path | None = None, **settings: Any) -> None:
        import torch

        from .config import SPTD2Config
        from .model import SPTD2, load_checkpoint

        if weights is not None and str(weights).split(":")[0] == "random":
            variant = str(weights).partition(":")[2] or "small"
            torch.manual_seed(0)
            self.model, self.meta = SPTD2(SPTD2Config.preset(variant)).eval(), {"weights": str(weights)}
            self.weights_path = str(weights)
        else:
            path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
            self.model, self.meta = load_checkpoint(str(path))
            self.weights_path = str(path)
        self._torch = torch
        self.onnx_path, self._onnx, self._baked = None, {}, {}
        if onnx is not None:
            from ..onnx_providers import providers_for
            from .onnx_export import baked_settings, open_exports

            cpu = str(device) == "cpu"
            self._onnx = open_exports(onnx, threads=torch.get_num_threads() if cpu else None,
                                      providers=providers_for(device))
            self.onnx_path, self._baked = str(onnx), baked_settings(next(iter(self._onnx.values())).entry)
            settings = {**self._baked, **settings}
        super().__init__(device=device, precision=precision, **settings)
        self._place()

    # -- device / precision -------------------------------------------------------------------------
    @property
    def dtype(self):
        return torch_dtype(self.precision)

    def _place(self) -> None:
        torch = self._torch
        try:
            self.model.to(device=self.device, dtype=self.dtype)
            with torch.inference_mode():
                self.model(torch.zeros(1, self.model.config.in_channels, 32, 32, device=self.device, dtype=self.dtype))
        except (RuntimeError, NotImplementedError) as error:
            self.model.to(device="cpu", dtype=torch.float32)
            raise RuntimeError(
                f"sptd2: precision {self.precision} is not supported on device {self.device!r} by torch "
                f"{torch.__version__} ({error}); use fp32 there"
            ) from error

    def set_precision(self, precision: str) -> None:
        previous = self.precision
        super().set_precision(precision)
        try:
            self._place()
        except RuntimeError:
            self.precision = previous
            self._place()
            raise

    def validate(self, settings: Mapping[str, Any]) -> str | None:
        reason = super().validate(settings)
        kernel = settings.get("sptd2.match_nms_kernel", 0)
        if reason is None and isinstance(kernel, int) and kernel > 1 and kernel % 2 == 0:
            return f"sptd2.match_nms_kernel: must be odd (or 0/1 = off), got {kernel}"
        for key, baked in self._baked.items():
            # auto score levels are whatever the export was made with (the node passes every default)
            same = settings.get(key) == baked or (key == "sptd2.score_levels" and settings.get(key) == "auto")
            if reason is None and key in settings and not same:
                reason = (f"{key}: baked into the ONNX export {self.onnx_path} as {baked!r}, cannot be "
                          f"{settings[key]!r} (export again with the new value)")
        return reason

    def apply(self, settings: Mapping[str, Any]) -> None:
        super().apply(settings)
        self.model.key_threshold = float(self.settings["sptd2.key_threshold"])

    @property
    def score_levels(self) -> str:
        """``sptd2.score_levels`` with ``auto`` resolved for these weights."""
        levels = str(self.settings["sptd2.score_levels"])
        if levels == "auto":
            return "fine" if getattr(self.model.config, "fine_scores", False) else "all"
        return levels

    # -- per image and per pair ---------------------------------------------------------------------
    def extract(self, image: np.ndarray) -> Features:
        if self._onnx:
            return self._extract_onnx(image)
        tensor = image_to_tensor(self.gray(image), self.device, self.dtype)
        cfg = DetectionConfig(top_k=int(self.settings["sptd2.top_k"]),
                              nms_radius=int(self.settings["sptd2.nms_radius"]),
                              detection_threshold=float(self.settings["sptd2.detection_threshold"]),
                              score_levels=self.score_levels)
        out = detect_and_describe(self.model, tensor, cfg)
        data = {"keypoints": out["keypoints"], "scores": out["scores"],
                "descriptors": out["descriptors"].to(self.dtype)}
        return Features(self.name, tuple(image.shape[:2]), data, self.precision, str(self.device))

    def _extract_onnx(self, image: np.ndarray) -> Features:
        gray = self.gray(image)
        extractor = self._onnx.get(gray.shape)
        if extractor is None:
            sizes = ", ".join(f"{w}x{h}" for h, w in self._onnx)
            raise ValueError(f"sptd2.extract: the ONNX export {self.onnx_path} takes {sizes} (WxH) images, got "
                             f"{gray.shape[1]}x{gray.shape[0]}; export that size or resize the images")
        out = extractor(image_to_tensor(gray).numpy())
        torch = self._torch
        data = {k: torch.from_numpy(v).to(self.device) for k, v in out.items()}
        data["descriptors"] = data["descriptors"].to(self.dtype)
        return Features(self.name, tuple(image.shape[:2]), data, self.precision, str(self.device))

    def match(self, feats0: Features, feats1: Features) -> Matches:
        f0 = self.convert_features(self.own(feats0, "feats0"))
        f1 = self.convert_features(self.own(feats1, "feats1"))
        i0, i1, sim = mutual_nearest_neighbours(
            f0.data["descriptors"], f1.data["descriptors"], float(self.settings["sptd2.match_threshold"]),
            float(self.settings["sptd2.ratio"]))
        k0 = f0.data["keypoints"][i0].float().cpu().numpy()
        k1 = f1.data["keypoints"][i1].float().cpu().numpy()
        matches = Matches(k0, k1, sim.float().cpu().numpy())
        kernel = int(self.settings["sptd2.match_nms_kernel"])
        if kernel > 1:
            return matches.select(nms_matches(matches.kpts0, matches.scores, f0.image_size, kernel_size=kernel,
                                              cell=4, threshold=-1.0))
        return matches.top_k(0)

    def convert_features(self, feats: Features) -> Features | None:
        if feats.backend != self.name:
            return None
        if feats.precision == self.precision and feats.device == str(self.device):
            return feats
        data = {k: v.to(self.device) for k, v in feats.data.items()}
        data["descriptors"] = data["descriptors"].to(self.dtype)
        return Features(self.name, feats.image_size, data, self.precision, str(self.device))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "weights": self.weights_path, **({"onnx": self.onnx_path} if self._onnx else {})}
