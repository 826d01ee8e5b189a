"""messages: one decoder for rclpy and rosbags messages, on a real TUM frame. Images in every encoding and row
padding, byte orders, compressed images and the InputError reasons; then each message built once with rclpy,
serialised to CDR and read back with rosbags (as a bag gives it): both objects must decode to the same values."""

import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from feature_matcher_ros import messages
from feature_matcher_ros.camera import CameraModel
from feature_matcher_ros.ros import conversions as cv
from feature_matcher_ros.se3 import quat_to_rotation, se3

ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "mono16", "16UC1"]
BAD_IMAGES = [
    (dict(encoding="yuv422", height=4, width=4, step=8, data=bytes(32)), "unknown_encoding"),
    (dict(encoding="rgb8", height=0, width=4, step=12, data=b""), "zero_size"),
    (dict(encoding="rgb8", height=4, width=0, step=0, data=b""), "zero_size"),
    (dict(encoding="rgb8", height=4, width=4, step=12, data=bytes(47)), "short_data"),
    (dict(encoding="mono16", height=4, width=4, step=7, data=bytes(28)), "bad_step"),
]


@pytest.fixture(scope="module")
def rgb(shared):
    path = sorted((shared / "data" / "tum_fr2_desk" / "images").glob("*.png"))[0]
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def camera(shared):
    return CameraModel.from_yaml(shared / "data" / "tum_fr2_desk" / "intrinsics.yaml")


def _as_bag_message(msg, msgtype):
    """``msg`` (rclpy) as rosbags deserialises it from a bag."""
    from feature_matcher_ros.evaluation.bagio import typestore

    return typestore().deserialize_cdr(serialize_message(msg), msgtype)


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


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("pad", [0, 13])
def test_image_round_trip_every_encoding_with_padding(rgb, encoding, pad):
    pixels = _as_encoding(rgb, encoding)
    row = pixels.shape[1] * pixels.itemsize * (1 if pixels.ndim == 2 else pixels.shape[2])
    msg = cv.numpy_to_image(pixels, encoding, stamp_ns=1_311_868_169_163_498_000, frame_id="cam", step=row + pad)
    assert msg.step == row + pad and len(msg.data) == msg.step * msg.height
    if pad:  # the padding bytes are really there and zero
        rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
        assert not rows[:, row:].any()
    back = messages.image_to_numpy(msg)
    assert back.dtype == pixels.dtype and back.shape == pixels.shape
    np.testing.assert_array_equal(back, pixels)
    assert messages.stamp_to_ns(msg.header.stamp) == 1_311_868_169_163_498_000
    # What the frontend gets: RGB for colour encodings, the same gray for mono ones.
    out = messages.to_matcher_image(back, encoding)
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
    back = messages.image_to_numpy(msg)
    np.testing.assert_array_equal(back, values)
    gray = messages.to_matcher_image(back, "mono16")
    assert gray.max() == 255 and gray[0, 0] == 0 and gray[1, 1] == round(2048 * 255 / 4095)


@pytest.mark.parametrize("kwargs, reason", BAD_IMAGES)
def test_bad_images_raise_input_error_with_reason(kwargs, reason):
    with pytest.raises(messages.InputError) as info:
        messages.image_to_numpy(Image(**kwargs))
    assert info.value.reason == reason and str(info.value)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_decode(rgb, fmt):
    msg = cv.numpy_to_compressed(rgb, fmt, stamp_ns=5, frame_id="cam")
    out = messages.compressed_to_numpy(msg)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    err = np.abs(out.astype(int) - rgb.astype(int)).mean()
    assert err == 0 if fmt == "png" else err < 4
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(messages.compressed_to_numpy(cv.numpy_to_compressed(gray, "png")), gray)


def test_compressed_garbage_and_empty():
    with pytest.raises(messages.InputError) as info:
        messages.compressed_to_numpy(CompressedImage(format="jpeg", data=b"not an image at all"))
    assert info.value.reason == "decode_failed"
    with pytest.raises(messages.InputError) as info:
        messages.compressed_to_numpy(CompressedImage(format="jpeg", data=b""))
    assert info.value.reason == "zero_size"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_images_decode_alike_from_rclpy_and_from_a_bag(rgb, encoding):
    msg = cv.numpy_to_image(_as_encoding(rgb, encoding), encoding, stamp_ns=7, frame_id="cam",
                            step=rgb.shape[1] * 8 + 5)
    bag = _as_bag_message(msg, "sensor_msgs/msg/Image")
    assert isinstance(bag.data, np.ndarray) and not isinstance(msg.data, np.ndarray)
    raw_live, raw_bag = messages.image_to_numpy(msg), messages.image_to_numpy(bag)
    np.testing.assert_array_equal(raw_live, _as_encoding(rgb, encoding))
    np.testing.assert_array_equal(raw_bag, raw_live)
    live, offline = messages.decode_image(msg), messages.decode_image(bag)
    assert live.dtype == np.uint8
    np.testing.assert_array_equal(offline, live)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if live.ndim == 3:
        np.testing.assert_array_equal(live, rgb)
    elif encoding in ("mono8", "8UC1"):
        np.testing.assert_array_equal(live, gray)
    else:  # 16-bit gray is stretched: the frame's maximum becomes 255
        assert live.max() == 255 and np.abs(live - gray * (255 / gray.max())).max() <= 1


def test_big_endian_bag_image():
    values = np.array([[0, 300, 65535], [7, 4096, 1]], np.uint16)
    msg = cv.numpy_to_image(values, "16UC1")
    bag = _as_bag_message(msg, "sensor_msgs/msg/Image")
    bag.is_bigendian = sys.byteorder == "little"  # the other order, as a foreign camera would write it
    bag.data = np.frombuffer(values.byteswap().tobytes(), np.uint8)
    np.testing.assert_array_equal(messages.image_to_numpy(bag), values)


def test_decoded_pixels_never_alias_the_message(rgb):
    msg = cv.numpy_to_image(rgb, "rgb8")
    pixels = messages.image_to_numpy(msg)
    pixels[:] = 0
    np.testing.assert_array_equal(messages.image_to_numpy(msg), rgb)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_alike(rgb, fmt):
    msg = cv.numpy_to_compressed(rgb, fmt)
    bag = _as_bag_message(msg, "sensor_msgs/msg/CompressedImage")
    np.testing.assert_array_equal(messages.decode_image(bag), messages.decode_image(msg))
    assert messages.decode_image(msg).shape == rgb.shape


def test_sixteen_bit_depth_png_is_stretched(shared):
    """A real 16-bit PNG (TUM RGB-D depth), as a CompressedImage and as a file: one gray uint8 image."""
    path = sorted((shared / "data" / "tum_fr3_cabinet_rgbd" / "depth").glob("*.png"))[0]
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    msg = CompressedImage(format="png", data=path.read_bytes())
    gray = messages.decode_image(_as_bag_message(msg, "sensor_msgs/msg/CompressedImage"))
    np.testing.assert_array_equal(gray, messages.opencv_to_matcher_image(raw))
    expected = np.round(raw.astype(np.float32) * (255.0 / raw.max())).astype(np.uint8)
    np.testing.assert_array_equal(gray, expected)


@pytest.mark.parametrize("kwargs, reason", BAD_IMAGES)
def test_bag_messages_fail_with_the_node_reasons(kwargs, reason):
    bag = _as_bag_message(Image(**kwargs), "sensor_msgs/msg/Image")
    with pytest.raises(messages.InputError) as info:
        messages.decode_image(bag)
    assert info.value.reason == reason


def test_camera_info_alike(camera):
    msg = cv.model_to_camera_info(camera, 5, "cam")
    msg.binning_x = msg.binning_y = 2
    live, offline = messages.camera_info_to_model(msg), messages.camera_info_to_model(
        _as_bag_message(msg, "sensor_msgs/msg/CameraInfo"))
    assert (offline.width, offline.height) == (live.width, live.height) == (320, 240)
    np.testing.assert_array_equal(offline.K, live.K)
    np.testing.assert_array_equal(offline.dist, live.dist)


def test_cloud_pose_and_stamp_alike():
    rng = np.random.default_rng(2)
    k0, k1 = rng.uniform(0, 640, (30, 2)), rng.uniform(0, 480, (30, 2))
    scores, inl = rng.uniform(0, 1, 30).astype(np.float32), rng.uniform(0, 1, 30) > 0.5
    header = Header(stamp=cv.ns_to_stamp(1_311_868_169_263_274_000), frame_id="cam")
    cloud = cv.matches_to_cloud(k0, k1, scores, inl, header, keyframe_stamp_ns=1_311_868_169_163_498_000)
    bag_cloud = _as_bag_message(cloud, "sensor_msgs/msg/PointCloud2")
    from_bag, from_rclpy = messages.cloud_to_array(bag_cloud), messages.cloud_to_array(cloud)
    assert from_bag.dtype == from_rclpy.dtype and "z0" in from_bag.dtype.names
    for name in from_bag.dtype.names:  # per column: z0 is NaN (no depth in mono), and NaN == NaN only there
        np.testing.assert_array_equal(from_bag[name], from_rclpy[name])
    assert messages.stamp_to_ns(bag_cloud.header.stamp) == 1_311_868_169_263_274_000
    T = se3(quat_to_rotation([0.1, -0.7, 0.2, 0.05]), [1.0, -2.0, 0.5])
    pose = cv.relative_pose_msg(T, np.eye(6), 42, "cam", 41)
    bag_pose = _as_bag_message(pose, "geometry_msgs/msg/PoseWithCovarianceStamped")
    np.testing.assert_allclose(messages.pose_to_matrix(bag_pose.pose.pose), T, atol=1e-12)
    np.testing.assert_array_equal(messages.pose_to_matrix(bag_pose.pose.pose), messages.pose_to_matrix(pose.pose.pose))
    assert messages.parse_keyframe_frame_id(bag_pose.header.frame_id) == ("cam", 41)


def test_organised_cloud_with_padded_rows():
    """height 2, each row padded by 3 bytes: the padding is skipped, fields with count > 1 become columns."""
    points = np.zeros((2, 3), np.dtype([("xy", "<f4", (2,)), ("id", "<u2")]))
    points["xy"] = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    points["id"] = np.arange(6).reshape(2, 3)
    rows = np.zeros((2, 3 * points.dtype.itemsize + 3), np.uint8)
    rows[:, : 3 * points.dtype.itemsize] = points.view(np.uint8).reshape(2, -1)
    msg = PointCloud2(height=2, width=3, point_step=points.dtype.itemsize, row_step=rows.shape[1],
                      fields=[PointField(name="xy", offset=0, datatype=PointField.FLOAT32, count=2),
                              PointField(name="id", offset=8, datatype=PointField.UINT16, count=1)],
                      is_bigendian=False, data=rows.tobytes())
    for m in (msg, _as_bag_message(msg, "sensor_msgs/msg/PointCloud2")):
        out = messages.cloud_to_array(m)
        np.testing.assert_array_equal(out["xy"], points["xy"].reshape(6, 2))
        np.testing.assert_array_equal(out["id"], np.arange(6))
    msg.fields[1].datatype = 42
    with pytest.raises(messages.InputError) as info:
        messages.cloud_to_array(msg)
    assert info.value.reason == "bad_cloud"


@pytest.fixture(scope="module")
def cabinet_depth(shared):
    """A real registered depth image (TUM fr3 cabinet, 16-bit PNG, 5000 units per metre) and it in metres."""
    path = sorted((shared / "data" / "tum_fr3_cabinet_rgbd" / "depth").glob("*.png"))[0]
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    metres = raw.astype(np.float32) / 5000.0
    metres[raw == 0] = np.nan
    return raw, metres


def _compressed_depth(fmt, png_pixels, quant=(0.0, 0.0)):
    header = np.array([0], "<i4").tobytes() + np.array(quant, "<f4").tobytes()
    ok, png = cv2.imencode(".png", png_pixels)
    assert ok
    return CompressedImage(format=fmt, data=header + png.tobytes())


def test_depth_16bit_with_scale_and_32bit_metres_from_rclpy_and_bags(cabinet_depth):
    raw, metres = cabinet_depth
    for msg in (cv.numpy_to_image(raw, "16UC1"),
                _as_bag_message(cv.numpy_to_image(raw, "mono16"), "sensor_msgs/msg/Image")):
        got = messages.depth_to_metres(msg, scale=1 / 5000.0)
        assert np.array_equal(np.isnan(got), np.isnan(metres))
        assert np.allclose(got[~np.isnan(got)], metres[~np.isnan(metres)])
    as_float = np.where(np.isnan(metres), np.inf, metres).astype(np.float32)
    got = messages.depth_to_metres(cv.numpy_to_image(as_float, "32FC1"))
    assert (np.array_equal(np.isnan(got), np.isnan(metres))
            and np.allclose(got[~np.isnan(got)], metres[~np.isnan(metres)]))


def test_compressed_depth_png_both_forms(cabinet_depth):
    raw, metres = cabinet_depth
    got = messages.depth_to_metres(_compressed_depth("16UC1; compressedDepth png", raw), scale=1 / 5000.0)
    assert np.allclose(got, metres, equal_nan=True)
    # 32FC1: quantised inverse depth q = A / z + B (the publisher's defaults: z0 = 100, max 10 m)
    a = 100.0 * 101.0
    b = 1.0 - a / 10.0
    q = np.where(np.isnan(metres), 0, np.round(a / np.where(np.isnan(metres), 1, metres) + b)).astype(np.uint16)
    got = messages.depth_to_metres(_compressed_depth("32FC1; compressedDepth png", q, (a, b)))
    ok = ~np.isnan(metres)
    assert np.array_equal(np.isnan(got), ~ok)
    assert np.percentile(np.abs(got[ok] - metres[ok]) / metres[ok], 99) < 0.01  # quantisation only


@pytest.mark.parametrize("msg, reason", [
    (SimpleNamespace(encoding="rgb8", height=1, width=1, step=3, is_bigendian=0, data=b"abc"), "depth_encoding"),
    (CompressedImage(format="16UC1; compressedDepth rvl", data=bytes(40)), "depth_decode_failed"),
    (CompressedImage(format="16UC1; compressedDepth png", data=bytes(8)), "depth_decode_failed"),
    (CompressedImage(format="jpeg", data=bytes(40)), "depth_encoding"),
])
def test_bad_depth_raises_with_its_reason(msg, reason):
    with pytest.raises(messages.InputError) as err:
        messages.depth_to_metres(msg)
    assert err.value.reason == reason
