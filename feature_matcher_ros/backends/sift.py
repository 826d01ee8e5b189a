"""Classical backends needing no weights: OpenCV SIFT (accurate) and ORB (fast).

``extract`` detects keypoints and descriptors in one image; ``match`` keeps mutual nearest neighbours that
pass Lowe's ratio test (one match per distinct pixel pair). The score of a match is ``1 - d1 / d2``
(``d1``, ``d2``: distances to the nearest and second-nearest descriptor in the other image), in ``[0, 1]``,
higher = more distinctive.

Keypoints (default): a count that holds in texture-poor and texture-rich scenes alike, spread over a grid
(:mod:`.spread`): when the configured detector threshold finds fewer keypoints than ``*.min_keypoints``, the
detector runs again at a floor (``sift.min_contrast_threshold``, ``orb.min_fast_threshold``) and SIFT's
threshold is halved until that many are found; at most ``*.max_keypoints`` are kept: each ``*.grid_px`` cell
gives its strongest keypoint, then its second, until that budget is spent. ``*.grid_px: 0`` and a floor equal
to the threshold are the plain detector (the strongest overall, one detection).

Features.data (numpy; these backends always run on the CPU, ``device`` reads ``"cpu"``):
    ``keypoints``: ``(N, 2)`` float32 ``(x, y)`` pixels; ``scores``: ``(N,)`` float32 detector response;
    ``descriptors``: ``(N, 128)`` SIFT (float32, or float16 when the precision is ``fp16``) or ``(N, 32)``
    uint8 ORB bits.

Example:
    >>> import numpy as np
    >>> backend = SiftBackend(**{"sift.max_keypoints": 500})
    >>> image = (np.random.default_rng(0).random((120, 160)) * 255).astype(np.uint8)
    >>> feats = backend.extract(image)
    >>> feats.data["descriptors"].shape[1], feats.backend
    (128, 'sift')
    >>> locations = np.unique(feats.data["keypoints"], axis=0)
    >>> len(backend.match(feats, feats)) == len(locations)   # every keypoint location matches itself
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import cv2
import numpy as np

from ..params import ParamSpec
from .base import Backend, Features, Matches
from .spread import adapt_threshold, grid_select


def mutual_ratio_match(dist: np.ndarray, ratio: float, mutual: bool = True, squared: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours passing the ratio test on a distance matrix.

    Args:
        dist: ``(N0, N1)`` float32 distances (smaller = more similar); used as scratch space (entries are
            changed and restored).
        ratio: keep a match when ``d1 < ratio * d2`` in the 0 -> 1 direction (1.0 disables the test).
        mutual: also require that the 1 -> 0 nearest neighbour points back.
        squared: ``dist`` holds squared distances (the neighbours are the same; the ratio and the scores
            use the square roots of the two per row, so no square root of the whole matrix is taken).
    Returns:
        ``(M, 2)`` int64 index pairs and ``(M,)`` float32 scores ``1 - d1 / d2`` (1 when there is no second
        neighbour).
    """
    n0, n1 = dist.shape
    if n0 == 0 or n1 == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    rows = np.arange(n0)
    nn = np.argmin(dist, axis=1)
    d1 = dist[rows, nn].copy()
    # 1 -> 0 nearest neighbours from the column minima (a reduction along the rows is ten times cheaper than
    # an argmin down the columns): row i is column nn[i]'s nearest when it attains that column's minimum
    nearest_back = _first_per_column(d1 == dist.min(axis=0)[nn], nn) if mutual else None
    if n1 >= 2:
        # Second-nearest distance: hide the nearest, take the row minimum, put it back (no full sort).
        dist[rows, nn] = np.inf
        d2 = dist.min(axis=1)
        dist[rows, nn] = d1
    else:
        d2 = np.full(n0, np.inf, np.float32)
    if squared:
        d1, d2 = np.sqrt(np.maximum(d1, 0.0)), np.sqrt(np.maximum(d2, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(d2 > 0, d1 / d2, 1.0)
    keep = rel < ratio if ratio < 1.0 else np.ones(n0, bool)
    if mutual:
        keep &= nearest_back
    idx0 = np.nonzero(keep)[0]
    pairs = np.stack([idx0, nn[idx0]], axis=1).astype(np.int64)
    scores = np.clip(1.0 - rel[idx0], 0.0, 1.0).astype(np.float32)
    return pairs, scores


def _first_per_column(attains: np.ndarray, nn: np.ndarray) -> np.ndarray:
    """``(N0,)`` bool: the rows that attain their nearest column's minimum, the first such row per column (on an
    exact tie between rows that share a nearest column, the one ``argmin`` down the column would give)."""
    rows = np.flatnonzero(attains)
    _, first = np.unique(nn[rows], return_index=True)  # rows ascend: the first of each column
    out = np.zeros(len(nn), bool)
    out[rows[first]] = True
    return out


class _OpenCVBackend(Backend):
    """Shared extract/match logic; subclasses make the detector and the distance matrix."""

    _descriptor_size: ClassVar[int] = 0

    def __init__(self, device: str = "cpu", precision: str = "fp32", **settings: Any) -> None:
        super().__init__(device=device, precision=precision, **settings)
        # OpenCV's SIFT/ORB run on the CPU and the payload is numpy: "cpu" whatever was asked ("auto" and
        # "cuda" are accepted so that one launch file can switch backends).
        self.device = "cpu"

    def _detector(self) -> Any:
        raise NotImplementedError

    def _distances(self, d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _store_descriptors(self, desc: np.ndarray) -> np.ndarray:
        return desc

    SQUARED_DISTANCES: ClassVar[bool] = False  # _distances gives squared distances

    # the spread: the budget, the cell side, and the detector thresholds (configured, floor)
    def _budget(self) -> int:
        return int(self.settings[f"{self.name}.max_keypoints"])

    def _target(self) -> int:
        """How many keypoints the threshold adapts for: ``*.min_keypoints``, at most the budget."""
        return min(self._budget(), int(self.settings[f"{self.name}.min_keypoints"]))

    def _cell_px(self) -> int:
        return int(self.settings[f"{self.name}.grid_px"])

    def _thresholds(self) -> tuple[float, float]:
        raise NotImplementedError

    def _candidate_detector(self, threshold: float) -> Any:
        """A detector at ``threshold`` keeping enough candidates for the grid."""
        raise NotImplementedError

    # True when the floor detection cut at the configured threshold gives the configured detection's keypoints
    # (SIFT: the response is the contrast the threshold is tested on), so a scene that needed the floor can start
    # there on the next frame.
    CUT_BY_THRESHOLD: ClassVar[bool] = False

    def _adapt(self, response: np.ndarray, threshold: float, floor: float) -> tuple[np.ndarray, float]:
        """Which floor-threshold candidates stay, and the threshold they were cut at (all of them at the floor;
        SIFT cuts by its adapted threshold)."""
        return np.ones(len(response), bool), floor

    @property
    def spreads(self) -> bool:
        threshold, floor = self._thresholds()
        return self._budget() > 0 and (self._cell_px() > 0 or floor < threshold)

    def apply(self, settings: Mapping[str, Any]) -> None:
        super().apply(settings)
        self._cv = self._detector()  # detector parameters take effect from the next extract
        if self.spreads:
            threshold, floor = self._thresholds()
            self._candidates = self._candidate_detector(threshold)
            self._floor = self._candidate_detector(floor) if floor < threshold else None
        self._floor_first = False  # the last frame needed a threshold below the configured one

    def _detect_spread(self, gray: np.ndarray) -> tuple[list, np.ndarray | None]:
        """Keypoints and descriptors by :mod:`.spread` (adapted threshold, grid). Each detection computes the
        descriptors of all its candidates (one image pyramid; a separate ``compute`` would build it again) and
        the chosen rows are kept. After a frame that needed a lower threshold, a backend that cuts by threshold
        detects at the floor straight away (one detection instead of two while the scene stays poor)."""
        floor_first = self._floor_first and self.CUT_BY_THRESHOLD and self._floor is not None
        kps, desc = (self._floor if floor_first else self._candidates).detectAndCompute(gray, None)
        if floor_first or (len(kps) < self._target() and self._floor is not None):
            if not floor_first:
                kps, desc = self._floor.detectAndCompute(gray, None)
            threshold, floor = self._thresholds()
            mask, cut = self._adapt(np.array([k.response for k in kps], np.float32), threshold, floor)
            self._floor_first = cut < threshold
            keep = np.flatnonzero(mask)
            kps, desc = [kps[i] for i in keep], (None if desc is None else desc[keep])
        if not kps or desc is None:
            return [], None
        xy = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
        response = np.array([k.response for k in kps], np.float32)
        cell, budget = self._cell_px(), self._budget()
        pick = np.sort(grid_select(xy, response, gray.shape, budget, cell) if cell else np.argsort(-response)[:budget])
        return [kps[i] for i in pick], desc[pick]

    def extract(self, image: np.ndarray) -> Features:
        gray = self.gray(image)
        kps, desc = self._detect_spread(gray) if self.spreads else self._cv.detectAndCompute(gray, None)
        if desc is None or len(kps) == 0:
            kpts = np.zeros((0, 2), np.float32)
            resp = np.zeros(0, np.float32)
            desc = np.zeros((0, self._descriptor_size), self._empty_dtype())
        else:
            kpts = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
            resp = np.array([k.response for k in kps], np.float32)
        return Features(
            backend=self.name,
            image_size=(int(gray.shape[0]), int(gray.shape[1])),
            data={"keypoints": kpts, "descriptors": self._store_descriptors(desc), "scores": resp},
            precision=self.precision,
            device=self.device,
        )

    def _empty_dtype(self) -> Any:
        return np.float32

    def match(self, feats0: Features, feats1: Features) -> Matches:
        feats0, feats1 = self.own(feats0, "feats0"), self.own(feats1, "feats1")
        d0, d1 = feats0.data["descriptors"], feats1.data["descriptors"]
        if len(d0) == 0 or len(d1) == 0:
            return Matches.empty()
        prefix = self.name
        pairs, scores = mutual_ratio_match(
            self._distances(d0, d1), float(self.settings[f"{prefix}.ratio"]), bool(self.settings[f"{prefix}.mutual"]),
            squared=self.SQUARED_DISTANCES,
        )
        k0, k1 = feats0.data["keypoints"][pairs[:, 0]], feats1.data["keypoints"][pairs[:, 1]]
        # SIFT puts several orientations on one location: the same pixel pair can match twice. Keep the
        # best-scoring copy so that RANSAC and inlier counts see each correspondence once.
        order = np.argsort(-scores, kind="stable")
        _, first = np.unique(np.concatenate([k0, k1], axis=1)[order], axis=0, return_index=True)
        keep = np.sort(order[first])
        return Matches(k0[keep], k1[keep], scores[keep])

    def convert_features(self, feats: Features) -> Features | None:
        """Numpy features re-labelled (and descriptors re-typed) for this backend's precision/device."""
        if feats.backend != self.name:
            return None
        data = dict(feats.data)
        data["descriptors"] = self._store_descriptors(np.asarray(data["descriptors"]))
        return Features(feats.backend, feats.image_size, data, precision=self.precision, device=self.device)


class SiftBackend(_OpenCVBackend):
    """OpenCV SIFT + mutual nearest neighbour + Lowe ratio on L2 distances."""

    name: ClassVar[str] = "sift"
    _descriptor_size: ClassVar[int] = 128
    PARAMS: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("sift.max_keypoints", 2048, "Keep at most this many strongest keypoints (0 = all).",
                  min=0, max=100000),
        ParamSpec("sift.ratio", 0.8, "Lowe ratio: keep a match when d1 < ratio * d2 (1 = off).", min=0.1, max=1.0),
        ParamSpec("sift.mutual", True, "Keep only mutual nearest neighbours."),
        ParamSpec("sift.contrast_threshold", 0.04, "SIFT detector contrast threshold.", min=0.0, max=1.0),
        ParamSpec("sift.edge_threshold", 10.0, "SIFT detector edge threshold.", min=1.0, max=100.0),
        ParamSpec("sift.min_keypoints", 1000, "With fewer keypoints than this, the contrast threshold is halved (down "
                  "to sift.min_contrast_threshold) until there are this many.", min=0, max=100000),
        ParamSpec("sift.min_contrast_threshold", 0.005, "The floor of that adaptation (>= sift.contrast_threshold: a "
                  "fixed threshold).", min=0.0, max=1.0),
        ParamSpec("sift.grid_px", 64, "Spread the keypoints over square cells of this side (pixels): every cell's "
                  "strongest first, then every cell's second, ... (0 = off: the strongest overall).", min=0,
                  max=4096),
    )
    # SIFT keeps an extremum when |contrast| * layers >= contrastThreshold; the response is |contrast|
    LAYERS: ClassVar[int] = 3

    def _thresholds(self) -> tuple[float, float]:
        s = self.settings
        return float(s["sift.contrast_threshold"]), float(s["sift.min_contrast_threshold"])

    def _candidate_detector(self, threshold: float) -> Any:
        return cv2.SIFT_create(nfeatures=0, nOctaveLayers=self.LAYERS, contrastThreshold=threshold,
                               edgeThreshold=float(self.settings["sift.edge_threshold"]))

    CUT_BY_THRESHOLD: ClassVar[bool] = True

    def _adapt(self, response: np.ndarray, threshold: float, floor: float) -> tuple[np.ndarray, float]:
        t = adapt_threshold(response, threshold, floor, self._target(), 1.0 / self.LAYERS)
        return response >= t / self.LAYERS, t

    def _detector(self) -> Any:
        s = self.settings
        return cv2.SIFT_create(
            nfeatures=int(s["sift.max_keypoints"]),
            contrastThreshold=float(s["sift.contrast_threshold"]),
            edgeThreshold=float(s["sift.edge_threshold"]),
        )

    def _store_descriptors(self, desc: np.ndarray) -> np.ndarray:
        # fp16 halves the cached keyframe memory; bf16 has no numpy type, so it stays float32.
        return desc.astype(np.float16 if self.precision == "fp16" else np.float32, copy=False)

    SQUARED_DISTANCES: ClassVar[bool] = True

    def _distances(self, d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
        """Squared L2 distances, in place on the one ``(N0, N1)`` product (half the time of the
        expression with temporaries and a square root of every entry)."""
        a = d0.astype(np.float32, copy=False)
        b = d1.astype(np.float32, copy=False)
        sq = a @ b.T
        sq *= -2.0
        sq += (a * a).sum(1)[:, None]
        sq += (b * b).sum(1)[None, :]
        return sq


class OrbBackend(_OpenCVBackend):
    """OpenCV ORB + mutual nearest neighbour + ratio test on Hamming distances (the fast option)."""

    name: ClassVar[str] = "orb"
    _descriptor_size: ClassVar[int] = 32
    PARAMS: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("orb.max_keypoints", 1000, "Keep at most this many keypoints (matching cost grows with its square).",
                  min=1, max=100000),
        ParamSpec("orb.ratio", 0.9, "Ratio test on Hamming distances: keep when d1 < ratio * d2 (1 = off).",
                  min=0.1, max=1.0),
        ParamSpec("orb.mutual", True, "Keep only mutual nearest neighbours."),
        ParamSpec("orb.scale_factor", 1.2, "Pyramid decimation ratio.", min=1.01, max=2.0),
        ParamSpec("orb.levels", 8, "Number of pyramid levels.", min=1, max=16),
        ParamSpec("orb.fast_threshold", 20, "FAST corner threshold.", min=1, max=255),
        ParamSpec("orb.min_keypoints", 500, "With fewer keypoints than this, detect again at orb.min_fast_threshold.",
                  min=0, max=100000),
        ParamSpec("orb.min_fast_threshold", 7, "The FAST threshold of that second detection (>= orb.fast_threshold: "
                  "a fixed threshold).", min=1, max=255),
        ParamSpec("orb.grid_px", 64, "Spread the keypoints over square cells of this side (pixels): every cell's "
                  "strongest first, then every cell's second, ... (0 = off: ORB's own choice).", min=0, max=4096),
    )
    # candidates kept per detection for the grid to choose from, as a multiple of the budget
    CANDIDATES: ClassVar[int] = 4

    def _thresholds(self) -> tuple[float, float]:
        s = self.settings
        return float(s["orb.fast_threshold"]), float(s["orb.min_fast_threshold"])

    def _candidate_detector(self, threshold: float) -> Any:
        s = self.settings
        return cv2.ORB_create(nfeatures=self.CANDIDATES * self._budget(), scaleFactor=float(s["orb.scale_factor"]),
                              nlevels=int(s["orb.levels"]), fastThreshold=int(threshold))

    def _detector(self) -> Any:
        s = self.settings
        return cv2.ORB_create(
            nfeatures=int(s["orb.max_keypoints"]),
            scaleFactor=float(s["orb.scale_factor"]),
            nlevels=int(s["orb.levels"]),
            fastThreshold=int(s["orb.fast_threshold"]),
        )

    def _empty_dtype(self) -> Any:
        return np.uint8

    def _distances(self, d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
        a = np.unpackbits(d0, axis=1).astype(np.float32)
        b = np.unpackbits(d1, axis=1).astype(np.float32)
        # Hamming = |a| + |b| - 2 a.b on bit vectors (exact in float32 for 256 bits).
        return a.sum(1)[:, None] + b.sum(1)[None, :] - 2.0 * (a @ b.T)
