"""From a run's frame records to its folder of results (shared by ``fm-eval`` and ``fm-replay``):
metrics, the chained trajectory scored with evo, plots, match pictures, ``metrics.json``, ``report.md``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..datasets import Trajectory
from ..se3 import invert
from . import report
from .graph import score_pose_graph
from .metrics import epipolar_errors, evaluate
from .records import FrameRecord
from .trajectory import chain_metric, chain_with_gt_scale, sample, score_trajectory, segment_drift

#: the keys every metrics.json has at the top level (the issue's list, plus the trajectory scores)
REQUIRED_KEYS = (
    "backend", "frames", "pairs", "auc@5", "auc@10", "auc@20", "rotation_error_deg_median",
    "translation_error_deg_median", "epipolar_precision", "matches_per_frame_median", "inliers_per_frame_median",
    "keyframes", "fps", "latency_ms_p50", "latency_ms_p99", "ate_rmse_m", "rpe_rmse_m",
)
#: and the keys of an rgbd / stereo run (issue 11's list)
METRIC_KEYS = (
    "input_mode", "translation_error_m_median", "translation_error_pct_median", "rotation_error_deg_median",
    "metric_pose_frames", "ate_rmse_m", "rpe_rmse_m", "drift_pct", "drift_deg_per_m",
)


def score_run(records: Sequence[FrameRecord], gt: Trajectory | None, out_dir: Path, meta: dict[str, Any],
              images_for: Callable[[set[int]], dict[int, Any]] | None = None, pictures: int = 3,
              latency_label: str = "processing time", mount: Any = None, pose_graph: Any = None) -> dict[str, Any]:
    """Score ``records`` and write ``out_dir``/{metrics.json, report.md, *.png, trajectory_*.tum}.

    ``meta``: what identifies the run (backend, bag, topics, fps, ``input_mode``, ...), merged first into
    metrics.json; an ``input_mode`` of ``rgbd`` / ``stereo`` scores the metric translation too, and chains the
    trajectory with the estimated metric translations instead of the ground-truth scale.
    ``images_for(stamps)``: the bag images of these stamps, for the match pictures (None: no pictures).
    ``mount``: ``T_base_camera`` ``(4, 4)``: the trajectory (estimate and ground truth) is scored for the robot's
    base frame (``meta["base_frame"]``) instead of the camera's; the per-frame relative poses stay the camera's.
    ``pose_graph``: a :class:`~.graph.GraphRun` over these records: scored into ``metrics["pose_graph"]`` and
    drawn in the trajectory plot.
    Returns the metrics dictionary written to ``metrics.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metric = meta.get("input_mode", "mono") != "mono"
    summary, per_frame = evaluate(records, gt, metric=metric)
    metrics: dict[str, Any] = {**meta, **summary}
    for key in REQUIRED_KEYS + (METRIC_KEYS if metric else ()):
        metrics.setdefault(key, None)

    keyframes: dict = {}
    if pose_graph is not None:
        metrics["pose_graph"], keyframes = score_pose_graph(pose_graph, gt, out_dir, metric, mount)
    est = None
    if gt is not None and records:
        est = chain_metric(records, gt) if metric else chain_with_gt_scale(records, gt)
        if mount is not None:  # the robot's base frame: both trajectories moved off the camera by its mounting
            est, gt = est.moved(invert(mount)), gt.moved(invert(mount))
            metrics["trajectory_frame"] = str(meta.get("base_frame", "base"))
        metrics.update(score_trajectory(est, gt, out_dir))
        if metric:  # the chained odometry's drift: only metric translations have a scale of their own
            metrics.update(segment_drift(est, gt))
        metrics["trajectory_scale"] = ("metric, as estimated (no ground-truth scale)" if metric
                                       else "ground truth (each step scaled to the ground-truth length)")
    else:
        metrics["evo_error"] = "no ground truth"

    title = str(meta.get("name") or meta.get("backend"))
    plots: dict[str, str] = {}
    if per_frame:
        plots["pose error per frame"] = report.plot_pose_errors(per_frame, out_dir / "pose_error.png", title).name
        if metric:
            plots["metric translation error per frame"] = report.plot_translation_errors(
                per_frame, out_dir / "translation_error.png", title).name
        plots["matches per frame"] = report.plot_matches(per_frame, out_dir / "matches.png", title).name
        plots["latency"] = report.plot_latency([r.latency_ms for r in records], out_dir / "latency.png", title,
                                               latency_label).name
    if est is not None and len(est):
        plots["trajectory"] = report.plot_trajectory(est, sample(gt, [r.stamp_ns for r in records]),
                                                     out_dir / "trajectory.png", title, metric, keyframes).name
    if images_for is not None and pictures > 0:
        chosen = report.pick_picture_frames(records, pictures)
        want = {r.stamp_ns for r in chosen} | {r.keyframe_stamp_ns for r in chosen}
        images = images_for(want) if chosen else {}
        by_stamp = {r.stamp_ns: r for r in records}
        for k, rec in enumerate(chosen):
            if rec.stamp_ns not in images or rec.keyframe_stamp_ns not in images:
                continue
            kf = by_stamp.get(rec.keyframe_stamp_ns)
            kf_cam = kf.camera if kf is not None and kf.camera is not None else rec.camera
            errs = epipolar_errors(rec, kf_cam, gt) if gt is not None else None
            name = f"match_{k}.png"
            report.plot_match_picture(images[rec.keyframe_stamp_ns], images[rec.stamp_ns], rec, errs,
                                      out_dir / name,
                                      f"{title} frame @{rec.stamp_ns} vs keyframe @{rec.keyframe_stamp_ns}")
            plots[f"matches, frame {rec.stamp_ns} vs keyframe {rec.keyframe_stamp_ns}"] = name
    metrics["plots"] = sorted(plots.values())
    report.write_json(out_dir / "metrics.json", metrics)
    report.write_json(out_dir / "per_frame.json", per_frame)
    (out_dir / "report.md").write_text(report.run_markdown(metrics, plots,
                                                           f"{title} on {Path(str(meta.get('bag'))).name}"))
    return metrics
