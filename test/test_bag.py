"""fm-make-bag: dataset folder -> rosbag2 (mcap and sqlite3) -> read back exactly; the shipped demo bag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from feature_matcher_ros.datasets import parse_stamp, read_tum
from feature_matcher_ros.evaluation import bagio, bagwrite
from feature_matcher_ros.messages import stamp_to_ns
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
        ps = bagwrite.pose_stamped_message(store, T, 5_000_000_123, "map")
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


def _bag_messages(bag: Path, topic: str) -> list:
    with bagio.open_bag(bag) as reader:
        return [msg for _, _, msg in bagio.messages(reader, [topic])]


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_rgbd_bag_has_registered_depth(shared: Path, tmp_path: Path, encoding: str) -> None:
    """RGB-D folders get the depth topic (16UC1 millimetres like RGB-D drivers, or 32FC1 metres) and its
    camera_info, the colour camera's (registered depth); the node's decoder reads back the dataset's metres."""
    from feature_matcher_ros.datasets import read_sequence
    from feature_matcher_ros.messages import depth_to_metres

    data = shared / "data" / "tum_fr3_cabinet_rgbd"
    out = tmp_path / encoding
    assert make_bag.main([str(data), str(out), "--frames", "0:2", "--depth-encoding", encoding, "--quiet"]) == 0
    seq = read_sequence(data)
    with bagio.open_bag(out) as reader:
        topics = bagio.discover_topics(reader)  # two Image topics: the colour one is still found
        assert topics.image == "/camera/image_raw"
        assert bagio.discover_metric_topics(reader, topics, "rgbd").depth == "/camera/depth/image_raw"
    depth = _bag_messages(out, "/camera/depth/image_raw")
    infos = _bag_messages(out, "/camera/depth/camera_info")
    colour_infos = _bag_messages(out, "/camera/camera_info")
    assert [m.encoding for m in depth] == [encoding] * 2
    for msg, info, colour, (stamp, path) in zip(depth, infos, colour_infos, seq.depth.frames):
        assert stamp_to_ns(msg.header.stamp) == stamp and msg.header.frame_id == "camera_optical_frame"
        np.testing.assert_array_equal(info.k, colour.k)
        assert info.header.frame_id == colour.header.frame_id
        png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        metres = depth_to_metres(msg, 0.001)  # the node's default depth.scale (16UC1 in millimetres)
        assert np.array_equal(np.isnan(metres), png == 0)
        expected = png.astype(np.float64) / seq.depth.scale
        tolerance = 0.0005 if encoding == "16UC1" else 1e-6
        assert np.nanmax(np.abs(metres - expected)) <= tolerance


def test_stereo_bag_has_right_camera(shared: Path, tmp_path: Path) -> None:
    """Stereo folders get the right image and camera_info (P[3] = -fx * b, the left P[3] = 0); KITTI's stamps
    start at 0, so 1 s is added to every stamp (images, camera infos, ground truth) unless told otherwise."""
    from feature_matcher_ros.datasets import read_sequence
    from feature_matcher_ros.messages import stereo_rig_from_infos

    data = shared / "data" / "kitti06_stereo_f000_050"
    out = tmp_path / "kitti"
    assert make_bag.main([str(data), str(out), "--frames", "0:2", "--quiet"]) == 0
    seq = read_sequence(data)
    left, right = _bag_messages(out, "/camera/camera_info"), _bag_messages(out, "/camera/right/camera_info")
    images = _bag_messages(out, "/camera/right/image_raw")
    stamps = [stamp_to_ns(m.header.stamp) for m in images]
    assert stamps == [s + 1_000_000_000 for s, _ in seq.stereo.frames[:2]] and stamps[0] == 1_000_000_000
    gt = _bag_messages(out, "/ground_truth/pose")
    assert [stamp_to_ns(m.header.stamp) for m in gt] == stamps
    assert left[0].p[3] == 0.0 and right[0].p[3] == pytest.approx(-707.0912 * 0.537150653)
    assert images[0].header.frame_id == "camera_right_optical_frame" and images[0].encoding == "mono8"
    png = cv2.imread(str(seq.stereo.frames[0][1]), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(images[0].data.reshape(png.shape), png)
    rig = stereo_rig_from_infos(left[0], right[0])
    assert rig.baseline_m == pytest.approx(0.537150653) and rig.problem() is None
    with bagio.open_bag(out) as reader:
        found = bagio.discover_metric_topics(reader, bagio.discover_topics(reader), "stereo")
        with pytest.raises(bagio.BagError, match="no depth image topic"):
            bagio.discover_metric_topics(reader, found, "rgbd")
    assert (found.image, found.right_image, found.right_camera_info) == (
        "/camera/image_raw", "/camera/right/image_raw", "/camera/right/camera_info")
    same = tmp_path / "kitti_at_0"
    assert make_bag.main([str(data), str(same), "--frames", "0:1", "--stamp-offset", "0", "--quiet"]) == 0
    assert stamp_to_ns(_bag_messages(same, "/camera/image_raw")[0].header.stamp) == 0
