"""Scores of a run against the ground truth: per-pair pose errors, pose AUC, epipolar precision,
match/inlier counts, keyframes, speed.

Definitions (SuperGlue / LoFTR):
- a pair is a frame matched against a keyframe; its ground truth is ``T_kf_to_cur = inv(T_w_cur) T_w_kf``;
- pose error = ``max(rotation error, translation-direction error)`` in degrees; a failed estimate
  counts as infinitely wrong; AUC at 5/10/20 degrees of the pose-error curve;
- epipolar precision = the share of all matches (over all pairs) whose symmetric epipolar distance in
  normalised (undistorted) camera coordinates under the ground-truth essential matrix is below 5e-4;
- metric poses (RGB-D / stereo): translation error ``|t - t_gt|`` in metres, and in % of the ground-truth
  keyframe-to-frame distance ``|t_gt|`` (the KITTI odometry convention, here per keyframe-to-frame pair; pairs
  that moved less than :data:`MIN_PCT_DISTANCE_M` are left out of the %);
- covariance consistency of the metric poses: the normalised estimation error squared (NEES) ``eᵀ Σ⁻¹ e`` of the
  current camera in the keyframe's frame against the ground truth (:func:`~feature_matcher_ros.se3.nees`); a
  consistent covariance gives a mean of 6 and 95 % of the pairs inside :data:`CHI2_6_95`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..datasets import Trajectory
from ..geometry import (
    essential_from_pose,
    pose_error_auc,
    rotation_error_deg,
    symmetric_epipolar_distance,
    translation_angle_error_deg,
)
from ..se3 import invert, nees, se3
from .records import FrameRecord

EPIPOLAR_THRESHOLD = 5e-4
AUC_THRESHOLDS = (5, 10, 20)
MIN_PCT_DISTANCE_M = 0.05
CHI2_6_95 = 12.592  # the χ²(6) 95 % quantile


@dataclass
class PairScore:
    """Errors of one evaluated pair (None where the ground truth is missing)."""

    stamp_ns: int
    keyframe_stamp_ns: int
    rotation_error_deg: float          # inf when the estimate failed
    translation_error_deg: float       # inf when the estimate failed
    pose_error_deg: float              # max of the two
    gt_rotation_deg: float
    gt_translation_m: float
    epipolar_errors: np.ndarray        # (N,) per match
    epipolar_correct: int
    translation_error_m: float | None = None    # metric poses only
    translation_error_pct: float | None = None  # metric poses that moved >= MIN_PCT_DISTANCE_M
    nees: float | None = None                   # metric poses with a covariance


def score_pair(rec: FrameRecord, kf_camera: Any, T_gt: np.ndarray) -> PairScore:
    """Errors of one frame against its keyframe. ``T_gt``: ``(4, 4)`` keyframe -> current."""
    R_gt, t_gt = T_gt[:3, :3], T_gt[:3, 3]
    if rec.has_pose:
        r_err = float(rotation_error_deg(rec.R, R_gt))
        t_err = float(translation_angle_error_deg(rec.t, t_gt, sign_invariant=True))
        if not math.isfinite(t_err):
            t_err = math.inf
    else:
        r_err = t_err = math.inf
    if len(rec.kpts0) and np.linalg.norm(t_gt) > 0:
        n0 = kf_camera.normalize(rec.kpts0.astype(np.float64))
        n1 = rec.camera.normalize(rec.kpts1.astype(np.float64))
        err = symmetric_epipolar_distance(n0, n1, essential_from_pose(R_gt, t_gt))
        err = np.where(np.isfinite(err), err, np.inf)
    else:
        err = np.full(len(rec.kpts0), np.inf)
    angle = float(np.degrees(np.arccos(np.clip((np.trace(R_gt) - 1) / 2, -1, 1))))
    score = PairScore(rec.stamp_ns, rec.keyframe_stamp_ns, r_err, t_err, max(r_err, t_err), angle,
                      float(np.linalg.norm(t_gt)), err, int((err < EPIPOLAR_THRESHOLD).sum()))
    if rec.metric and rec.has_pose:
        score.translation_error_m = float(np.linalg.norm(np.asarray(rec.t, np.float64) - t_gt))
        if score.gt_translation_m >= MIN_PCT_DISTANCE_M:
            score.translation_error_pct = 100.0 * score.translation_error_m / score.gt_translation_m
        if rec.covariance is not None:
            score.nees = nees(invert(se3(rec.R, rec.t)), invert(T_gt), rec.covariance)
    return score


def _median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.median(values)) if values else None


def _percentile(values: Sequence[float], q: float) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.percentile(values, q)) if values else None


def evaluate(records: Sequence[FrameRecord], gt: Trajectory | None, max_gap_ns: int = 100_000_000,
             metric: bool = False) -> tuple[dict, list[dict]]:
    """Score a run.

    Returns ``(summary, per_frame)``: the summary holds the metrics.json keys about poses, matches,
    keyframes and latency (speed and trajectory keys are added by the caller); ``per_frame`` one dict
    per frame (stamps, counts, errors) for the report and plots. ``metric`` (an rgbd / stereo run): also the
    metric translation errors (:func:`metric_summary`), and per frame ``metric``, ``translation_error_m`` and
    ``translation_error_pct``.
    """
    scores, no_gt = score_pairs(records, gt, max_gap_ns)
    pairs = [r for r in records if r.is_pair]
    summary = run_summary(records, pairs, scores, no_gt)
    if metric:
        summary.update(metric_summary(pairs, list(scores.values())))
    per_frame = [frame_entry(rec, scores.get(rec.stamp_ns), metric) for rec in records]
    return summary, per_frame


def score_pairs(records: Sequence[FrameRecord], gt: Trajectory | None,
                max_gap_ns: int = 100_000_000) -> tuple[dict[int, PairScore], int]:
    """``(scores, no_gt)``: the :func:`score_pair` of every pair with ground truth, by the frame's stamp, and how
    many pairs had none (no ``gt``, or no ground-truth pose within ``max_gap_ns`` of a stamp). The keyframe's
    camera is the keyframe record's, else the frame's."""
    by_stamp = {r.stamp_ns: r for r in records}
    scores: dict[int, PairScore] = {}
    no_gt = 0
    for rec in records:
        if not rec.is_pair:
            continue
        T_gt = gt.relative(rec.keyframe_stamp_ns, rec.stamp_ns, max_gap_ns) if gt is not None else None
        kf = by_stamp.get(rec.keyframe_stamp_ns)
        if T_gt is None:
            no_gt += 1
            continue
        kf_camera = kf.camera if kf is not None and kf.camera is not None else rec.camera
        scores[rec.stamp_ns] = score_pair(rec, kf_camera, T_gt)
    return scores, no_gt


def run_summary(records: Sequence[FrameRecord], pairs: Sequence[FrameRecord], scores: dict[int, PairScore],
                no_gt: int) -> dict[str, Any]:
    """The summary keys of :func:`evaluate` other than the metric-pose ones: counts, pose AUC and medians,
    epipolar precision, matches, keyframes, latency, failure reasons. ``pairs``: the records matched against a
    keyframe; ``scores``, ``no_gt``: :func:`score_pairs`."""
    pose_errors = [s.pose_error_deg for s in scores.values()]
    auc = pose_error_auc(pose_errors, AUC_THRESHOLDS) if pose_errors else [None] * len(AUC_THRESHOLDS)
    pose_median = _median(pose_errors)
    n_matches_scored = sum(len(s.epipolar_errors) for s in scores.values())
    n_correct = sum(s.epipolar_correct for s in scores.values())
    finite = lambda xs: [x for x in xs if math.isfinite(x)]  # noqa: E731
    failed = [r for r in pairs if not r.has_pose]
    latencies = [r.latency_ms for r in records if math.isfinite(r.latency_ms)]
    return {
        "frames": len(records),
        "pairs": len(scores),
        "pairs_without_ground_truth": no_gt,
        "pose_failures": len(failed),
        **{f"auc@{t}": None if a is None else float(a) for t, a in zip(AUC_THRESHOLDS, auc)},
        # medians over the estimated poses; failures are counted in pose_failures and in the AUC
        "rotation_error_deg_median": _median(finite([s.rotation_error_deg for s in scores.values()])),
        "translation_error_deg_median": _median(finite([s.translation_error_deg for s in scores.values()])),
        "pose_error_deg_median": None if pose_median is None else _json_float(pose_median),
        "epipolar_precision": (n_correct / n_matches_scored) if n_matches_scored else None,
        "epipolar_threshold": EPIPOLAR_THRESHOLD,
        "matches_per_frame_median": _median([float(r.n_matches) for r in pairs]),
        "inliers_per_frame_median": _median([float(r.n_inliers) for r in pairs]),
        "keyframes": sum(1 for r in records if r.new_keyframe),
        "latency_ms_p50": _percentile(latencies, 50),
        "latency_ms_p99": _percentile(latencies, 99),
        "failure_reasons": _count([r.reason for r in failed]),
    }


def frame_entry(rec: FrameRecord, s: PairScore | None, metric: bool = False) -> dict[str, Any]:
    """One frame's entry of per_frame.json: stamps, counts, the estimate (R ``(3, 3)``, t ``(3,)``), status,
    latency and, where the pair was scored (``s``), its errors; ``metric``: also the metric-pose keys."""
    row = {
        "stamp_ns": rec.stamp_ns,
        "keyframe_stamp_ns": rec.keyframe_stamp_ns,
        "matches": rec.n_matches,
        "inliers": rec.n_inliers,
        "has_pose": rec.has_pose,
        "R": None if rec.R is None else np.asarray(rec.R, dtype=float).round(9).tolist(),
        "t": None if rec.t is None else np.asarray(rec.t, dtype=float).round(9).tolist(),
        "reason": rec.reason,
        "new_keyframe": rec.new_keyframe,
        "status": rec.status,
        "latency_ms": rec.latency_ms if math.isfinite(rec.latency_ms) else None,
        "rotation_error_deg": _json_float(s.rotation_error_deg) if s else None,
        "translation_error_deg": _json_float(s.translation_error_deg) if s else None,
        "gt_rotation_deg": s.gt_rotation_deg if s else None,
        "gt_translation_m": s.gt_translation_m if s else None,
        "epipolar_correct": s.epipolar_correct if s else None,
    }
    if metric:
        row.update({"metric": rec.metric and rec.has_pose,
                    "translation_error_m": s.translation_error_m if s else None,
                    "translation_error_pct": s.translation_error_pct if s else None,
                    "nees": s.nees if s else None})
    return row


def metric_summary(pairs: Sequence[FrameRecord], scores: Sequence[PairScore]) -> dict[str, Any]:
    """The metric-pose keys of metrics.json: how many pairs have a metric pose, their translation errors
    (metres and %, median / p90 / max) and their rotation error."""
    scored = [s for s in scores if s.translation_error_m is not None]
    metres = [s.translation_error_m for s in scored]
    pct = [s.translation_error_pct for s in scored if s.translation_error_pct is not None]
    return {
        "metric_pose_frames": sum(1 for r in pairs if r.metric and r.has_pose),
        "translation_error_m_median": _median(metres),
        "translation_error_m_p90": _percentile(metres, 90),
        "translation_error_m_max": max(metres) if metres else None,
        "translation_error_pct_median": _median(pct),
        "translation_error_pct_p90": _percentile(pct, 90),
        "translation_error_pct_pairs": len(pct),
        "translation_error_pct_min_distance_m": MIN_PCT_DISTANCE_M,
        "metric_rotation_error_deg_median": _median([s.rotation_error_deg for s in scored]),
        **nees_summary([s.nees for s in scored if s.nees is not None]),
    }


def nees_summary(values: Sequence[float]) -> dict[str, Any]:
    """``nees_mean``, ``nees_median``, ``nees_within_95`` (the share inside the χ²(6) 95 % bound) and
    ``nees_pairs``."""
    values = [v for v in values if math.isfinite(v)]
    return {"nees_mean": float(np.mean(values)) if values else None, "nees_median": _median(values),
            "nees_within_95": float(np.mean(np.asarray(values) <= CHI2_6_95)) if values else None,
            "nees_pairs": len(values)}


def epipolar_errors(rec: FrameRecord, kf_camera: Any, gt: Trajectory,
                    max_gap_ns: int = 100_000_000) -> np.ndarray | None:
    """``(N,)`` symmetric epipolar distances of a frame's matches under the ground truth, or None."""
    T_gt = gt.relative(rec.keyframe_stamp_ns, rec.stamp_ns, max_gap_ns)
    if T_gt is None or not len(rec.kpts0):
        return None
    return score_pair(rec, kf_camera, T_gt).epipolar_errors


def _json_float(x: float) -> float | None:
    """inf/nan are not JSON: a failed estimate is written as null (and counted as failure)."""
    return float(x) if math.isfinite(x) else None


def _count(items: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        key = item or "unknown"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
