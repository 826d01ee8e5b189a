"""fm-make-bag: dataset folder -> rosbag2 (mcap and sqlite3) -> read back exactly; the shipped demo bag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from feature_matcher_ros.evaluation import bagio
from feature_matcher_ros.datasets import parse_stamp, read_tum
from feature_matcher_ros.tools import make_bag


@pytest.fixture(scope="module")
def tum(shared: Path) -> Path:
    return shared / "data" / "tum_fr2_desk"


def _expected(tum: Path) -> tuple[list[int], list[Path]]:
    stamps, paths = [], []
    for line in (tum / "images.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            t, p = line.split()[:2]
            stamps.append(parse_stamp(t))
            paths.append(tum / p)
    return stamps, paths


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip(tum: Path, tmp_path: Path, storage: str) -> None:
    out = tmp_path / f"tum_{storage}"
    assert make_bag.main([str(tum), str(out), "--storage", storage, "--quiet"]) == 0
    stamps, paths = _expected(tum)
    gt_file = read_tum(tum / "groundtruth.txt")
    with bagio.open_bag(out) as reader:
        topics = bagio.discover_topics(reader)
        assert (topics.image, topics.camera_info, topics.ground_truth) == (
            "/camera/image_raw", "/camera/camera_info", "/ground_truth/pose")
        frames = list(bagio.iter_frames(reader, topics))
        gt = bagio.read_ground_truth(reader, topics.ground_truth)
        assert bagio.image_frame_id(reader, topics.image) == "camera_optical_frame"
    assert [f.stamp_ns for f in frames] == stamps  # exact nanoseconds, no float rounding
    for frame, path in zip(frames, paths):
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert frame.image.shape == (480, 640, 3) and np.array_equal(frame.image, rgb)
    cam = frames[0].camera
    assert (cam.width, cam.height) == (640, 480)
    np.testing.assert_allclose(cam.K, [[520.90862, 0, 325.141442], [0, 521.007327, 249.701764], [0, 0, 1]])
    np.testing.assert_allclose(cam.dist, [0.231222, -0.784899, -0.003257, -0.000105, 0.917205])
    assert list(gt.stamps_ns) == stamps
    np.testing.assert_allclose(gt.poses, gt_file.poses, atol=1e-9)


def test_mono8_tf_and_subset(tum: Path, tmp_path: Path) -> None:
    out = tmp_path / "mono"
    code = make_bag.main([str(tum), str(out), "--encoding", "mono8", "--gt-topic", "", "--tf-topic", "/tf",
                          "--frames", "2:12:4", "--quiet"])
    assert code == 0
    stamps, paths = _expected(tum)
    with bagio.open_bag(out) as reader:
        topics = bagio.discover_topics(reader)
        assert topics.ground_truth == "/tf" and topics.ground_truth_type == bagio.TF
        frames = list(bagio.iter_frames(reader, topics))
        gt = bagio.read_ground_truth(reader, "/tf", "camera_optical_frame")
        with pytest.raises(bagio.BagError, match="not a child frame"):
            bagio.read_ground_truth(reader, "/tf", "base_link")
    assert [f.stamp_ns for f in frames] == stamps[2:12:4]
    gray = cv2.imread(str(paths[2]), cv2.IMREAD_GRAYSCALE)
    assert frames[0].image.ndim == 2 and np.abs(frames[0].image.astype(int) - gray).max() <= 1
    np.testing.assert_allclose(gt.poses, read_tum(tum / "groundtruth.txt").poses[2:12:4], atol=1e-9)


@pytest.mark.slow  # subprocesses
def test_bad_inputs_exit_2(tum: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists"
    out.mkdir()
    cmd = [sys.executable, "-m", "feature_matcher_ros.tools.make_bag"]
    proc = subprocess.run([*cmd, str(tum), str(out), "--quiet"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "exists already" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*cmd, str(tmp_path), str(tmp_path / "x"), "--quiet"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "images.txt is missing" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_shipped_demo_bag(repo: Path) -> None:
    demo = repo / "data" / "demo" / "tum_fr2_desk"
    size = sum(f.stat().st_size for f in demo.rglob("*") if f.is_file())
    assert size <= 12e6, f"demo bag is {size / 1e6:.1f} MB"
    with bagio.open_bag(demo) as reader:
        topics = bagio.discover_topics(reader)
        frames = list(bagio.iter_frames(reader, topics))
        gt = bagio.read_ground_truth(reader, topics.ground_truth)
    assert len(frames) == 20 and len(gt) == 20
    assert frames[0].image.shape == (480, 640)
    assert (repo / "data" / "demo" / "README.md").read_text().count("CC BY 4.0") >= 1


def test_ground_truth_from_odometry(tmp_path: Path) -> None:
    """An Odometry ground-truth topic is read at its header stamps (pose = child frame in header frame)."""
    from rosbags.rosbag2 import Writer
    from scipy.spatial.transform import Rotation

    store = bagio.typestore()
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    T[:3, 3] = [1.0, 2.0, 3.0]
    with Writer(tmp_path / "odom", version=Writer.VERSION_LATEST) as w:
        conn = w.add_connection("/odom", bagio.ODOMETRY, typestore=store)
        ps = bagio.pose_stamped_message(store, T, 5_000_000_123, "map")
        Odometry = store.types[bagio.ODOMETRY]
        cov = store.types["geometry_msgs/msg/PoseWithCovariance"](pose=ps.pose, covariance=np.zeros(36))
        twist = store.types["geometry_msgs/msg/TwistWithCovariance"](
            twist=store.types["geometry_msgs/msg/Twist"](
                linear=store.types["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                angular=store.types["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)),
            covariance=np.zeros(36))
        msg = Odometry(header=ps.header, child_frame_id="camera", pose=cov, twist=twist)
        w.write(conn, 5_000_000_123, store.serialize_cdr(msg, bagio.ODOMETRY))
    with bagio.open_bag(tmp_path / "odom") as reader:
        gt = bagio.read_ground_truth(reader, "/odom")
    assert list(gt.stamps_ns) == [5_000_000_123]
    np.testing.assert_allclose(gt.poses[0], T, atol=1e-9)
