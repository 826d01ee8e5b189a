"""The backend interface: per-image feature extraction (cacheable) and pair matching.

A backend turns one grayscale image into :class:`Features` once, and matches two feature sets into
:class:`Matches`. The frontend keeps the keyframe's features and reuses them for every following frame,
so ``extract`` must depend on its own image alone. Backends whose matching needs both images through
every stage (Efficient LoFTR's transformer) still fit: ``extract`` holds whatever is per-image
(backbone maps, first self-attention layer, fine-stage lateral convs), ``match`` does the rest.

Everything here is ROS-free. Coordinates are always ``(x, y)`` in pixels of the image given to
``extract`` (origin at the centre of the top-left pixel, OpenCV convention).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..params import ParamSpec

PRECISIONS = ("fp32", "fp16", "bf16")
# precision -> the torch dtype's name (torch itself is imported only by the learned backends)
TORCH_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(precision: str) -> Any:
    """The torch dtype of a precision name (``fp32`` -> ``torch.float32``)."""
    import torch

    if precision not in TORCH_DTYPE_NAMES:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    return getattr(torch, TORCH_DTYPE_NAMES[precision])


def gray_image(image: Any, who: str = "image", min_side: int = 8) -> np.ndarray:
    """``(H, W)`` uint8 from a uint8 ``(H, W)`` / ``(H, W, 1)`` gray or ``(H, W, 3|4)`` RGB(A) image, or a
    ValueError naming what is wrong (``who`` says where).

    >>> gray_image(np.zeros((8, 10, 3), np.uint8)).shape
    (8, 10)
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{who}: must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{who}: must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        import cv2

        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if image.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
    if image.ndim != 2:
        raise ValueError(f"{who}: expected an (H, W) gray or (H, W, 3|4) RGB(A) image, got shape {image.shape}")
    if min(image.shape) < min_side:
        raise ValueError(f"{who}: image of shape {image.shape} is too small (at least {min_side}x{min_side})")
    return np.ascontiguousarray(image)


def _nbytes(value: Any) -> int:
    """Bytes held by an array, a tensor, or a (nested) dict/list/tuple of them."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # torch.Tensor, without importing torch
        return int(value.element_size() * value.nelement())
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


@dataclass
class Features:
    """Everything a backend computed from one image alone.

    Attributes:
        backend: name of the backend that made it (features never cross backends).
        image_size: ``(H, W)`` of the image given to ``extract``.
        data: backend-specific payload (arrays or tensors).
        precision: the precision the payload was computed in (``fp32``, ``fp16`` or ``bf16``).
        device: where tensors in ``data`` live (``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``"cpu"`` for numpy).
    """

    backend: str
    image_size: tuple[int, int]
    data: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    device: str = "cpu"

    @property
    def nbytes(self) -> int:
        return _nbytes(self.data)


@dataclass
class Matches:
    """Correspondences between image 0 (the keyframe) and image 1 (the current frame).

    Attributes:
        kpts0: ``(N, 2)`` float32, ``(x, y)`` pixels in image 0.
        kpts1: ``(N, 2)`` float32, ``(x, y)`` pixels in image 1.
        scores: ``(N,)`` float32, higher is better. Its scale is the backend's (a probability for
            Efficient LoFTR ``full``, a raw score for ``opt``, a similarity for descriptors).
    """

    kpts0: np.ndarray
    kpts1: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        self.kpts0 = np.asarray(self.kpts0, dtype=np.float32).reshape(-1, 2)
        self.kpts1 = np.asarray(self.kpts1, dtype=np.float32).reshape(-1, 2)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if not (len(self.kpts0) == len(self.kpts1) == len(self.scores)):
            raise ValueError(
                f"Matches: kpts0 {self.kpts0.shape}, kpts1 {self.kpts1.shape} and scores "
                f"{self.scores.shape} must have the same length"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Matches:
        return cls(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, np.float32))

    def select(self, index: np.ndarray) -> Matches:
        return Matches(self.kpts0[index], self.kpts1[index], self.scores[index])

    def top_k(self, k: int) -> Matches:
        """The ``k`` highest-scoring matches, best first (all of them, sorted, when ``k <= 0``)."""
        order = np.argsort(-self.scores, kind="stable")
        if k > 0:
            order = order[:k]
        return self.select(order)

    def scaled(self, sx0: float, sy0: float, sx1: float, sy1: float) -> Matches:
        """Keypoints mapped to another pixel grid: ``x' = (x + 0.5) * s - 0.5`` per image and axis."""
        def _map(k: np.ndarray, sx: float, sy: float) -> np.ndarray:
            out = k.copy()
            out[:, 0] = (k[:, 0] + 0.5) * sx - 0.5
            out[:, 1] = (k[:, 1] + 0.5) * sy - 0.5
            return out

        return Matches(_map(self.kpts0, sx0, sy0), _map(self.kpts1, sx1, sy1), self.scores)


class Backend(ABC):
    """A matcher: ``extract`` per image (cacheable), ``match`` per pair.

    Subclasses set ``name`` and ``PARAMS`` (their own parameters, names prefixed with the backend name,
    e.g. ``"eloftr.threshold"``). Live parameters change through :meth:`validate` then :meth:`apply`:
    the frontend calls ``validate`` with the complete would-be settings, and only when it returns
    ``None`` (no reason to reject) calls ``apply``. A change takes effect from the next call, whole.
    """

    name: ClassVar[str] = "base"
    PARAMS: ClassVar[tuple[ParamSpec, ...]] = ()
    MIN_IMAGE_SIDE: ClassVar[int] = 8  # smaller images are refused by :meth:`gray`

    def __init__(self, device: str = "cpu", precision: str = "fp32", **settings: Any) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.device = device
        self.precision = precision
        self.settings: dict[str, Any] = {p.name: p.default for p in self.PARAMS}
        unknown = sorted(set(settings) - set(self.settings))
        if unknown:
            raise ValueError(f"{self.name}: unknown settings {unknown}; known: {sorted(self.settings)}")
        merged = {**self.settings, **settings}
        reason = self.validate(merged)
        if reason:
            raise ValueError(f"{self.name}: {reason}")
        self.apply(merged)

    # -- per image and per pair -------------------------------------------------------------------
    @abstractmethod
    def extract(self, image: np.ndarray) -> Features:
        """Per-image features. ``image``: ``(H, W)`` uint8 grayscale."""

    @abstractmethod
    def match(self, feats0: Features, feats1: Features) -> Matches:
        """Matches between two feature sets made by this backend (``feats0`` is the keyframe)."""

    def match_pair(self, image0: np.ndarray, image1: np.ndarray) -> Matches:
        """The pairwise path: both images through every stage, nothing cached."""
        return self.match(self.extract(image0), self.extract(image1))

    # -- the checks every backend makes -------------------------------------------------------------
    def gray(self, image: Any) -> np.ndarray:
        """``image`` as ``(H, W)`` uint8 (:func:`gray_image`, at least ``MIN_IMAGE_SIDE`` pixels a side)."""
        return gray_image(image, f"{self.name}.extract", self.MIN_IMAGE_SIDE)

    def own(self, feats: Any, which: str) -> Features:
        """``feats`` when this backend made it, else a ValueError naming who did."""
        if not isinstance(feats, Features) or feats.backend != self.name:
            got = feats.backend if isinstance(feats, Features) else type(feats).__name__
            raise ValueError(f"{self.name}.match: {which} was made by {got!r}, not by {self.name!r}")
        return feats

    # -- live settings ----------------------------------------------------------------------------
    def validate(self, settings: Mapping[str, Any]) -> str | None:
        """The reason ``settings`` (all of this backend's parameters) cannot be applied, or None."""
        by_name = {p.name: p for p in self.PARAMS}
        for key, value in settings.items():
            spec = by_name.get(key)
            if spec is None:
                return f"unknown parameter {key!r}"
            reason = spec.check(value)
            if reason:
                return reason
        return None

    def effective_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """All of this backend's settings as :meth:`apply` would take ``changes`` into use: the current ones
        updated by ``changes``, plus anything the backend derives from them (Efficient LoFTR: a mode change
        alone moves the threshold to the new mode's default)."""
        return {**self.settings, **changes}

    def apply(self, settings: Mapping[str, Any]) -> None:
        """Take already validated settings into use (from the next ``extract``/``match``)."""
        self.settings.update(self.effective_settings(settings))

    def set_precision(self, precision: str) -> None:
        """Change the numeric precision; features made before are converted or dropped by the caller."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.precision = precision

    def convert_features(self, feats: Features) -> Features | None:
        """``feats`` in this backend's current device and precision, or None when it cannot be converted
        (the caller then re-extracts). Backends holding only numpy data need not override this."""
        if feats.backend != self.name:
            return None
        return feats

    def keypoints(self, feats: Features) -> np.ndarray | None:
        """``(N, 2)`` float32 detected keypoints ``(x, y)`` in the pixels of the image given to ``extract``, or
        None for a detector-free backend (its matches place the keypoints). Used for a keyframe's landmarks."""
        k = feats.data.get("keypoints")
        if k is None:
            return None
        if hasattr(k, "detach"):  # a tensor, without importing torch
            k = k.detach().float().cpu().numpy()
        return np.asarray(k, np.float32).reshape(-1, 2)

    @property
    def stage_ms(self) -> dict[str, float]:
        """Milliseconds per named stage of the last ``extract``/``match``/``match_pair`` call; empty when the
        backend does not time its stages."""
        return {}

    @property
    def scratch_nbytes(self) -> int:
        """Bytes of working buffers the backend keeps between frames (beyond cached features); 0 here."""
        return 0

    @property
    def counters(self) -> dict[str, Any]:
        """Backend-specific counts for ``/diagnostics`` (names prefixed with the backend name); none here."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What diagnostics show: backend, device, precision and the live settings."""
        return {"backend": self.name, "device": self.device, "precision": self.precision, **self.settings}
