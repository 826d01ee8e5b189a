"""SPTD2 extraction as one fixed-shape ONNX graph, and an onnxruntime runtime for it.

The graph is :func:`~.inference.detect_and_describe` for one input size: the network, the score maps
(:func:`~.inference.detection_maps`), max-pool NMS, the border, top-K, sub-pixel refinement and descriptor
sampling. Matching stays in the backend (torch). Every shape is static: instead of selecting the detections
(``nonzero``), the graph takes the top K of the score map with the non-detections at -inf, and says which of
the K slots hold a detection (``valid``); detections come first, best score first, exactly as in the torch path.

Graph (file ``sptd2_extract_{H}x{W}.onnx``):
    input ``image`` ``(1, 1, H, W)`` float32 in [0, 1] (what :func:`~.inference.image_to_tensor` gives);
    outputs ``keypoints`` ``(K, 2)`` float32 ``(x, y)`` pixels, ``scores`` ``(K,)`` float32,
    ``descriptors`` ``(K, D)`` float32 unit vectors, ``valid`` ``(K,)`` bool (invalid slots are zeros).

The settings that shape the graph (``sptd2.top_k``, ``sptd2.nms_radius``, ``sptd2.detection_threshold``,
``sptd2.key_threshold``, ``sptd2.score_levels``) are baked in. Each export's description (:func:`export_sptd2`'s
return value) is stored in the ONNX file's metadata (key ``sptd2``) and, through :func:`write_sidecar`, in
``sptd2.json`` beside it, so both a folder and a single ``.onnx`` file can be given to ``SPTD2Backend(onnx=...)``.

Example::

    backend = SPTD2Backend()
    entry = export_sptd2(backend, Path("exports"), (480, 640))
    write_sidecar(Path("exports"), [entry])
    onnx_backend = SPTD2Backend(onnx="exports")   # extract() through onnxruntime, match() unchanged
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..onnx_providers import providers_for
from .backend import SPTD2Backend

SIDECAR = "sptd2.json"
METADATA_KEY = "sptd2"
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ("keypoints", "scores", "descriptors", "valid")
# backend settings baked into an export (changing one needs a new export)
BAKED_SETTINGS = ("sptd2.top_k", "sptd2.nms_radius", "sptd2.detection_threshold", "sptd2.key_threshold",
                  "sptd2.score_levels")
# fp16: torch 2.13's legacy exporter writes an invalid graph for this network in fp16 (onnxruntime refuses it: a
# LayerNormalization fed float and float16), so the graph is fp32 only for now.
EXPORT_PRECISIONS = ("fp32",)


def export_name(size: tuple[int, int]) -> str:
    """File name of the export for an ``(H, W)`` input."""
    return f"sptd2_extract_{int(size[0])}x{int(size[1])}.onnx"


def local_maximum_mask(score, radius: int):
    """:func:`~..nms.maxpool_nms`'s mask (``kernel_size = 2 * radius + 1``, no threshold) of an ``(H, W)``
    map in plain operators: a position is kept when it is the first maximum, in scan order, of the window
    centred on it (torch's max-pool tie rule), i.e. it equals the window maximum and no earlier position of
    the window has its value. No max-pool indices, so every runtime (TensorRT too) settles ties alike."""
    import torch
    import torch.nn.functional as F

    h, w = score.shape
    x = torch.where(torch.isnan(score), torch.full_like(score, float("-inf")), score)
    k = 2 * radius + 1
    window_max = F.max_pool2d(x[None, None], k, stride=1, padding=radius)[0, 0]
    keep = x == window_max
    padded = F.pad(x[None, None], (radius, radius, radius, radius), value=float("-inf"))[0, 0]
    for dy in range(-radius, 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx >= 0:
                break
            earlier = padded[radius + dy: radius + dy + h, radius + dx: radius + dx + w]
            keep = keep & (earlier != x)
    return keep


def _graph_module(model, size: tuple[int, int], cfg):
    """A ``torch.nn.Module`` computing the export's four outputs from a ``(1, 1, H, W)`` float32 image."""
    import torch

    from .inference import detection_maps, pad_to_multiple, refine_subpixel, sample_descriptors

    h, w = size
    b = min(cfg.border, (min(h, w) - 1) // 2)
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[b: h - b, b: w - b] = True  # b == 0: everything

    class Extract(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("inside", inside, persistent=False)

        def forward(self, image: torch.Tensor):
            padded = pad_to_multiple(image)
            out = self.model(padded)
            padded_size = tuple(padded.shape[-2:])
            peaks, rank = (m[0] for m in detection_maps(out, (h, w), padded_size, cfg.score_levels))
            keep = rank > cfg.detection_threshold
            if cfg.nms_radius > 0:
                keep = keep & local_maximum_mask(peaks, cfg.nms_radius)
            keep = keep & self.inside
            ranked = torch.where(keep, rank, torch.full_like(rank, float("-inf"))).reshape(-1)
            values, index = ranked.topk(cfg.top_k)
            valid = values > float("-inf")
            xy = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], dim=1)
            keypoints = refine_subpixel(peaks, xy) if cfg.subpixel and h >= 3 and w >= 3 else xy.float()
            descriptors = sample_descriptors(out["descriptors"], keypoints, padded_size)
            keypoints = torch.where(valid[:, None], keypoints, torch.zeros_like(keypoints))
            scores = torch.where(valid, values, torch.zeros_like(values))
            descriptors = torch.where(valid[:, None], descriptors, torch.zeros_like(descriptors))
            return keypoints, scores, descriptors, valid

    return Extract().eval()


def export_sptd2(backend, out_dir: Path, size: tuple[int, int], precision: str = "fp32",
                 top_k: int | None = None) -> dict[str, Any]:
    """Export ``backend``'s extraction for ``(H, W)`` images to ``out_dir / sptd2_extract_{H}x{W}.onnx``.

    Args:
        backend: a ready ``SPTD2Backend`` (its network and its ``sptd2.*`` detection settings are used; the
            backend itself is not changed: a CPU fp32 copy of the network is exported).
        out_dir: folder for the file (created).
        size: ``(H, W)`` of the images, at least 16 a side (padded to multiples of 16 inside the graph).
        precision: ``fp32`` only (see :data:`EXPORT_PRECISIONS`; the backend's own precision does not
            matter: its network is copied to the CPU in fp32 for the export).
        top_k: K, the number of output slots (None = the backend's ``sptd2.top_k``; at most H * W).
    Returns:
        the export's description for the sidecar (:func:`write_sidecar`); also stored in the file's
        metadata under ``sptd2``.
    Raises:
        ValueError: a bad size, precision or top_k.
    """
    import torch

    from .inference import MAX_KEYPOINTS, DetectionConfig

    h, w = (int(v) for v in size)
    if min(h, w) < 16:
        raise ValueError(f"export_sptd2: size must be at least 16x16, got {h}x{w} (H, W)")
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"export_sptd2: precision must be one of {EXPORT_PRECISIONS}, not {precision!r}")
    settings = backend.settings
    k = int(settings["sptd2.top_k"] if top_k is None else top_k)
    if not 1 <= k <= min(MAX_KEYPOINTS, h * w):
        raise ValueError(f"export_sptd2: top_k must be in [1, {min(MAX_KEYPOINTS, h * w)}], got {k}")
    cfg = DetectionConfig(top_k=k, nms_radius=int(settings["sptd2.nms_radius"]),
                          detection_threshold=float(settings["sptd2.detection_threshold"]),
                          score_levels=backend.score_levels)
    key_threshold = float(settings["sptd2.key_threshold"])
    model = copy.deepcopy(backend.model).to(device="cpu", dtype=torch.float32).eval()
    model.key_threshold = key_threshold
    graph = _graph_module(model, (h, w), cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / export_name((h, w))
    example = torch.rand(1, model.config.in_channels, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), do_constant_folding=True)
    config = model.config
    entry: dict[str, Any] = {
        "file": path.name,
        "size": [h, w],
        "input": {"name": INPUT_NAME, "shape": [1, config.in_channels, h, w], "dtype": "float32", "range": [0, 1]},
        "outputs": list(OUTPUT_NAMES),
        "top_k": cfg.top_k,
        "nms_radius": cfg.nms_radius,
        "score_levels": cfg.score_levels,
        "detection_threshold": cfg.detection_threshold,
        "key_threshold": key_threshold,
        "border": cfg.border,
        "subpixel": cfg.subpixel,
        "max_keys": int(model.max_keys),
        "min_keys": int(model.min_keys),
        "precision": precision,
        "descriptor_dim": int(config.dim),
        "architecture_hash": config.architecture_hash(),
        "weights": Path(str(backend.weights_path)).name,
        "opset": OPSET,
        "exporter": f"torch.onnx.export(dynamo=False), torch {torch.__version__}",
    }
    _store_metadata(path, entry)
    return entry


def _store_metadata(path: Path, entry: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    prop = proto.metadata_props.add()
    prop.key, prop.value = METADATA_KEY, json.dumps(entry, sort_keys=True)
    onnx.save(proto, str(path))


def write_sidecar(out_dir: Path, entries: list[dict[str, Any]]) -> Path:
    """Write ``out_dir / sptd2.json`` listing ``entries`` (from :func:`export_sptd2`); returns its path.

    Entries must share the baked detection settings (one backend uses them all) and differ in size."""
    entries = [dict(e) for e in entries]
    if not entries:
        raise ValueError("write_sidecar: no entries")
    _check_consistent(entries, "write_sidecar")
    path = Path(out_dir) / SIDECAR
    path.write_text(json.dumps({"backend": "sptd2", "format": 1, "entries": entries}, indent=1, sort_keys=True)
                    + "\n")
    return path


def baked_settings(entry: dict[str, Any]) -> dict[str, Any]:
    """The backend settings an export was made with, as ``{"sptd2.top_k": ..., ...}``."""
    return {"sptd2.top_k": int(entry["top_k"]), "sptd2.nms_radius": int(entry["nms_radius"]),
            "sptd2.detection_threshold": float(entry["detection_threshold"]),
            "sptd2.key_threshold": float(entry["key_threshold"]),
            "sptd2.score_levels": str(entry.get("score_levels", "all"))}  # exports before it: the average


def _check_consistent(entries: list[dict[str, Any]], who: str) -> None:
    first = baked_settings(entries[0])
    sizes = set()
    for entry in entries:
        if baked_settings(entry) != first:
            raise ValueError(f"{who}: exports {entries[0]['file']} and {entry['file']} differ in their baked "
                             f"settings ({first} vs {baked_settings(entry)})")
        size = tuple(entry["size"])
        if size in sizes:
            raise ValueError(f"{who}: two exports for the size {size[0]}x{size[1]} (H x W)")
        sizes.add(size)


class OnnxSPTD2Extractor:
    """One exported graph in an onnxruntime session.

    Args:
        path: the ``.onnx`` file (from :func:`export_sptd2`).
        threads: onnxruntime's ``intra_op_num_threads`` (None = its default).
        providers: execution providers (None = those of a CUDA device, :func:`..onnx_providers.providers_for`).
    Attributes:
        size: ``(H, W)`` the graph takes; entry: its description (the file's ``sptd2`` metadata; None when
            absent); path, session.
    Call: ``(1, 1, H, W)`` float32 image in [0, 1] -> ``{"keypoints": (N, 2), "scores": (N,),
    "descriptors": (N, D)}`` float32 numpy arrays of the valid slots, best score first (as
    :func:`~.inference.detect_and_describe`).
    """

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"SPTD2 ONNX export not found: {self.path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=list(providers) if providers else providers_for("cuda"))
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.entry: dict[str, Any] | None = json.loads(meta) if meta else None
        shape = self.session.get_inputs()[0].shape
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(int(v) for v in shape)
        self.size = self.input_shape[-2:]

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        if not isinstance(image, np.ndarray):
            raise TypeError(f"OnnxSPTD2Extractor: image must be a numpy array, got {type(image).__name__}")
        if tuple(image.shape) != self.input_shape:
            raise ValueError(f"OnnxSPTD2Extractor: {self.path.name} takes a {self.input_shape} image, got "
                             f"{tuple(image.shape)}")
        image = np.ascontiguousarray(image, dtype=np.float32)
        keypoints, scores, descriptors, valid = self.session.run(list(OUTPUT_NAMES), {self.input_name: image})
        valid = valid.astype(bool)
        return {"keypoints": keypoints[valid], "scores": scores[valid], "descriptors": descriptors[valid]}


def open_exports(onnx: str | Path, threads: int | None = None,
                 providers: list[str] | None = None) -> dict[tuple[int, int], OnnxSPTD2Extractor]:
    """The exports at ``onnx``, by ``(H, W)``: a folder with ``sptd2.json`` (every listed file), or one
    ``.onnx`` file (described by its own metadata). Raises a clear error when something is missing or the
    exports disagree on their baked settings."""
    onnx = Path(onnx)
    if onnx.is_dir():
        sidecar = onnx / SIDECAR
        if not sidecar.is_file():
            raise FileNotFoundError(f"sptd2: {onnx} has no {SIDECAR} (write it with write_sidecar)")
        entries = json.loads(sidecar.read_text()).get("entries", [])
        if not entries:
            raise ValueError(f"sptd2: {sidecar} lists no exports")
        _check_consistent(entries, str(sidecar))
        extractors = {}
        for entry in entries:
            extractor = OnnxSPTD2Extractor(onnx / entry["file"], threads, providers)
            if extractor.size != tuple(entry["size"]):
                raise ValueError(f"sptd2: {extractor.path} takes {extractor.size}, but {sidecar} says {entry['size']}")
            extractor.entry = dict(entry)
            extractors[extractor.size] = extractor
        return extractors
    extractor = OnnxSPTD2Extractor(onnx, threads, providers)
    if extractor.entry is None:
        raise ValueError(f"sptd2: {onnx} has no '{METADATA_KEY}' metadata; give the folder with its {SIDECAR}")
    return {extractor.size: extractor}


class OnnxSPTD2Backend(SPTD2Backend):
    """``SPTD2Backend(onnx=weights)`` with the calling convention of the ``runtime: onnxruntime`` backends:
    ``weights`` is the export (a folder with ``sptd2.json``, or one ``.onnx`` file); the torch network is the
    shipped one (``extract`` does not use it)."""

    def __init__(self, device: str = "cpu", precision: str = "fp32", weights: str | Path | None = None,
                 **settings: Any) -> None:
        if weights is None:
            raise ValueError("sptd2: runtime onnxruntime needs weights = an export of onnx_export (folder or file)")
        super().__init__(device=device, precision=precision, onnx=weights, **settings)
