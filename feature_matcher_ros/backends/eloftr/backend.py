"""``eloftr``: the Efficient LoFTR backend (streaming: a keyframe's per-image work is done once).

Coordinates: ``extract`` resizes any image to sides that are multiples of 32 (nearest multiple, at
least 32; ``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when enlarging). The network's keypoints are
in the resized image's pixel frame (the model's own convention, kept as is, including the ``-3.5`` of
its window indexing; it was trained with it) and are mapped back to the caller's pixels with
:meth:`Matches.scaled` (pixel-centre convention ``x' = (x + 0.5) s - 0.5``). Images whose sides are
already multiples of 32 are not resized, so their keypoints equal the official outputs.

Static shapes (``eloftr.static``, default on): each frame is matched by
:meth:`EfficientLoFTR.match_static`, at most ``eloftr.max_candidates`` matches (the best by confidence)
in fixed-size tensors, copied to the host once; frames that had more count as ``truncated_frames``. On
CUDA with ``eloftr.cuda_graph`` (default on) extraction and matching are CUDA graphs, captured once per
shape, precision and mode (:mod:`.graphs`).

Live settings: ``eloftr.mode`` (``full`` | ``opt``) and ``eloftr.threshold``. When the mode changes and
the threshold stays as it was, the threshold switches to the new mode's default (0.2 for ``full``,
25 for ``opt``): a full-mode probability is meaningless as an opt-mode raw score and vice versa. To
choose both, change both in one batch (with a threshold different from the current one).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ...params import ParamSpec
from ..base import PRECISIONS, Backend, Features, Matches, torch_dtype
from .config import DEFAULT_THRESHOLDS, MODES, threshold_problem
from .graphs import GraphCache, shape_key
from .loader import load_model
from .model import FEATURES, EfficientLoFTR, StageTimer, _no_timer


def _resolve_device(device: str) -> str:
    from .. import resolve_device

    return resolve_device(device)


def network_size(h: int, w: int, multiple: int = 32) -> tuple[int, int]:
    """The ``(H, W)`` the network sees: each side rounded to the nearest multiple (at least one)."""
    return max(multiple, int(round(h / multiple)) * multiple), max(multiple, int(round(w / multiple)) * multiple)


class EfficientLoFTRBackend(Backend):
    """Efficient LoFTR (CVPR 2024), exact to the official model.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        precision: ``fp32`` | ``fp16`` | ``bf16`` (the whole model cast; ``full`` coarse scores and the
            fine matching stay fp32).
        weights: path of the official checkpoint (``eloftr_outdoor.ckpt``), read unchanged.
        num_threads: torch CPU threads (``torch.set_num_threads``; process-wide), None = leave as is.
        fuse: fold the RepVGG blocks into single convs (the released deploy form; default True).
        cudnn_benchmark: on CUDA, let cudnn time its convolution algorithms once per input size (a
            camera stream has one size); process-wide, like every cudnn flag.
        mode, threshold: aliases of ``eloftr.mode`` / ``eloftr.threshold``.
        settings: live parameters by their dotted names.
    """

    name = "eloftr"
    PARAMS = (
        ParamSpec("eloftr.mode", "full", "coarse matching: full (dual-softmax) or opt (raw score)", choices=MODES),
        ParamSpec(
            "eloftr.threshold",
            DEFAULT_THRESHOLDS["full"],
            "coarse confidence threshold: in (0, 1) for full (default 0.2), > 0 for opt (default 25)",
            min=0.0,
        ),
        ParamSpec("eloftr.static", True, "Fixed-shape matching: at most eloftr.max_candidates matches per frame, "
                  "nothing read back inside a frame (CUDA graphs need it); false = the dynamic path.",
                  read_only=True),
        ParamSpec("eloftr.max_candidates", 0, "With eloftr.static: keep at most this many coarse matches, the best by "
                  "confidence (0 = half the frame's coarse cells: 2400 at 640x480).", min=0, max=1_000_000,
                  read_only=True),
        ParamSpec("eloftr.cuda_graph", True, "On CUDA with eloftr.static: run extraction and matching as CUDA graphs "
                  "captured once per shape, precision and mode.", read_only=True),
    )

    def __init__(
        self,
        device: str = "cpu",
        precision: str = "fp32",
        weights: str | None = None,
        num_threads: int | None = None,
        fuse: bool = True,
        cudnn_benchmark: bool = True,
        mode: str | None = None,
        threshold: float | None = None,
        **settings: Any,
    ) -> None:
        if weights is None:
            raise ValueError(
                "eloftr: weights=PATH is required (the official eloftr_outdoor.ckpt from the Efficient LoFTR release)"
            )
        if mode is not None:
            settings["eloftr.mode"] = mode
        if threshold is not None:
            settings["eloftr.threshold"] = threshold
        device = _resolve_device(device)
        if num_threads is not None:
            if int(num_threads) < 1:
                raise ValueError(f"eloftr: num_threads must be >= 1, got {num_threads}")
            torch.set_num_threads(int(num_threads))
        super().__init__(device=device, precision=precision, **settings)
        self.weights = str(weights)
        self._master: EfficientLoFTR = load_model(weights, device=device, dtype=torch.float32, fuse=fuse)
        self.model = self._master
        self._timer: tuple[str, StageTimer] | None = None  # (stage prefix, timer) of the last call
        self._staging: dict[tuple, tuple[torch.Tensor, Any]] = {}  # pinned upload buffer (CUDA)
        self._graphs = GraphCache()
        self._threshold: torch.Tensor | None = None  # the live threshold on the device (static path)
        self.truncated_frames = 0  # frames with more matches than eloftr.max_candidates
        self.last_candidates = (0, 0)  # (matches before truncation, K) of the last static frame
        if device.startswith("cuda"):
            _configure_cuda(cudnn_benchmark)
        self.precision = "fp32"
        self.set_precision(precision)

    # -- settings -------------------------------------------------------------------------------------
    def effective_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        merged = super().effective_settings(changes)
        mode, thr = merged["eloftr.mode"], merged["eloftr.threshold"]
        if mode != self.settings["eloftr.mode"] and thr == self.settings["eloftr.threshold"] and mode in MODES:
            merged["eloftr.threshold"] = DEFAULT_THRESHOLDS[mode]
        if isinstance(merged["eloftr.threshold"], int) and not isinstance(merged["eloftr.threshold"], bool):
            merged["eloftr.threshold"] = float(merged["eloftr.threshold"])
        return merged

    def validate(self, settings: Mapping[str, Any]) -> str | None:
        reason = super().validate(settings)
        if reason:
            return reason
        merged = self.effective_settings(settings)
        return threshold_problem(merged["eloftr.mode"], merged["eloftr.threshold"])

    def apply(self, settings: Mapping[str, Any]) -> None:
        super().apply(settings)
        self._threshold = None  # made again on the next static frame

    @property
    def uses_graphs(self) -> bool:
        """Whether frames run as CUDA graphs (CUDA, ``eloftr.static`` and ``eloftr.cuda_graph``)."""
        return (str(self.device).startswith("cuda") and self.settings["eloftr.static"]
                and self.settings["eloftr.cuda_graph"])

    def set_precision(self, precision: str) -> None:
        """Cast the model (from the fp32 master weights) to ``precision``; a ValueError when this torch
        build cannot run that dtype on this device."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        dtype = torch_dtype(precision)
        if dtype == torch.float32:
            model = self._master
        else:
            model = copy.deepcopy(self._master).to(dtype)
            problem = _dtype_problem(model, self.device)
            if problem:
                raise ValueError(f"eloftr: precision {precision} is not usable on {self.device}: {problem}")
        if self.model is not model:
            self.model.workspace.clear()  # the previous precision's scratch buffers
            self._graphs.clear()  # captured with the previous precision's weights
        self.model = model
        self.precision = precision

    def convert_features(self, feats: Features) -> Features | None:
        if feats.backend != self.name:
            return None
        if feats.device == self.device and feats.precision == self.precision:
            return feats
        dtype = torch_dtype(self.precision)
        data = {k: (v.to(device=self.device, dtype=dtype) if torch.is_tensor(v) else v) for k, v in feats.data.items()}
        return Features(self.name, feats.image_size, data, self.precision, self.device)

    # -- per image / per pair -------------------------------------------------------------------------
    def _tensor(self, gray: np.ndarray) -> torch.Tensor:
        """``(1, 1, H, W)`` float in [0, 1] on the device. On CUDA the uint8 image goes through a pinned
        staging buffer (reused per size) with an asynchronous copy, and is converted on the GPU."""
        host = torch.from_numpy(gray)
        if not str(self.device).startswith("cuda"):
            return host.float().div_(255.0)[None, None]
        staged = self._staging.get(host.shape)
        if staged is None:
            staged = (torch.empty(host.shape, dtype=torch.uint8, pin_memory=True), torch.cuda.Event())
            self._staging = {host.shape: staged}  # one size at a time: frames of a stream share it
        buf, copied = staged
        copied.synchronize()  # the previous frame's copy out of this buffer has finished
        buf.copy_(host)
        image = buf.to(self.device, non_blocking=True)
        copied.record()
        return image.float().div_(255.0)[None, None]

    def _network_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        gray = self.gray(image)
        h, w = gray.shape
        nh, nw = network_size(h, w, self.model.config.size_multiple)
        if (nh, nw) != (h, w):
            import cv2

            interp = cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_LINEAR
            gray = cv2.resize(gray, (nw, nh), interpolation=interp)
        return gray, (h, w)

    def extract(self, image: np.ndarray) -> Features:
        gray, size = self._network_image(image)
        return self._extract_gray(gray, size)

    def extract_native(self, image: np.ndarray) -> Features:
        """Like :meth:`extract` without resizing: sides must already be multiples of 32."""
        gray = self.gray(image)
        return self._extract_gray(gray, gray.shape)

    def _extract_gray(self, gray: np.ndarray, size: tuple[int, int]) -> Features:
        timer = StageTimer()
        image = self._tensor(gray)
        if self.uses_graphs:
            with timer("graph", image.device):
                out = self._graphs.run(("extract", self.precision, *shape_key({"image": image})),
                                       lambda t: self.model.extract(t["image"]), {"image": image})
                data: dict[str, Any] = {k: v.clone() for k, v in out.items()}  # the graph's buffers are reused
        else:
            data = dict(self.model.extract(image, timer))
        data["net_size"] = tuple(gray.shape)
        self._timer = ("extract.", timer)
        return Features(self.name, tuple(int(s) for s in size), data, self.precision, self.device)

    def _own(self, feats: Features, which: str) -> Features:
        """``feats`` made by this backend, on its device and precision."""
        converted = self.convert_features(self.own(feats, which))
        assert converted is not None
        return converted

    def match_native(self, feats0: Features, feats1: Features, debug: bool = False) -> dict[str, Any]:
        """The model's own outputs (tensors, network-input pixels, official convention)."""
        feats0, feats1 = self._own(feats0, "feats0"), self._own(feats1, "feats1")
        timer = StageTimer()
        out = self.model.match_extracted(
            feats0.data, feats1.data, self.settings["eloftr.mode"], self.settings["eloftr.threshold"], timer, debug
        )
        self._timer = ("", timer)
        return out

    def match(self, feats0: Features, feats1: Features) -> Matches:
        if not self.settings["eloftr.static"]:
            out = self.match_native(feats0, feats1)
            return self._to_matches(out, feats0, feats1)
        out = self.match_static(feats0, feats1)
        host = (torch.cat([out["mkpts0_f"].float(), out["mkpts1_f"].float(), out["mconf"].float()[:, None],
                           out["valid"].float()[:, None], out["count"].float().expand(len(out["valid"]), 1)], 1)
                .cpu().numpy())  # one device-to-host copy after the frame
        return self._slot_matches(host, feats0, feats1)

    def _slot_matches(self, host: np.ndarray, feats0: Features, feats1: Features) -> Matches:
        """Matches from the static path's K slots on the host, rows ``x0 y0 x1 y1 score valid count`` (network
        pixels): the truncation counted, the valid slots kept, mapped to the callers' pixels."""
        count, k = int(host[0, 6]), len(host)
        self.last_candidates = (count, k)
        self.truncated_frames += count > k
        return self._scale_host(host[host[:, 5] > 0.5], feats0.image_size, feats1.image_size,
                                feats0.data["net_size"], feats1.data["net_size"])

    def match_static(self, feats0: Features, feats1: Features) -> dict[str, torch.Tensor]:
        """:meth:`EfficientLoFTR.match_static` outputs (fixed shapes, on the device), through a CUDA graph
        when :attr:`uses_graphs`."""
        feats0, feats1 = self._own(feats0, "feats0"), self._own(feats1, "feats1")
        model, mode = self.model, self.settings["eloftr.mode"]
        k = model.candidate_count(feats0.data, feats1.data, self.settings["eloftr.max_candidates"])
        if self._threshold is None:
            self._threshold = torch.tensor(float(self.settings["eloftr.threshold"]), device=self.device)
        timer = StageTimer()
        self._timer = ("", timer)
        inputs = {f"{name}{n}": d[name] for n, d in ((0, feats0.data), (1, feats1.data))
                  for name in FEATURES} | {"threshold": self._threshold}

        def run(t: Mapping[str, torch.Tensor], timer: Any = _no_timer) -> dict[str, torch.Tensor]:
            d0, d1 = ({name: t[f"{name}{n}"] for name in FEATURES} for n in (0, 1))
            return model.match_static(d0, d1, mode, t["threshold"], k, timer)

        if not self.uses_graphs:
            return run(inputs, timer)
        with timer("graph", self._threshold.device):
            return self._graphs.run(("match", mode, k, self.precision, *shape_key(inputs)), run, inputs)

    def match_pair(self, image0: np.ndarray, image1: np.ndarray) -> Matches:
        """The faithful pairwise path (official computation order, whole-map fine FPN)."""
        out, size0, size1, net0, net1 = self.match_pair_native(image0, image1)
        return self._scale(out, size0, size1, net0, net1)

    def match_pair_native(self, image0: np.ndarray, image1: np.ndarray, resize: bool = True, debug: bool = False):
        """``(outputs, size0, size1, net_size0, net_size1)`` of :meth:`EfficientLoFTR.forward_reference`."""
        if resize:
            (g0, size0), (g1, size1) = self._network_image(image0), self._network_image(image1)
        else:
            g0, g1 = self.gray(image0), self.gray(image1)
            size0, size1 = g0.shape, g1.shape
        timer = StageTimer()
        out = self.model.forward_reference(
            self._tensor(g0), self._tensor(g1), self.settings["eloftr.mode"], self.settings["eloftr.threshold"],
            timer, debug
        )
        self._timer = ("", timer)
        return out, size0, size1, g0.shape, g1.shape

    def _to_matches(self, out: dict[str, Any], feats0: Features, feats1: Features) -> Matches:
        return self._scale(out, feats0.image_size, feats1.image_size, feats0.data["net_size"], feats1.data["net_size"])

    @classmethod
    def _scale(cls, out, size0, size1, net0, net1) -> Matches:
        # one device-to-host copy for keypoints and scores together
        host = (torch.cat([out["mkpts0_f"].float(), out["mkpts1_f"].float(), out["mconf"].float()[:, None]], 1)
                .cpu().numpy())
        return cls._scale_host(host, size0, size1, net0, net1)

    @staticmethod
    def _scale_host(host: np.ndarray, size0, size1, net0, net1) -> Matches:
        """Matches from ``host (M, >=5)`` rows ``x0 y0 x1 y1 score`` in network pixels, in the callers' pixels."""
        m = Matches(np.ascontiguousarray(host[:, 0:2]), np.ascontiguousarray(host[:, 2:4]),
                    np.ascontiguousarray(host[:, 4]))
        if tuple(size0) == tuple(net0) and tuple(size1) == tuple(net1):
            return m
        return m.scaled(size0[1] / net0[1], size0[0] / net0[0], size1[1] / net1[1], size1[0] / net1[0])

    @property
    def stage_ms(self) -> dict[str, float]:
        """Milliseconds per stage of the last ``extract`` (``extract.*``), ``match`` or ``match_pair``
        call (on CUDA read from events, so asking for them waits for that call's GPU work)."""
        if self._timer is None:
            return {}
        prefix, timer = self._timer
        return {prefix + k: v for k, v in timer.ms.items()}

    @property
    def scratch_nbytes(self) -> int:
        """Bytes of the streaming scratch buffers the model keeps between frames."""
        return self.model.workspace.nbytes

    @property
    def counters(self) -> dict[str, Any]:
        """``eloftr.truncated_frames`` (frames with more matches than K), ``eloftr.candidates`` (the last
        static frame's matches before truncation, and K) and ``eloftr.cuda_graphs`` (graphs captured)."""
        if not self.settings["eloftr.static"]:
            return {}
        count, k = self.last_candidates
        out = {"eloftr.truncated_frames": self.truncated_frames, "eloftr.candidates": f"{count}/{k}"}
        if self.uses_graphs:
            out["eloftr.cuda_graphs"] = self._graphs.captures
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "weights": self.weights, "fused": self.model.backbone.is_fused}


def _configure_cuda(benchmark: bool) -> None:
    """Process-wide cudnn settings for this backend: ``fp32`` stays IEEE fp32 (no TF32 convolutions, so
    CUDA fp32 keeps the parity tolerances; ``fp16``/``bf16`` are the fast precisions), and autotuned
    convolution algorithms for the stream's fixed input size when ``benchmark``."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = bool(benchmark)


def _dtype_problem(model: EfficientLoFTR, device: str) -> str | None:
    """Run a tiny pair through ``model``; the error text when this dtype/device cannot run it."""
    try:
        img = torch.rand(1, 1, 32, 32, device=device)
        d = model.extract(img)
        model.match_extracted(d, d, "opt", 1e-6)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None
