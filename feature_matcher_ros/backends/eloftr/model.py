"""The Efficient LoFTR network: backbone -> coarse transformer -> coarse matching -> fine matching.

Two paths, same numbers (within float rounding, see the parity tests):

* :meth:`EfficientLoFTR.forward_reference`: the faithful pairwise path, the official computation. Both
  images go through every stage (a same-size pair through the backbone as one batch of two), coarse
  matching builds the whole confidence matrix and its masks, the fine FPN runs on the whole maps up to
  full resolution and every cell's window is unfolded before the matched ones are kept.
* :meth:`EfficientLoFTR.extract` + :meth:`EfficientLoFTR.match_extracted`: the streaming path.
  ``extract`` holds everything that depends on one image alone (backbone, the first self-attention
  layer, the fine lateral 1x1 convs), so a keyframe's features are computed once. ``match_extracted``
  runs the remaining transformer layers (the MLP's message half applied before the x4 upsampling),
  blocked log-domain coarse matching in bounded memory, the fine FPN from the cached laterals (only on
  the matched windows' receptive field when that is small) evaluated at the window pixels only, and fine
  matching. Its scratch buffers live in :attr:`EfficientLoFTR.workspace` between frames.

* :meth:`EfficientLoFTR.match_static`: the streaming path with fixed shapes, for CUDA graphs and ONNX
  export: at most K coarse candidates (the K best by confidence, ``topk`` instead of ``nonzero``) in
  fixed-size tensors with a validity mask, the fine stage on those K windows, nothing read back to the
  host inside the frame. Where K is at least the number of matches it gives the streaming path's matches.

Images are ``(1, 1, H, W)`` float in [0, 1] with H and W multiples of 32. Outputs follow the official
names and coordinate convention: ``mkpts0_f``, ``mkpts1_f`` ``(M, 2)`` ``(x, y)`` pixels of the network
input (``8 * cell + k - 3.5`` for image 0), ``mconf``, ``b_ids``, ``i_ids``, ``j_ids``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .backbone import RepVGGBackbone
from .coarse import (
    CoarseCandidates,
    CoarseMatches,
    coarse_rows,
    coarse_rows_dense,
    match_coarse,
    match_coarse_reference,
    top_candidates,
)
from .config import DEFAULT_THRESHOLDS, MODES, EloftrConfig, threshold_problem
from .fine import FinePreprocess, fine_match, unfold_windows
from .transformer import CoarseTransformer
from .workspace import Workspace

# what :meth:`EfficientLoFTR.extract` returns for an image (a keyframe's cached features)
FEATURES = ("feat", "lat1", "lat2")


class StageTimer:
    """Milliseconds per named stage, accumulated.

    On the CPU a stage is timed with the wall clock. On CUDA each stage records a pair of CUDA events on
    the current stream and nothing waits: the GPU keeps running while the host queues the next stage.
    The events are read when :attr:`ms` is asked for (which then waits for the last of them), so timing
    never adds a host-device synchronisation to the frame itself.
    """

    def __init__(self) -> None:
        self._ms: dict[str, float] = {}
        self._events: list[tuple[str, Any, Any]] = []

    @contextmanager
    def __call__(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        if device is not None and device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((name, start, end))
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._ms[name] = self._ms.get(name, 0.0) + 1000.0 * (time.perf_counter() - t0)

    @property
    def ms(self) -> dict[str, float]:
        """``{stage: milliseconds}`` (waits for the CUDA events recorded so far)."""
        for name, start, end in self._events:
            end.synchronize()
            self._ms[name] = self._ms.get(name, 0.0) + start.elapsed_time(end)
        self._events.clear()
        return dict(self._ms)


@contextmanager
def _no_timer(name: str, device: Any = None) -> Iterator[None]:
    yield


class EfficientLoFTR(nn.Module):
    """Efficient LoFTR with the official state-dict layout (``backbone``, ``loftr_coarse``,
    ``fine_preprocess``)."""

    def __init__(self, config: EloftrConfig | None = None) -> None:
        super().__init__()
        self.config = config or EloftrConfig()
        cfg = self.config
        self.backbone = RepVGGBackbone(cfg.block_dims)
        self.loftr_coarse = CoarseTransformer(
            cfg.d_model, cfg.nhead, cfg.layer_names, cfg.agg_size0, cfg.agg_size1, cfg.rope, cfg.npe
        )
        self.fine_preprocess = FinePreprocess(cfg.block_dims)
        self.workspace = Workspace()  # streaming scratch (coarse scores, fine maps), reused frame to frame
        # layer 0 is a self layer: it depends on one image and runs at extraction time
        self.stream_start = 1 if cfg.layer_names[0] == "self" else 0

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- inputs ---------------------------------------------------------------------------------------
    def check_image(self, img: torch.Tensor, name: str = "image") -> None:
        """Raise ValueError unless ``img`` is ``(1, 1, H, W)`` with H, W positive multiples of 32."""
        m = self.config.size_multiple
        if img.dim() != 4 or img.shape[0] != 1 or img.shape[1] != 1:
            raise ValueError(f"{name}: expected a (1, 1, H, W) grayscale tensor, got shape {tuple(img.shape)}")
        H, W = img.shape[-2:]
        if H < m or W < m or H % m or W % m:
            raise ValueError(
                f"{name}: Efficient LoFTR needs height and width that are multiples of {m} "
                f"(got {W}x{H}); resize first (the backend does this for you)"
            )

    def _prep(self, img: torch.Tensor, name: str) -> torch.Tensor:
        self.check_image(img, name)
        return img.to(device=self.device, dtype=self.dtype)

    # -- streaming path -------------------------------------------------------------------------------
    @torch.inference_mode()
    def extract(self, img: torch.Tensor, timer: Any = _no_timer) -> dict[str, torch.Tensor]:
        """Per-image work: ``img (1, 1, H, W)`` -> ``feat (1, 256, H/8, W/8)`` after the layers that need
        this image alone, and the fine lateral convs ``lat1 (1, 128, H/2, W/2)``, ``lat2 (1, 256, H/4, W/4)``."""
        img = self._prep(img, "image")
        with timer("backbone", img.device):
            x1, x2, c = self.backbone(img)
        with timer("transformer", img.device):
            feat = c
            for index in range(self.stream_start):
                feat = self.loftr_coarse.self_layer(index, feat, factored=True)
        with timer("fine_laterals", img.device):
            lat1, lat2 = self.fine_preprocess.laterals(x1, x2)
        return {"feat": feat, "lat1": lat1, "lat2": lat2}

    @torch.inference_mode()
    def match_extracted(
        self,
        data0: dict[str, torch.Tensor],
        data1: dict[str, torch.Tensor],
        mode: str = "full",
        threshold: float | None = None,
        timer: Any = _no_timer,
        debug: bool = False,
    ) -> dict[str, Any]:
        """Match two :meth:`extract` outputs (image 0 is the keyframe). See the module docstring."""
        mode, threshold = self._check_mode(mode, threshold)
        dev = data0["feat"].device
        with timer("transformer", dev):
            f0, f1 = self.loftr_coarse(data0["feat"], data1["feat"], start=self.stream_start, factored=True)
        coarse = self._coarse(f0, f1, mode, threshold, timer)
        out = self._coarse_outputs(coarse, f0, f1, debug)
        if len(coarse) == 0:
            return out
        with timer("fine_preprocess", dev):
            fc0, fc1 = f0 / self.config.d_model**0.5, f1 / self.config.d_model**0.5  # the official 2nd /16
            W = self.config.fine_window_size
            stats: list = []
            fp, ws = self.fine_preprocess, self.workspace
            win0 = fp.windows_sparse(fc0, data0["lat1"], data0["lat2"], coarse.i_ids, W, 0, stats, ws)
            win1 = fp.windows_sparse(fc1, data1["lat1"], data1["lat2"], coarse.j_ids, W + 2, 1, stats, ws)
        out["fine_fraction"] = stats
        return self._fine(out, win0, win1, timer, debug)

    # -- static-shape streaming path ------------------------------------------------------------------
    def candidate_count(self, data0: dict[str, torch.Tensor], data1: dict[str, torch.Tensor],
                        max_candidates: int = 0) -> int:
        """K of :meth:`match_static`: ``max_candidates`` (0: half the frame's coarse cells), at most the
        keyframe's coarse cells (each keyframe cell has one best match)."""
        h0, w0 = data0["feat"].shape[-2:]
        h1, w1 = data1["feat"].shape[-2:]
        k = int(max_candidates) if max_candidates > 0 else max(1, h1 * w1 // 2)
        return min(k, h0 * w0)

    @torch.inference_mode()
    def match_static(
        self,
        data0: dict[str, torch.Tensor],
        data1: dict[str, torch.Tensor],
        mode: str,
        threshold: torch.Tensor,
        k: int,
        timer: Any = _no_timer,
        export: bool = False,
    ) -> dict[str, torch.Tensor]:
        """:meth:`match_extracted` with fixed shapes: ``mkpts0_f``, ``mkpts1_f`` ``(K, 2)``, ``mconf``,
        ``valid`` ``(K,)``, ``i_ids``, ``j_ids`` ``(K,)`` and ``count`` (0-d: the matches before the K
        best were kept). ``threshold`` is a 0-d tensor on the device (a new value needs no new graph).

        Every shape follows from (keyframe size, frame size, K, mode); no ``.item()``, no data-dependent
        branch. On the CPU the fine FPN still computes only the tiles the windows need (the CPU has no
        host to synchronise with, and the pruning is most of its speed) and the fine stage on the valid
        slots alone; with ``export`` (and on GPUs) the fine FPN runs on the whole maps and the fine stage on
        all K windows, and with ``export`` coarse matching on the whole score matrix in plain operators.
        """
        dev = data0["feat"].device
        with timer("transformer", dev):
            f0, f1 = self.loftr_coarse(data0["feat"], data1["feat"], start=self.stream_start, factored=True)
        with timer("coarse_matching", dev):
            cand = self._candidates(f0, f1, mode, threshold, k, export)
        out = self._coarse_outputs(cand, f0, f1, False)
        # on the CPU the fine stage runs on the valid slots alone (nothing to synchronise with; the
        # unused slots would cost as much as the matches), elsewhere on all K
        slots = cand.valid.nonzero()[:, 0] if dev.type == "cpu" and not export else None
        i_ids, j_ids = (cand.i_ids, cand.j_ids) if slots is None else (cand.i_ids[slots], cand.j_ids[slots])
        with timer("fine_preprocess", dev):
            fc0, fc1 = f0 / self.config.d_model**0.5, f1 / self.config.d_model**0.5  # the official 2nd /16
            W, fp, ws = self.config.fine_window_size, self.fine_preprocess, self.workspace
            win0 = fp.windows_sparse(fc0, data0["lat1"], data0["lat2"], i_ids, W, 0, None, ws, dense=export)
            win1 = fp.windows_sparse(fc1, data1["lat1"], data1["lat2"], j_ids, W + 2, 1, None, ws, dense=export)
        if slots is None:
            out = self._fine(out, win0, win1, timer, False)
        else:
            part = {key: out[key][slots] for key in ("mkpts0_c", "mkpts1_c")}
            part = self._fine(part, win0, win1, timer, False)
            for key in ("mkpts0_f", "mkpts1_f"):
                out[key][slots] = part[key]
        return {key: out[key] for key in ("mkpts0_f", "mkpts1_f", "mconf", "i_ids", "j_ids")} | {
            "valid": cand.valid, "count": cand.count}

    def _candidates(self, f0: torch.Tensor, f1: torch.Tensor, mode: str, threshold: torch.Tensor, k: int,
                    export: bool) -> CoarseCandidates:
        cfg = self.config
        args = (f0[0].flatten(1).t(), f1[0].flatten(1).t(), tuple(f0.shape[-2:]), tuple(f1.shape[-2:]), mode, threshold,
                cfg.border_rm, cfg.dsmax_temperature)
        if export:
            rows = coarse_rows_dense(*args)
        else:
            chunk = cfg.score_chunk_bytes if f0.device.type == "cpu" else cfg.gpu_score_chunk_bytes
            rows = coarse_rows(*args, chunk, f0.dtype, self.workspace)
        return top_candidates(*rows, k)

    # -- faithful pairwise path -----------------------------------------------------------------------
    @torch.inference_mode()
    def forward_reference(
        self,
        img0: torch.Tensor,
        img1: torch.Tensor,
        mode: str = "full",
        threshold: float | None = None,
        timer: Any = _no_timer,
        debug: bool = False,
    ) -> dict[str, Any]:
        """Both images through every stage, whole-map fine FPN (the official computation).

        With ``debug``: also ``bb0/bb1`` (backbone ``x1, x2, c`` per image), ``tr_layers`` (each
        transformer layer's ``(feat0, feat1)``), ``tr_c0/1``, ``fine_map0/1`` and the fine internals.
        """
        mode, threshold = self._check_mode(mode, threshold)
        maps = self.reference_maps(img0, img1, timer, debug)
        return self.reference_match(maps, mode, threshold, timer, debug)

    @torch.inference_mode()
    def reference_maps(self, img0: torch.Tensor, img1: torch.Tensor, timer: Any = _no_timer,
                       debug: bool = False) -> dict[str, Any]:
        """The mode-independent part of :meth:`forward_reference`: backbone and transformer maps."""
        img0, img1 = self._prep(img0, "image0"), self._prep(img1, "image1")
        dev = img0.device
        with timer("backbone", dev):
            if img0.shape == img1.shape:
                maps = self.backbone(torch.cat([img0, img1]))
                bb0, bb1 = tuple(m[:1] for m in maps), tuple(m[1:] for m in maps)
            else:
                bb0, bb1 = self.backbone(img0), self.backbone(img1)
        layers: list | None = [] if debug else None
        with timer("transformer", dev):
            f0, f1 = self.loftr_coarse(bb0[2], bb1[2], collect=layers)
        return {"bb0": bb0, "bb1": bb1, "tr_c0": f0, "tr_c1": f1, "tr_layers": layers}

    @torch.inference_mode()
    def reference_match(
        self, maps: dict[str, Any], mode: str, threshold: float, timer: Any = _no_timer, debug: bool = False
    ) -> dict[str, Any]:
        """Coarse and fine matching of :meth:`reference_maps` output (the whole fine maps are computed
        on first need and kept in ``maps``)."""
        mode, threshold = self._check_mode(mode, threshold)
        f0, f1, bb0, bb1 = maps["tr_c0"], maps["tr_c1"], maps["bb0"], maps["bb1"]
        coarse = self._coarse(f0, f1, mode, threshold, timer, reference=True)
        out = self._coarse_outputs(coarse, f0, f1, debug)
        if debug:
            out.update(bb0=bb0, bb1=bb1, tr_layers=maps["tr_layers"])
        if len(coarse) == 0 and not debug:
            return out
        with timer("fine_preprocess", f0.device):
            if "fine_map0" not in maps:
                fc0, fc1 = f0 / self.config.d_model**0.5, f1 / self.config.d_model**0.5  # the official 2nd /16
                if f0.shape == f1.shape and bb0[0].shape == bb1[0].shape:
                    fmaps = self.fine_preprocess.dense(
                        torch.cat([fc0, fc1]), torch.cat([bb0[1], bb1[1]]), torch.cat([bb0[0], bb1[0]])
                    )
                    maps["fine_map0"], maps["fine_map1"] = fmaps[0], fmaps[1]
                else:
                    maps["fine_map0"] = self.fine_preprocess.dense(fc0, bb0[1], bb0[0])[0]
                    maps["fine_map1"] = self.fine_preprocess.dense(fc1, bb1[1], bb1[0])[0]
            # every cell's window, then the matched ones (official); image 1's windows are 2 px wider
            W, stride = self.config.fine_window_size, self.config.coarse_stride
            win0 = unfold_windows(maps["fine_map0"], stride, W, 0)[coarse.i_ids]
            win1 = unfold_windows(maps["fine_map1"], stride, W + 2, 1)[coarse.j_ids]
        if debug:
            out.update(fine_map0=maps["fine_map0"], fine_map1=maps["fine_map1"])
        if len(coarse) == 0:
            return out
        return self._fine(out, win0, win1, timer, debug)

    # -- shared pieces --------------------------------------------------------------------------------
    def _check_mode(self, mode: str, threshold: float | None) -> tuple[str, float]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, not {mode!r}")
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS[mode]
        reason = threshold_problem(mode, threshold)
        if reason:
            raise ValueError(reason)
        return mode, float(threshold)

    def _coarse(
        self, f0: torch.Tensor, f1: torch.Tensor, mode: str, threshold: float, timer: Any, reference: bool = False
    ) -> CoarseMatches:
        cfg = self.config
        args = (f0[0].flatten(1).t(), f1[0].flatten(1).t(), tuple(f0.shape[-2:]), tuple(f1.shape[-2:]), mode, threshold)
        with timer("coarse_matching", f0.device):
            if reference:
                return match_coarse_reference(*args, cfg.border_rm, cfg.dsmax_temperature, score_dtype=f0.dtype)
            chunk = cfg.score_chunk_bytes if f0.device.type == "cpu" else cfg.gpu_score_chunk_bytes
            return match_coarse(*args, cfg.border_rm, cfg.dsmax_temperature, chunk, f0.dtype, self.workspace)

    def _coarse_outputs(self, coarse: CoarseMatches | CoarseCandidates, f0: torch.Tensor, f1: torch.Tensor,
                        debug: bool) -> dict[str, Any]:
        s = float(self.config.coarse_stride)
        w0, w1 = f0.shape[-1], f1.shape[-1]
        i, j = coarse.i_ids, coarse.j_ids
        mk0 = torch.stack([i % w0, torch.div(i, w0, rounding_mode="floor")], 1).float() * s
        mk1 = torch.stack([j % w1, torch.div(j, w1, rounding_mode="floor")], 1).float() * s
        out: dict[str, Any] = {
            "b_ids": torch.zeros_like(i),
            "i_ids": i,
            "j_ids": j,
            "mconf": coarse.mconf.float(),
            "mkpts0_c": mk0,
            "mkpts1_c": mk1,
            "mkpts0_f": mk0.clone(),
            "mkpts1_f": mk1.clone(),
            "hw0_c": tuple(f0.shape[-2:]),
            "hw1_c": tuple(f1.shape[-2:]),
        }
        if debug:
            out.update(tr_c0=f0, tr_c1=f1)
        return out

    def _fine(self, out: dict[str, Any], win0: torch.Tensor, win1: torch.Tensor, timer: Any,
              debug: bool) -> dict[str, Any]:
        cfg = self.config
        with timer("fine_matching", win0.device):
            res = fine_match(
                win0.float(),
                win1.float(),
                out["mkpts0_c"],
                out["mkpts1_c"],
                cfg.fine_window_size,
                cfg.local_regress_slicedim,
                cfg.local_regress_temperature,
            )
        out["mkpts0_f"], out["mkpts1_f"] = res.mkpts0, res.mkpts1
        if debug:
            out.update(
                fine_win0=win0,
                fine_win1=win1,
                fine_idx_l=res.idx_l,
                fine_idx_r=res.idx_r,
                fine_s1_top2=res.s1_top2,
                fine_heatmap=res.heatmap,
                fine_expec=res.expec,
                mkpts0_s1=res.mkpts0_s1,
                mkpts1_s1=res.mkpts1_s1,
            )
        return out

