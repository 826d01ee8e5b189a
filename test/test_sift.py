"""SIFT and ORB backends on real TUM images: features, mutual ratio matching, live parameters, precision."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from feature_matcher_ros.backends import available_backends, create_backend
from feature_matcher_ros.backends.base import Features
from feature_matcher_ros.backends.sift import OrbBackend, SiftBackend, mutual_ratio_match
from feature_matcher_ros.datasets import read_sequence
from feature_matcher_ros.geometry import estimate_relative_pose, rotation_error_deg
from feature_matcher_ros.measure import bench_sift_match
from feature_matcher_ros.measure.bench_sift_match import plain_mutual_ratio
from feature_matcher_ros.se3 import invert


@pytest.fixture(scope="module")
def tum(shared):
    seq = read_sequence(shared / "data" / "tum_fr2_desk")
    frames, gt, cam = seq.frames, seq.ground_truth.by_stamp(), seq.camera
    (s0, p0), (s1, p1) = frames[0], frames[3]
    T = invert(gt[s1]) @ gt[s0]
    return cv2.imread(str(p0), cv2.IMREAD_GRAYSCALE), cv2.imread(str(p1), cv2.IMREAD_GRAYSCALE), T, cam


def test_registry():
    assert {"sift", "orb"} <= set(available_backends())
    assert isinstance(create_backend("sift", **{"sift.ratio": 0.7}), SiftBackend)
    assert isinstance(create_backend("orb"), OrbBackend)
    with pytest.raises(ValueError, match="unknown settings"):
        SiftBackend(**{"sift.nope": 1})
    with pytest.raises(ValueError, match="sift.ratio"):
        SiftBackend(**{"sift.ratio": 2.0})


@pytest.mark.parametrize("cls,dim,dtype", [(SiftBackend, 128, np.float32), (OrbBackend, 32, np.uint8)])
def test_extract(tum, cls, dim, dtype):
    backend = cls()
    image = tum[0]
    f = backend.extract(image)
    k, d = f.data["keypoints"], f.data["descriptors"]
    assert f.backend == cls.name and f.image_size == (480, 640) and f.precision == "fp32" and f.device == "cpu"
    assert k.dtype == np.float32 and k.shape[1] == 2 and 300 < len(k) <= 2048
    assert d.shape == (len(k), dim) and d.dtype == dtype
    assert np.all((k >= -0.5) & (k <= [639.5, 479.5]))
    assert f.nbytes == k.nbytes + d.nbytes + f.data["scores"].nbytes
    # RGB input is converted; a blank image gives empty (not crashing) features and no matches.
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    assert len(backend.extract(rgb).data["keypoints"]) == pytest.approx(len(k), rel=0.05)
    blank = backend.extract(np.zeros((64, 64), np.uint8))
    assert len(blank.data["keypoints"]) == 0
    assert len(backend.match(blank, f)) == 0


@pytest.mark.parametrize("cls", [SiftBackend, OrbBackend])
def test_matches_give_the_true_pose(tum, cls):
    image0, image1, T, cam = tum
    backend = cls()
    m = backend.match(backend.extract(image0), backend.extract(image1))
    assert len(m) > 150
    assert np.all((m.scores >= 0) & (m.scores <= 1))
    # Mutual nearest neighbours: no (keypoint, keypoint) pair is repeated.
    assert len(np.unique(np.concatenate([m.kpts0, m.kpts1], axis=1), axis=0)) == len(m)
    pose, reason = estimate_relative_pose(m.kpts0, m.kpts1, cam, cam, method="poselib")
    assert pose is not None, reason
    assert rotation_error_deg(pose.R, T[:3, :3]) < 1.0
    assert pose.num_inliers > 0.6 * len(m)
    # Higher score = better: the top half is at least as often an inlier as the bottom half.
    order = np.argsort(-m.scores)
    top, bottom = order[: len(m) // 2], order[len(m) // 2:]
    assert pose.inliers[top].mean() >= pose.inliers[bottom].mean()


def test_live_ratio_and_keypoints(tum):
    image0, image1, _, _ = tum
    backend = SiftBackend()
    f0, f1 = backend.extract(image0), backend.extract(image1)
    n_default = len(backend.match(f0, f1))
    assert backend.validate({**backend.settings, "sift.ratio": 0.5}) is None
    backend.apply({**backend.settings, "sift.ratio": 0.5})
    n_strict = len(backend.match(f0, f1))
    assert 0 < n_strict < n_default
    backend.apply({**backend.settings, "sift.max_keypoints": 200})
    assert len(backend.extract(image0).data["keypoints"]) <= 200
    assert "sift.ratio" in backend.validate({**backend.settings, "sift.ratio": "x"})


def test_mutual_ratio_match_small_cases():
    dist = np.array([[0.1, 0.9, 0.8], [0.5, 0.45, 0.9]], np.float32)
    pairs, scores = mutual_ratio_match(dist.copy(), ratio=0.8)
    assert pairs.tolist() == [[0, 0]] and scores[0] == pytest.approx(1 - 0.1 / 0.8)
    # Row 1 fails the ratio test (0.45 / 0.5); without it, it is a mutual match.
    pairs, _ = mutual_ratio_match(dist.copy(), ratio=1.0)
    assert pairs.tolist() == [[0, 0], [1, 1]]
    one_column = np.array([[0.2], [0.1]], np.float32)
    pairs, scores = mutual_ratio_match(one_column, ratio=0.8)
    assert pairs.tolist() == [[1, 0]] and scores.tolist() == [1.0]
    assert mutual_ratio_match(np.zeros((0, 4), np.float32), 0.8)[0].shape == (0, 2)
    # an exact tie down a column: the first row is the column's nearest (as argmin down the column)
    tie = np.array([[0.3, 0.9], [0.3, 0.8], [0.9, 0.2]], np.float32)
    assert mutual_ratio_match(tie.copy(), ratio=1.0)[0].tolist() == [[0, 0], [2, 1]]
    # squared distances: the same neighbours, the ratio and scores on their roots
    pairs, scores = mutual_ratio_match(dist.copy() ** 2, ratio=0.8, squared=True)
    assert pairs.tolist() == [[0, 0]] and scores[0] == pytest.approx(1 - 0.1 / 0.8)


def test_mutual_ratio_match_equals_the_plain_definition_on_real_descriptors(shared):
    """The column-minimum mutual check and the squared distances give exactly the pairs of the plain
    definition (argmin down every column, the ratio on Euclidean distances), on real SIFT descriptors; the
    speed command checks the same on whole sequences."""
    backend = SiftBackend(**{"sift.min_contrast_threshold": 0.005})
    images = sorted((shared / "data" / "tum_fr2_desk" / "images").glob("*"))[:2]
    d0, d1 = (backend.extract(cv2.imread(str(p))).data["descriptors"] for p in images)
    plain = plain_mutual_ratio(d0, d1, 0.8)
    pairs, _ = mutual_ratio_match(backend._distances(d0, d1), 0.8, squared=True)
    assert len(plain) > 300 and set(map(tuple, pairs.tolist())) == plain
    n, _, _, same = bench_sift_match.bench(shared / "data" / "tum_fr3_cabinet_rgbd", {}, 3)
    assert n > 50 and same


def test_precision_conversion(tum):
    backend = SiftBackend()
    f = backend.extract(tum[0])
    backend.set_precision("fp16")
    g = backend.convert_features(f)
    assert g.precision == "fp16" and g.data["descriptors"].dtype == np.float16
    assert g.nbytes < f.nbytes
    h = backend.extract(tum[1])
    assert h.data["descriptors"].dtype == np.float16
    assert len(backend.match(g, h)) > 150
    other = Features("orb", f.image_size, f.data)
    assert backend.convert_features(other) is None


def test_bad_input(tum):
    backend = SiftBackend()
    with pytest.raises(ValueError, match="uint8"):
        backend.extract(tum[0].astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        backend.extract(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="numpy"):
        backend.extract([[1, 2], [3, 4]])
    orb = OrbBackend()
    with pytest.raises(ValueError, match="made by 'orb'"):
        backend.match(orb.extract(tum[0]), backend.extract(tum[0]))


def _cells(kpts, cell=64):
    return len({(int(x) // cell, int(y) // cell) for x, y in kpts})


@pytest.mark.parametrize("name, off", [("sift", {"sift.grid_px": 0, "sift.min_contrast_threshold": 0.04}),
                                       ("orb", {"orb.grid_px": 0, "orb.min_fast_threshold": 20})])
def test_budget_and_grid_in_a_texture_poor_room(shared, name, off):
    """TUM cabinet (texture-poor): the adapted threshold meets more of the budget and the grid covers more of the
    image than the fixed-threshold detector; the off switches give exactly the plain detector."""
    seq = read_sequence(shared / "data" / "tum_fr3_cabinet_rgbd")
    img = cv2.imread(str(seq.frames[10][1]), cv2.IMREAD_GRAYSCALE)
    budget = 1000
    spread = create_backend(name, **{f"{name}.max_keypoints": budget})
    plain = create_backend(name, **{f"{name}.max_keypoints": budget}, **off)
    a, b = spread.extract(img).data["keypoints"], plain.extract(img).data["keypoints"]
    assert len(a) > 2 * len(b) and len(a) >= 0.8 * budget
    assert _cells(a) > _cells(b)
    if name == "sift":  # off: what OpenCV's detector gives, keypoint for keypoint
        ref = cv2.SIFT_create(nfeatures=budget).detect(img, None)
        assert len(b) == len(ref)
    assert not plain.spreads and spread.spreads


def test_grid_select_takes_each_cells_best_first():
    from feature_matcher_ros.backends.spread import grid_select

    rng = np.random.default_rng(0)
    xy = np.r_[rng.uniform(0, 32, (200, 2)), rng.uniform(64, 96, (5, 2)), rng.uniform(0, 128, (50, 2))]
    response = rng.random(len(xy)).astype(np.float32)
    pick = grid_select(xy, response, (128, 128), 60, 32)
    assert len(pick) == len(set(pick.tolist())) == 60
    cell = (xy[:, 1] // 32).astype(int) * 4 + (xy[:, 0] // 32).astype(int)
    taken = {c: int((cell[pick] == c).sum()) for c in np.unique(cell)}
    total = {c: int((cell == c).sum()) for c in np.unique(cell)}
    # no cell is left with less than another's count - 1 unless it has nothing more to give
    for c in taken:
        assert taken[c] == total[c] or taken[c] >= max(taken.values()) - 1
    # within a cell, the strongest are the ones taken
    for c in taken:
        mine = np.flatnonzero(cell == c)
        best = set(mine[np.argsort(-response[mine])][: taken[c]].tolist())
        assert best == set(pick[cell[pick] == c].tolist())


def test_a_poor_scene_starts_at_the_floor_with_the_same_keypoints(shared):
    """After a frame that needed a lower threshold, SIFT detects at the floor straight away: on the cabinet's frames
    (texture-poor) the keypoints are the ones the two-detection path gives; a textured frame (KITTI) in between
    goes back to the configured threshold, with its keypoints unchanged too."""
    cabinet = read_sequence(shared / "data" / "tum_fr3_cabinet_rgbd").frames[:4]
    kitti = sorted((shared / "data" / "kitti06_stereo_f000_050" / "images").iterdir())[0]
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for _, p in cabinet[:2]]
    images += [cv2.imread(str(kitti), cv2.IMREAD_GRAYSCALE)]
    images += [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for _, p in cabinet[2:]]
    streaming = SiftBackend(**{"sift.contrast_threshold": 0.015})
    hinted = []
    for img in images:
        before = streaming._floor_first
        feats = streaming.extract(img)
        fresh = SiftBackend(**{"sift.contrast_threshold": 0.015}).extract(img)  # the two-detection path
        hinted.append(before)
        a = {tuple(k) for k in feats.data["keypoints"].round(3).tolist()}
        b = {tuple(k) for k in fresh.data["keypoints"].round(3).tolist()}
        assert len(a ^ b) <= 0.01 * len(b), (len(a), len(b), len(a ^ b))
    assert hinted == [False, True, True, False, True]  # kitti: from the floor, and back; then poor again


def test_bench_keypoints_prints_the_three_ways(shared, capsys):
    from feature_matcher_ros.measure.bench_keypoints import main

    params = Path(__file__).resolve().parents[1] / "config" / "matcher_rgbd.yaml"
    assert main([str(shared / "data" / "tum_fr3_cabinet_rgbd"), "--params", str(params),
                 "--frames", "2", "--threads", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    counts = {" ".join(r[1:-2]): float(r[-1]) for r in rows}
    assert set(counts) == {"plain detector", "spread, two detections", "spread (shipped)"}
    assert counts["spread (shipped)"] == counts["spread, two detections"] > 3 * counts["plain detector"]
