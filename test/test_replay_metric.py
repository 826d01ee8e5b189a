"""fm-replay in rgbd and stereo mode: the depth or right-camera topics of a bag played over real DDS to a real
matcher_node, which pairs them with the images by stamp; its metric poses are scored like fm-eval's offline
ones, and at a slow rate they are the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feature_matcher_ros.tools import eval as fm_eval
from feature_matcher_ros.tools import make_bag, replay

TEST_DATA = Path(__file__).resolve().parent / "data"
CASES = {  # dataset, params, rate (frames 2.7 s / 2 s apart: room for a loaded CI machine and a stereo keyframe)
    "rgbd": ("tum_fr3_cabinet_rgbd", "eval_rgbd_sift.yaml", 0.25),
    "stereo": ("kitti06_stereo_f000_050", "eval_stereo_sift.yaml", 0.05),
}


@pytest.mark.parametrize("mode", list(CASES))
def test_metric_replay_agrees_with_offline(shared: Path, tmp_path: Path, mode: str) -> None:
    data, params, rate = CASES[mode]
    bag = tmp_path / "bag"
    assert make_bag.main([str(shared / "data" / data), str(bag), "--frames", "0:4", "--quiet"]) == 0
    live, offline = tmp_path / "live", tmp_path / "offline"
    code = replay.main([str(bag), "--out", str(live), "--params", str(TEST_DATA / params), "--rate", str(rate),
                        "--pictures", "0", "--quiet"])
    log = (live / "node.log").read_text() if (live / "node.log").is_file() else ""
    assert code == 0, log
    assert fm_eval.main([str(bag), "--out", str(offline), "--params", str(TEST_DATA / params), "--pictures", "0",
                         "--quiet"]) == 0
    m_live = json.loads((live / "metrics.json").read_text())
    m_off = json.loads((offline / "metrics.json").read_text())
    assert m_live["input_mode"] == mode and m_live["frames_published"] == 4
    assert m_live["frames_dropped"] == 0, json.dumps(m_live["node_diagnostics_last"])
    assert m_live["metric_pose_frames"] == m_off["metric_pose_frames"] >= 2
    for key in ("translation_error_m_median", "translation_error_pct_median", "ate_rmse_m"):
        assert m_live[key] == pytest.approx(m_off[key], rel=0.02, abs=1e-3), key
    assert m_live["trajectory_scale"].startswith("metric") and (live / "translation_error.png").is_file()
