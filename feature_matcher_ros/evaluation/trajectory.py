"""Trajectories for the evaluation: chaining relative poses (monocular: with the ground-truth scale injected;
metric: as estimated), ground truth at image stamps, and scoring with evo's command-line tools.

:class:`~feature_matcher_ros.datasets.Trajectory` (and the TUM file reader and writer) live in
:mod:`feature_matcher_ros.datasets`. evo (GPL) is only ever run as a command (``evo_ape``/``evo_rpe`` in a
subprocess); it is never imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import Trajectory, write_tum
from ..se3 import se3

# -- chaining ------------------------------------------------------------------------------------------

def chain_with_gt_scale(records: Sequence, gt: Trajectory, max_gap_ns: int = 100_000_000) -> Trajectory:
    """Chain per-frame keyframe->current estimates into ``T_world_current`` with the scale taken from
    the ground truth (monocular translation is a unit vector).

    For a frame matched against keyframe ``k`` with estimate ``R, t`` (``|t| = 1``), the translation is
    scaled by ``|t_gt(k -> frame)|`` and ``T_world_frame = T_world_k @ inv([R | s t])``. The chain
    starts at the ground-truth pose of the first frame. A frame without an estimate is left out; when
    it still became a keyframe (tracking lost), it inherits its keyframe's pose (zero motion), which
    the trajectory error then charges. ``records``: :class:`~.records.FrameRecord` in time order.
    """
    def step(rec: Any) -> np.ndarray | None:
        T_gt = gt.relative(rec.keyframe_stamp_ns, rec.stamp_ns, max_gap_ns)
        if rec.R is None or T_gt is None:
            return None
        t = np.asarray(rec.t, dtype=np.float64).reshape(3)
        norm = float(np.linalg.norm(t))
        return se3(rec.R, t / norm * float(np.linalg.norm(T_gt[:3, 3])) if norm > 0 else np.zeros(3))

    return _chain(records, gt, step, max_gap_ns, "estimate (ground-truth scale)")


def chain_metric(records: Sequence, gt: Trajectory, max_gap_ns: int = 100_000_000) -> Trajectory:
    """Chain the metric keyframe->current poses (RGB-D / stereo; ``t`` in metres) as estimated: no ground-truth
    scale is injected. Like :func:`chain_with_gt_scale` otherwise (the chain starts at the ground-truth pose of
    the first frame); a frame without a metric pose (none, or the monocular fallback, whose scale is unknown) is
    left out, or holds its keyframe's pose when it became a keyframe."""
    def step(rec: Any) -> np.ndarray | None:
        return se3(rec.R, rec.t) if rec.metric and rec.R is not None else None

    return _chain(records, gt, step, max_gap_ns, "estimate (metric, no ground-truth scale)")


def _chain(records: Sequence, gt: Trajectory, step: Callable[[Any], np.ndarray | None], max_gap_ns: int,
           source: str) -> Trajectory:
    """``T_world_frame = T_world_keyframe @ inv(step(frame))`` over ``records`` in time order (see
    :func:`chain_with_gt_scale`); ``step`` gives a frame's keyframe->frame ``(4, 4)`` or None."""
    kf_pose: dict[int, np.ndarray] = {}
    stamps: list[int] = []
    poses: list[np.ndarray] = []
    last: np.ndarray | None = None
    for rec in records:
        T_cur: np.ndarray | None = None
        if rec.keyframe_stamp_ns == rec.stamp_ns:  # first frame (or a restart): anchor
            T_cur = last if last is not None else gt.at(rec.stamp_ns, max_gap_ns)
            if T_cur is None:
                T_cur = np.eye(4)
        else:
            T_kf = kf_pose.get(rec.keyframe_stamp_ns)
            T_rel = step(rec) if T_kf is not None else None
            if T_rel is not None:
                T_cur = T_kf @ np.linalg.inv(T_rel)
            elif rec.new_keyframe and T_kf is not None:
                T_cur = T_kf.copy()
            elif rec.new_keyframe and last is not None:
                T_cur = last.copy()
        if T_cur is None:
            continue
        stamps.append(int(rec.stamp_ns))
        poses.append(T_cur)
        last = T_cur
        if rec.new_keyframe or rec.keyframe_stamp_ns == rec.stamp_ns:
            kf_pose[int(rec.stamp_ns)] = T_cur
    return Trajectory.from_lists(stamps, poses, source=source)


def sample(gt: Trajectory, stamps_ns: Iterable[int], max_gap_ns: int = 100_000_000) -> Trajectory:
    """The ground truth at the given stamps (stamps without ground truth are left out)."""
    out_s, out_p = [], []
    for s in stamps_ns:
        T = gt.at(int(s), max_gap_ns)
        if T is not None:
            out_s.append(int(s))
            out_p.append(T)
    return Trajectory.from_lists(out_s, out_p, source=f"{gt.source} (at frame stamps)")


# -- drift ---------------------------------------------------------------------------------------------

#: segment lengths of the drift (metres of ground-truth path), as KITTI's odometry benchmark scores it
DRIFT_LENGTHS_M = (10.0, 20.0, 40.0)
#: on a path shorter than the shortest of them: these fractions of the path
DRIFT_FRACTIONS = (0.25, 0.5)


def segment_drift(est: Trajectory, gt: Trajectory, max_gap_ns: int = 100_000_000) -> dict[str, Any]:
    """KITTI-style segment error of a chained trajectory: for every frame and every segment length ``L``, the
    first later frame ``L`` metres further along the ground-truth path; the error of the estimated motion between
    the two against the true one, ``E = inv(T_gt_i^-1 T_gt_j) @ (T_est_i^-1 T_est_j)``: translation ``|t_E| / L``
    in percent, rotation ``angle(R_E) / L`` in degrees per metre, averaged over the segments of each length.
    Lengths: :data:`DRIFT_LENGTHS_M` that fit the path, else :data:`DRIFT_FRACTIONS` of it.

    Returns ``drift_pct`` and ``drift_deg_per_m`` (means over the lengths), ``drift_pct@<L>m`` per length in
    metres, and ``drift``: the lengths, segment counts and errors. No alignment: the chain starts at the ground
    truth, and a segment's error does not depend on where it starts.

    >>> import numpy as np
    >>> from ..se3 import se3
    >>> stamps = np.arange(60) * 10**8
    >>> gt = Trajectory(stamps, [se3(np.eye(3), [0, 0, k]) for k in range(60)])
    >>> est = Trajectory(stamps, [se3(np.eye(3), [0, 0, 1.02 * k]) for k in range(60)])
    >>> d = segment_drift(est, gt)
    >>> round(d["drift_pct@20m"], 6), d["drift"]["lengths"][1]["segments"], round(d["drift_deg_per_m"], 6)
    (2.0, 40, 0.0)
    """
    truth = sample(gt, est.stamps_ns, max_gap_ns)
    keep = np.isin(est.stamps_ns, truth.stamps_ns)
    P_est, P_gt = est.poses[keep], truth.poses
    empty = {"drift_pct": None, "drift_deg_per_m": None, "drift": None}
    if len(P_gt) < 2:
        return empty
    path = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(P_gt[:, :3, 3], axis=0), axis=1))])
    lengths = [L for L in DRIFT_LENGTHS_M if L <= path[-1]] or [f * path[-1] for f in DRIFT_FRACTIONS]
    per_length = []
    for L in (L for L in lengths if L > 0):
        t_err, r_err = [], []
        for i in range(len(path)):
            j = int(np.searchsorted(path, path[i] + L))
            if j >= len(path):
                break
            E = np.linalg.inv(np.linalg.inv(P_gt[i]) @ P_gt[j]) @ (np.linalg.inv(P_est[i]) @ P_est[j])
            t_err.append(float(np.linalg.norm(E[:3, 3])) / L * 100.0)
            r_err.append(float(np.degrees(np.arccos(np.clip((np.trace(E[:3, :3]) - 1) / 2, -1, 1)))) / L)
        if t_err:
            per_length.append({"length_m": L, "segments": len(t_err), "t_pct": float(np.mean(t_err)),
                               "r_deg_per_m": float(np.mean(r_err))})
    if not per_length:
        return empty
    out: dict[str, Any] = {
        "drift_pct": float(np.mean([p["t_pct"] for p in per_length])),
        "drift_deg_per_m": float(np.mean([p["r_deg_per_m"] for p in per_length])),
        "drift": {"path_m": float(path[-1]), "lengths": per_length,
                  "lengths_from": "metres" if lengths[0] in DRIFT_LENGTHS_M else "fractions of the path"}}
    out.update({f"drift_pct@{p['length_m']:g}m": p["t_pct"] for p in per_length if p["length_m"] in DRIFT_LENGTHS_M})
    return out


# -- evo, as commands --------------------------------------------------------------------------------

def _evo_command(name: str) -> list[str]:
    """How to run an evo tool: the script beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return [str(beside)]
    found = shutil.which(name)
    if found:
        return [found]
    raise FileNotFoundError(f"{name} not found (install evo==1.38.1: pip install evo==1.38.1)")


def run_evo(tool: str, gt_file: Path, est_file: Path, extra: Sequence[str] = (), timeout_s: float = 120.0) -> dict:
    """Run ``evo_ape``/``evo_rpe`` on two TUM files headless; returns evo's ``stats.json`` (rmse, mean,
    median, std, min, max, sse). Raises RuntimeError with evo's message when it fails."""
    with tempfile.TemporaryDirectory(prefix="fm_evo_") as tmp:
        result_zip = Path(tmp) / "result.zip"
        cmd = [*_evo_command(tool), "tum", str(Path(gt_file).resolve()), str(Path(est_file).resolve()), *extra,
               "--save_results", str(result_zip), "--no_warnings", "--silent"]
        env = {**os.environ, "MPLBACKEND": "Agg"}
        env.pop("DISPLAY", None)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                                  stdin=subprocess.DEVNULL, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{tool} did not finish within {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not result_zip.is_file():
            message = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise RuntimeError(f"{tool} failed (exit {proc.returncode}): {message[-1] if message else 'no output'}")
        with zipfile.ZipFile(result_zip) as z:
            return json.loads(z.read("stats.json"))


def score_trajectory(est: Trajectory, gt: Trajectory, out_dir: Path, align: bool = True) -> dict:
    """Write ``trajectory_est.tum`` / ``trajectory_gt.tum`` into ``out_dir`` and score them with
    ``evo_ape`` (absolute trajectory error, translation part) and ``evo_rpe`` (frame-to-frame relative
    error, translation part). Returns ``ate_rmse_m``, ``rpe_rmse_m`` (None with ``evo_error`` set when
    evo could not score it) and the file names."""
    out_dir = Path(out_dir)
    gt_at = sample(gt, est.stamps_ns)
    est_file = write_tum(out_dir / "trajectory_est.tum", est)
    gt_file = write_tum(out_dir / "trajectory_gt.tum", gt_at)
    result: dict = {"trajectory_est": est_file.name, "trajectory_gt": gt_file.name,
                    "trajectory_poses": len(est), "ate_rmse_m": None, "rpe_rmse_m": None,
                    "trajectory_alignment": "SE(3) Umeyama" if align
                    else "none (anchored at the first ground-truth pose)"}
    if len(gt_at) < 3:
        result["evo_error"] = f"only {len(gt_at)} estimated poses with ground truth; evo needs at least 3"
        return result
    align_args = ["--align"] if align else []
    errors = []
    try:
        result["ate_rmse_m"] = float(run_evo("evo_ape", gt_file, est_file, align_args)["rmse"])
    except (RuntimeError, FileNotFoundError, KeyError, ValueError) as exc:
        errors.append(str(exc))
    try:
        rpe = run_evo("evo_rpe", gt_file, est_file, [*align_args, "--delta", "1", "--delta_unit", "f"])
        result["rpe_rmse_m"] = float(rpe["rmse"])
    except (RuntimeError, FileNotFoundError, KeyError, ValueError) as exc:
        errors.append(str(exc))
    if errors:
        result["evo_error"] = "; ".join(errors)
    return result
