"""matcher_node in rgbd and stereo mode over real DDS, on real RGB-D (TUM fr3 cabinet) and stereo (KITTI 06)
frames: metric relative poses against ground truth, ``z0`` in ``matches``, latched ``landmarks``, and every kind
of bad metric input counted by reason while the node keeps serving."""

import cv2
import numpy as np
import pytest

from feature_matcher_ros import messages
from feature_matcher_ros.datasets import read_sequence
from feature_matcher_ros.geometry import rotation_error_deg
from feature_matcher_ros.ros import conversions as cv
from ros_helpers import answered_with, running_node

NS = 1_000_000_000
# the pose values of config/matcher_rgbd.yaml (tuned on the cabinet: docs/evaluation.md); raw TUM depth (1/5000 m)
RGBD = ("backend:=sift", "device:=cpu", "input_qos:=reliable", "sift.contrast_threshold:=0.015", "sift.ratio:=0.88",
        "depth.scale:=0.0002", "keyframe.min_inliers:=55", "tracking.min_inliers:=10", "keyframe.min_matches:=18",
        "ransac.threshold_px:=0.7", "pnp.threshold_px:=3.5", "pnp.min_points:=9", "pose.floor_m:=0.015",
        "diagnostics_period_s:=0.2", "sync.queue_size:=3")
STEREO = ("backend:=sift", "device:=cpu", "input_qos:=reliable", "depth.max_m:=80.0", "diagnostics_period_s:=0.2",
          "sync.queue_size:=3")


def _frames(seq, indices, stamp_offset_ns=0):
    out = []
    for k in indices:
        stamp, path = seq.frames[k]
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        out.append((stamp + stamp_offset_ns, rgb, k))
    return out


def _pose_error(client, seq, stamp, kf_stamp, offset=0):
    """Rotation error (deg), translation error (m) and ground-truth distance of the published relative pose."""
    T = messages.pose_to_matrix(client.poses[stamp].pose.pose)  # current camera in the keyframe camera frame
    gt = seq.ground_truth.by_stamp()
    T_gt = np.linalg.inv(gt[kf_stamp - offset]) @ gt[stamp - offset]
    return (rotation_error_deg(T[:3, :3], T_gt[:3, :3]), float(np.linalg.norm(T[:3, 3] - T_gt[:3, 3])),
            float(np.linalg.norm(T_gt[:3, 3])))


@pytest.fixture(scope="module")
def cabinet(shared):
    return read_sequence(shared / "data" / "tum_fr3_cabinet_rgbd")


@pytest.fixture(scope="module")
def rgbd_node(tmp_path_factory):
    log = tmp_path_factory.mktemp("rgbd") / "matcher_node.log"
    with running_node(log, *RGBD, name="fm_rgbd", namespace="/rgbd", input_mode="rgbd") as (process, client):
        yield client


def _send_rgbd(client, seq, stamp, rgb, k, depth=None, depth_stamp=None, encoding="16UC1"):
    raw = cv2.imread(str(seq.depth.frames[k][1]), cv2.IMREAD_UNCHANGED) if depth is None else depth
    client.send_depth(raw, encoding, stamp if depth_stamp is None else depth_stamp, "camera_rgb_optical_frame")
    client.send(rgb, "rgb8", stamp, seq.camera, "camera_rgb_optical_frame")


def test_rgbd_metric_poses_z0_and_landmarks(rgbd_node, cabinet):
    client = rgbd_node
    client.prime_camera_info(cabinet.camera)
    frames = _frames(cabinet, [1, 2, 3])
    for stamp, rgb, k in frames:  # each until answered (ros_helpers.answered_with says why)
        answer = answered_with(client, lambda s, rgb=rgb, k=k: _send_rgbd(client, cabinet, s, rgb, k), stamp,
                               timeout=15.0, step_ns=0)
        assert answer == stamp, f"no matches for frame {k}"
    kf = frames[0][0]
    pts = messages.cloud_to_array(client.matches[frames[1][0]])
    assert "z0" in pts.dtype.names and np.isfinite(pts["z0"]).sum() >= 8
    assert np.nanmin(pts["z0"]) > 0.1 and np.nanmax(pts["z0"]) < 10.0
    errors = [_pose_error(client, cabinet, s, kf) for s, _, _ in frames[1:] if s in client.poses]
    assert errors, "no relative pose published"
    r_err, t_err, dist = errors[0]
    assert r_err < 3.0 and t_err < 0.4 * dist, errors  # metric: the GT step is ~0.17 m, no unit-length vector
    cov = np.array(client.poses[frames[1][0]].pose.covariance).reshape(6, 6)
    assert 0 < cov[0, 0] < 0.05 and 0 < cov[2, 2] < 0.05  # metres^2, not the monocular 1e6
    client.wait_until(lambda: any(messages.stamp_to_ns(m.header.stamp) == kf for m in list(client.landmarks)), 10.0)
    land = next(m for m in client.landmarks if messages.stamp_to_ns(m.header.stamp) == kf)
    assert land.header.frame_id == f"camera_rgb_optical_frame@{kf}"
    xyz = messages.cloud_to_array(land)
    assert len(xyz) > 20 and np.all(xyz["z"] > 0.1) and {"u", "v"} <= set(xyz.dtype.names)
    diag = client.latest_diagnostics(timeout=5.0)
    assert diag["input_mode"] == "rgbd"


@pytest.mark.parametrize("case, reason", [
    ("size", "rejected.depth_size_mismatch"),
    ("encoding", "rejected.depth_encoding"),
    ("all_zero", "rejected.depth_invalid"),
    ("units", "warning.depth_units"),
    ("unpaired", "rejected.unpaired"),
    ("late", "unpaired.depth"),
])
def test_rgbd_bad_depth_is_counted_and_the_node_keeps_serving(rgbd_node, cabinet, case, reason):
    client = rgbd_node
    before = client.latest_diagnostics(timeout=5.0) or {}
    step = {"size": 1, "encoding": 2, "all_zero": 3, "units": 4, "unpaired": 5, "late": 6}[case]
    base = 1341842000 * NS + step * 10 * NS
    stamp, rgb, k = _frames(cabinet, [4], base - cabinet.frames[4][0])[0]
    raw = cv2.imread(str(cabinet.depth.frames[k][1]), cv2.IMREAD_UNCHANGED)
    if case == "size":
        _send_rgbd(client, cabinet, stamp, rgb, k, depth=raw[:240, :320])
    elif case == "encoding":
        client.partners["depth"].publish(messages_image(rgb, "rgb8", stamp))
        client.send(rgb, "rgb8", stamp, cabinet.camera, "camera_rgb_optical_frame")
    elif case == "all_zero":
        _send_rgbd(client, cabinet, stamp, rgb, k, depth=np.zeros_like(raw))
    elif case == "units":  # millimetre values sent as 32FC1 metres
        _send_rgbd(client, cabinet, stamp, rgb, k, depth=raw.astype(np.float32), encoding="32FC1")
    elif case == "late":  # three newer depth images fill the queue of 3, then the image's own depth arrives
        received = int(before.get("frames_received", 0))
        client.send(rgb, "rgb8", stamp, cabinet.camera, "camera_rgb_optical_frame")
        assert client.wait_until(  # the image waits in its queue before any depth arrives
            lambda: int((client.latest_diagnostics(timeout=2.0) or {}).get("frames_received", 0)) > received, 20.0)
        for j in (5, 6, 7):
            client.send_depth(raw, "16UC1", stamp + j * NS // 10, "camera_rgb_optical_frame")
        client.send_depth(raw, "16UC1", stamp, "camera_rgb_optical_frame")  # older than the queue: left at once
    else:  # the depth stamps are 1 s off: nothing pairs; 4 images overflow the queue of 3
        for j in range(4):
            _send_rgbd(client, cabinet, stamp + j * NS // 10, rgb, k, depth_stamp=stamp + NS + j * NS // 10)
    key = reason

    def grew():
        diag = client.latest_diagnostics(timeout=2.0) or {}
        return int(diag.get(key, 0)) > int(before.get(key, 0))

    assert client.wait_until(grew, 20.0), f"{key} did not grow"
    diag = client.latest_diagnostics(timeout=3.0) or {}
    assert not [k for k in diag if k.startswith("internal_error.")], diag  # handled, not caught by the guard
    if case == "unpaired":  # the depth images travel on their own topic: the fourth may come after the image
        assert client.wait_until(lambda: _counter(client, "unpaired.depth") > int(before.get("unpaired.depth", 0)),
                                 20.0)
    # still serving: a good frame right after is answered
    good, rgb2, k2 = _frames(cabinet, [5], base + 5 * NS - cabinet.frames[5][0])[0]
    _send_rgbd(client, cabinet, good, rgb2, k2)
    assert client.wait_result(good, timeout=60.0) is not None


def messages_image(pixels, encoding, stamp):
    return cv.numpy_to_image(pixels, encoding, stamp, "camera_rgb_optical_frame")


def test_rgbd_refuses_odometry_scale_and_bad_depth_scale(rgbd_node):
    client = rgbd_node
    result = client.set_parameters_atomically({"odometry.scale": 1.0})
    assert not result.successful and "mono only" in result.reason
    assert not client.set_parameters_atomically({"depth.scale": 0.0}).successful
    assert not client.set_parameters_atomically({"sync.slop_s": 0.5}).successful  # read-only
    assert client.set_parameters_atomically({"depth.scale": 0.0002, "depth.max_m": 8.0}).successful


@pytest.fixture(scope="module")
def kitti(shared):
    return read_sequence(shared / "data" / "kitti06_stereo_f000_050")


def test_stereo_metric_poses_and_bad_rigs(kitti, tmp_path_factory):
    log = tmp_path_factory.mktemp("stereo") / "matcher_node.log"
    offset = 1000 * NS  # KITTI stamps start at 0
    left_cam, right_cam, b = kitti.camera, kitti.stereo.camera, kitti.stereo.baseline_m
    with running_node(log, *STEREO, name="fm_stereo", namespace="/stereo", input_mode="stereo") as (process, client):
        client.prime_camera_info(left_cam)
        frames = _frames(kitti, [0, 1, 2], offset)
        for stamp, rgb, k in frames:  # each until answered (ros_helpers.answered_with says why)
            right = cv2.cvtColor(cv2.imread(str(kitti.stereo.frames[k][1]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

            def send(s, rgb=rgb, right=right):
                client.send_right(right, "rgb8", s, right_cam, b)
                client.send(rgb, "rgb8", s, left_cam, "camera")

            assert answered_with(client, send, stamp, timeout=15.0, step_ns=0) == stamp, f"no matches for frame {k}"
        r_err, t_err, dist = _pose_error(client, kitti, frames[1][0], frames[0][0], offset)
        assert r_err < 0.5 and t_err < 0.05 * dist  # ~1.2 m per frame; the baseline's SIFT+PnP: 1.2 %
        diag = client.latest_diagnostics(timeout=5.0) or {}  # the rig's self-calibration: too few pairs yet
        assert float(diag.get("stereo_disparity_offset_px", "nan")) == 0.0, diag
        assert 0 <= int(diag["stereo_offset_fits"]) < 5
        for j, (baseline, cam, reason) in enumerate([(0.0, right_cam, "rejected.stereo_baseline"),
                                                     (b, right_cam.scaled(1226, 370), None)]):
            if reason is None:  # mismatched rectified intrinsics: another fx on the right
                cam = type(right_cam).from_matrix(1226, 370, right_cam.K * np.array([[1.1], [1.1], [1.0]]))
                reason = "rejected.stereo_mismatch"
            tx = -cam.fx * baseline

            def bad_pair(stamp, cam=cam, tx=tx, baseline=baseline):
                # camera_info is taken as the latest one and travels on its own topic: it goes with every pair
                # (as a driver sends it), and pairs are sent until the node has met one with the bad rig
                client.partners["right_info"].publish(cv.model_to_camera_info(cam, stamp, "camera_right", tx=tx))
                client.send_right(frames[-1][1], "rgb8", stamp, None, baseline)
                client.send(frames[-1][1], "rgb8", stamp, left_cam, "camera")
            assert _send_until_counted(client, bad_pair, frames[-1][0] + (j + 1) * NS, reason), \
                (reason, client.latest_diagnostics(timeout=3.0))
        # right images stop arriving: left images are rejected as unpaired once they leave the queue (3 kept)
        def lone_left(stamp):
            client.send(frames[0][1], "rgb8", stamp, left_cam, "camera")
        assert _send_until_counted(client, lone_left, frames[-1][0] + 10 * NS, "rejected.unpaired", tries=12,
                                   timeout=2.0)
        assert process.poll() is None


def _counter(client, key):
    return int((client.latest_diagnostics(timeout=2.0) or {}).get(key, 0))


def _send_until_counted(client, send, first_stamp, key, tries=5, timeout=10.0):
    """``send(stamp)`` (stamps 0.1 s apart) until the diagnostics counter ``key`` grows; whether it did."""
    before = _counter(client, key)
    for i in range(tries):
        send(first_stamp + i * NS // 10)
        if client.wait_until(lambda: _counter(client, key) > before, timeout):
            return True
    return False
