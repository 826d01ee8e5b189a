"""Measure what CasMTR-style match NMS does to matches per frame and pose accuracy (SIFT, tum_fr2_desk).

    fm-nms-effect      # prints a markdown table
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

SETTINGS = ((0, 4), (3, 4), (5, 4), (5, 8))  # (nms.kernel_size, nms.cell_px)


def measure(frames: list, truth: dict, camera, kernel: int, cell: int) -> str:
    """One table row: the frontend with this NMS over the frames, against the ground truth."""
    from ..backends import create_backend
    from ..frontend import Frontend
    from ..geometry import pose_error_auc, rotation_error_deg, translation_angle_error_deg
    from ..se3 import invert

    frontend = Frontend(create_backend("sift"), {"nms.kernel_size": kernel, "nms.cell_px": cell})
    counts, inliers, rot, trans, errors = [], [], [], [], []
    for stamp, image in frames:
        r = frontend.process(image, stamp, camera)
        if r.stamp_ns == r.keyframe_stamp_ns:
            continue
        T = invert(truth[r.stamp_ns]) @ truth[r.keyframe_stamp_ns]
        counts.append(len(r.matches))
        inliers.append(int(r.inliers.sum()))
        if r.pose is None:
            errors.append(np.inf)
            continue
        rot.append(rotation_error_deg(r.pose.R, T[:3, :3]))
        trans.append(translation_angle_error_deg(r.pose.t, T[:3, 3]))
        errors.append(max(rot[-1], trans[-1]))
    auc = " / ".join(f"{x:.3f}" for x in pose_error_auc(errors, (5, 10, 20)))
    name = "off" if kernel <= 1 else f"{kernel}x{kernel} cells of {cell} px"
    return (f"| {name} | {np.median(counts):.0f} | {np.median(inliers):.0f} | {np.median(rot):.2f} | "
            f"{np.median(trans):.2f} | {auc} |")


def main(argv: list[str] | None = None) -> int:
    from ..datasets import read_sequence
    from ..resources import data_dir

    argparse.ArgumentParser(prog="fm-nms-effect", description=__doc__.split("\n\n")[0]).parse_args(argv)
    seq = read_sequence(data_dir() / "tum_fr2_desk")
    frames = [(s, cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)) for s, p in seq.frames]
    print("| NMS | matches/frame (median) | inliers (median) | rot err median (°) | t err median (°) | "
          "AUC@5 / @10 / @20 |")
    print("|---|---|---|---|---|---|")
    for kernel, cell in SETTINGS:
        print(measure(frames, seq.ground_truth.by_stamp(), seq.camera, kernel, cell), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
