"""fm-replay: a bag played over real DDS (with /clock) to a real matcher_node process; what it publishes
is recorded and scored. With a slow rate no frame is dropped, and the live results equal fm-eval's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from feature_matcher_ros.evaluation import bagio
from feature_matcher_ros.tools import eval as fm_eval
from feature_matcher_ros.tools import replay


def _angle_deg(R0: np.ndarray, R1: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R0.T @ R1) - 1) / 2, -1, 1))))


def test_live_replay_agrees_with_offline(small_bag: Path, tmp_path: Path) -> None:
    live, offline = tmp_path / "live", tmp_path / "offline"
    # rate 0.2: frames 1.5 s apart, far more than SIFT needs per frame, so the node drops none
    proc = subprocess.run(
        [sys.executable, "-m", "feature_matcher_ros.tools.replay", str(small_bag), "--out", str(live),
         "--backend", "sift", "--rate", "0.2", "--quiet"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "MPLBACKEND": "Agg"})
    log = (live / "node.log").read_text() if (live / "node.log").is_file() else ""
    assert proc.returncode == 0, f"{proc.stderr}\nnode log:\n{log}"
    assert "dropped" in proc.stdout and "sift (live)" in proc.stdout  # the summary table
    assert fm_eval.main([str(small_bag), "--out", str(offline), "--backend", "sift", "--quiet", "--pictures", "0"]) == 0

    m_live = json.loads((live / "metrics.json").read_text())
    m_off = json.loads((offline / "metrics.json").read_text())
    assert m_live["mode"] == "live" and m_live["frames_published"] == 6
    assert m_live["frames_dropped"] == 0, f"the node dropped frames even at rate 0.2: {m_live['node_diagnostics_last']}"
    assert m_live["end_to_end_latency_ms_p50"] > 0 and m_live["ate_rmse_m"] is not None

    f_live = json.loads((live / "per_frame.json").read_text())
    f_off = json.loads((offline / "per_frame.json").read_text())
    assert [f["stamp_ns"] for f in f_live] == [f["stamp_ns"] for f in f_off]
    for a, b in zip(f_live, f_off):
        where = f"frame {a['stamp_ns']}"
        assert a["keyframe_stamp_ns"] == b["keyframe_stamp_ns"], where
        assert a["new_keyframe"] == b["new_keyframe"], where
        assert a["matches"] == b["matches"], where
        assert abs(a["inliers"] - b["inliers"]) <= max(2, 0.02 * b["inliers"]), where
        assert a["has_pose"] == b["has_pose"], where
        if b["has_pose"]:
            assert _angle_deg(np.array(a["R"]).reshape(3, 3), np.array(b["R"]).reshape(3, 3)) < 0.1, where
            cos = float(np.dot(a["t"], b["t"]))
            assert np.degrees(np.arccos(np.clip(cos, -1, 1))) < 1.0, where
    for key in ("pairs", "keyframes", "matches_per_frame_median"):
        assert m_live[key] == m_off[key], key
    assert abs(m_live["rotation_error_deg_median"] - m_off["rotation_error_deg_median"]) < 0.1

    # the node's messages were recorded as a bag
    with bagio.open_bag(live / "live_outputs") as reader:
        counts = bagio.topic_counts(reader)
    assert counts["/fm_replay/matches"] == 6 and counts["/fm_replay/relative_pose"] == 5


def test_replay_bad_bag_exits_2_before_starting_a_node(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing"
    assert replay.main([str(missing), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert replay.main([str(tmp_path), "--out", str(tmp_path / "o"), "--rate", "0", "--quiet"]) == 2
    assert "--rate must be > 0" in capsys.readouterr().err


def test_live_replay_of_the_base_frame(shared: Path, tmp_path: Path) -> None:
    """fm-replay --base-frame: the node runs with base_frame, the bag's mounting (fm-make-bag --mount) goes to it
    on /tf_static, it answers every frame (none is no_transform) with base_link odometry, and the trajectory is
    scored for base_link like fm-eval's."""
    from feature_matcher_ros.tools import make_bag

    bag = tmp_path / "robot.bag"
    assert make_bag.main([str(shared / "data/tum_fr2_desk"), str(bag), "--frames", "0:12:3", "--mount",
                          "0.1", "0", "0.2", "0.05", "0", "0", "--quiet"]) == 0
    live, offline = tmp_path / "live", tmp_path / "offline"
    proc = subprocess.run(
        [sys.executable, "-m", "feature_matcher_ros.tools.replay", str(bag), "--out", str(live), "--backend", "sift",
         "--rate", "0.2", "--base-frame", "base_link", "--quiet"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "MPLBACKEND": "Agg"})
    log = (live / "node.log").read_text() if (live / "node.log").is_file() else ""
    assert proc.returncode == 0, f"{proc.stderr}\nnode log:\n{log}"
    m_live = json.loads((live / "metrics.json").read_text())
    assert m_live["frames_dropped"] == 0 and m_live["trajectory_frame"] == "base_link"
    assert "no_transform" not in json.dumps(m_live["node_diagnostics_last"])
    with bagio.open_bag(live / "live_outputs") as reader:
        odometry = [msg for _, _, msg in bagio.messages(reader, ["/fm_replay/odometry"])]
    assert odometry and {m.child_frame_id for m in odometry} == {"base_link"}
    assert fm_eval.main([str(bag), "--out", str(offline), "--backend", "sift", "--base-frame", "base_link",
                         "--quiet", "--pictures", "0"]) == 0
    m_off = json.loads((offline / "metrics.json").read_text())
    assert abs(m_live["ate_rmse_m"] - m_off["ate_rmse_m"]) < 1e-3
