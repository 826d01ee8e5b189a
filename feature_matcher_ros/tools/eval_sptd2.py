"""fm-eval-sptd2: evaluate SPTD2 weights against the untrained network, OpenCV SIFT and ORB.

In one run, on the same images at the same size, with mutual-nearest-neighbour matching for every method:

* homography pairs (default ``$FM_SHARED/data/oxford_graffiti``): MMA at 1..10 px (share of matches whose
  ground-truth reprojection error is within t px, averaged over pairs), keypoints and matches per image,
  and homography accuracy (RANSAC 3 px; mean error of the four image corners; share of pairs under 1/3/5/10 px);
* optionally (``--sequence``, e.g. tum_fr2_desk) relative-pose AUC@5/10/20 deg (undistorted keypoints,
  essential matrix RANSAC, error = max(rotation, translation direction));
* optionally (``--nms-study``) CasMTR max-pool NMS over the matches (kernel sizes given by ``--nms-kernels``)
  on the sequence: matches per pair and pose AUC with and without it.

Prints markdown tables (and writes them to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

THRESHOLDS = tuple(range(1, 11))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from ..resources import shared_dir

    data = shared_dir() / "data"
    p = argparse.ArgumentParser(prog="fm-eval-sptd2", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", default=None, help="SPTD2 checkpoint (default: the shipped sptd2_small.pt)")
    p.add_argument("--homography-data", default=str(data / "oxford_graffiti"), help="homography-pair dataset folder")
    p.add_argument("--sequence", default=None, help="sequence folder with pairs.txt + intrinsics.yaml (pose AUC)")
    p.add_argument("--top-k", type=int, default=2048, help="keypoints per image for every method")
    p.add_argument("--max-edge", type=int, default=0, help="resize so the longer edge is at most this (0 = full size)")
    p.add_argument("--methods", default="sptd2,untrained,sift,orb", help="comma list of sptd2, untrained, sift, orb")
    p.add_argument("--nms-study", action="store_true", help="CasMTR NMS on the sequence's matches (needs --sequence)")
    p.add_argument("--nms-kernels", default="3,5,7", help="kernel sizes for --nms-study")
    p.add_argument("--nms-cell", type=int, default=4, help="grid cell (px) on which NMS runs over matches")
    p.add_argument("--nms-methods", default="sift,sptd2", help="methods for --nms-study")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write the markdown report here")
    args = p.parse_args(argv)
    if args.nms_study and not args.sequence:
        p.error("--nms-study needs --sequence")
    return args


# -- feature methods: image -> (keypoints (N,2) float, descriptors, scores); matcher -> (i0, i1, score) ----------
def make_methods(args: argparse.Namespace, names: list[str]) -> dict[str, tuple[Callable, Callable]]:
    import cv2
    import torch

    methods: dict[str, tuple[Callable, Callable]] = {}

    def cv_matcher(norm: int) -> Callable:
        def match(f0, f1):
            if len(f0[0]) == 0 or len(f1[0]) == 0:
                return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
            pairs = cv2.BFMatcher(norm, crossCheck=True).match(f0[1], f1[1])
            i0 = np.array([m.queryIdx for m in pairs], int)
            i1 = np.array([m.trainIdx for m in pairs], int)
            return i0, i1, -np.array([m.distance for m in pairs], float)
        return match

    def cv_extract(detector) -> Callable:
        def extract(image):
            kps, desc = detector.detectAndCompute(image, None)
            if desc is None:
                return np.zeros((0, 2)), np.zeros((0, 1), np.float32), np.zeros(0)
            order = np.argsort([-k.response for k in kps], kind="stable")[: args.top_k]
            return (np.array([kps[i].pt for i in order], float).reshape(-1, 2), desc[order],
                    np.array([kps[i].response for i in order], float))
        return extract

    for name in names:
        if name == "sift":
            methods[name] = (cv_extract(cv2.SIFT_create(nfeatures=args.top_k)), cv_matcher(cv2.NORM_L2))
        elif name == "orb":
            methods[name] = (cv_extract(cv2.ORB_create(nfeatures=args.top_k)), cv_matcher(cv2.NORM_HAMMING))
        elif name in ("sptd2", "untrained"):
            from ..backends.sptd2 import SPTD2Backend
            from ..backends.sptd2.inference import mutual_nearest_neighbours

            backend = SPTD2Backend(device=args.device, weights="random" if name == "untrained" else args.weights,
                                   **{"sptd2.top_k": args.top_k})

            def extract(image, backend=backend):
                f = backend.extract(image)
                return (f.data["keypoints"].cpu().numpy().astype(float), f.data["descriptors"],
                        f.data["scores"].cpu().numpy().astype(float))

            def match(f0, f1):
                i0, i1, sim = mutual_nearest_neighbours(f0[1], f1[1])
                return i0.cpu().numpy(), i1.cpu().numpy(), sim.float().cpu().numpy().astype(float)

            methods[name] = (extract, match)
        else:
            raise SystemExit(f"fm-eval-sptd2: unknown method {name!r} (sptd2, untrained, sift, orb)")
    del torch
    return methods


def load_gray(path: Path, max_edge: int) -> tuple[np.ndarray, float]:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise SystemExit(f"fm-eval-sptd2: cannot read {path}")
    scale = 1.0
    if max_edge and max(image.shape) > max_edge:
        scale = max_edge / max(image.shape)
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image, scale


def scale_matrix(s: float) -> np.ndarray:
    """Pixel map x' = (x + 0.5) s - 0.5 as a 3x3 matrix."""
    return np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1.0]])


def project(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ H.T
    return p[:, :2] / p[:, 2:]


# -- homography benchmark --------------------------------------------------------------------------------------
def homography_benchmark(folder: Path, methods: dict, max_edge: int) -> dict[str, dict]:
    import cv2

    pairs_file = folder / "pairs.txt"
    if not pairs_file.is_file():
        raise SystemExit(f"fm-eval-sptd2: {pairs_file} not found")
    pairs = [line.split() for line in pairs_file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    images: dict[str, tuple[np.ndarray, float]] = {}
    for a, b, _ in pairs:
        for name in (a, b):
            images.setdefault(name, load_gray(folder / name, max_edge))
    results = {}
    for method, (extract, match) in methods.items():
        t = time.time()
        feats = {name: extract(img) for name, (img, _) in images.items()}
        extract_s = (time.time() - t) / len(images)
        mma, corner, nmatch = [], [], []
        for a, b, hfile in pairs:
            H = np.loadtxt(folder / hfile)
            (img0, s0), (img1, s1) = images[a], images[b]
            H = scale_matrix(s1) @ H @ np.linalg.inv(scale_matrix(s0))
            i0, i1, _ = match(feats[a], feats[b])
            k0, k1 = feats[a][0][i0], feats[b][0][i1]
            nmatch.append(len(i0))
            err = np.linalg.norm(project(H, k0) - k1, axis=1) if len(i0) else np.zeros(0)
            mma.append([float((err <= t).mean()) if len(err) else 0.0 for t in THRESHOLDS])
            h, w = img0.shape
            corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
            Hest = None
            if len(i0) >= 4:
                cv2.setRNGSeed(0)
                Hest, _ = cv2.findHomography(k0, k1, cv2.RANSAC, 3.0, maxIters=5000, confidence=0.9999)
            corner.append(float(np.linalg.norm(project(Hest, corners) - project(H, corners), axis=1).mean())
                          if Hest is not None else float("inf"))
        results[method] = {
            "mma": np.mean(mma, axis=0), "corner": np.array(corner), "matches": float(np.mean(nmatch)),
            "keypoints": float(np.mean([len(f[0]) for f in feats.values()])), "extract_s": extract_s,
        }
    return results


# -- sequence relative pose ------------------------------------------------------------------------------------
def read_sequence(folder: Path):
    import yaml

    intr = yaml.safe_load((folder / "intrinsics.yaml").read_text())
    K = np.array([[intr["fx"], 0, intr["cx"]], [0, intr["fy"], intr["cy"]], [0, 0, 1.0]])
    dist = np.array(intr.get("distortion") or [0, 0, 0, 0, 0], float)
    pairs = []
    for line in (folder / "pairs.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        v = line.split()
        pairs.append((v[0], v[1], np.array(v[20:36], float).reshape(4, 4)))
    return K, dist, pairs


def pose_error(k0: np.ndarray, k1: np.ndarray, K: np.ndarray, dist: np.ndarray, T: np.ndarray) -> float:
    """max(rotation error, translation-direction error) in degrees; 180 when no pose can be estimated."""
    import cv2

    if len(k0) < 5:
        return 180.0
    n0 = cv2.undistortPoints(k0.reshape(-1, 1, 2).astype(np.float64), K, dist).reshape(-1, 2)
    n1 = cv2.undistortPoints(k1.reshape(-1, 1, 2).astype(np.float64), K, dist).reshape(-1, 2)
    thr = 1.0 / np.mean([K[0, 0], K[1, 1]])
    cv2.setRNGSeed(0)  # repeatable RANSAC
    E, mask = cv2.findEssentialMat(n0, n1, np.eye(3), cv2.RANSAC, 0.9999, thr)
    if E is None or E.shape != (3, 3):
        return 180.0
    _, R, t, _ = cv2.recoverPose(E, n0, n1, np.eye(3), mask=mask)
    R_gt, t_gt = T[:3, :3], T[:3, 3]
    cos_r = np.clip((np.trace(R.T @ R_gt) - 1) / 2, -1, 1)
    err_r = np.degrees(np.arccos(cos_r))
    cos_t = np.dot(t.ravel(), t_gt) / max(np.linalg.norm(t) * np.linalg.norm(t_gt), 1e-12)
    err_t = np.degrees(np.arccos(np.clip(cos_t, -1, 1)))
    return float(max(err_r, err_t))


def pose_auc(errors: list[float], thresholds=(5, 10, 20)) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold (in %, the SuperGlue definition)."""
    errors = np.sort(np.asarray(errors, float))
    recall = (np.arange(len(errors)) + 1) / len(errors)
    errors, recall = np.r_[0.0, errors], np.r_[0.0, recall]
    out = []
    for t in thresholds:
        last = np.searchsorted(errors, t)
        x = np.r_[errors[:last], t]
        y = np.r_[recall[:last], recall[last - 1]]
        out.append(100.0 * float(np.trapezoid(y, x) / t))
    return out


def sequence_benchmark(folder: Path, methods: dict, nms_kernels: list[int], nms_methods: list[str], cell: int):
    import cv2

    from ..backends.nms import nms_matches

    K, dist, pairs = read_sequence(folder)
    names = sorted({p[0] for p in pairs} | {p[1] for p in pairs})
    images = {n: cv2.imread(str(folder / n), cv2.IMREAD_GRAYSCALE) for n in names}
    pose_rows, nms_rows = {}, {}
    for method, (extract, match) in methods.items():
        feats = {n: extract(img) for n, img in images.items()}
        variants = [0] + (nms_kernels if method in nms_methods else [])
        errs = {k: [] for k in variants}
        counts = {k: [] for k in variants}
        for a, b, T in pairs:
            i0, i1, score = match(feats[a], feats[b])
            k0, k1 = feats[a][0][i0], feats[b][0][i1]
            for k in variants:
                keep = np.arange(len(i0)) if k == 0 else nms_matches(k0, score, images[a].shape, kernel_size=k, cell=cell, threshold=-np.inf)
                counts[k].append(len(keep))
                errs[k].append(pose_error(k0[keep], k1[keep], K, dist, T))
        pose_rows[method] = (pose_auc(errs[0]), float(np.mean(counts[0])), float(np.median(errs[0])))
        for k in variants:
            nms_rows[(method, k)] = (pose_auc(errs[k]), float(np.mean(counts[k])), float(np.median(errs[k])))
    return pose_rows, nms_rows, len(pairs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    methods = make_methods(args, names)
    lines = []
    folder = Path(args.homography_data)
    res = homography_benchmark(folder, methods, args.max_edge)
    size = "full size" if not args.max_edge else f"longer edge {args.max_edge}"
    lines += [f"### Homography pairs: {folder.name} ({size}, top-{args.top_k} keypoints, mutual NN)", "",
              "| method | kpts | matches | " + " | ".join(f"MMA@{t}" for t in THRESHOLDS)
              + " | corner err px (per pair) | H acc @1/3/5/10 px | s/img |",
              "|---|---|---|" + "---|" * len(THRESHOLDS) + "---|---|---|"]
    for method, r in res.items():
        acc = "/".join(f"{100 * float((r['corner'] <= t).mean()):.0f}" for t in (1, 3, 5, 10))
        lines.append(f"| {method} | {r['keypoints']:.0f} | {r['matches']:.0f} | "
                     + " | ".join(f"{100 * v:.1f}" for v in r["mma"])
                     + f" | {', '.join(f'{c:.1f}' for c in r['corner'])} | {acc} | {r['extract_s']:.2f} |")
    if args.sequence:
        kernels = [int(k) for k in args.nms_kernels.split(",") if k.strip()] if args.nms_study else []
        nms_methods = [m.strip() for m in args.nms_methods.split(",")]
        pose_rows, nms_rows, npairs = sequence_benchmark(Path(args.sequence), methods, kernels, nms_methods, args.nms_cell)
        lines += ["", f"### Relative pose: {Path(args.sequence).name} ({npairs} pairs, essential-matrix RANSAC)", "",
                  "| method | matches/pair | AUC@5 | AUC@10 | AUC@20 | median err deg |", "|---|---|---|---|---|---|"]
        for method, (auc, n, med) in pose_rows.items():
            lines.append(f"| {method} | {n:.0f} | {auc[0]:.1f} | {auc[1]:.1f} | {auc[2]:.1f} | {med:.2f} |")
        if kernels:
            lines += ["", f"### CasMTR max-pool NMS over matches ({args.nms_cell} px cells), {Path(args.sequence).name}", "",
                      "| method | NMS kernel | matches/pair | AUC@5 | AUC@10 | AUC@20 | median err deg |",
                      "|---|---|---|---|---|---|---|"]
            for (method, k), (auc, n, med) in nms_rows.items():
                lines.append(f"| {method} | {k if k else 'off'} | {n:.0f} | {auc[0]:.1f} | {auc[1]:.1f} | {auc[2]:.1f} | {med:.2f} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
