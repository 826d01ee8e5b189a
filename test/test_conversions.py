"""Message <-> numpy conversions of the ROS layer, on a real TUM frame (no DDS needed)."""

import math
import sys
import threading

import cv2
import numpy as np
import pytest
from rcl_interfaces.msg import ParameterType
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from feature_matcher_ros.camera import CameraModel
from feature_matcher_ros.params import ParamSpec
from feature_matcher_ros.ros import conversions as cv
from feature_matcher_ros.ros.mailbox import Mailbox
from feature_matcher_ros.ros.parameters import descriptor_for


@pytest.fixture(scope="module")
def rgb(shared):
    path = sorted((shared / "data" / "tum_fr2_desk" / "images").glob("*.png"))[0]
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def camera(shared):
    return CameraModel.from_yaml(shared / "data" / "tum_fr2_desk" / "intrinsics.yaml")


def _as_encoding(rgb, encoding):
    return {
        "rgb8": rgb,
        "bgr8": cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
        "rgba8": cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA),
        "bgra8": cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA),
        "mono8": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
        "8UC1": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
        "mono16": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257,
        "16UC1": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 64,
    }[encoding]


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "mono16", "16UC1"])
@pytest.mark.parametrize("pad", [0, 13])
def test_image_round_trip_every_encoding_with_padding(rgb, encoding, pad):
    pixels = _as_encoding(rgb, encoding)
    row = pixels.shape[1] * pixels.itemsize * (1 if pixels.ndim == 2 else pixels.shape[2])
    msg = cv.numpy_to_image(pixels, encoding, stamp_ns=1_311_868_169_163_498_000, frame_id="cam", step=row + pad)
    assert msg.step == row + pad and len(msg.data) == msg.step * msg.height
    if pad:  # the padding bytes are really there and zero
        rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
        assert not rows[:, row:].any()
    back = cv.image_to_numpy(msg)
    assert back.dtype == pixels.dtype and back.shape == pixels.shape
    np.testing.assert_array_equal(back, pixels)
    assert cv.stamp_to_ns(msg.header.stamp) == 1_311_868_169_163_498_000
    # What the frontend gets: RGB for colour encodings, the same gray for mono ones.
    out = cv.to_matcher_image(back, encoding)
    assert out.dtype == np.uint8
    if pixels.ndim == 3:
        np.testing.assert_array_equal(out, rgb)
    else:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        assert np.abs(out.astype(int) - gray.astype(int)).max() <= 1


def test_mono16_other_byte_order_and_stretch():
    values = np.array([[0, 256, 1000], [4095, 2048, 1]], np.uint16)
    msg = Image(height=2, width=3, encoding="mono16", step=6)
    msg.is_bigendian = sys.byteorder == "little"  # the non-native order
    msg.data = values.byteswap().tobytes()
    back = cv.image_to_numpy(msg)
    np.testing.assert_array_equal(back, values)
    gray = cv.to_matcher_image(back, "mono16")
    assert gray.max() == 255 and gray[0, 0] == 0 and gray[1, 1] == round(2048 * 255 / 4095)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(encoding="yuv422", height=4, width=4, step=8, data=bytes(32)), "unknown_encoding"),
        (dict(encoding="rgb8", height=0, width=4, step=12, data=b""), "zero_size"),
        (dict(encoding="rgb8", height=4, width=0, step=0, data=b""), "zero_size"),
        (dict(encoding="rgb8", height=4, width=4, step=12, data=bytes(47)), "short_data"),
        (dict(encoding="mono16", height=4, width=4, step=7, data=bytes(28)), "bad_step"),
    ],
)
def test_bad_images_raise_input_error_with_reason(kwargs, reason):
    with pytest.raises(cv.InputError) as info:
        cv.image_to_numpy(Image(**kwargs))
    assert info.value.reason == reason and str(info.value)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_decode(rgb, fmt):
    msg = cv.numpy_to_compressed(rgb, fmt, stamp_ns=5, frame_id="cam")
    out = cv.compressed_to_numpy(msg)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    err = np.abs(out.astype(int) - rgb.astype(int)).mean()
    assert err == 0 if fmt == "png" else err < 4
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(cv.compressed_to_numpy(cv.numpy_to_compressed(gray, "png")), gray)


def test_compressed_garbage_and_empty():
    with pytest.raises(cv.InputError) as info:
        cv.compressed_to_numpy(CompressedImage(format="jpeg", data=b"not an image at all"))
    assert info.value.reason == "decode_failed"
    with pytest.raises(cv.InputError) as info:
        cv.compressed_to_numpy(CompressedImage(format="jpeg", data=b""))
    assert info.value.reason == "zero_size"


def test_camera_info_round_trip(camera):
    msg = cv.model_to_camera_info(camera, stamp_ns=7, frame_id="cam")
    back = cv.camera_info_to_model(msg)
    assert (back.width, back.height) == (640, 480)
    np.testing.assert_allclose(back.K, camera.K)
    np.testing.assert_allclose(back.dist, camera.dist)


def test_camera_info_roi_and_binning(camera):
    msg = cv.model_to_camera_info(camera)
    msg.binning_x = msg.binning_y = 2
    back = cv.camera_info_to_model(msg)
    assert (back.width, back.height) == (320, 240)
    assert back.fx == pytest.approx(camera.fx / 2) and back.cy == pytest.approx(camera.cy / 2)
    msg = cv.model_to_camera_info(camera)
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 40, 320, 240
    back = cv.camera_info_to_model(msg)
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
    with pytest.raises(cv.InputError) as info:
        cv.camera_info_to_model(msg)
    assert info.value.reason == "bad_camera_info"


def test_camera_info_cache(camera):
    cache = cv.CameraInfoCache()
    with pytest.raises(cv.InputError) as info:
        cache.camera_for(640, 480)
    assert info.value.reason == "no_camera_info"
    assert cache.update(cv.model_to_camera_info(camera)) is None
    assert cache.camera_for(640, 480).fx == pytest.approx(camera.fx)
    with pytest.raises(cv.InputError) as info:
        cache.camera_for(320, 240)
    assert info.value.reason == "size_mismatch"
    bad = cv.model_to_camera_info(camera)
    bad.k = [0.0] * 9
    assert cache.update(bad).reason == "bad_camera_info"
    with pytest.raises(cv.InputError) as info:  # a broken camera_info is not silently replaced by the old one
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
    pts = cv.cloud_to_array(msg)
    np.testing.assert_array_equal(np.stack([pts["x0"], pts["y0"]], 1), k0)
    np.testing.assert_array_equal(np.stack([pts["x1"], pts["y1"]], 1), k1)
    np.testing.assert_array_equal(pts["score"], scores)
    np.testing.assert_array_equal(pts["inlier"] == 1.0, inl)
    kf = pts["kf_sec"].astype(np.int64) * 1_000_000_000 + pts["kf_nanosec"]
    assert set(kf.tolist()) == {1_311_868_169_163_498_000}
    empty = cv.matches_to_cloud(k0[:0], k1[:0], scores[:0], inl[:0], header, 0)
    assert empty.width == 0 and len(cv.cloud_to_array(empty)) == 0


def test_pose_conversions_and_keyframe_frame_id():
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.normal(size=4)
        R = cv.quaternion_to_rotation(*q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(cv.quaternion_to_rotation(*cv.rotation_to_quaternion(R)), R, atol=1e-9)
    T = np.eye(4)
    T[:3, :3] = cv.quaternion_to_rotation(0.1, -0.7, 0.2, 0.05)
    T[:3, 3] = (1.0, -2.0, 0.5)
    np.testing.assert_allclose(cv.pose_to_matrix(cv.matrix_to_pose(T)), T, atol=1e-12)
    name = cv.keyframe_frame_id("camera_rgb_optical_frame", 1_311_868_169_163_498_000)
    assert cv.parse_keyframe_frame_id(name) == ("camera_rgb_optical_frame", 1_311_868_169_163_498_000)
    with pytest.raises(ValueError):
        cv.parse_keyframe_frame_id("camera_rgb_optical_frame")
    msg = cv.relative_pose_msg(T, np.diag([1e6] * 3 + [1e-4] * 3), 42, "cam", 41)
    assert cv.stamp_to_ns(msg.header.stamp) == 42 and cv.parse_keyframe_frame_id(msg.header.frame_id) == ("cam", 41)
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


def _exp(w):
    return cv2.Rodrigues(np.asarray(w, np.float64).reshape(3, 1))[0]


def _log(R):
    return cv2.Rodrigues(R)[0].reshape(3)


def _assert_covariance_close(deltas, predicted):
    """Sample covariance of ``deltas`` equals ``predicted`` within 5 standard errors, entry by entry."""
    empirical = np.cov(np.asarray(deltas).T)
    d = np.diag(predicted)
    stderr = np.sqrt((np.outer(d, d) + predicted**2) / len(deltas))
    assert (np.abs(empirical - predicted) < 5 * stderr).all(), np.abs(empirical - predicted) / stderr


def test_inverse_and_composition_covariance_match_sampling():
    """First-order covariance propagation against Monte-Carlo sampling, in the RelativePose convention
    (``t_true = t + dt``, ``R_true = exp([w]x) @ R``)."""
    rng = np.random.default_rng(3)
    R, t = _exp([0.2, -0.4, 0.1]), np.array([0.3, -0.1, 0.9])
    A = rng.normal(size=(6, 6)) * 1e-3
    cov = A @ A.T
    T_inv, cov_inv = cv.invert_with_covariance(R, t, cov)
    np.testing.assert_allclose(T_inv[:3, :3], R.T, atol=1e-12)
    np.testing.assert_allclose(T_inv[:3, 3], -R.T @ t, atol=1e-12)
    samples = rng.multivariate_normal(np.zeros(6), cov, size=20000)
    deltas = []
    for d in samples:
        Rt, tt = _exp(d[3:]) @ R, t + d[:3]
        Ri, ti = Rt.T, -Rt.T @ tt
        deltas.append(np.concatenate([ti - T_inv[:3, 3], _log(Ri @ T_inv[:3, :3].T)]))
    _assert_covariance_close(deltas, cov_inv)

    T_b = np.eye(4)
    T_b[:3, :3], T_b[:3, 3] = _exp([0.0, 0.3, -0.2]), [1.0, 0.5, -0.2]
    B = rng.normal(size=(6, 6)) * 1e-3
    cov_b = B @ B.T
    T_a = np.eye(4)
    T_a[:3, :3], T_a[:3, 3] = R, t
    T_ab, cov_ab = cv.compose_with_covariance(T_a, cov, T_b, cov_b)
    np.testing.assert_allclose(T_ab, T_a @ T_b, atol=1e-12)
    samples_b = rng.multivariate_normal(np.zeros(6), cov_b, size=20000)
    deltas = []
    for da, db in zip(samples, samples_b):
        Ra, ta = _exp(da[3:]) @ R, t + da[:3]
        Rb, tb = _exp(db[3:]) @ T_b[:3, :3], T_b[:3, 3] + db[:3]
        Rc, tc = Ra @ Rb, Ra @ tb + ta
        deltas.append(np.concatenate([tc - T_ab[:3, 3], _log(Rc @ T_ab[:3, :3].T)]))
    _assert_covariance_close(deltas, cov_ab)


def test_params_file_lists_every_default(repo):
    """config/matcher.yaml holds exactly the declared node and frontend parameters, at their defaults."""
    import yaml

    from feature_matcher_ros.frontend import FRONTEND_PARAMS, PRECISION_PARAM
    from feature_matcher_ros.ros.node import NODE_PARAMS

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
