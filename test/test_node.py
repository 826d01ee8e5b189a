"""matcher_node as its own process, fed the TUM fr2_desk frames over real DDS; every output checked.

One node process for the module (SIFT on the CPU, reliable input QoS); the frames are sent one at a time,
waiting for each frame's ``matches`` before the next, so nothing is dropped on the way.
"""

import numpy as np
import pytest

from feature_matcher_ros import messages
from feature_matcher_ros.geometry import rotation_error_deg
from ros_helpers import load_frames, running_node

FRAME_ID = "camera_rgb_optical_frame"
HALF = 10  # debug_image is subscribed from this frame on


@pytest.fixture(scope="module")
def run(shared, tmp_path_factory):
    frames, camera, truth = load_frames(shared)
    log = tmp_path_factory.mktemp("node") / "matcher_node.log"
    with running_node(log, "backend:=sift", "device:=cpu", "input_qos:=reliable") as (process, client):
        out = {"frames": frames, "camera": camera, "truth": truth, "client": client, "process": process}
        client.prime_camera_info(camera)
        for i, (stamp, rgb) in enumerate(frames):
            if i == HALF:
                out["diag_before_debug"] = client.latest_diagnostics(timeout=5.0)
                assert client.subscribe_debug_image(), "debug_image publisher never matched"
            client.send(rgb, "rgb8", stamp, camera, FRAME_ID)
            assert client.wait_result(stamp, timeout=60.0) is not None, f"no matches for frame {i} ({stamp})"
        # relative_pose and odometry travel on their own reliable topics and may land after matches.
        stamps = [s for s, _ in frames]
        client.wait_until(lambda: all(s in client.odometry for s in stamps)
                          and all(s in client.poses for s in stamps[1:]), 20.0)
        out["diag"] = client.latest_diagnostics(timeout=5.0)
        yield out


def test_every_frame_answered_with_the_image_header(run):
    client = run["client"]
    for stamp, _ in run["frames"]:
        cloud = client.matches[stamp]
        assert messages.stamp_to_ns(cloud.header.stamp) == stamp
        assert cloud.header.frame_id == FRAME_ID


def test_matches_decode_from_pointcloud2(run):
    client, frames = run["client"], run["frames"]
    first = client.matches[frames[0][0]]
    assert first.width == 0  # the first frame only becomes the keyframe
    for stamp, rgb in frames[1:]:
        cloud = client.matches[stamp]
        names = [f.name for f in cloud.fields]
        assert names[:6] == ["x0", "y0", "x1", "y1", "score", "inlier"]
        pts = messages.cloud_to_array(cloud)
        assert len(pts) == cloud.width > 50
        h, w = rgb.shape[:2]
        for x, y in (("x0", "y0"), ("x1", "y1")):
            assert (pts[x] >= -0.5).all() and (pts[x] <= w - 0.5).all()
            assert (pts[y] >= -0.5).all() and (pts[y] <= h - 0.5).all()
        assert set(np.unique(pts["inlier"]).tolist()) <= {0.0, 1.0}
        assert (pts["inlier"] == 1.0).sum() >= 15
        assert np.isfinite(pts["score"]).all()


def test_rotation_error_against_ground_truth(run):
    client, truth = run["client"], run["truth"]
    errors = []
    for stamp, _ in run["frames"][1:]:
        pose = client.poses[stamp]
        _, kf = messages.parse_keyframe_frame_id(pose.header.frame_id)
        T_kf_cur_gt = np.linalg.inv(truth[kf]) @ truth[stamp]  # current camera in the keyframe's frame
        errors.append(rotation_error_deg(messages.pose_to_matrix(pose.pose.pose)[:3, :3], T_kf_cur_gt[:3, :3]))
    print(f"rotation error vs GT over {len(errors)} frames: median {np.median(errors):.3f} deg, max {max(errors):.3f}")
    assert np.median(errors) < 1.0
    assert max(errors) < 5.0


def test_keyframe_and_current_stamps_are_tied(run):
    client, frames = run["client"], run["frames"]
    stamps = [s for s, _ in frames]
    announced = [messages.stamp_to_ns(k.header.stamp) for k in client.keyframes]
    assert announced[0] == stamps[0]  # the first frame is the first keyframe
    assert announced == sorted(set(announced)) and set(announced) <= set(stamps)
    for stamp in stamps[1:]:
        pose = client.poses[stamp]
        assert messages.stamp_to_ns(pose.header.stamp) == stamp
        camera_frame, kf = messages.parse_keyframe_frame_id(pose.header.frame_id)
        assert camera_frame == FRAME_ID
        # Matched against the latest keyframe announced before this frame.
        assert kf == max(a for a in announced if a < stamp)
        pts = messages.cloud_to_array(client.matches[stamp])
        kf_points = pts["kf_sec"].astype(np.int64) * 1_000_000_000 + pts["kf_nanosec"]
        assert set(kf_points.tolist()) == {kf}
    # Announcements are sent in time order: a keyframe is announced before any frame matched against it.
    for msg in client.keyframes:
        assert msg.header.frame_id == "odom"


def test_odometry_follows_ground_truth_rotation(run):
    client, truth, stamps = run["client"], run["truth"], [s for s, _ in run["frames"]]
    T0 = truth[stamps[0]]
    errors = []
    for stamp in stamps:
        odom = client.odometry[stamp]
        assert messages.stamp_to_ns(odom.header.stamp) == stamp
        assert odom.header.frame_id == "odom" and odom.child_frame_id == FRAME_ID
        T_est = messages.pose_to_matrix(odom.pose.pose)
        T_gt = np.linalg.inv(T0) @ truth[stamp]
        errors.append(rotation_error_deg(T_est[:3, :3], T_gt[:3, :3]))
        if stamp != stamps[0]:
            cov = np.array(odom.pose.covariance).reshape(6, 6)
            assert np.linalg.eigvalsh(cov[:3, :3]).max() > 1e3  # scale unknown: marked in the covariance
            assert np.diag(cov)[3:].max() < 1e-2  # rotations are known
    np.testing.assert_allclose(messages.pose_to_matrix(client.odometry[stamps[0]].pose.pose), np.eye(4), atol=1e-9)
    print(f"odometry rotation error vs GT: median {np.median(errors):.3f} deg, max {max(errors):.3f}")
    assert max(errors) < 3.0


def test_debug_image_only_while_subscribed(run):
    before = run["diag_before_debug"]
    assert before is not None and before["debug_images_published"] == "0"
    images = run["client"].debug_images
    assert len(images) >= 1
    img = images[-1]
    assert img.encoding == "bgr8" and (img.width, img.height) == (1280, 480)
    pixels = np.frombuffer(bytes(img.data), np.uint8).reshape(480, 1280, 3)
    assert pixels[:, :640].mean() > 20  # the keyframe drawn on the left, not a blank stand-in
    stamps = {s for s, _ in run["frames"][HALF:]}
    assert messages.stamp_to_ns(img.header.stamp) in stamps
    assert int(run["diag"]["debug_images_published"]) >= len(images)


def test_diagnostics(run):
    diag = run["diag"]
    assert diag is not None
    assert (diag["backend"], diag["device"], diag["precision"]) == ("sift", "cpu", "fp32")
    assert int(diag["frames_processed"]) == len(run["frames"])
    assert diag["frames_dropped"] == "0" and diag["rejected_total"] == "0"
    for key in ("input_rate_hz", "output_rate_hz", "latency_ms_mean", "process_ms_mean"):
        assert key in diag


def test_busy_node_drops_stale_frames_and_answers_the_newest(run):
    """A burst faster than the matcher: frames waiting in the one-slot mailbox are replaced (and counted);
    the newest frame is always processed."""
    client, camera = run["client"], run["camera"]
    offset = 100 * 1_000_000_000  # new stamps after the sequence
    burst = [(stamp + offset, rgb) for stamp, rgb in run["frames"][:8]]
    for stamp, rgb in burst:
        client.send(rgb, "rgb8", stamp, camera, FRAME_ID)
    last = burst[-1][0]
    assert client.wait_result(last, timeout=60.0) is not None
    answered = [s for s, _ in burst if s in client.matches]
    assert len(answered) < len(burst)
    diag = client.latest_diagnostics(timeout=5.0)
    dropped = int(diag["frames_dropped"])
    assert dropped >= 1 and len(answered) + dropped <= len(burst)  # DDS may also drop on a keep-last queue
    assert run["process"].poll() is None
