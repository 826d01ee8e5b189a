"""Matcher backends behind one interface (:mod:`.base`), created by name.

``sift`` and ``orb`` need no weights; ``eloftr`` and ``sptd2`` are learned. Backends are imported
lazily so that choosing SIFT never pays for torch model code.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import PRECISIONS, Backend, Features, Matches

# name -> "module:Class"
_REGISTRY = {
    "sift": "feature_matcher_ros.backends.sift:SiftBackend",
    "orb": "feature_matcher_ros.backends.sift:OrbBackend",
    "eloftr": "feature_matcher_ros.backends.eloftr:EfficientLoFTRBackend",
    "sptd2": "feature_matcher_ros.backends.sptd2:SPTD2Backend",
}


# runtime "onnxruntime": the backends that run an fm-export folder, "module:Class"
_ONNX_REGISTRY = {
    "eloftr": "feature_matcher_ros.backends.eloftr.onnx_runtime:OnnxEloftrBackend",
    "sptd2": "feature_matcher_ros.backends.sptd2.onnx_export:OnnxSPTD2Backend",
}
RUNTIMES = ("torch", "onnxruntime")


def backend_names() -> tuple[str, ...]:
    """Every backend name, sorted (those whose code is absent included: see :func:`available_backends`).

    >>> backend_names()
    ('eloftr', 'orb', 'sift', 'sptd2')
    """
    return tuple(sorted(_REGISTRY))


def available_backends() -> list[str]:
    """Names of the backends whose code is present in this install."""
    names = []
    for name, target in _REGISTRY.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def backend_class(name: str, runtime: str = "torch") -> type[Backend]:
    """The class of backend ``name`` on ``runtime`` (``torch``, or ``onnxruntime`` for an fm-export folder)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {list(backend_names())}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {list(RUNTIMES)}, not {runtime!r}")
    registry = _REGISTRY if runtime == "torch" else _ONNX_REGISTRY
    if name not in registry:
        raise ValueError(f"backend {name} has no runtime {runtime} (onnxruntime: {sorted(_ONNX_REGISTRY)})")
    module, cls = registry[name].split(":")
    return getattr(importlib.import_module(module), cls)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``. ``cuda`` without CUDA is an error
    (never a silent fallback)."""
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {device!r} was asked for but this torch build sees no CUDA device "
                f"(torch {torch.__version__}); set device: cpu or auto"
            )
        return device
    raise ValueError(f"device must be cpu, cuda, cuda:N or auto, not {device!r}")


def create_backend(
    name: str, *, device: str = "cpu", precision: str = "fp32", weights: str | None = None, runtime: str = "torch",
    **settings: Any
) -> Backend:
    """A ready backend. ``settings`` are the backend's own parameters (e.g. ``{"eloftr.mode": "opt"}``);
    ``runtime`` ``onnxruntime`` runs an ``fm-export`` folder given as ``weights``."""
    cls = backend_class(name, runtime)
    kwargs: dict[str, Any] = {"device": resolve_device(device), "precision": precision, **settings}
    if weights is not None:
        kwargs["weights"] = weights
    return cls(**kwargs)


__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "Backend",
    "Features",
    "Matches",
    "available_backends",
    "backend_class",
    "backend_names",
    "create_backend",
    "resolve_device",
]
