"""The SIFT keypoint spread's cost, measured: extraction of a sequence's frames with the plain detector, with the
spread detecting twice in a poor scene (the configured threshold, then the floor), and with the spread as the
backend runs it (a scene that needed the floor starts there on its next frame). The three alternate frame by
frame, so they see the same load.

    python -m feature_matcher_ros.measure.bench_keypoints SEQUENCE [SEQUENCE ...] [--params FILE] [--frames 20]

``--params``: a node parameter file whose ``sift`` section applies (e.g. ``config/matcher_rgbd.yaml``). Printed
per sequence: median milliseconds per frame and median keypoints of each way.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from ..backends.sift import SiftBackend
from ..datasets import read_sequence


def _sift_settings(params: Path | None) -> dict:
    if params is None:
        return {}
    section = next(iter(yaml.safe_load(params.read_text()).values()))["ros__parameters"]
    return {f"sift.{k}": v for k, v in section.get("sift", {}).items()}


def _time(backend: SiftBackend, image: np.ndarray, forget: bool) -> tuple[float, int]:
    if forget:
        backend._floor_first = False  # the last frame's hint dropped: the two-detection path
    t0 = time.perf_counter()
    feats = backend.extract(image)
    return 1e3 * (time.perf_counter() - t0), len(feats.data["keypoints"])


def bench(folder: Path, settings: dict, frames: int) -> dict[str, tuple[float, float]]:
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for _, p in read_sequence(folder).frames[:frames]]
    floor = settings.get("sift.contrast_threshold", 0.04)
    plain = {**settings, "sift.grid_px": 0, "sift.min_contrast_threshold": floor}
    ways = {
        "plain detector": (SiftBackend(**plain), False),
        "spread, two detections": (SiftBackend(**settings), True),
        "spread (shipped)": (SiftBackend(**settings), False),
    }
    for backend, forget in ways.values():  # warm-up
        _time(backend, images[0], forget)
    rows: dict[str, list] = {name: [] for name in ways}
    for img in images:
        for name, (backend, forget) in ways.items():
            rows[name].append(_time(backend, img, forget))
    return {name: (float(np.median([r[0] for r in v])), float(np.median([r[1] for r in v])))
            for name, v in rows.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("sequences", nargs="+", type=Path, help="sequence folders (images/ + images.txt)")
    ap.add_argument("--params", type=Path, default=None, help="node parameter file whose sift section applies")
    ap.add_argument("--frames", type=int, default=20, help="frames per sequence")
    ap.add_argument("--threads", type=int, default=2, help="OpenCV threads")
    args = ap.parse_args(argv)
    cv2.setNumThreads(args.threads)
    settings = _sift_settings(args.params)
    print(f"{'sequence':<28} {'way':<24} {'ms/frame':>9} {'keypoints':>9}")
    for folder in args.sequences:
        for name, (ms, n) in bench(folder, settings, args.frames).items():
            print(f"{folder.name:<28} {name:<24} {ms:9.1f} {n:9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
