"""matcher_node with ``backend: eloftr`` as its own process over real DDS, on TUM fr2_desk frames.

The checkpoint is the Efficient LoFTR parity fixture (random weights in the released layout), so the
matches are not geometrically meaningful: this checks the plumbing (matches arrive, decode, carry the
keyframe stamp) and the live ``eloftr.*`` parameters, not accuracy. Thresholds come from the fixture's
manifest (random weights give low confidences). Frames are resized to 320 px inside the node.
"""

import json

import numpy as np
import pytest

pytest.importorskip(
    "feature_matcher_ros.backends.eloftr",
    reason="the Efficient LoFTR backend (feature_matcher_ros/backends/eloftr/) is not in this checkout",
)

from feature_matcher_ros import messages  # noqa: E402
from feature_matcher_ros.backends.eloftr import DEFAULT_THRESHOLDS  # noqa: E402
from feature_matcher_ros.measure.parity import decompress_checkpoint  # noqa: E402
from ros_helpers import load_frames, run_cli, running_node  # noqa: E402

FRAME_ID = "camera_rgb_optical_frame"


@pytest.fixture(scope="module")
def manifest(shared):
    return json.loads((shared / "fixtures" / "eloftr" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def checkpoint(shared, manifest, repo):
    info = manifest["checkpoint"]
    return decompress_checkpoint(shared / "fixtures" / "eloftr" / info["file"], repo / ".cache" / "eloftr",
                                 info["sha256_of_decompressed"])


@pytest.fixture(scope="module")
def node(shared, checkpoint, manifest, tmp_path_factory):
    frames, camera, _ = load_frames(shared, count=6)
    log = tmp_path_factory.mktemp("node") / "matcher_node_eloftr.log"
    thr = manifest["thr"]["full"]
    with running_node(log, "backend:=eloftr", f"weights:={checkpoint}", "device:=cpu", "input_qos:=reliable",
                      "resize_long_edge:=320", "eloftr.mode:=full", f"eloftr.threshold:={thr}",
                      "diagnostics_period_s:=0.2") as (process, client):
        state = {"next": 0, "sent": []}
        client.prime_camera_info(camera)

        def send_next():
            """Send the next frame; its decoded matches (a structured array)."""
            stamp, rgb = frames[state["next"]]
            state["next"] += 1
            client.send(rgb, "rgb8", stamp, camera, FRAME_ID)
            cloud = client.wait_result(stamp, timeout=90.0)
            assert cloud is not None, f"no matches for frame {stamp}; log:\n{log.read_text(errors='replace')}"
            state["sent"].append(stamp)
            return messages.cloud_to_array(cloud)

        def matched():
            """Send the next frame, after a first one to become the keyframe when none was sent yet."""
            if not state["sent"]:
                send_next()
            return send_next()

        yield {"client": client, "process": process, "send_next": send_next, "matched": matched, "state": state,
               "size": frames[0][1].shape[:2], "thr": manifest["thr"]}


def use(client, mode, threshold):
    """Set both eloftr parameters in one batch (each test starts from the state it needs)."""
    result = client.set_parameters_atomically({"eloftr.mode": mode, "eloftr.threshold": threshold})
    assert result.successful, result.reason


def test_missing_weights_say_where_to_get_them():
    done = run_cli("backend:=eloftr", "device:=cpu")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot start" in done.stderr
    assert "eloftr_outdoor.ckpt" in done.stderr and "weights:=" in done.stderr


def test_parameters_declared_from_the_backend(node):
    client = node["client"]
    d = client.describe_parameters(["eloftr.mode", "eloftr.threshold", "weights", "backend"])
    assert d["weights"].read_only and d["backend"].read_only
    assert not d["eloftr.mode"].read_only and not d["eloftr.threshold"].read_only
    assert "full" in d["eloftr.mode"].additional_constraints and "opt" in d["eloftr.mode"].additional_constraints
    assert client.get_parameters(["eloftr.mode", "eloftr.threshold"]) == {
        "eloftr.mode": "full", "eloftr.threshold": node["thr"]["full"]}


def test_matches_arrive_decode_and_carry_the_keyframe_stamp(node):
    client, send_next, state = node["client"], node["send_next"], node["state"]
    h, w = node["size"]
    use(client, "full", node["thr"]["full"])
    first_frame = state["next"] == 0
    first = send_next()
    if first_frame:
        assert len(first) == 0  # the first frame becomes the keyframe
    for _ in range(2):
        pts = send_next()
        stamp = state["sent"][-1]
        assert len(pts) > 20
        for x, y in (("x0", "y0"), ("x1", "y1")):  # in the full-size image's pixels, not the 320 px ones
            assert (pts[x] >= -0.5).all() and (pts[x] <= w - 0.5).all()
            assert (pts[y] >= -0.5).all() and (pts[y] <= h - 0.5).all()
        assert pts["x1"].max() > 320 or pts["y1"].max() > 240
        # full mode: a probability above the threshold
        assert (pts["score"] >= node["thr"]["full"]).all() and (pts["score"] <= 1.0 + 1e-6).all()
        assert set(np.unique(pts["inlier"]).tolist()) <= {0.0, 1.0}
        announced = [messages.stamp_to_ns(k.header.stamp) for k in client.keyframes]
        kf = pts["kf_sec"].astype(np.int64) * 1_000_000_000 + pts["kf_nanosec"]
        assert set(kf.tolist()) == {max(a for a in announced if a < stamp)}
        assert messages.stamp_to_ns(client.matches[stamp].header.stamp) == stamp
        assert client.matches[stamp].header.frame_id == FRAME_ID
    if first_frame:
        assert announced[0] == state["sent"][0]
    diag = client.latest_diagnostics(timeout=5.0)
    assert (diag["backend"], diag["device"], diag["precision"]) == ("eloftr", "cpu", "fp32")
    assert diag["weights"].endswith(".ckpt")
    # memory held between frames is reported: the keyframe's cached features and the matcher's scratch
    assert int(diag["keyframe_cache_entries"]) >= 1 and float(diag["keyframe_cache_mb"]) > 0.1
    assert float(diag["scratch_mb"]) > 0.1
    # the static path: the last frame's matches before truncation / K (320x256: 40 x 32 coarse cells / 2), none cut
    count, k = (int(v) for v in diag["eloftr.candidates"].split("/"))
    assert k == 640 and count == len(pts) and diag["eloftr.truncated_frames"] == "0"
    assert diag["runtime"] == "torch"


def test_threshold_outside_the_modes_range_is_rejected(node):
    client = node["client"]
    names = ["eloftr.mode", "eloftr.threshold"]
    use(client, "full", node["thr"]["full"])
    before = client.get_parameters(names)
    (result,) = client.set_parameters({"eloftr.threshold": 5.0})  # a probability threshold in mode full
    assert not result.successful and "eloftr.threshold" in result.reason and "full" in result.reason
    result = client.set_parameters_atomically({"eloftr.mode": "opt", "eloftr.threshold": 0.0})  # opt needs > 0
    assert not result.successful and "eloftr.threshold" in result.reason and "opt" in result.reason
    (result,) = client.set_parameters({"eloftr.mode": "fast"})
    assert not result.successful and "fast" in result.reason
    assert client.get_parameters(names) == before


def test_mode_opt_with_its_threshold_takes_effect_on_the_next_frame(node):
    client, matched = node["client"], node["matched"]
    thr = node["thr"]["opt"]
    result = client.set_parameters_atomically({"eloftr.mode": "opt", "eloftr.threshold": thr})
    assert result.successful, result.reason
    assert client.get_parameters(["eloftr.mode", "eloftr.threshold"]) == {"eloftr.mode": "opt", "eloftr.threshold": thr}
    pts = matched()
    assert len(pts) > 0
    assert (pts["score"] >= thr).all()  # raw scores now, far above any probability


def test_mode_change_alone_moves_the_threshold_to_the_modes_default(node):
    """The backend resets the threshold when only the mode changes; the ROS parameter follows in the same
    batch (the node's pre-set parameters callback adds it), so it reads back right after the call."""
    client, matched = node["client"], node["matched"]
    use(client, "opt", node["thr"]["opt"])
    (result,) = client.set_parameters({"eloftr.mode": "full"})
    assert result.successful, result.reason
    full = DEFAULT_THRESHOLDS["full"]
    assert client.get_parameters(["eloftr.mode", "eloftr.threshold"]) == {"eloftr.mode": "full",
                                                                         "eloftr.threshold": full}
    pts = matched()
    assert len(pts) > 0
    assert ((pts["score"] >= full) & (pts["score"] <= 1.0 + 1e-6)).all()


def test_precision_bf16_shows_in_diagnostics(node):
    client, matched, process = node["client"], node["matched"], node["process"]
    (result,) = client.set_parameters({"precision": "bf16"})
    assert result.successful, result.reason
    pts = matched()
    assert len(pts) > 0 and np.isfinite(pts["score"]).all()
    diag = client.latest_diagnostics(timeout=5.0)
    assert diag["precision"] == "bf16" and diag["backend"] == "eloftr"
    assert int(diag["frames_processed"]) == len(node["state"]["sent"])
    assert diag["rejected_total"] == "0" and process.poll() is None


def test_start_up_threshold_follows_the_mode(checkpoint, tmp_path):
    """``eloftr.mode: opt`` without a threshold runs with opt's default, and the parameter says so."""
    with running_node(tmp_path / "opt.log", "backend:=eloftr", f"weights:={checkpoint}", "device:=cpu",
                      "eloftr.mode:=opt", namespace="/opt_start") as (process, client):
        assert client.get_parameters(["eloftr.mode", "eloftr.threshold"]) == {
            "eloftr.mode": "opt", "eloftr.threshold": DEFAULT_THRESHOLDS["opt"]}
        assert process.poll() is None


def test_runtime_onnxruntime_runs_an_export(checkpoint, shared, manifest, tmp_path, repo):
    """fm-export at the node's network size (frames resized to 320x240, network 320x256), then the node on it."""
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    folder = tmp_path / "export"
    run = subprocess.run([sys.executable, "-m", "feature_matcher_ros.tools.export", "--backend", "eloftr",
                          "--weights", str(checkpoint), "--size", "320x256", "--modes", "full", "--out", str(folder)],
                         capture_output=True, text=True, cwd=repo, timeout=600)
    assert run.returncode == 0, run.stderr
    frames, camera, _ = load_frames(shared, count=3)
    thr = manifest["thr"]["full"]
    with running_node(tmp_path / "onnx.log", "backend:=eloftr", "runtime:=onnxruntime", f"weights:={folder}",
                      "device:=cpu", "input_qos:=reliable", "resize_long_edge:=320", f"eloftr.threshold:={thr}",
                      "diagnostics_period_s:=0.2", namespace="/onnx") as (process, client):
        client.prime_camera_info(camera)
        counts = []
        for stamp, rgb in frames:
            client.send(rgb, "rgb8", stamp, camera, FRAME_ID)
            cloud = client.wait_result(stamp, timeout=90.0)
            assert cloud is not None, (tmp_path / "onnx.log").read_text(errors="replace")
            counts.append(len(messages.cloud_to_array(cloud)))
        assert counts[0] == 0 and min(counts[1:]) > 20
        diag = client.latest_diagnostics(timeout=5.0)
        assert diag["runtime"] == "onnxruntime" and diag["weights"] == str(folder)
        assert diag["eloftr.candidates"].endswith("/640")
        (refused,) = client.set_parameters({"precision": "fp16"})
        assert not refused.successful and "fm-export" in refused.reason
        (refused,) = client.set_parameters({"eloftr.mode": "opt"})
        assert not refused.successful and "modes ['full']" in refused.reason
        assert process.poll() is None
