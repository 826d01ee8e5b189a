"""An exception at any entry point of the node (subscription, timer, parameter callback, service, lifecycle
transition) is counted as ``internal_error.<where>``, logged with its traceback, and the node answers the
next frame. The faults are injected through the test-only ``FM_TEST_FAULTS`` (each named entry point raises
on its first call), over real DDS, in each input mode."""

import os
import subprocess

import cv2
from lifecycle_msgs.msg import Transition

from feature_matcher_ros.datasets import read_sequence
from feature_matcher_ros.ros.client import MatcherClient
from feature_matcher_ros.ros.guard import FAULTS_ENV
from feature_matcher_ros.ros.process import LIFECYCLE_MODULE, NodeProcess, node_command
from ros_helpers import PARAMS_FILE, answered_with, load_frames, running_node

NS = 1_000_000_000
SIFT = ("backend:=sift", "device:=cpu", "input_qos:=reliable", "diagnostics_period_s:=0.2")


def _env(*faults):
    return {**os.environ, FAULTS_ENV: ",".join(faults)}


def _counts(client, names, timeout=20.0):
    """The ``internal_error.<name>`` counts once every one of ``names`` is there (the last diagnostics)."""
    last = {}

    def seen():
        nonlocal last
        last = client.latest_diagnostics(timeout=2.0) or last
        return all(f"internal_error.{n}" in last for n in names)

    for _ in range(int(timeout / 0.2)):
        if seen():
            break
    return {n: int(last.get(f"internal_error.{n}", 0)) for n in names}, last


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_mono_node_survives_a_fault_at_each_entry_point(shared, tmp_path):
    faults = ("image", "camera_info", "diagnostics", "parameters", "parameters_pre_set", "reset")
    frames, camera, _ = load_frames(shared, count=2)
    (s0, rgb0), (s1, rgb1) = frames
    with running_node(tmp_path / "node.log", *SIFT, name="fm_guard_mono", env=_env(*faults)) as (process, client):
        client.prime_camera_info(camera)  # the first camera_info raises; priming resends until one counts
        send = lambda stamp: client.send(rgb0, "rgb8", stamp, camera, "cam")  # noqa: E731
        assert answered_with(client, send, s0, tries=10, timeout=3.0) is not None  # the first image raised

        refused = client.set_parameters_atomically({"max_matches": 300})
        assert not refused.successful and "internal error" in refused.reason
        assert client.get_parameters(["max_matches"]) == {"max_matches": 0}  # nothing applied
        assert client.set_parameters_atomically({"max_matches": 300}).successful
        assert client.get_parameters(["max_matches"]) == {"max_matches": 300}
        assert answered_with(client, lambda s: client.send(rgb1, "rgb8", s, camera, "cam"), s1) is not None

        failed = client.reset()
        assert not failed.success and "internal error" in failed.message
        assert client.reset().success
        assert answered_with(client, send, s1 + NS) is not None  # a new first keyframe after the reset

        counts, diag = _counts(client, faults)
        assert counts == {f: 1 for f in faults}, diag
        assert process.poll() is None
    log = (tmp_path / "node.log").read_text()
    for where in faults:
        assert f"internal error in {where} (1 so far; the node goes on)" in log
    assert "Traceback" in log and "InjectedFault" in log


def _send_rgbd(client, seq, k):
    rgb, depth = _rgb(seq.frames[k][1]), cv2.imread(str(seq.depth.frames[k][1]), cv2.IMREAD_UNCHANGED)

    def send(stamp):
        client.send_depth(depth, "16UC1", stamp, "camera_rgb_optical_frame")
        client.send(rgb, "rgb8", stamp, seq.camera, "camera_rgb_optical_frame")
    return send


def test_lifecycle_rgbd_node_survives_faults_in_transitions_and_depth(shared, tmp_path):
    faults = ("configure", "activate", "deactivate", "cleanup", "depth", "shutdown")
    seq = read_sequence(shared / "data" / "tum_fr3_cabinet_rgbd")
    params = {"backend": "sift", "device": "cpu", "input_qos": "reliable", "input_mode": "rgbd",
              "depth.scale": 0.0002, "diagnostics_period_s": 0.2, "sift.contrast_threshold": 0.01}
    name = "fm_guard_lifecycle"
    node = NodeProcess(name, params, params_file=PARAMS_FILE, module=LIFECYCLE_MODULE, env=_env(*faults),
                       log_path=tmp_path / "node.log")
    client = MatcherClient(node=name, name="fm_guard_client", input_mode="rgbd")
    try:
        for step, before, after in [(Transition.TRANSITION_CONFIGURE, "unconfigured", "inactive"),
                                    (Transition.TRANSITION_ACTIVATE, "inactive", "active")]:
            assert not client.change_state(step), node.stdout  # the injected fault: FAILURE, same state
            assert client.lifecycle_state() == before
            assert client.change_state(step), node.stdout
            assert client.lifecycle_state() == after
        assert client.wait_for_matcher(timeout=60.0)
        client.prime_camera_info(seq.camera)
        base = seq.frames[1][0]
        first = answered_with(client, _send_rgbd(client, seq, 1), base, tries=10, timeout=3.0)
        assert first is not None  # the first depth image raised

        assert not client.change_state(Transition.TRANSITION_DEACTIVATE)
        assert client.lifecycle_state() == "active"
        assert answered_with(client, _send_rgbd(client, seq, 2), base + NS) is not None  # still serving
        counts, diag = _counts(client, ("configure", "activate", "deactivate", "depth"))
        assert counts == {"configure": 1, "activate": 1, "deactivate": 1, "depth": 1}, diag

        assert client.change_state(Transition.TRANSITION_DEACTIVATE)
        assert not client.change_state(Transition.TRANSITION_CLEANUP)
        assert client.lifecycle_state() == "inactive"
        assert client.change_state(Transition.TRANSITION_ACTIVATE)
        assert answered_with(client, _send_rgbd(client, seq, 3), base + 2 * NS) is not None
        assert client.change_state(Transition.TRANSITION_DEACTIVATE)
        assert client.change_state(Transition.TRANSITION_CLEANUP)

        # A fault in the shutdown transition still ends the process, cleanly.
        client.change_state(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert node.wait(timeout=20.0) == 0, node.stdout
    finally:
        client.close()
        node.close()
    log = (tmp_path / "node.log").read_text()
    for where in faults:
        assert f"internal error in {where} (1 so far" in log, where


def test_stereo_node_survives_faults_in_the_right_camera_inputs(shared, tmp_path):
    faults = ("right_image", "right_camera_info")
    kitti = read_sequence(shared / "data" / "kitti06_stereo_f000_050")
    left_cam, right_cam, b = kitti.camera, kitti.stereo.camera, kitti.stereo.baseline_m
    offset = 1000 * NS
    with running_node(tmp_path / "node.log", *SIFT, "depth.max_m:=80.0", name="fm_guard_stereo",
                      namespace="/guard_stereo", input_mode="stereo", env=_env(*faults)) as (process, client):
        client.prime_camera_info(left_cam)
        left, right = _rgb(kitti.frames[0][1]), _rgb(kitti.stereo.frames[0][1])

        def send(stamp):
            client.send_right(right, "rgb8", stamp, right_cam, b)
            client.send(left, "rgb8", stamp, left_cam, "camera")
        first = answered_with(client, send, kitti.frames[0][0] + offset, tries=10, timeout=5.0, step_ns=NS // 10)
        assert first is not None
        counts, diag = _counts(client, faults)
        assert counts == {f: 1 for f in faults}, diag
        assert process.poll() is None


def test_unknown_fault_names_stop_the_start_up():
    result = subprocess.run(node_command(params_file=PARAMS_FILE, params={"backend": "sift", "device": "cpu"}),
                            capture_output=True, text=True, timeout=60, env=_env("imagee"))
    assert result.returncode == 2 and "cannot start" in result.stderr and "imagee" in result.stderr
    assert "Traceback" not in result.stderr
