"""``fm-eval --pose-graph``: the back-end (:class:`~feature_matcher_ros.pose_graph.PoseGraph`, the code
``pose_graph_node`` runs) over a run's keyframe and loop edges, in the order the front-end made them, one
optimisation per new keyframe; then its keyframe poses and the front-end's own, on the same keyframe stamps,
scored against the ground truth with the same alignment.

A loop closure is false when its relative pose is off the ground truth's by more than :data:`FALSE_LOOP_DEG`
degrees of rotation, or (metric edges) by more than the larger of :data:`FALSE_LOOP_FRACTION` of the edge's
length and :data:`FALSE_LOOP_MIN_M` metres; monocular edges (no scale) are judged by their rotation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import Trajectory, write_tum
from ..geometry import rotation_error_deg
from ..loops import Edge
from ..se3 import invert
from .records import FrameRecord
from .trajectory import run_evo

FALSE_LOOP_DEG = 5.0
FALSE_LOOP_FRACTION = 0.2
FALSE_LOOP_MIN_M = 0.05


@dataclass
class GraphRun:
    """What :func:`run_pose_graph` gives: the graph, the front-end's keyframe poses (stamp -> ``T_world_kf``),
    the loop edges the front-end proposed and the edges that could not be placed."""

    graph: Any
    frontend: dict[int, np.ndarray] = field(default_factory=dict)
    proposed_loops: list[Edge] = field(default_factory=list)
    unplaced: int = 0


def run_pose_graph(records: list[FrameRecord], loop_kernel: str = "cauchy") -> GraphRun:
    """Feed the records' edges to a fresh pose graph, one :meth:`~.PoseGraph.update` per frame that brought some."""
    from ..pose_graph import PoseGraph

    run = GraphRun(PoseGraph(loop_kernel=loop_kernel))
    for rec in records:
        if rec.T_world_keyframe is not None:
            run.frontend[rec.stamp_ns] = np.asarray(rec.T_world_keyframe, np.float64)
        if not rec.edges:
            continue
        run.proposed_loops += [edge for edge in rec.edges if edge.kind == "loop"]
        placed = run.graph.update(rec.edges)
        run.unplaced += sum(1 for edge, ok in zip(rec.edges, placed) if not ok and edge.kind != "loop")
    return run


def false_loop(edge: Edge, gt: Trajectory) -> bool | None:
    """Whether a loop edge is false against the ground truth (module docstring); None without ground truth."""
    T_gt = gt.relative(edge.to_stamp_ns, edge.from_stamp_ns)  # the to camera in the from camera's frame
    if T_gt is None:
        return None
    if rotation_error_deg(edge.T[:3, :3], T_gt[:3, :3]) > FALSE_LOOP_DEG:
        return True
    if not edge.metric:
        return False
    length = float(np.linalg.norm(T_gt[:3, 3]))
    return float(np.linalg.norm(edge.T[:3, 3] - T_gt[:3, 3])) > max(FALSE_LOOP_FRACTION * length, FALSE_LOOP_MIN_M)


def keyframe_trajectories(run: GraphRun, gt: Trajectory) -> dict[str, Trajectory]:
    """The front-end's and the optimised keyframe poses on the keyframe stamps both have, anchored at the ground
    truth of the graph's first keyframe (as the chained trajectory is; the scores align them anyway)."""
    estimate = run.graph.estimate()
    stamps = sorted(s for s in estimate if s in run.frontend)
    if not stamps:
        return {}
    origin = min(estimate, key=lambda s: run.graph.keys[s])
    anchor = gt.at(origin)
    anchor = np.eye(4) if anchor is None else anchor
    to_graph = anchor @ invert(run.frontend[origin])  # the front-end's world to the anchored graph world
    return {"frontend": Trajectory.from_lists(stamps, [to_graph @ run.frontend[s] for s in stamps],
                                              "front-end keyframes"),
            "pose_graph": Trajectory.from_lists(stamps, [anchor @ estimate[s] for s in stamps],
                                                "pose-graph keyframes")}


def score_pose_graph(run: GraphRun, gt: Trajectory | None, out_dir: Path, metric: bool, mount: Any = None
                     ) -> tuple[dict[str, Any], dict[str, Trajectory]]:
    """``(metrics["pose_graph"], trajectories to plot)``; writes ``trajectory_keyframes_{gt,frontend,
    pose_graph}.tum`` and scores both estimates with ``evo_ape`` (SE(3) alignment when ``metric``, else Sim(3);
    metric runs also ``*_sim3_*`` with Sim(3))."""
    stats = run.graph.stats
    accepted = run.graph.loops
    out: dict[str, Any] = {
        "keyframes": stats.keyframes, "keyframe_edges": stats.keyframe_edges, "lost_edges": stats.lost_edges,
        "loop_candidates": len(run.proposed_loops), "loop_closures": stats.loops_accepted,
        "loops_rejected": stats.loops_rejected, "unplaced_edges": run.unplaced,
        "optimise_ms_median": stats.optimise_ms_median,
        "optimise_ms_max": max(stats.optimise_ms) if stats.optimise_ms else None,
        "loop_kernel": run.graph.loop_kernel, "loop_gate_chi2": run.graph.loop_gate,
        "false_loop_closures": None, "ate_rmse_m": None, "frontend_ate_rmse_m": None,
    }
    if gt is None:
        return out, {}
    verdicts = [false_loop(e, gt) for e in accepted]
    out["false_loop_closures"] = sum(1 for v in verdicts if v)
    out["false_loop_candidates"] = sum(1 for e in run.proposed_loops if false_loop(e, gt))
    trajectories = keyframe_trajectories(run, gt)
    if mount is not None:
        trajectories = {k: t.moved(invert(mount)) for k, t in trajectories.items()}
        gt = gt.moved(invert(mount))
    if not trajectories or len(trajectories["pose_graph"]) < 3:
        out["evo_error"] = "fewer than 3 keyframes in the graph"
        return out, trajectories
    from .trajectory import sample

    gt_file = write_tum(Path(out_dir) / "trajectory_keyframes_gt.tum", sample(gt, trajectories["pose_graph"].stamps_ns))
    align = ["--align"] if metric else ["--align", "--correct_scale"]
    out["trajectory_alignment"] = "SE(3) Umeyama" if metric else "Sim(3) Umeyama"
    scorings = [("", align)] + ([("sim3_", ["--align", "--correct_scale"])] if metric else [])
    for name, key in (("pose_graph", "ate_{}rmse_m"), ("frontend", "frontend_ate_{}rmse_m")):
        est_file = write_tum(Path(out_dir) / f"trajectory_keyframes_{name}.tum", trajectories[name])
        for tag, args in scorings:  # metric runs also Sim(3): what is left once a scale error is taken out
            try:
                out[key.format(tag)] = float(run_evo("evo_ape", gt_file, est_file, args)["rmse"])
            except (RuntimeError, FileNotFoundError, KeyError, ValueError) as exc:
                out["evo_error"] = str(exc)
    return out, trajectories
