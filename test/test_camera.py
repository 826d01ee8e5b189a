"""CameraModel: the ../shared/data intrinsics.yaml layout, undistortion round trip, scaling, bad input."""

import numpy as np
import pytest

from feature_matcher_ros.camera import CameraModel


@pytest.fixture(scope="module")
def tum(shared):
    return CameraModel.from_yaml(shared / "data" / "tum_fr2_desk" / "intrinsics.yaml")


def test_yaml_values(tum, shared):
    assert (tum.width, tum.height) == (640, 480)
    assert tum.K[0, 0] == pytest.approx(520.90862) and tum.K[1, 1] == pytest.approx(521.007327)
    assert tum.K[0, 2] == pytest.approx(325.141442) and tum.K[1, 2] == pytest.approx(249.701764)
    assert tum.dist.tolist() == pytest.approx([0.231222, -0.784899, -0.003257, -0.000105, 0.917205])
    assert tum.problem() is None and tum.has_distortion
    kitti = CameraModel.from_yaml(shared / "data" / "kitti00_f100_109" / "intrinsics.yaml")
    assert (kitti.width, kitti.height) == (1241, 376) and not kitti.has_distortion


def test_undistortion_round_trip(tum):
    """pixels -> normalised (undistorted) -> pixels over the whole TUM image, far below a pixel."""
    xs, ys = np.meshgrid(np.linspace(0, 639, 17), np.linspace(0, 479, 13))
    px = np.stack([xs.ravel(), ys.ravel()], axis=1)
    xn = tum.normalize(px)
    back = tum.project(xn)
    assert np.abs(back - px).max() < 1e-3
    # The distortion is really applied: near the corners the pinhole-only normalisation is pixels away.
    pinhole = (px - [tum.cx, tum.cy]) / [tum.fx, tum.fy]
    shift_px = np.linalg.norm(xn - pinhole, axis=1) * tum.focal
    assert shift_px.max() > 5.0
    assert shift_px[np.argmin(np.linalg.norm(px - [tum.cx, tum.cy], axis=1))] < 0.05


def test_no_distortion_is_pinhole(shared):
    cam = CameraModel.from_yaml(shared / "data" / "kitti00_f100_109" / "intrinsics.yaml")
    px = np.array([[0.0, 0.0], [607.1928, 185.2157], [1240.0, 375.0]])
    xn = cam.normalize(px)
    assert np.allclose(xn, (px - [cam.cx, cam.cy]) / [cam.fx, cam.fy])
    assert np.allclose(cam.project(xn), px)


def test_scaled_keeps_rays(tum):
    half = tum.scaled(320, 240)
    px = np.array([[10.0, 20.0], [325.0, 250.0], [600.0, 450.0]])
    px_half = (px + 0.5) * 0.5 - 0.5
    assert np.allclose(half.normalize(px_half), tum.normalize(px), atol=1e-9)


def test_problems():
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    assert CameraModel.from_matrix(640, 480, K).problem() is None
    assert "focal" in CameraModel.from_matrix(640, 480, np.diag([0.0, 500, 1])).problem()
    assert "NaN" in CameraModel.from_matrix(640, 480, np.where(K == 500, np.nan, K)).problem()
    assert "positive" in CameraModel.from_matrix(0, 480, K).problem()
    assert "distortion" in CameraModel.from_matrix(640, 480, K, [0.1, 0.2, 0.3]).problem()
    with pytest.raises(ValueError, match="9 entries"):
        CameraModel.from_matrix(640, 480, np.eye(2))


def test_bad_yaml_files(tmp_path):
    missing = tmp_path / "missing_fx.yaml"
    missing.write_text("model: pinhole\nwidth: 640\nheight: 480\nfy: 500\ncx: 320\ncy: 240\n")
    with pytest.raises(ValueError, match="'fx'"):
        CameraModel.from_yaml(missing)
    negative = tmp_path / "negative.yaml"
    negative.write_text("width: 640\nheight: 480\nfx: -5\nfy: 500\ncx: 320\ncy: 240\n")
    with pytest.raises(ValueError, match="focal"):
        CameraModel.from_yaml(negative)
    with pytest.raises(ValueError, match="cannot read"):
        CameraModel.from_yaml(tmp_path / "nope.yaml")
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("[1, 2")
    with pytest.raises(ValueError, match="YAML"):
        CameraModel.from_yaml(garbage)


def test_ros_camera_info_layout(tmp_path, tum):
    path = tmp_path / "ros.yaml"
    path.write_text(
        "image_width: 640\nimage_height: 480\ncamera_name: tum\n"
        f"camera_matrix: {{rows: 3, cols: 3, data: {tum.K.ravel().tolist()}}}\n"
        "distortion_model: plumb_bob\n"
        f"distortion_coefficients: {{rows: 1, cols: 5, data: {tum.dist.tolist()}}}\n"
    )
    cam = CameraModel.from_yaml(path)
    assert np.allclose(cam.K, tum.K) and np.allclose(cam.dist, tum.dist)
