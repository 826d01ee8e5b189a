"""Measure what CasMTR-style match NMS does to matches per frame and pose accuracy (SIFT, tum_fr2_desk).

    python -m feature_matcher_ros.tools.nms_effect      # prints a markdown table
"""
import cv2
import numpy as np
from feature_matcher_ros.backends import create_backend
from feature_matcher_ros.frontend import Frontend
from feature_matcher_ros.geometry import rotation_error_deg, translation_angle_error_deg, pose_error_auc
from feature_matcher_ros.se3 import invert
from feature_matcher_ros.datasets import read_sequence
from feature_matcher_ros.resources import data_dir
seq = read_sequence(data_dir() / "tum_fr2_desk")
frames = [(s, cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)) for s, p in seq.frames]
gt = seq.ground_truth.by_stamp(); cam = seq.camera
print("| NMS | matches/frame (median) | inliers (median) | rot err median (°) | t err median (°) | AUC@5 / @10 / @20 |")
print("|---|---|---|---|---|---|")
for k, cell in [(0, 4), (3, 4), (5, 4), (5, 8)]:
    fe = Frontend(create_backend("sift"), {"nms.kernel_size": k, "nms.cell_px": cell})
    n, ni, er, et, errs = [], [], [], [], []
    for s, img in frames:
        r = fe.process(img, s, cam)
        if r.stamp_ns == r.keyframe_stamp_ns: continue
        T = invert(gt[r.stamp_ns]) @ gt[r.keyframe_stamp_ns]
        n.append(len(r.matches)); ni.append(int(r.inliers.sum()))
        if r.pose is None: errs.append(np.inf); continue
        a = rotation_error_deg(r.pose.R, T[:3, :3]); b = translation_angle_error_deg(r.pose.t, T[:3, 3])
        er.append(a); et.append(b); errs.append(max(a, b))
    auc = pose_error_auc(errs, (5, 10, 20))
    print(f"| {'off' if k <= 1 else f'{k}x{k} cells of {cell} px'} | {np.median(n):.0f} | {np.median(ni):.0f} | {np.median(er):.2f} | {np.median(et):.2f} | {' / '.join(f'{x:.3f}' for x in auc)} |")
