"""SIFT matching's cost, measured: the plain definition of mutual nearest neighbours with the ratio test (the full
Euclidean distance matrix, the nearest neighbour of every row and of every column: the backend's former
implementation) against the backend's matching (squared distances in place, the column check from the column
minima), on consecutive frames of real sequences, alternated pair by pair; both must give the same pairs.

    python -m feature_matcher_ros.measure.bench_sift_match SEQUENCE [SEQUENCE ...] [--params FILE] [--frames 10]

``--params``: a node parameter file whose ``sift`` section applies. Printed per sequence: the median keypoints,
the median milliseconds of each way per pair (distances + neighbours + ratio test), and whether the pairs agree.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from ..backends.sift import SiftBackend, mutual_ratio_match
from ..datasets import read_sequence
from .bench_keypoints import _sift_settings


def plain_mutual_ratio(d0: np.ndarray, d1: np.ndarray, ratio: float) -> set[tuple[int, int]]:
    """The definition: Euclidean distances, row ``i`` and column ``j`` each other's nearest, ``d1 < ratio d2``."""
    a, b = d0.astype(np.float32), d1.astype(np.float32)
    dist = np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T), 0.0))
    rows = np.arange(len(a))
    nn, back = dist.argmin(1), dist.argmin(0)
    first = dist[rows, nn].copy()
    dist[rows, nn] = np.inf  # the second nearest: the row minimum without the nearest
    second = dist.min(1)
    return {(i, int(nn[i])) for i in np.flatnonzero((back[nn] == rows) & (first < ratio * second))}


def bench(folder: Path, settings: dict, frames: int) -> tuple[float, float, float, bool]:
    backend = SiftBackend(**settings)
    ratio = float(backend.settings["sift.ratio"])
    feats = [backend.extract(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))
             for _, p in read_sequence(folder).frames[:frames]]
    plain_ms, own_ms, same = [], [], True
    for f0, f1 in zip(feats, feats[1:]):
        d0, d1 = f0.data["descriptors"], f1.data["descriptors"]
        t0 = time.perf_counter()
        want = plain_mutual_ratio(d0, d1, ratio)
        t1 = time.perf_counter()
        pairs, _ = mutual_ratio_match(backend._distances(d0, d1), ratio, squared=backend.SQUARED_DISTANCES)
        t2 = time.perf_counter()
        plain_ms.append(1e3 * (t1 - t0))
        own_ms.append(1e3 * (t2 - t1))
        same &= set(map(tuple, pairs.tolist())) == want
    keypoints = float(np.median([len(f.data["keypoints"]) for f in feats]))
    return keypoints, float(np.median(plain_ms)), float(np.median(own_ms)), same


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("sequences", nargs="+", type=Path, help="sequence folders (images/ + images.txt)")
    ap.add_argument("--params", type=Path, default=None, help="node parameter file whose sift section applies")
    ap.add_argument("--frames", type=int, default=10, help="frames per sequence")
    ap.add_argument("--threads", type=int, default=2, help="OpenCV and BLAS threads")
    args = ap.parse_args(argv)
    cv2.setNumThreads(args.threads)
    print(f"{'sequence':<28} {'keypoints':>9} {'plain ms':>9} {'backend ms':>10} {'ratio':>6} same pairs")
    for folder in args.sequences:
        n, plain, own, same = bench(folder, _sift_settings(args.params), args.frames)
        print(f"{folder.name:<28} {n:9.0f} {plain:9.1f} {own:10.1f} {own / plain:6.2f} {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
