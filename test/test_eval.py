"""fm-eval: a bag through the offline frontend (SIFT) -> metrics.json, report.md, plots; parameter files,
comparisons, ground truth from a TUM file or TF; bad bags end with a clear message and exit code 2."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from feature_matcher_ros.evaluation import bagio, bagwrite
from feature_matcher_ros.evaluation.scoring import REQUIRED_KEYS
from feature_matcher_ros.tools import make_bag

EVAL = [sys.executable, "-m", "feature_matcher_ros.tools.eval"]


def run_eval(*args: str, timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*EVAL, *args, "--quiet"], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "MPLBACKEND": "Agg"}, cwd=cwd)


def test_eval_demo_bag_sift(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = run_eval(str(repo / "data/demo/tum_fr2_desk"), "--out", "eval", "--backend", "sift", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    missing = [k for k in REQUIRED_KEYS if k not in m]
    assert not missing, missing
    assert m["backend"] == "sift" and m["frames"] == 20 and m["pairs"] == 19
    assert m["rotation_error_deg_median"] < 1.0
    assert m["translation_error_deg_median"] < 10.0
    assert 0.6 < m["auc@20"] <= 1.0 and m["auc@5"] <= m["auc@10"] <= m["auc@20"]
    assert m["epipolar_precision"] > 0.8
    assert m["matches_per_frame_median"] >= m["inliers_per_frame_median"] > 50
    assert 1 <= m["keyframes"] <= 20
    assert m["fps"] > 0 and 0 < m["latency_ms_p50"] <= m["latency_ms_p99"]
    # chained trajectory with the ground-truth scale, scored by evo: millimetres to centimetres on this snippet
    assert m["ate_rmse_m"] is not None and 0 < m["ate_rmse_m"] < 0.05
    assert m["rpe_rmse_m"] is not None and 0 < m["rpe_rmse_m"] < 0.05
    for name in ("report.md", "pose_error.png", "matches.png", "latency.png", "match_0.png",
                 "trajectory_est.tum", "trajectory_gt.tum"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "pose_error.png").read_bytes()[:4] == b"\x89PNG"
    assert "| sift |" in (out / "report.md").read_text()
    assert "AUC@5" in proc.stdout  # the summary table
    est = np.loadtxt(out / "trajectory_est.tum")
    assert est.shape == (20, 8)


def test_params_files_and_comparison(small_bag: Path, tmp_path: Path) -> None:
    a = tmp_path / "few.yaml"
    a.write_text("/**:\n  ros__parameters:\n    backend: sift\n    max_matches: 60\n    input_qos: reliable\n")
    b = tmp_path / "fewer.yaml"
    b.write_text("matcher_node:\n  ros__parameters:\n    max_matches: 30\n    keyframe:\n      min_matches: 10\n")
    out = tmp_path / "cmp"
    proc = run_eval(str(small_bag), "--out", str(out), "--params", str(a), "--params", str(b))
    assert proc.returncode == 0, proc.stderr
    table = (out / "report.md").read_text()
    assert "sift_few" in table and "sift_fewer" in table
    runs = {r["name"]: r for r in json.loads((out / "metrics.json").read_text())["runs"]}
    few = json.loads((out / "sift_few" / "metrics.json").read_text())
    fewer = json.loads((out / "sift_fewer" / "metrics.json").read_text())
    assert runs["sift_few"]["matches_per_frame_median"] == few["matches_per_frame_median"] == 60
    assert fewer["matches_per_frame_median"] == 30
    assert fewer["settings"]["frontend_settings"] == {"max_matches": 30, "keyframe.min_matches": 10}
    assert "input_qos" in few["settings"]["ignored_parameters"]
    assert (out / "sift_fewer" / "pose_error.png").is_file()


def test_ground_truth_from_tum_file_and_tf(shared: Path, small_bag: Path, tmp_path: Path) -> None:
    tum = shared / "data/tum_fr2_desk"
    no_gt = tmp_path / "no_gt"
    assert make_bag.main([str(tum), str(no_gt), "--frames", "0:18:3", "--encoding", "mono8", "--gt-topic", "",
                          "--quiet"]) == 0
    from feature_matcher_ros.tools import eval as fm_eval

    assert fm_eval.main([str(no_gt), "--out", str(tmp_path / "e0"), "--quiet"]) == 2  # no ground truth anywhere
    proc = run_eval(str(no_gt), "--out", str(tmp_path / "e1"), "--gt", str(tum / "groundtruth.txt"), "--pictures", "0")
    assert proc.returncode == 0, proc.stderr
    with_file = json.loads((tmp_path / "e1" / "metrics.json").read_text())

    tf_bag = tmp_path / "tf"
    assert make_bag.main([str(tum), str(tf_bag), "--frames", "0:18:3", "--encoding", "mono8", "--gt-topic", "",
                          "--tf-topic", "/tf", "--quiet"]) == 0
    proc = run_eval(str(tf_bag), "--out", str(tmp_path / "e2"), "--pictures", "0")
    assert proc.returncode == 0, proc.stderr
    with_tf = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert "TF" in with_tf["ground_truth"] and with_file["ground_truth"].endswith("groundtruth.txt")
    for key in ("pairs", "rotation_error_deg_median", "translation_error_deg_median", "epipolar_precision"):
        assert math.isclose(with_file[key], with_tf[key], rel_tol=1e-6), key
    assert with_file["pairs"] == 5 and with_file["rotation_error_deg_median"] < 1.0


def _write_bag(path: Path, image_encoding: str = "mono8", camera_info: bool = True) -> None:
    """A 2-frame bag written by hand: optional camera info, an image encoding of our choice."""
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import StoragePlugin

    from feature_matcher_ros.camera import CameraModel

    store = bagio.typestore()
    cam = CameraModel.from_matrix(64, 48, np.array([[50.0, 0, 32], [0, 50, 24], [0, 0, 1]]))
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as w:
        c_img = w.add_connection("/cam/image_raw", bagio.IMAGE, typestore=store)
        c_info = w.add_connection("/cam/camera_info", bagio.CAMERA_INFO, typestore=store) if camera_info else None
        c_gt = w.add_connection("/gt", bagio.POSE_STAMPED, typestore=store)
        for i in range(2):
            stamp = (i + 1) * 100_000_000
            msg = bagwrite.image_message(store, np.full((48, 64), 100 + i, np.uint8), stamp, "cam", "mono8")
            msg.encoding = image_encoding
            w.write(c_img, stamp, store.serialize_cdr(msg, bagio.IMAGE))
            if c_info is not None:
                w.write(c_info, stamp, store.serialize_cdr(bagwrite.camera_info_message(store, cam, stamp, "cam"),
                                                           bagio.CAMERA_INFO))
            w.write(c_gt, stamp, store.serialize_cdr(bagwrite.pose_stamped_message(store, np.eye(4), stamp, "world"),
                                                     bagio.POSE_STAMPED))


def test_bad_bags_clean_errors(small_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from feature_matcher_ros.tools import eval as fm_eval

    _write_bag(tmp_path / "no_info", camera_info=False)
    _write_bag(tmp_path / "yuv", image_encoding="yuv422")
    truncated = tmp_path / "truncated"
    shutil.copytree(small_bag, truncated)
    mcap = next(truncated.glob("*.mcap"))
    with open(mcap, "r+b") as f:
        f.truncate(mcap.stat().st_size // 2)
    # one through a real process: exit code 2, one line, no traceback
    proc = run_eval(str(truncated), "--out", str(tmp_path / "out_truncated"))
    assert proc.returncode == 2 and "truncated or corrupt" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("fm-eval: error:")
    cases = [
        ([str(tmp_path / "no_info")], "no camera info topic"),
        ([str(tmp_path / "yuv")], "unsupported image encoding 'yuv422'"),
        ([str(tmp_path / "nothing_here")], "does not exist"),
        ([str(small_bag), "--image-topic", "/nope"], "/nope is not in the bag"),
        ([str(small_bag), "--backend", "nonsense"], "nonsense"),
        ([str(small_bag), "--gt", str(tmp_path / "missing.txt")], "missing.txt does not exist"),
    ]
    for args, message in cases:
        code = fm_eval.main([*args, "--out", str(tmp_path / "o"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert message in err and err.startswith("fm-eval: error:"), (args, err)


def test_scale_injection_and_metric_definitions(shared: Path) -> None:
    """Perfect unit-length estimates chain back to the ground truth exactly; a failed estimate counts as
    infinitely wrong in the AUC; epipolar precision uses the ground-truth essential matrix."""
    from feature_matcher_ros.camera import CameraModel
    from feature_matcher_ros.datasets import read_tum
    from feature_matcher_ros.evaluation.metrics import evaluate
    from feature_matcher_ros.evaluation.records import FrameRecord
    from feature_matcher_ros.evaluation.trajectory import chain_with_gt_scale

    tum = shared / "data/tum_fr2_desk"
    gt = read_tum(tum / "groundtruth.txt")
    cam = CameraModel.from_yaml(tum / "intrinsics.yaml")
    stamps = [int(s) for s in gt.stamps_ns[:9]]
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.uniform(-1, 1, (50, 2)), rng.uniform(2, 4, 50)])  # points in the keyframe camera
    records, kf = [], stamps[0]
    for i, s in enumerate(stamps):
        if i == 0:
            records.append(FrameRecord(s, s, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, bool), None, None,
                                       "first frame", True, camera=cam))
            continue
        T = gt.relative(kf, s)
        t_unit = T[:3, 3] / np.linalg.norm(T[:3, 3])
        X1 = X @ T[:3, :3].T + T[:3, 3]
        k0 = cam.project(X[:, :2] / X[:, 2:])
        k1 = cam.project(X1[:, :2] / X1[:, 2:])
        records.append(FrameRecord(s, kf, k0, k1, np.ones(50, bool), T[:3, :3], t_unit, "", i % 3 == 0, camera=cam))
        if i % 3 == 0:
            kf = s
    est = chain_with_gt_scale(records, gt)
    assert list(est.stamps_ns) == stamps
    np.testing.assert_allclose(est.poses, gt.poses[:9], atol=1e-6)

    summary, per_frame = evaluate(records, gt)
    assert summary["pairs"] == 8 and summary["auc@5"] > 0.99 and summary["epipolar_precision"] == 1.0
    assert summary["rotation_error_deg_median"] < 1e-4 and summary["keyframes"] == 3
    failed = records[4]
    records[4] = FrameRecord(failed.stamp_ns, failed.keyframe_stamp_ns, failed.kpts0, failed.kpts1,
                             np.zeros(50, bool), None, None, "too few inliers", False, camera=cam)
    summary, _ = evaluate(records, gt)
    assert summary["pose_failures"] == 1 and abs(summary["auc@20"] - 7 / 8) < 0.01
    assert summary["failure_reasons"] == {"too few inliers": 1}


# -- metric input (rgbd / stereo) ------------------------------------------------------------------------

TEST_DATA = Path(__file__).resolve().parent / "data"


def _metric_eval(bag: Path, out: Path, params: Path, *extra: str) -> dict:
    from feature_matcher_ros.tools import eval as fm_eval

    assert fm_eval.main([str(bag), "--out", str(out), "--params", str(params), "--pictures", "1", *extra,
                         "--quiet"]) == 0
    return json.loads((out / "metrics.json").read_text())


def _check_metric_run(m: dict, out: Path, mode: str) -> None:
    from feature_matcher_ros.evaluation.scoring import METRIC_KEYS

    assert not [k for k in (*REQUIRED_KEYS, *METRIC_KEYS) if k not in m]
    assert m["input_mode"] == mode and m["pairing"]["paired"] == m["frames"]
    assert m["trajectory_alignment"] == "SE(3) Umeyama" and m["trajectory_scale"].startswith("metric")
    assert m["ate_rmse_m"] is not None and m["rpe_rmse_m"] is not None
    for name in ("translation_error.png", "pose_error.png", "trajectory.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    assert "not Sim(3)" in (out / "report.md").read_text()


def test_eval_rgbd_metric_poses(shared: Path, tmp_path: Path) -> None:
    """RGB-D bag (16UC1 depth): metric translation errors in metres and %, the chained metric trajectory
    scored without the ground-truth scale; the same bag in mono mode is scored as before."""
    bag = tmp_path / "cabinet"
    assert make_bag.main([str(shared / "data/tum_fr3_cabinet_rgbd"), str(bag), "--frames", "0:6", "--quiet"]) == 0
    m = _metric_eval(bag, tmp_path / "rgbd", TEST_DATA / "eval_rgbd_sift.yaml")
    _check_metric_run(m, tmp_path / "rgbd", "rgbd")
    assert m["frames"] == 6 and m["metric_pose_frames"] >= 3
    assert m["translation_error_m_median"] < 0.05 and m["translation_error_pct_median"] < 30
    assert m["depth_topic"] == "/camera/depth/image_raw"
    per_frame = json.loads((tmp_path / "rgbd" / "per_frame.json").read_text())
    assert sum(f["metric"] for f in per_frame) == m["metric_pose_frames"]
    mono = tmp_path / "mono.yaml"
    mono.write_text((TEST_DATA / "eval_rgbd_sift.yaml").read_text().replace("input_mode: rgbd", "input_mode: mono"))
    m = _metric_eval(bag, tmp_path / "mono", mono)
    assert m["input_mode"] == "mono" and "translation_error_m_median" not in m and "pairing" not in m
    assert m["trajectory_scale"].startswith("ground truth")


def test_eval_stereo_metric_poses(shared: Path, tmp_path: Path) -> None:
    """Stereo bag (KITTI, stamps offset by 1 s): the right images paired by stamp, metric poses per frame."""
    bag = tmp_path / "kitti"
    assert make_bag.main([str(shared / "data/kitti06_stereo_f000_050"), str(bag), "--frames", "0:4", "--quiet"]) == 0
    m = _metric_eval(bag, tmp_path / "stereo", TEST_DATA / "eval_stereo_sift.yaml")
    _check_metric_run(m, tmp_path / "stereo", "stereo")
    assert m["frames"] == 4 and m["metric_pose_frames"] == 3
    assert m["translation_error_pct_median"] < 3.0 and m["rotation_error_deg_median"] < 0.5
    assert m["right_image_topic"] == "/camera/right/image_raw"
    # drift over a quarter and a half of the 3.6 m path (shorter than 10 m), each frame a segment start
    drift = m["drift"]
    assert drift["lengths_from"] == "fractions of the path" and 3.0 < drift["path_m"] < 4.5
    assert [d["segments"] for d in drift["lengths"]] == [3, 2] and "drift_pct@10m" not in m
    assert 0.0 < m["drift_pct"] < 5.0 and m["drift_deg_per_m"] < 0.5  # 2.6 % and 0.14 °/m here


def _write_ros1_rgbd_bag(data: Path, path: Path, frames: int, depth_delay_ns: int) -> None:
    """A ROS 1 bag laid out like the TUM RGB-D benchmark's: rgb8 colour and its camera info, 32FC1 depth in
    metres stamped a few milliseconds after the colour image (captured separately), no ground truth (a TUM file)."""
    import cv2
    from rosbags.convert.converter import migrate_message
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    from feature_matcher_ros.datasets import read_sequence

    ros2, ros1 = bagio.typestore(), get_typestore(Stores.ROS1_NOETIC)
    seq = read_sequence(data)
    connections: dict = {}
    with Writer(path) as writer:
        def write(topic: str, msg, stamp: int) -> None:
            kind = msg.__msgtype__
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, kind, typestore=ros1)
            ros1_msg = migrate_message(ros2, ros1, kind, kind, {}, msg)  # adds the header's seq, K -> K ...
            writer.write(connections[topic], stamp, ros1.serialize_ros1(ros1_msg, kind))

        for (stamp, image), (_, depth) in zip(seq.frames[:frames], seq.depth.frames[:frames]):
            rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
            write("/camera/rgb/camera_info", bagwrite.camera_info_message(ros2, seq.camera, stamp, "rgb"), stamp)
            write("/camera/rgb/image_color", bagwrite.image_message(ros2, rgb, stamp, "rgb", "rgb8"), stamp)
            png = cv2.imread(str(depth), cv2.IMREAD_UNCHANGED)
            later = stamp + depth_delay_ns
            write("/camera/depth/image", bagwrite.depth_message(ros2, png, seq.depth.scale, later, "rgb", "32FC1"),
                  later)


def test_ros1_bag_rgbd(shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A ROS 1 bag is read through rosbags' AnyReader, its messages migrated to their ROS 2 form; depth 5 ms
    after the colour image pairs within sync.slop_s (0.02 s by default) and never with slop 0 (exact stamps)."""
    from rosbags.highlevel import AnyReader

    from feature_matcher_ros.tools import eval as fm_eval

    data = shared / "data/tum_fr3_cabinet_rgbd"
    bag = tmp_path / "cabinet.bag"
    _write_ros1_rgbd_bag(data, bag, 4, 5_000_000)
    with AnyReader([bag]) as raw:  # really ROS 1: upper-case CameraInfo fields, a header sequence number
        conn = next(c for c in raw.connections if c.topic == "/camera/rgb/camera_info")
        info = raw.deserialize(next(raw.messages([conn]))[2], conn.msgtype)
        assert hasattr(info, "K") and hasattr(info.header, "seq")
    with bagio.open_bag(bag) as reader:
        topics = bagio.discover_topics(reader, need_ground_truth=False)
        assert (topics.image, topics.camera_info) == ("/camera/rgb/image_color", "/camera/rgb/camera_info")
        frames = list(bagio.iter_frames(reader, topics))
    assert len(frames) == 4 and frames[0].image.shape == (480, 640, 3)
    np.testing.assert_allclose(frames[0].camera.K, [[535.4, 0, 320.1], [0, 539.2, 247.6], [0, 0, 1]])
    gt = str(data / "groundtruth.txt")
    params = tmp_path / "rgbd.yaml"
    params.write_text((TEST_DATA / "eval_rgbd_sift.yaml").read_text())
    m = _metric_eval(bag, tmp_path / "ros1", params, "--gt", gt)
    assert m["input_mode"] == "rgbd" and m["depth_topic"] == "/camera/depth/image"
    assert m["pairing"] == {"paired": 4, "unpaired": {}, "rejected": {}} and m["metric_pose_frames"] >= 2
    exact = tmp_path / "exact.yaml"
    exact.write_text(params.read_text() + "    sync:\n      slop_s: 0.0\n")
    code = fm_eval.main([str(bag), "--out", str(tmp_path / "exact"), "--params", str(exact), "--gt", gt, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "0 paired" in err and "'image': 4" in err and "'depth': 4" in err, err


def test_bags_are_read_by_what_they_are_not_by_their_name(shared: Path, small_bag: Path, tmp_path: Path) -> None:
    """fm-make-bag writes a rosbag2 folder wherever it is told, ``x.bag`` included, and fm-eval reads it; a lone
    mcap file and a ROS 1 bag under each other's suffixes open as what they are; anything else is refused
    with a reason."""
    from feature_matcher_ros.tools import eval as fm_eval
    from feature_matcher_ros.tools import make_bag

    folder = tmp_path / "x.bag"
    assert make_bag.main([str(shared / "data/tum_fr2_desk"), str(folder), "--frames", "0:6:3", "--quiet"]) == 0
    assert bagio.bag_kind(folder) == "rosbag2"
    assert fm_eval.main([str(folder), "--out", str(tmp_path / "eval"), "--backend", "sift", "--quiet",
                         "--pictures", "0"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["frames"] == 2

    mcap_as_bag = tmp_path / "single.bag"
    shutil.copy(next(small_bag.glob("*.mcap")), mcap_as_bag)
    ros1_as_mcap = tmp_path / "cabinet.mcap"
    _write_ros1_rgbd_bag(shared / "data/tum_fr3_cabinet_rgbd", tmp_path / "cabinet.bag", 2, 0)
    shutil.copy(tmp_path / "cabinet.bag", ros1_as_mcap)
    cases = [(mcap_as_bag, "mcap", "/camera/image_raw"), (ros1_as_mcap, "ros1", "/camera/rgb/image_color")]
    for path, kind, image in cases:
        assert bagio.bag_kind(path) == kind
        with bagio.open_bag(path) as reader:
            assert reader.path == path
            topics = bagio.discover_topics(reader, need_ground_truth=False)
            assert topics.image == image and len(list(bagio.iter_frames(reader, topics))) >= 2

    (tmp_path / "notes.bag").write_text("not a bag")
    (tmp_path / "empty_folder").mkdir()
    refused = [(tmp_path / "notes.bag", "is not a bag"), (tmp_path / "empty_folder", "without metadata.yaml")]
    for path, reason in refused:
        with pytest.raises(bagio.BagError, match=reason):
            bagio.bag_kind(path)


@pytest.mark.parametrize("mode", ["rgbd", "stereo"])
def test_eval_metric_eloftr_plumbing(shared: Path, checkpoint: Path, tmp_path: Path, mode: str) -> None:
    """Efficient LoFTR's streaming path with metric input (random fixture weights: it runs, nothing more)."""
    data = {"rgbd": "tum_fr3_cabinet_rgbd", "stereo": "kitti06_stereo_f000_050"}[mode]
    bag = tmp_path / mode
    assert make_bag.main([str(shared / "data" / data), str(bag), "--frames", "0:3", "--quiet"]) == 0
    params = tmp_path / "eloftr.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    input_mode: {mode}\n    backend: eloftr\n"
                      f"    weights: {checkpoint}\n    resize_long_edge: 320\n")
    m = _metric_eval(bag, tmp_path / "out", params, "--device", "cpu")
    assert m["backend"] == "eloftr" and m["input_mode"] == mode and m["frames"] == 3
    assert m["pairing"]["paired"] == 3 and "translation_error_m_median" in m


def test_pairing_params_are_the_nodes() -> None:
    """fm-eval reads input_mode, sync.* and depth.scale with the node's names, defaults and ranges."""
    from feature_matcher_ros.evaluation.pairing import PAIRING_PARAMS
    from feature_matcher_ros.ros.node import NODE_PARAMS

    node = {s.name: s for s in NODE_PARAMS}
    for spec in PAIRING_PARAMS:
        theirs = node[spec.name]
        assert (spec.default, spec.choices, spec.min, spec.max) == (theirs.default, theirs.choices, theirs.min,
                                                                    theirs.max), spec.name


def test_base_frame_trajectory_from_the_bag_mounting(shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    """fm-make-bag --mount writes the camera's mounting as /tf_static; fm-eval --base-frame reads it and scores
    the base's trajectory (the per-frame relative poses stay the camera's); a bag without it needs --mount."""
    from feature_matcher_ros.base_odometry import camera_mount
    from feature_matcher_ros.tools import eval as fm_eval

    mount = ["0.1", "0", "0.2", "0.05", "0", "0"]
    bag = tmp_path / "robot"
    assert make_bag.main([str(shared / "data/tum_fr2_desk"), str(bag), "--frames", "0:12:2", "--mount", *mount,
                          "--quiet"]) == 0
    with bagio.open_bag(bag) as reader:
        T = bagio.read_mount(reader, "base_link", "camera_optical_frame")
    assert np.allclose(T, camera_mount(*map(float, mount)))
    common = ["--backend", "sift", "--quiet", "--pictures", "0"]
    assert fm_eval.main([str(bag), "--out", str(tmp_path / "cam"), *common]) == 0
    assert fm_eval.main([str(bag), "--out", str(tmp_path / "base"), "--base-frame", "base_link", *common]) == 0
    cam = json.loads((tmp_path / "cam" / "metrics.json").read_text())
    base = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert base["trajectory_frame"] == "base_link" and "trajectory_frame" not in cam
    assert base["auc@10"] == cam["auc@10"]  # relative poses: the camera's either way
    assert base["ate_rmse_m"] is not None and base["ate_rmse_m"] != cam["ate_rmse_m"]  # the lever arm shows
    # a bag without a mounting: --base-frame alone is a clear error, --mount supplies it
    plain = tmp_path / "plain"
    assert make_bag.main([str(shared / "data/tum_fr2_desk"), str(plain), "--frames", "0:12:2", "--quiet"]) == 0
    assert fm_eval.main([str(plain), "--out", str(tmp_path / "x"), "--base-frame", "base_link", *common]) == 2
    assert "--mount" in capsys.readouterr().err
    assert fm_eval.main([str(plain), "--out", str(tmp_path / "m"), "--base-frame", "base_link", "--mount", *mount,
                         *common]) == 0
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["ate_rmse_m"] == pytest.approx(
        base["ate_rmse_m"], rel=1e-6)
