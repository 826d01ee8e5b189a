"""Compare the relative-pose estimators (OpenCV USAC MAGSAC vs PoseLib) on the ../shared/data pairs.

SIFT (or ORB) matches are computed once per pair; each estimator then runs on the same matches. Prints, per dataset
and method: median rotation / translation-direction error, AUC@5/10/20 of max(rot, t) (the SuperGlue/LoFTR
definition; failures count as infinite error; translation sign-invariant as there), and the time per
estimate.

    fm-bench-geometry [--shared ../shared] [--threshold 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from ..datasets import pair_camera, read_pose_pairs
from ..geometry import estimate_relative_pose, pose_error_auc, rotation_error_deg, translation_angle_error_deg


def main(argv: list[str] | None = None) -> None:
    from ..backends.sift import OrbBackend, SiftBackend
    from ..resources import shared_dir

    ap = argparse.ArgumentParser(prog="fm-bench-geometry", description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=shared_dir())
    ap.add_argument("--datasets", nargs="+", default=["tum_fr2_desk", "kitti00_f100_109", "scannet_pairs"])
    ap.add_argument("--threshold", type=float, default=1.0, help="inlier threshold in pixels")
    ap.add_argument("--repeat", type=int, default=3, help="timing repetitions per estimate")
    ap.add_argument("--max-keypoints", type=int, default=2048)
    ap.add_argument("--backend", choices=["sift", "orb"], default="sift", help="matches from this backend")
    ap.add_argument("--no-homography", action="store_true", help="essential matrix only")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)

    if args.backend == "sift":
        sift = SiftBackend(**{"sift.max_keypoints": args.max_keypoints})
    else:
        sift = OrbBackend(**{"orb.max_keypoints": max(args.max_keypoints, 1)})
    print(f"threshold {args.threshold} px, {args.backend} {args.max_keypoints} kp, mutual + ratio; "
          f"homography path {'off' if args.no_homography else 'on'}; 1 OpenCV thread")
    print(f"{'dataset':18s} {'method':8s} {'pairs':>5s} {'fail':>4s} {'rot med':>8s} {'t med':>7s} "
          f"{'AUC@5':>6s} {'@10':>6s} {'@20':>6s} {'ms med':>7s} {'ms mean':>7s}")
    for name in args.datasets:
        ds = args.shared / "data" / name
        pairs = read_pose_pairs(ds)
        cache: dict[Path, object] = {}
        prepared = []
        for p in pairs:
            for path in (p.image0, p.image1):
                if path not in cache:
                    cache[path] = sift.extract(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
            m = sift.match(cache[p.image0], cache[p.image1])
            prepared.append((p, m, pair_camera(ds, p.K0, p.image0), pair_camera(ds, p.K1, p.image1)))
        for method in ("magsac", "poselib"):
            rot, tra, errs, times, fails = [], [], [], [], 0
            for p, m, c0, c1 in prepared:
                dt = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    pose, _ = estimate_relative_pose(m.kpts0, m.kpts1, c0, c1, args.threshold, method=method,
                                                     use_homography=not args.no_homography)
                    dt.append(time.perf_counter() - t0)
                times.append(min(dt))
                if pose is None:
                    fails += 1
                    errs.append(np.inf)
                    rot.append(np.inf)
                    tra.append(np.inf)
                    continue
                er = rotation_error_deg(pose.R, p.T_0to1[:3, :3])
                et = translation_angle_error_deg(pose.t, p.T_0to1[:3, 3], sign_invariant=True)
                rot.append(er)
                tra.append(et)
                errs.append(max(er, et))
            auc = pose_error_auc(errs)
            print(f"{name:18s} {method:8s} {len(pairs):5d} {fails:4d} {np.median(rot):8.2f} {np.median(tra):7.2f} "
                  f"{auc[0]:6.3f} {auc[1]:6.3f} {auc[2]:6.3f} {1e3 * np.median(times):7.1f} "
                  f"{1e3 * np.mean(times):7.1f}")


if __name__ == "__main__":
    main()
