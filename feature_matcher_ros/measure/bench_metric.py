"""Metric pose choices measured: depth lookup (nearest / bilinear) x absolute pose (PoseLib / OpenCV), on the
RGB-D and stereo datasets' ``pairs.txt``, against ground truth, with the per-stage times.

    fm-bench-metric [--backend sift] [--rgbd DIR] [--stereo DIR] [--max-pairs N]

For every pair: the backend's keyframe -> frame matches, the keyframe keypoints' depth (registered depth
image, or the keyframe's left-right matches triangulated), PnP, and the errors against ``T_0to1``: rotation
(degrees), translation (metres and % of the pair's distance, the KITTI odometry convention). Printed: one
row per setting (solved pairs, medians), and the milliseconds of depth lookup and absolute pose per pair
beside the monocular relative pose on the same matches.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from ..datasets import Sequence, read_pose_pairs, read_sequence
from ..geometry import estimate_relative_pose, rotation_error_deg
from ..metric import StereoRig, back_project, depth_at, estimate_absolute_pose, stereo_depth_image

LOOKUPS = {"nearest, 1 px": ("nearest", 1), "nearest, 2 px": ("nearest", 2), "bilinear": ("bilinear", 0)}


@dataclass
class Row:
    errors_r: list = field(default_factory=list)
    errors_t: list = field(default_factory=list)
    errors_pct: list = field(default_factory=list)
    inliers: list = field(default_factory=list)
    failed: int = 0
    lookup_ms: list = field(default_factory=list)
    pnp_ms: list = field(default_factory=list)
    matches: list = field(default_factory=list)
    keyframe_ms: list = field(default_factory=list)  # stereo: right extraction + left-right match, per keyframe


def _gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(path)
    return img


def _depth_source(seq: Sequence, mode: str, backend):
    """``keyframe image path -> depth (H, W) metres``: the registered depth image, or the left-right matches
    of the stereo pair triangulated into a sparse depth image."""
    left_index = {path: k for k, (_, path) in enumerate(seq.frames)}
    if mode == "rgbd":
        def rgbd(path: Path) -> np.ndarray:
            raw = cv2.imread(str(seq.depth.frames[left_index[path]][1]), cv2.IMREAD_UNCHANGED)
            return raw.astype(np.float32) / seq.depth.scale

        return rgbd
    rig = StereoRig(seq.camera, seq.stereo.camera.fx, seq.stereo.camera.cx, seq.stereo.baseline_m)

    def stereo(path: Path) -> np.ndarray:
        left, right = _gray(path), _gray(seq.stereo.frames[left_index[path]][1])
        m = backend.match(backend.extract(left), backend.extract(right))
        return stereo_depth_image(rig, m.kpts0, m.kpts1, left.shape)

    return stereo


# depth range per input mode: an RGB-D sensor's, and a street scene's through a 0.5 m stereo baseline
MAX_DEPTH_M = {"rgbd": 10.0, "stereo": 80.0}


def evaluate(folder: Path, mode: str, backend, max_pairs: int, methods: list[str]) -> dict[str, Row]:
    seq = read_sequence(folder)
    camera = seq.camera
    depth_of = _depth_source(seq, mode, backend)
    rows = {f"{lk} / {m}": Row() for lk in LOOKUPS for m in methods}
    rows["mono (relative pose, no scale)"] = Row()
    for pair in read_pose_pairs(folder)[:max_pairs]:
        img0, img1 = _gray(pair.image0), _gray(pair.image1)
        matches = backend.match(backend.extract(img0), backend.extract(img1))
        a = time.perf_counter()
        depth = depth_of(pair.image0)
        keyframe_ms = 1000 * (time.perf_counter() - a)
        R_gt, t_gt = pair.T_0to1[:3, :3], pair.T_0to1[:3, 3]
        a = time.perf_counter()
        estimate_relative_pose(matches.kpts0, matches.kpts1, camera, camera)
        mono = rows["mono (relative pose, no scale)"]
        mono.pnp_ms.append(1000 * (time.perf_counter() - a))
        mono.matches.append(len(matches))
        if mode == "stereo":
            mono.keyframe_ms.append(keyframe_ms)
        for lk, (lookup, window) in LOOKUPS.items():
            a = time.perf_counter()
            z = depth_at(depth, matches.kpts0, lookup, window, max_m=MAX_DEPTH_M[mode])
            X = back_project(camera, matches.kpts0, z)
            lookup_ms = 1000 * (time.perf_counter() - a)
            for method in methods:
                row = rows[f"{lk} / {method}"]
                a = time.perf_counter()
                pose = estimate_absolute_pose(X, matches.kpts1, camera, method)
                row.pnp_ms.append(1000 * (time.perf_counter() - a))
                row.lookup_ms.append(lookup_ms)
                if pose is None:
                    row.failed += 1
                    continue
                row.errors_r.append(rotation_error_deg(pose.R, R_gt))
                row.errors_t.append(float(np.linalg.norm(pose.t - t_gt)))
                row.errors_pct.append(100 * row.errors_t[-1] / max(1e-9, float(np.linalg.norm(t_gt))))
                row.inliers.append(int(pose.inliers.sum()))
    return rows


def format_rows(name: str, rows: dict[str, Row]) -> str:
    mono = rows["mono (relative pose, no scale)"]
    out = [f"### {name}", "", f"{len(mono.matches)} pairs, median {np.median(mono.matches):.0f} matches per pair; ms = "
           "median per pair on this CPU" + (f"; stereo keyframe (right extraction + left-right match + triangulation) "
                                            f"{np.median(mono.keyframe_ms):.1f} ms, once per keyframe"
                                            if mono.keyframe_ms else ""), "",
           "| setting | solved | rot err median (deg) | trans err median (m) | median % of distance | "
           "trans err p90 (m) | inliers median | lookup ms | pose ms |", "|---|---|---|---|---|---|---|---|---|"]
    for setting, r in rows.items():
        n = len(r.errors_t)
        def med(v):
            return f"{np.median(v):.3f}" if len(v) else "-"
        p90 = f"{np.percentile(r.errors_t, 90):.3f}" if n else "-"
        look = f"{np.median(r.lookup_ms):.2f}" if r.lookup_ms else "-"
        out.append(f"| {setting} | {n}/{n + r.failed if r.errors_t or r.failed else len(r.pnp_ms)} | "
                   f"{med(r.errors_r)} | {med(r.errors_t)} | {med(r.errors_pct)} | {p90} | {med(r.inliers)} | {look} | "
                   f"{np.median(r.pnp_ms):.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from ..backends import create_backend
    from ..resources import shared_dir

    p = argparse.ArgumentParser(prog="fm-bench-metric", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="sift")
    p.add_argument("--weights")
    p.add_argument("--rgbd", type=Path, default=shared_dir() / "data" / "tum_fr3_cabinet_rgbd")
    p.add_argument("--stereo", type=Path, default=shared_dir() / "data" / "kitti06_stereo_f000_050")
    p.add_argument("--max-pairs", type=int, default=1000)
    p.add_argument("--methods", nargs="+", default=["poselib", "opencv"])
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="backend settings, e.g. sift.contrast_threshold=0.01")
    args = p.parse_args(argv)
    settings = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    backend = create_backend(args.backend, weights=args.weights, **settings)
    for folder, mode in ((args.rgbd, "rgbd"), (args.stereo, "stereo")):
        if folder and Path(folder).is_dir():
            rows = evaluate(Path(folder), mode, backend, args.max_pairs, args.methods)
            print(format_rows(f"{folder.name} ({mode}, {args.backend})", rows), flush=True)
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
