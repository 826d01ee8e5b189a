"""The ROS layer's message builders (camera info, matches, poses) read back with the decoder, the mailbox and the
parameter descriptors (no DDS needed). Image decoding: test_messages.py."""

import math
import threading

import numpy as np
import pytest
from rcl_interfaces.msg import ParameterType
from std_msgs.msg import Header

from feature_matcher_ros import messages
from feature_matcher_ros.camera import CameraModel
from feature_matcher_ros.params import ParamSpec
from feature_matcher_ros.ros import conversions as cv
from feature_matcher_ros.ros.mailbox import Mailbox
from feature_matcher_ros.ros.parameters import descriptor_for
from feature_matcher_ros.se3 import quat_to_rotation, rotation_to_quat


@pytest.fixture(scope="module")
def camera(shared):
    return CameraModel.from_yaml(shared / "data" / "tum_fr2_desk" / "intrinsics.yaml")


def test_camera_info_round_trip(camera):
    msg = cv.model_to_camera_info(camera, stamp_ns=7, frame_id="cam")
    back = messages.camera_info_to_model(msg)
    assert (back.width, back.height) == (640, 480)
    np.testing.assert_allclose(back.K, camera.K)
    np.testing.assert_allclose(back.dist, camera.dist)


def test_camera_info_roi_and_binning(camera):
    msg = cv.model_to_camera_info(camera)
    msg.binning_x = msg.binning_y = 2
    back = messages.camera_info_to_model(msg)
    assert (back.width, back.height) == (320, 240)
    assert back.fx == pytest.approx(camera.fx / 2) and back.cy == pytest.approx(camera.cy / 2)
    msg = cv.model_to_camera_info(camera)
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 40, 320, 240
    back = messages.camera_info_to_model(msg)
    assert (back.width, back.height) == (320, 240)
    assert back.cx == pytest.approx(camera.cx - 100) and back.cy == pytest.approx(camera.cy - 40)


@pytest.mark.parametrize("broken", ["nan", "zero_focal", "zero_size", "fisheye", "nan_distortion"])
def test_broken_camera_info(camera, broken):
    msg = cv.model_to_camera_info(camera)
    k = list(msg.k)
    if broken == "nan":
        k[2] = math.nan
    elif broken == "zero_focal":
        k[0] = 0.0
    elif broken == "zero_size":
        msg.width = 0
    elif broken == "fisheye":
        msg.distortion_model = "equidistant"
    elif broken == "nan_distortion":
        msg.d = [math.nan, 0.0, 0.0, 0.0, 0.0]
    msg.k = k
    with pytest.raises(messages.InputError) as info:
        messages.camera_info_to_model(msg)
    assert info.value.reason == "bad_camera_info"


def test_camera_info_cache(camera):
    cache = messages.CameraInfoCache()
    with pytest.raises(messages.InputError) as info:
        cache.camera_for(640, 480)
    assert info.value.reason == "no_camera_info"
    assert cache.update(cv.model_to_camera_info(camera)) is None
    assert cache.camera_for(640, 480).fx == pytest.approx(camera.fx)
    with pytest.raises(messages.InputError) as info:
        cache.camera_for(320, 240)
    assert info.value.reason == "size_mismatch"
    bad = cv.model_to_camera_info(camera)
    bad.k = [0.0] * 9
    assert cache.update(bad).reason == "bad_camera_info"
    with pytest.raises(messages.InputError) as info:  # a broken camera_info is not silently replaced by the old one
        cache.camera_for(640, 480)
    assert info.value.reason == "bad_camera_info"
    cache.update(cv.model_to_camera_info(camera))
    assert cache.camera_for(640, 480) is not None


def test_matches_cloud_round_trip():
    rng = np.random.default_rng(0)
    k0 = rng.uniform(0, 640, (50, 2)).astype(np.float32)
    k1 = rng.uniform(0, 480, (50, 2)).astype(np.float32)
    scores = rng.uniform(0, 1, 50).astype(np.float32)
    inl = rng.uniform(0, 1, 50) > 0.3
    header = Header(stamp=cv.ns_to_stamp(1_311_868_169_263_274_000), frame_id="cam")
    msg = cv.matches_to_cloud(k0, k1, scores, inl, header, keyframe_stamp_ns=1_311_868_169_163_498_000)
    assert msg.width == 50 and msg.height == 1 and msg.header.frame_id == "cam"
    assert [f.name for f in msg.fields][:6] == ["x0", "y0", "x1", "y1", "score", "inlier"]
    pts = messages.cloud_to_array(msg)
    np.testing.assert_array_equal(np.stack([pts["x0"], pts["y0"]], 1), k0)
    np.testing.assert_array_equal(np.stack([pts["x1"], pts["y1"]], 1), k1)
    np.testing.assert_array_equal(pts["score"], scores)
    np.testing.assert_array_equal(pts["inlier"] == 1.0, inl)
    kf = pts["kf_sec"].astype(np.int64) * 1_000_000_000 + pts["kf_nanosec"]
    assert set(kf.tolist()) == {1_311_868_169_163_498_000}
    empty = cv.matches_to_cloud(k0[:0], k1[:0], scores[:0], inl[:0], header, 0)
    assert empty.width == 0 and len(messages.cloud_to_array(empty)) == 0


def test_pose_conversions_and_keyframe_frame_id():
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.normal(size=4)
        R = quat_to_rotation(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(quat_to_rotation(rotation_to_quat(R)), R, atol=1e-9)
    T = np.eye(4)
    T[:3, :3] = quat_to_rotation([0.1, -0.7, 0.2, 0.05])
    T[:3, 3] = (1.0, -2.0, 0.5)
    np.testing.assert_allclose(messages.pose_to_matrix(cv.matrix_to_pose(T)), T, atol=1e-12)
    name = messages.keyframe_frame_id("camera_rgb_optical_frame", 1_311_868_169_163_498_000)
    assert messages.parse_keyframe_frame_id(name) == ("camera_rgb_optical_frame", 1_311_868_169_163_498_000)
    with pytest.raises(ValueError):
        messages.parse_keyframe_frame_id("camera_rgb_optical_frame")
    msg = cv.relative_pose_msg(T, np.diag([1e6] * 3 + [1e-4] * 3), 42, "cam", 41)
    assert (messages.stamp_to_ns(msg.header.stamp) == 42
            and messages.parse_keyframe_frame_id(msg.header.frame_id) == ("cam", 41))
    assert msg.pose.covariance[0] == 1e6 and msg.pose.covariance[35] == 1e-4


def test_mailbox_keeps_only_the_newest():
    box = Mailbox()
    assert box.take(timeout=0.01) is None
    assert box.put(1) is False
    assert box.put(2) is True and box.put(3) is True
    assert box.dropped == 2 and box.take() == 3 and box.take(timeout=0.01) is None
    got = []
    worker = threading.Thread(target=lambda: got.append(box.take()))
    worker.start()
    box.close()
    worker.join(2)
    assert got == [None] and not worker.is_alive()


def test_descriptor_from_spec():
    d = descriptor_for(ParamSpec("ransac.threshold_px", 1.0, "Inlier threshold.", min=0.1, max=20.0))
    assert d.type == ParameterType.PARAMETER_DOUBLE and not d.read_only
    assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0.1, 20.0)
    d = descriptor_for(ParamSpec("max_matches", 0, "Cap.", min=0))
    assert d.integer_range[0].from_value == 0 and d.integer_range[0].to_value == 2**63 - 1
    d = descriptor_for(ParamSpec("backend", "sift", "Which.", choices=("sift", "orb"), read_only=True))
    assert d.read_only and d.type == ParameterType.PARAMETER_STRING and "sift, orb" in d.additional_constraints


def test_params_file_lists_every_default(repo):
    """config/matcher.yaml holds exactly the declared node and frontend parameters, at their defaults."""
    import yaml

    from feature_matcher_ros.ros.node import NODE_PARAMS
    from feature_matcher_ros.settings import FRONTEND_PARAMS, PRECISION_PARAM

    doc = yaml.safe_load((repo / "config" / "matcher.yaml").read_text())
    params = doc["/**"]["ros__parameters"]

    def flatten(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flatten(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    in_file = dict(flatten(params))
    specs = {s.name: s for s in (*NODE_PARAMS, PRECISION_PARAM, *FRONTEND_PARAMS)}
    assert sorted(in_file) == sorted(specs)
    for name, value in in_file.items():
        assert type(value) is specs[name].type and value == specs[name].default, name


def test_example_params_files_hold_valid_values(repo):
    """config/matcher_rgbd.yaml, matcher_stereo.yaml, matcher_robot.yaml: every name a parameter of the node,
    the frontend or a backend, every value allowed by its spec."""
    import yaml

    from feature_matcher_ros.backends import backend_class, backend_names
    from feature_matcher_ros.ros.node import NODE_PARAMS
    from feature_matcher_ros.settings import FRONTEND_PARAMS, PRECISION_PARAM

    specs = {s.name: s for s in (*NODE_PARAMS, PRECISION_PARAM, *FRONTEND_PARAMS)}
    for name in backend_names():
        specs.update((s.name, s) for s in backend_class(name).PARAMS)

    def flatten(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flatten(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    files = sorted((repo / "config").glob("matcher_*.yaml"))
    assert {f.name for f in files} >= {"matcher_rgbd.yaml", "matcher_stereo.yaml", "matcher_robot.yaml"}
    for path in files:
        values = dict(flatten(yaml.safe_load(path.read_text())["/**"]["ros__parameters"]))
        for name, value in values.items():
            assert name in specs, f"{path.name}: unknown parameter {name}"
            assert specs[name].check(value) is None, f"{path.name}: {specs[name].check(value)}"
