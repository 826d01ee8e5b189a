"""REP 105 odometry over DDS: matcher_node with ``base_frame: base_link`` on real TUM frames, the camera mounted
by ``fm-static-transform`` (forward-looking, 10 cm ahead of the base and 20 cm up, rolled 0.05 rad). The base's
rotation error against the ground truth moved into the base frame equals the camera's (a node without
base_frame on the same frames); ``/tf`` carries ``odom -> base_link`` only, from this node; a missing mounting is
``no_transform`` until it is published; ``~/set_pose`` moves the odometry; a lost frame publishes nothing, or the
last pose with variance 9999 when asked; the twist is known between frames of one keyframe; ``publish_tf: false``
and ``base_frame: ''`` broadcast nothing."""

import sys
import threading

import numpy as np
import pytest
from geometry_msgs.msg import PoseWithCovarianceStamped

from feature_matcher_ros import messages
from feature_matcher_ros.base_odometry import LOST_VARIANCE, camera_mount
from feature_matcher_ros.geometry import rotation_error_deg
from feature_matcher_ros.ros.conversions import matrix_to_pose, ns_to_stamp
from feature_matcher_ros.ros.process import NodeProcess
from feature_matcher_ros.ros.tf import TF_QOS, tf_message_type
from feature_matcher_ros.se3 import invert, rotation_from_rotvec, se3
from ros_helpers import answered_with, load_frames, running_node

NS = 1_000_000_000
CAMERA = "camera_rgb_optical_frame"
MOUNT_ARGS = {"x": 0.1, "y": 0.0, "z": 0.2, "roll": 0.05, "pitch": 0.0, "yaw": 0.0}
MOUNT = camera_mount(**MOUNT_ARGS)
SIFT = ("backend:=sift", "device:=cpu", "input_qos:=reliable", "diagnostics_period_s:=0.2")


def _mount_publisher():
    args = [arg for k, v in MOUNT_ARGS.items() for arg in (f"--{k}", str(v))]
    return NodeProcess(command=[sys.executable, "-m", "feature_matcher_ros.static_transform_node", *args,
                                "--frame-id", "base_link", "--child-frame-id", CAMERA, "--optical"])


class _TfRecorder:
    def __init__(self, client):
        self.transforms, self._lock = [], threading.Lock()
        client.node.create_subscription(tf_message_type(), "/tf", self._take, TF_QOS)

    def _take(self, msg):
        with self._lock:
            self.transforms.extend(msg.transforms)

    def parents_of(self, child):
        with self._lock:
            return {t.header.frame_id for t in self.transforms if t.child_frame_id == child}


def _stream(client, frames, camera, count):
    """Send ``count`` frames one at a time, each answered before the next; their stamps."""
    stamps = []
    for stamp, rgb in frames[:count]:
        client.send(rgb, "rgb8", stamp, camera, CAMERA)
        assert client.wait_result(stamp, timeout=60.0) is not None, f"frame {stamp} not answered"
        stamps.append(stamp)
    return stamps


def _rotation_errors(client, stamps, truth, mount):
    """Per frame: the rotation error (deg) of the published odometry against the ground truth of the child
    frame (the camera's, at the nearest ground-truth stamp, moved through ``mount``), relative to the first."""
    client.wait_until(lambda: all(s in client.odometry for s in stamps), 10.0)
    keys = np.array(sorted(truth))

    def gt(stamp):
        return truth[int(keys[np.argmin(np.abs(keys - stamp))])]
    errors = []
    for s in stamps[1:]:
        if s not in client.odometry:
            continue
        T = messages.pose_to_matrix(client.odometry[s].pose.pose)
        T_gt = mount @ invert(gt(stamps[0])) @ gt(s) @ invert(mount)
        errors.append(rotation_error_deg(T[:3, :3], T_gt[:3, :3]))
    return errors


@pytest.fixture(scope="module")
def tum(shared):
    return load_frames(shared, count=12)


def test_base_link_odometry_tf_and_no_transform(tum, tmp_path):
    frames, camera, truth = tum
    with running_node(tmp_path / "camera.log", *SIFT, name="fm_cam", namespace="/cam") as (_, cam_client), \
            running_node(tmp_path / "base.log", *SIFT, "base_frame:=base_link", "tf.timeout_s:=0.05", name="fm_base",
                         namespace="/base") as (process, client):
        tf = _TfRecorder(client)
        client.prime_camera_info(camera)
        # no mounting published yet: frames are rejected as no_transform, none is answered
        stamp0, rgb0 = frames[0]
        client.send(rgb0, "rgb8", stamp0, camera, CAMERA)
        assert client.wait_until(
            lambda: int((client.latest_diagnostics(timeout=2.0) or {}).get("rejected.no_transform", 0)) >= 1, 20.0)
        assert stamp0 not in client.matches
        with _mount_publisher() as mount_node:
            later = [(s + NS // 100, rgb) for s, rgb in frames]  # after the rejected stamp
            first = answered_with(client, lambda s: client.send(later[0][1], "rgb8", s, camera, CAMERA), later[0][0],
                                  tries=10, timeout=5.0, step_ns=1_000)
            assert first is not None, mount_node.stderr
            stamps = [first] + _stream(client, later[1:], camera, 9)
            cam_client.prime_camera_info(camera)
            cam_stamps = _stream(cam_client, frames, camera, 10)

            # odometry of base_link in odom, REP 105
            odom = client.odometry[stamps[-1]]
            assert (odom.header.frame_id, odom.child_frame_id) == ("odom", "base_link")
            base_err = _rotation_errors(client, stamps, {s + NS // 100: T for s, T in truth.items()}, MOUNT)
            cam_err = _rotation_errors(cam_client, cam_stamps, truth, np.eye(4))
            assert cam_client.odometry[cam_stamps[-1]].child_frame_id == CAMERA
            assert len(base_err) == len(cam_err) >= 8
            print(f"\nrotation error, base_link vs camera (deg): {np.round(base_err, 3)} / {np.round(cam_err, 3)}")
            assert np.max(np.abs(np.array(base_err) - np.array(cam_err))) < 1e-3
            assert np.median(base_err) < 1.0
            # twist in base_link between frames of one keyframe: known (not -1), forward-ish speeds of a hand-held
            known = [s for s in stamps[1:] if client.odometry[s].twist.covariance[0] != -1.0]
            assert known, "no frame had a twist"
            v = client.odometry[known[-1]].twist.twist.linear
            assert np.isfinite([v.x, v.y, v.z]).all()

            # /tf: odom -> base_link only, from this node; the mounting on /tf_static from the other one
            assert client.wait_until(lambda: tf.parents_of("base_link") == {"odom"}, 10.0)
            assert {t.header.frame_id for t in tf.transforms} == {"odom"}
            publishers = {i.node_name for i in client.node.get_publishers_info_by_topic("/tf")}
            assert publishers == {"fm_base"}, publishers  # fm_cam (no base_frame) broadcasts nothing
            assert process.poll() is None


def test_set_pose_lost_frames_and_publish_tf_false(tum, tmp_path):
    frames, camera, _ = tum
    with _mount_publisher(), running_node(
            tmp_path / "node.log", *SIFT, "base_frame:=base_link", "publish_tf:=false", "odometry.scale:=0.02",
            name="fm_robot", namespace="/robot") as (process, client):
        client.prime_camera_info(camera)
        first = answered_with(client, lambda s: client.send(frames[0][1], "rgb8", s, camera, CAMERA), frames[0][0],
                              tries=10, timeout=5.0, step_ns=1_000)
        assert first is not None
        _stream(client, frames[1:], camera, 3)

        # set_pose: the base is declared at (5, 2) facing +y; the next frames continue from there
        msg = PoseWithCovarianceStamped()
        msg.header.frame_id, msg.header.stamp = "odom", ns_to_stamp(frames[3][0])
        msg.pose.pose = matrix_to_pose(se3(rotation_from_rotvec([0, 0, np.pi / 2]), [5.0, 2.0, 0.0]))
        msg.pose.covariance = list((0.01 * np.eye(6)).ravel())
        pub = client.node.create_publisher(PoseWithCovarianceStamped, "/robot/fm_robot/set_pose", 10)
        assert client.wait_until(lambda: pub.get_subscription_count() > 0, 10.0)
        pub.publish(msg)
        assert client.wait_until(lambda: "set_pose: odometry continues" in process_log(tmp_path), 10.0)
        stamp = _stream(client, frames[4:], camera, 1)[0]
        client.wait_until(lambda: stamp in client.odometry, 5.0)
        T = messages.pose_to_matrix(client.odometry[stamp].pose.pose)
        assert np.linalg.norm(T[:3, 3] - [5.0, 2.0, 0.0]) < 0.1  # mono steps of odometry.scale: 2 cm
        assert rotation_error_deg(T[:3, :3], rotation_from_rotvec([0, 0, np.pi / 2])) < 5.0

        # a frame that loses tracking (a blank image): no odometry; with publish_when_lost, the last pose, 9999
        blank = np.zeros_like(frames[5][1])
        lost1, lost2 = frames[5][0], frames[6][0]
        client.send(blank, "rgb8", lost1, camera, CAMERA)
        assert client.wait_result(lost1, timeout=60.0) is not None
        assert not client.wait_until(lambda: lost1 in client.odometry, 1.0)
        assert client.set_parameters_atomically({"odometry.publish_when_lost": True}).successful
        client.send(blank, "rgb8", lost2, camera, CAMERA)
        assert client.wait_result(lost2, timeout=60.0) is not None
        assert client.wait_until(lambda: lost2 in client.odometry, 5.0)
        cov = np.array(client.odometry[lost2].pose.covariance).reshape(6, 6)
        assert np.allclose(np.diag(cov), LOST_VARIANCE)
        diag = client.latest_diagnostics(timeout=5.0)
        assert diag["tracking_status"] in ("lost", "init")

        # publish_tf false: this node has no /tf publisher at all
        publishers = {i.node_name for i in client.node.get_publishers_info_by_topic("/tf")}
        assert "fm_robot" not in publishers, publishers
        assert process.poll() is None


STEREO = ("backend:=sift", "device:=cpu", "input_qos:=reliable", "depth.max_m:=80.0", "diagnostics_period_s:=0.2")


def test_stereo_metric_odometry_of_the_base_allows_for_the_lever_arm(shared, tmp_path):
    """In stereo mode the odometry is metric: the base's translation error against the ground truth moved into
    the base frame is the camera's, plus at most its rotation error times the mount's offset (KITTI 06)."""
    import cv2

    from feature_matcher_ros.datasets import read_sequence

    seq = read_sequence(shared / "data" / "kitti06_stereo_f000_050")
    offset = 1000 * NS  # KITTI stamps start at 0
    truth = {s + offset: T for s, T in seq.ground_truth.by_stamp().items()}
    left_cam, right_cam, b = seq.camera, seq.stereo.camera, seq.stereo.baseline_m

    def rgb(path):
        return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    frames = [(seq.frames[k][0] + offset, rgb(seq.frames[k][1]), rgb(seq.stereo.frames[k][1])) for k in range(6)]

    def send(client, stamp, left, right):
        client.send_right(right, "rgb8", stamp, right_cam, b)
        client.send(left, "rgb8", stamp, left_cam, CAMERA)

    def stream(client):
        client.prime_camera_info(left_cam)
        # the first frame until answered: the node may learn the mounting a moment after it starts
        first = answered_with(client, lambda s: send(client, s, *frames[0][1:]), frames[0][0], tries=10,
                              timeout=10.0, step_ns=1_000)
        assert first is not None
        for stamp, left, right in frames[1:]:
            send(client, stamp, left, right)
            assert client.wait_result(stamp, timeout=60.0) is not None
        stamps = [first] + [f[0] for f in frames[1:]]
        client.wait_until(lambda: all(s in client.odometry for s in stamps[1:]), 10.0)
        return stamps

    keys = np.array(sorted(truth))

    def gt(stamp):
        return truth[int(keys[np.argmin(np.abs(keys - stamp))])]

    def errors(client, stamps, mount):
        out = []
        for s in stamps[1:]:
            T = messages.pose_to_matrix(client.odometry[s].pose.pose)
            T_gt = mount @ invert(gt(stamps[0])) @ gt(s) @ invert(mount)
            angle = np.radians(rotation_error_deg(T[:3, :3], T_gt[:3, :3]))
            out.append((np.linalg.norm(T[:3, 3] - T_gt[:3, 3]), angle, np.linalg.norm(T_gt[:3, 3])))
        return np.array(out)

    with _mount_publisher(), \
            running_node(tmp_path / "cam.log", *STEREO, name="fm_stereo_cam", namespace="/stereo_cam",
                         input_mode="stereo") as (_, cam), \
            running_node(tmp_path / "base.log", *STEREO, "base_frame:=base_link", name="fm_stereo_base",
                         namespace="/stereo_base", input_mode="stereo") as (_, base):
        cam_err = errors(cam, stream(cam), np.eye(4))
        base_err = errors(base, stream(base), MOUNT)
    lever = np.linalg.norm(MOUNT[:3, 3])
    print(f"\ntranslation error (m) base / camera over {base_err[:, 2].round(2)} m: {base_err[:, 0].round(4)} / "
          f"{cam_err[:, 0].round(4)}")
    assert len(base_err) == len(cam_err) == 5
    assert np.all(base_err[:, 0] <= cam_err[:, 0] + cam_err[:, 1] * lever + 1e-4)
    assert np.allclose(base_err[:, 1], cam_err[:, 1], atol=1e-5)
    assert np.all(base_err[:, 0] < 0.05 * base_err[:, 2])  # metric: a few % of the distance, not unit steps


def process_log(tmp_path):
    return (tmp_path / "node.log").read_text(errors="replace")
