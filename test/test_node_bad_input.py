"""Bad input never takes matcher_node down: each kind is counted in /diagnostics under its own reason and a
good frame afterwards is still answered. Start-up errors end the process with one clear line, no traceback."""

import math
import subprocess
import sys

import pytest
from sensor_msgs.msg import CompressedImage, Image

from feature_matcher_ros import messages
from feature_matcher_ros.ros import conversions as cv
from ros_helpers import load_frames, run_cli, running_node, send_until_answered

NS = 1_000_000_000


@pytest.fixture(scope="module")
def node(shared, tmp_path_factory):
    frames, camera, _ = load_frames(shared, count=4)
    log = tmp_path_factory.mktemp("node") / "matcher_node.log"
    with running_node(log, "backend:=sift", "device:=cpu", "input_qos:=reliable",
                      "diagnostics_period_s:=0.2") as (process, client):
        yield client, process, frames, camera


def wait_reason(client, reason, at_least=1, timeout=10.0):
    """The diagnostics once ``rejected.<reason>`` reaches ``at_least`` (None on timeout)."""
    key = f"rejected.{reason}"
    last = None
    for _ in range(int(timeout / 0.2)):
        last = client.latest_diagnostics(timeout=2.0)
        if last is not None and int(last.get(key, 0)) >= at_least:
            return last
    pytest.fail(f"{key} never reached {at_least}; last diagnostics: {last}")


def answered(client, rgb, first_stamp, camera) -> int:
    """A driver publishes camera_info with every image: resend (new stamps) until a frame is answered."""
    stamp = send_until_answered(client, rgb, first_stamp, camera, tries=5, timeout=10.0, first_timeout=30.0)
    if stamp is None:
        pytest.fail("no good frame was answered")
    return stamp


def test_bad_inputs_are_counted_and_the_node_keeps_serving(node):
    client, process, frames, camera = node
    (s0, rgb0), (s1, rgb1), (s2, rgb2), (s3, rgb3) = frames

    # 1. An image before any camera_info (waits CAMERA_INFO_WAIT_S for one, then is dropped).
    client.send(rgb0, "rgb8", s0, None, "cam")
    wait_reason(client, "no_camera_info")
    assert s0 not in client.matches

    # 2. A broken camera_info (NaN focal length): counted, and images are not matched with it. The image is
    #    sent once the node has taken the camera_info (another topic: it could arrive first, and wait for one).
    broken = cv.model_to_camera_info(camera, s0, "cam")
    k = list(broken.k)
    k[0] = math.nan
    broken.k = k
    for _ in range(10):  # the first camera_info this client sends: resent until the node counts it
        client.pub_info.publish(broken)
        if client.wait_until(
                lambda: int((client.latest_diagnostics(timeout=2.0) or {}).get("invalid.camera_info", 0)) >= 1, 3.0):
            break
    client.send(rgb0, "rgb8", s0 + 1, None, "cam")
    wait_reason(client, "bad_camera_info")

    # 3. Good frames are answered again (camera_info comes with each one).
    good = answered(client, rgb0, s0 + 2, camera)

    # 4. Malformed images, each with its reason.
    bad = {
        "unknown_encoding": Image(height=480, width=640, encoding="yuv422", step=1280, data=bytes(1280 * 480)),
        "zero_size": Image(height=0, width=640, encoding="rgb8", step=1920, data=b""),
        "short_data": Image(height=480, width=640, encoding="rgb8", step=1920, data=bytes(1920 * 479)),
        "bad_step": Image(height=480, width=640, encoding="rgb8", step=1000, data=bytes(1000 * 480)),
        "size_mismatch": cv.numpy_to_image(rgb1[::2, ::2], "rgb8"),
    }
    for i, (reason, msg) in enumerate(bad.items()):  # one at a time: the publisher keeps only the last 5
        msg.header.stamp = cv.ns_to_stamp(s1 + i)
        msg.header.frame_id = "cam"
        client.pub_image.publish(msg)
        wait_reason(client, reason)
    # 5. Stamps going backwards (by less than reset_on_time_jump_s: a jump further back resets), and a
    #    repeated stamp.
    client.send(rgb1, "rgb8", good - NS // 2, camera, "cam")
    wait_reason(client, "stamp_backwards")
    client.send(rgb1, "rgb8", good, camera, "cam")
    wait_reason(client, "stamp_repeated")

    # 6. The node still serves: the next good frame is matched against the keyframe.
    stamp = s3 + NS
    client.send(rgb3, "rgb8", stamp, camera, "cam")
    cloud = client.wait_result(stamp, timeout=30.0)
    assert cloud is not None and cloud.width > 50
    diag = client.latest_diagnostics(timeout=5.0)
    assert int(diag["frames_processed"]) >= 2
    assert int(diag["rejected_total"]) >= len(bad) + 4
    for s in (s1, s1 + 1, s1 + 2, s1 + 3, s1 + 4, good - NS // 2):
        assert s not in client.matches

    # 7. The recording played again: a stamp 10 s back (over reset_on_time_jump_s) resets keyframes and
    #    odometry, is counted, and is answered as a new first keyframe.
    jumped = answered(client, rgb0, s0 - 10 * NS, camera)
    assert client.matches[jumped].width == 0
    assert int(client.latest_diagnostics(timeout=5.0)["time_jumps"]) == 1

    # 8. After ~/reset (e.g. a recording restarted) earlier stamps are welcome again: a new first keyframe.
    assert client.reset().success
    cloud = client.wait_result(answered(client, rgb0, good - NS, camera), timeout=1.0)
    assert cloud.width == 0
    assert client.wait_until(
        lambda: bool(client.keyframes) and messages.stamp_to_ns(client.keyframes[-1].header.stamp) == good - NS, 5.0)
    assert process.poll() is None


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["backend:=nope"], "backend"),
        (["device:=cpu", "max_matches:=-5"], "max_matches"),
        (["device:=cpu", "ransac.threshold_px:=2"], "ransac.threshold_px"),  # an integer for a double
        (["backend:=sptd2", "device:=cpu", "weights:=/nonexistent/sptd2.pt"], "/nonexistent/sptd2.pt"),
    ],
)
def test_startup_errors_exit_with_a_clear_message(overrides, expected):
    done = run_cli(*overrides)
    assert done.returncode == 2
    assert "cannot start" in done.stderr and expected in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("module", ["matcher_node", "lifecycle_matcher_node"])
def test_bad_ros_arguments_exit_with_a_clear_message(module):
    done = subprocess.run([sys.executable, "-m", f"feature_matcher_ros.{module}", "--ros-args", "--no-such-flag"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "bad ROS arguments" in done.stderr and "--no-such-flag" in done.stderr and "--help" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_cuda_without_cuda_is_a_clear_startup_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = run_cli("device:=cuda")
    assert done.returncode == 2 and "CUDA" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def compressed_node(shared, tmp_path_factory):
    frames, camera, _ = load_frames(shared, count=2)
    log = tmp_path_factory.mktemp("node") / "matcher_node_compressed.log"
    with running_node(log, "backend:=sift", "device:=cpu", "input_qos:=reliable", "compressed_input:=true",
                      "diagnostics_period_s:=0.2", compressed=True, namespace="/compressed") as (process, client):
        yield client, process, frames, camera


def test_compressed_input_and_undecodable_data(compressed_node):
    client, process, ((s0, rgb0), (s1, rgb1)), camera = compressed_node
    good = answered(client, rgb0, s0, camera)
    client.pub_image.publish(CompressedImage(header=cv.numpy_to_image(rgb1, "rgb8", good + 1, "cam").header,
                                             format="jpeg", data=b"\xff\xd8 definitely not a jpeg"))
    wait_reason(client, "decode_failed")
    client.send(rgb1, "rgb8", s1, camera, "cam")  # sent as PNG
    cloud = client.wait_result(s1, timeout=30.0)
    assert cloud is not None and cloud.width > 50
    pose = client.poses[s1]
    assert messages.parse_keyframe_frame_id(pose.header.frame_id)[1] == good
    assert process.poll() is None
