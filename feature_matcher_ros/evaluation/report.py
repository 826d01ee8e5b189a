"""Writing results: ``metrics.json``, ``report.md``, PNG plots (matplotlib, Agg backend) and a compact
text table for the terminal."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .records import FrameRecord

#: (metrics key, column title, format) of the comparison table
TABLE_COLUMNS = (
    ("name", "run", "{}"),
    ("frames", "frames", "{:d}"),
    ("pairs", "pairs", "{:d}"),
    ("auc@5", "AUC@5", "{:.3f}"),
    ("auc@10", "AUC@10", "{:.3f}"),
    ("auc@20", "AUC@20", "{:.3f}"),
    ("rotation_error_deg_median", "rot° med", "{:.2f}"),
    ("translation_error_deg_median", "t° med", "{:.2f}"),
    ("epipolar_precision", "epi prec", "{:.3f}"),
    ("matches_per_frame_median", "matches", "{:.0f}"),
    ("inliers_per_frame_median", "inliers", "{:.0f}"),
    ("keyframes", "kf", "{:d}"),
    ("fps", "fps", "{:.1f}"),
    ("latency_ms_p50", "lat p50 ms", "{:.1f}"),
    ("latency_ms_p99", "lat p99 ms", "{:.1f}"),
    ("ate_rmse_m", "ATE m", "{:.4f}"),
    ("rpe_rmse_m", "RPE m", "{:.4f}"),
)
#: added to the table when a run is rgbd / stereo
METRIC_COLUMNS = (
    ("input_mode", "input", "{}"),
    ("metric_pose_frames", "metric poses", "{:d}"),
    ("translation_error_m_median", "t err m med", "{:.4f}"),
    ("translation_error_pct_median", "t err % med", "{:.2f}"),
    ("nees_mean", "NEES", "{:.1f}"),
    ("drift_pct", "drift %", "{:.2f}"),
)
LIVE_COLUMNS = (
    ("frames_published", "published", "{:d}"),
    ("frames_dropped", "dropped", "{:d}"),
    ("end_to_end_latency_ms_p50", "e2e p50 ms", "{:.1f}"),
    ("end_to_end_latency_ms_p99", "e2e p99 ms", "{:.1f}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    try:
        if fmt == "{:d}":
            return str(int(value))
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _columns(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    cols = list(TABLE_COLUMNS)
    if any(r.get("input_mode", "mono") != "mono" for r in rows):
        cols += list(METRIC_COLUMNS)
    if any("frames_dropped" in r for r in rows):
        cols += list(LIVE_COLUMNS)
    return cols


def markdown_table(rows: Sequence[dict]) -> str:
    """A markdown table, one row per run."""
    cols = _columns(rows)
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k), f) for k, _, f in cols) + " |")
    return "\n".join(lines)


#: the live summary fm-replay prints (latency there is end to end)
LIVE_SUMMARY_KEYS = ("name", "frames_published", "frames_dropped", "auc@5", "auc@10", "auc@20",
                     "rotation_error_deg_median", "translation_error_deg_median", "epipolar_precision",
                     "inliers_per_frame_median", "keyframes", "end_to_end_latency_ms_p50",
                     "end_to_end_latency_ms_p99", "ate_rmse_m", "rpe_rmse_m")


def text_table(rows: Sequence[dict], keys: Sequence[str] | None = None) -> str:
    """The same table aligned for a terminal (``keys``: only these columns, in this order)."""
    cols = _columns(rows)
    if keys is not None:
        by_key = {c[0]: c for c in (*TABLE_COLUMNS, *METRIC_COLUMNS, *LIVE_COLUMNS)}
        cols = [by_key[k] for k in keys]
    cells = [[c[1] for c in cols]] + [[_cell(r.get(k), f) for k, _, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    out = []
    for j, row in enumerate(cells):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_json(path: Path, data: Any) -> Path:
    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, float)):
            return float(x) if math.isfinite(float(x)) else None
        if isinstance(x, np.integer):
            return int(x)
        if isinstance(x, np.bool_):
            return bool(x)
        if isinstance(x, np.ndarray):
            return clean(x.tolist())
        return x

    path.write_text(json.dumps(clean(data), indent=2) + "\n")
    return path


# -- plots ---------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _seconds(per_frame: Sequence[dict]) -> np.ndarray:
    if not per_frame:
        return np.zeros(0)
    t0 = per_frame[0]["stamp_ns"]
    return np.array([(f["stamp_ns"] - t0) / 1e9 for f in per_frame])


def plot_pose_errors(per_frame: Sequence[dict], path: Path, title: str) -> Path:
    plt = _pyplot()
    t = _seconds(per_frame)
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    rot = np.array([np.nan if f["rotation_error_deg"] is None else f["rotation_error_deg"] for f in per_frame])
    tra = np.array([np.nan if f["translation_error_deg"] is None else f["translation_error_deg"] for f in per_frame])
    ax.plot(t, rot, "o-", ms=3, label="rotation error (°)")
    ax.plot(t, tra, "s-", ms=3, label="translation-direction error (°)")
    failed = [i for i, f in enumerate(per_frame) if f["keyframe_stamp_ns"] != f["stamp_ns"] and not f["has_pose"]]
    if failed:
        ymax = np.nanmax(np.concatenate([rot, tra, [1.0]]))
        ax.plot(t[failed], np.full(len(failed), ymax), "rx", label="pose failed")
    return _save_per_frame(fig, ax, t, per_frame, "error (°)", f"{title}: pose error per frame (keyframe → frame)",
                           path)


def plot_translation_errors(per_frame: Sequence[dict], path: Path, title: str) -> Path:
    """Metric translation error per frame: metres (left axis) and % of the keyframe-to-frame distance (right)."""
    plt = _pyplot()
    t = _seconds(per_frame)
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    metres = np.array([np.nan if f.get("translation_error_m") is None else f["translation_error_m"] for f in per_frame])
    pct = np.array([np.nan if f.get("translation_error_pct") is None else f["translation_error_pct"]
                    for f in per_frame])
    ax.plot(t, metres, "o-", ms=3, label="translation error (m)")
    right = ax.twinx()
    right.plot(t, pct, "s--", ms=3, color="tab:orange", label="% of keyframe-to-frame distance")
    right.set_ylabel("% of distance")
    none = [i for i, f in enumerate(per_frame) if f["keyframe_stamp_ns"] != f["stamp_ns"] and not f.get("metric")]
    if none:
        ax.plot(t[none], np.zeros(len(none)), "rx", label="no metric pose")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8)
    return _save_per_frame(fig, ax, t, per_frame, "error (m)", f"{title}: metric translation error (keyframe → frame)",
                           path, legend=False)


def plot_matches(per_frame: Sequence[dict], path: Path, title: str) -> Path:
    plt = _pyplot()
    t = _seconds(per_frame)
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    ax.plot(t, [f["matches"] for f in per_frame], "o-", ms=3, label="matches")
    ax.plot(t, [f["inliers"] for f in per_frame], "s-", ms=3, label="pose inliers")
    ax.plot(t, [f["epipolar_correct"] if f["epipolar_correct"] is not None else np.nan for f in per_frame],
            "^-", ms=3, label="matches within 5e-4 of GT epipolar")
    return _save_per_frame(fig, ax, t, per_frame, "count", f"{title}: matches per frame", path)


def _save_per_frame(fig, ax, t: np.ndarray, per_frame: Sequence[dict], ylabel: str, title: str, path: Path,
                    legend: bool = True) -> Path:
    """The per-frame plots' common end: grey lines at new keyframes, labels, legend, saved and closed."""
    for i, f in enumerate(per_frame):
        if f["new_keyframe"]:
            ax.axvline(t[i], color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("time (s)   (grey lines: new keyframes)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def plot_latency(latencies_ms: Sequence[float], path: Path, title: str, label: str = "processing time") -> Path:
    plt = _pyplot()
    vals = np.array([v for v in latencies_ms if v is not None and math.isfinite(v)])
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if len(vals):
        ax.hist(vals, bins=min(30, max(5, len(vals) // 2)), color="tab:blue", alpha=0.8)
        for q, style in ((50, "--"), (99, ":")):
            v = float(np.percentile(vals, q))
            ax.axvline(v, color="k", ls=style, lw=1, label=f"p{q} {v:.1f} ms")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"{label} per frame (ms)")
    ax.set_ylabel("frames")
    ax.set_title(f"{title}: latency")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


KEYFRAME_LABELS = {"frontend": "keyframes, front-end", "pose_graph": "keyframes, pose graph"}


def plot_trajectory(est: Any, gt: Any, path: Path, title: str, metric: bool = False,
                    keyframes: dict[str, Any] | None = None) -> Path:
    """Top view (x, z) and side view (x, y) of the chained estimate and the ground truth (``metric``: the
    estimate's own metric scale, else the ground truth's), and ``keyframes`` (name -> trajectory: the front-end's
    and the pose graph's keyframe poses, ``fm-eval --pose-graph``)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), dpi=100)
    for ax, (a, b, la, lb) in zip(axes, ((0, 1, "x", "y"), (0, 2, "x", "z"))):
        if gt is not None and len(gt):
            p = gt.poses[:, :3, 3]
            ax.plot(p[:, a], p[:, b], "k--", lw=1, label="ground truth")
        if est is not None and len(est):
            p = est.poses[:, :3, 3]
            ax.plot(p[:, a], p[:, b], "o-", ms=3, label="estimate (metric)" if metric else "estimate (GT scale)")
        for name, traj in (keyframes or {}).items():
            p = traj.poses[:, :3, 3]
            ax.plot(p[:, a], p[:, b], "s-" if name == "pose_graph" else "^:", ms=4, lw=1.5,
                    label=KEYFRAME_LABELS.get(name, name))
        ax.set_xlabel(f"{la} (m)")
        ax.set_ylabel(f"{lb} (m)")
        ax.axis("equal")
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: chained trajectory (not aligned)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_match_picture(image0: np.ndarray, image1: np.ndarray, rec: FrameRecord, errors: np.ndarray | None,
                       path: Path, title: str, max_lines: int = 300) -> Path:
    """Keyframe (left or top) and frame (right or bottom), matches as lines coloured by the symmetric
    epipolar error under the ground truth (green below 5e-4, red at 1e-2 and above; grey: no GT)."""
    import cv2
    from matplotlib import colormaps

    def rgb(img: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else img

    a, b = rgb(image0), rgb(image1)
    if a.shape[1] > 1.6 * a.shape[0]:  # wide images (KITTI): keyframe above, frame below
        canvas = np.zeros((a.shape[0] + b.shape[0], max(a.shape[1], b.shape[1]), 3), np.uint8)
        canvas[: a.shape[0], : a.shape[1]] = a
        canvas[a.shape[0]:, : b.shape[1]] = b
        offset = (0, a.shape[0])
    else:
        canvas = np.zeros((max(a.shape[0], b.shape[0]), a.shape[1] + b.shape[1], 3), np.uint8)
        canvas[: a.shape[0], : a.shape[1]] = a
        canvas[: b.shape[0], a.shape[1]:] = b
        offset = (a.shape[1], 0)
    n = len(rec.kpts0)
    order = np.arange(n)
    if n > max_lines:
        order = np.linspace(0, n - 1, max_lines).round().astype(int)
    cmap = colormaps["RdYlGn_r"]
    for i in order:
        if errors is None or not np.isfinite(errors[i]):
            color = (160, 160, 160)
        else:
            x = (np.log10(max(errors[i], 1e-12)) - math.log10(5e-4)) / (math.log10(1e-2) - math.log10(5e-4))
            c = cmap(float(np.clip(x, 0, 1)))
            color = tuple(int(255 * v) for v in c[:3])
        p0 = tuple(int(round(v)) for v in rec.kpts0[i])
        p1 = (int(round(rec.kpts1[i][0])) + offset[0], int(round(rec.kpts1[i][1])) + offset[1])
        cv2.line(canvas, p0, p1, color, 1, cv2.LINE_AA)
        cv2.circle(canvas, p0, 2, color, -1, cv2.LINE_AA)
        cv2.circle(canvas, p1, 2, color, -1, cv2.LINE_AA)
    plt = _pyplot()
    fig = plt.figure(figsize=(canvas.shape[1] / 100, canvas.shape[0] / 100 + 0.5), dpi=100)
    ax = fig.add_axes([0, 0, 1, canvas.shape[0] / (canvas.shape[0] + 50)])
    ax.imshow(canvas)
    ax.axis("off")
    good = int((errors < 5e-4).sum()) if errors is not None else 0
    fig.text(0.01, 0.99, f"{title}: {n} matches, {rec.n_inliers} inliers, {good} within 5e-4 of GT epipolar "
             "(green ok → red ≥ 1e-2)", va="top", fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return path


def pick_picture_frames(records: Sequence[FrameRecord], count: int = 3) -> list[FrameRecord]:
    """``count`` matched frames spread over the run (deterministic)."""
    pairs = [r for r in records if r.is_pair and len(r.kpts0)]
    if not pairs:
        return []
    idx = np.unique(np.linspace(0, len(pairs) - 1, min(count, len(pairs)) + 2).round().astype(int)[1:-1])
    if len(idx) == 0:
        idx = np.array([len(pairs) // 2])
    return [pairs[i] for i in idx]


# -- report.md -----------------------------------------------------------------------------------------

def run_markdown(metrics: dict, plots: dict[str, str], title: str) -> str:
    """The per-run report."""
    lines = [f"# {title}", ""]
    lines += [f"- bag: `{metrics.get('bag')}`",
              f"- mode: {metrics.get('mode')}, input: {metrics.get('input_mode', 'mono')}",
              f"- backend: `{metrics.get('backend')}` ({metrics.get('device')}, {metrics.get('precision')})",
              f"- ground truth: {metrics.get('ground_truth')}",
              f"- topics: image `{metrics.get('image_topic')}`, camera info `{metrics.get('camera_info_topic')}`"
              + "".join(f", {what} `{metrics[key]}`" for key, what in (("depth_topic", "depth"),
                        ("right_image_topic", "right image"), ("right_camera_info_topic", "right camera info"))
                        if metrics.get(key))]
    if metrics.get("pairing"):
        p = metrics["pairing"]
        lines.append(f"- pairing by stamp: {p['paired']} paired, unpaired {p['unpaired'] or 'none'}, "
                     f"rejected {p['rejected'] or 'none'}")
    lines.append("")
    lines += [markdown_table([metrics]), ""]
    lines += ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if isinstance(value, (dict, list)):
            continue
        lines.append(f"| {key} | {_cell(value, '{:.4g}') if isinstance(value, float) else value} |")
    if metrics.get("failure_reasons"):
        lines += ["", "Pose failures: " + ", ".join(f"{k} ×{v}" for k, v in metrics["failure_reasons"].items())]
    if metrics.get("evo_error"):
        lines += ["", f"Trajectory scoring: {metrics['evo_error']}"]
    lines += ["", "Definitions: pairs are frames matched against a keyframe; pose error = max(rotation error, "
              "translation-direction error) in degrees, a failed estimate counts as infinite (AUC as in SuperGlue/"
              "LoFTR); error medians are over the estimated poses; epipolar precision is the share of all matches "
              "with symmetric epipolar distance < 5e-4 (normalised coordinates) under the ground truth; ATE/RPE: "
              "evo_ape / evo_rpe (translation part, SE(3)-aligned, RPE over consecutive poses) of the chained "
              + ("trajectory of the metric keyframe-to-frame poses as estimated: no ground-truth scale is injected "
                 "and the alignment is SE(3) (rotation and translation, scale 1), not Sim(3); frames without a metric "
                 "pose are left out. Metric translation error: |t - t_gt| in metres, and in % of the keyframe-to-"
                 f"frame ground-truth distance (KITTI convention; pairs under "
                 f"{metrics.get('translation_error_pct_min_distance_m')} m apart left out of the %), over the "
                 "frames with a metric pose (metric_pose_frames)." if metrics.get("input_mode", "mono") != "mono"
                 else "trajectory whose per-pair translation is scaled to the ground-truth length."), ""]
    for name, file in plots.items():
        lines += [f"## {name}", "", f"![{name}]({file})", ""]
    return "\n".join(lines)


def comparison_markdown(rows: Sequence[dict], bag: str) -> str:
    lines = ["# Comparison", "", f"bag: `{bag}`", "", markdown_table(rows), ""]
    for row in rows:
        lines.append(f"- [{row['name']}]({row['folder']}/report.md): backend `{row.get('backend')}`"
                     + (f", params {', '.join(row.get('params_files') or [])}" if row.get("params_files") else ""))
    return "\n".join(lines) + "\n"
