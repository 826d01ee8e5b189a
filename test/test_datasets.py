"""datasets: the ../shared/data layouts (sequence, RGB-D, stereo, pairs) and TUM files, on the real folders."""

import shutil

import cv2
import numpy as np
import pytest

from feature_matcher_ros.datasets import (
    DatasetError,
    Trajectory,
    format_stamp,
    parse_stamp,
    read_pose_pairs,
    read_sequence,
    read_tum,
    write_tum,
)
from feature_matcher_ros.se3 import invert, rotation_from_rotvec, se3

SEQUENCES = ["tum_fr2_desk", "kitti00_f100_109", "kitti06_stereo_f000_050", "tum_fr3_cabinet_rgbd"]


def _listed_stamps(path):
    """The stamps of a listing, exactly, by string arithmetic (independent of parse_stamp)."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            sec, _, frac = line.split()[0].partition(".")
            out.append(int(sec) * 1_000_000_000 + int((frac + "0" * 9)[:9]))
    return out


@pytest.mark.parametrize("name", SEQUENCES)
def test_every_sequence_folder(shared, name):
    """Frames in time order with exact stamps, images that open at the camera's size, one ground-truth pose per
    image at the image's stamp."""
    folder = shared / "data" / name
    seq = read_sequence(folder)
    stamps = [s for s, _ in seq.frames]
    assert stamps == _listed_stamps(folder / "images.txt") and np.all(np.diff(stamps) > 0)
    image = cv2.imread(str(seq.frames[-1][1]), cv2.IMREAD_UNCHANGED)
    assert image.shape[:2] == (seq.camera.height, seq.camera.width)
    assert list(seq.ground_truth.stamps_ns) == stamps
    for T in seq.ground_truth.poses:
        np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
    assert (seq.depth is not None) == (name == "tum_fr3_cabinet_rgbd")
    assert (seq.stereo is not None) == (name == "kitti06_stereo_f000_050")


def test_rgbd_depth(shared):
    seq = read_sequence(shared / "data" / "tum_fr3_cabinet_rgbd")
    assert [s for s, _ in seq.depth.frames] == [s for s, _ in seq.frames]
    assert seq.depth.scale == 5000.0 and seq.depth.registered
    raw = cv2.imread(str(seq.depth.frames[0][1]), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (seq.camera.height, seq.camera.width)
    metres = raw[raw > 0] / seq.depth.scale
    assert 0.3 < np.median(metres) < 5.0  # a cabinet seen from a hand-held camera


def test_stereo_rig(shared):
    seq = read_sequence(shared / "data" / "kitti06_stereo_f000_050")
    rig = seq.stereo
    assert [s for s, _ in rig.frames] == [s for s, _ in seq.frames]
    assert rig.baseline_m == pytest.approx(0.537150653)
    assert (rig.camera.width, rig.camera.height) == (seq.camera.width, seq.camera.height)
    np.testing.assert_allclose(rig.camera.K, seq.camera.K)
    right = cv2.imread(str(rig.frames[0][1]), cv2.IMREAD_UNCHANGED)
    assert right.shape[:2] == (seq.camera.height, seq.camera.width)


@pytest.mark.parametrize("name", ["tum_fr2_desk", "kitti00_f100_109", "tum_fr3_cabinet_rgbd"])
def test_pairs_agree_with_the_ground_truth(shared, name):
    """``T_0to1 = inv(T_world_cam1) @ T_world_cam0`` (the README's definition), K as in intrinsics.yaml."""
    folder = shared / "data" / name
    seq = read_sequence(folder)
    stamp_of = {path: stamp for stamp, path in seq.frames}
    gt = seq.ground_truth.by_stamp()
    pairs = read_pose_pairs(folder)
    assert len(pairs) > 10
    for p in pairs:
        expected = invert(gt[stamp_of[p.image1]]) @ gt[stamp_of[p.image0]]
        np.testing.assert_allclose(p.T_0to1, expected, atol=2e-6)
        np.testing.assert_allclose(p.K0, seq.camera.K, atol=1e-3)


def test_stamps_are_exact_and_round_trip():
    assert parse_stamp("1311868169.163498") == 1_311_868_169_163_498_000
    assert parse_stamp(" 0.104499 ") == 104_499_000 and parse_stamp("1e-9") == 1
    for ns in (0, 1, -1, 1_311_868_169_163_498_123, -2_500_000_000):
        assert parse_stamp(format_stamp(ns)) == ns
    for bad in ("", "abc", "nan", "inf", "1.2.3"):
        with pytest.raises(DatasetError, match="not a timestamp"):
            parse_stamp(bad)


def test_tum_round_trip_and_interpolation(shared, tmp_path):
    gt = read_tum(shared / "data" / "tum_fr2_desk" / "groundtruth.txt")
    back = read_tum(write_tum(tmp_path / "gt.tum", gt))
    assert list(back.stamps_ns) == list(gt.stamps_ns)
    np.testing.assert_allclose(back.poses, gt.poses, atol=2e-9)
    T0, T1 = se3(np.eye(3), [0, 0, 0]), se3(rotation_from_rotvec([0, 0, 0.2]), [2.0, 0, 0])
    traj = Trajectory.from_lists([1000, 0], [T1, T0])  # sorted on the way in
    mid = traj.at(500, max_gap_ns=1000)
    np.testing.assert_allclose(mid, se3(rotation_from_rotvec([0, 0, 0.1]), [1.0, 0, 0]), atol=1e-12)
    assert traj.at(500, max_gap_ns=999) is None and traj.at(1001) is None
    np.testing.assert_allclose(traj.relative(0, 1000), invert(T1), atol=1e-12)


def test_bad_folders_name_the_file(shared, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_sequence(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="images.txt is missing"):
        read_sequence(tmp_path)
    folder = tmp_path / "tum"
    shutil.copytree(shared / "data" / "tum_fr3_cabinet_rgbd", folder)
    lines = (folder / "depth.txt").read_text().splitlines()
    (folder / "depth.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetError, match="depth.txt: the timestamps differ"):
        read_sequence(folder)
    (folder / "depth.txt").write_text("\n".join(lines) + "\n")
    (folder / "images.txt").write_text((folder / "images.txt").read_text() + "12.5x images/a.jpg\n")
    with pytest.raises(DatasetError, match=r"images.txt:\d+: not a timestamp: '12.5x'"):
        read_sequence(folder)
    (folder / "groundtruth.txt").write_text("1.0 0 0 0 0 0 0 0\n")
    with pytest.raises(DatasetError, match=r"groundtruth.txt:1: invalid quaternion"):
        read_tum(folder / "groundtruth.txt")
