"""onnxruntime execution providers for a device, shared by the backends that run ``fm-export`` graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def providers_for(device: str, cache_dir: Path | None = None, fp16: bool = False) -> list[Any]:
    """onnxruntime's execution providers for ``device``, best first, those this install has: on CUDA TensorRT
    (its engines built on first use, cached in ``cache_dir/trt_cache`` when given) and CUDA, then the CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    out: list[Any] = []
    if str(device).startswith("cuda"):
        if "TensorrtExecutionProvider" in have:
            options: dict[str, Any] = {"trt_fp16_enable": fp16}
            if cache_dir is not None:
                options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(Path(cache_dir) / "trt_cache"))
            out.append(("TensorrtExecutionProvider", options))
        if "CUDAExecutionProvider" in have:
            out.append("CUDAExecutionProvider")
    return out + ["CPUExecutionProvider"]
