"""The Frontend on real sequences: the TUM acceptance criterion, keyframe promotion, live updates (all or
none), relocalisation from the keyframe cache, max_matches, resizing and bad input."""

import cv2
import numpy as np
import pytest

from feature_matcher_ros.backends.sift import SiftBackend
from feature_matcher_ros.camera import CameraModel
from feature_matcher_ros.datasets import read_sequence
from feature_matcher_ros.frontend import LOST_VARIANCE, Frontend
from feature_matcher_ros.geometry import rotation_error_deg
from feature_matcher_ros.metric import StereoFrame, StereoRig
from feature_matcher_ros.se3 import invert
from feature_matcher_ros.settings import FRONTEND_PARAMS


class CountingSift(SiftBackend):
    """The real SIFT backend, recording every extract call and the features it returned."""

    def __init__(self, **kw):
        self.extracted = []
        super().__init__(**kw)

    def extract(self, image):
        feats = super().extract(image)
        self.extracted.append(feats)
        return feats


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def tum(shared):
    seq = read_sequence(shared / "data" / "tum_fr2_desk")
    frames = [(stamp, _rgb(path)) for stamp, path in seq.frames]
    return frames, seq.ground_truth.by_stamp(), seq.camera


@pytest.fixture(scope="module")
def sequence(tum):
    """All 20 TUM frames through a default Frontend (SIFT), run once."""
    frames, gt, cam = tum
    backend = CountingSift()
    fe = Frontend(backend)
    results, keyframe_features = [], []
    for stamp, image in frames:
        r = fe.process(image, stamp, cam)
        results.append(r)
        keyframe_features.append(fe.keyframe.features)
    return fe, backend, results, keyframe_features


def test_sequence_rotation_accuracy(tum, sequence):
    """Acceptance criterion: median rotation error of keyframe-to-frame poses below 1 degree (measured 0.27)."""
    _, gt, _ = tum
    _, _, results, _ = sequence
    assert results[0].status == "init" and results[0].new_keyframe and results[0].reason == "first frame"
    errors = []
    for r in results[1:]:
        assert r.status == "tracking" and r.pose is not None, r.reason
        T_gt = invert(gt[r.stamp_ns]) @ gt[r.keyframe_stamp_ns]  # keyframe -> current
        errors.append(rotation_error_deg(r.pose.R, T_gt[:3, :3]))
        assert r.inliers.shape == (len(r.matches),) and r.num_inliers == r.pose.num_inliers
        assert set(r.timings_ms) >= {"preprocess", "extract", "match", "geometry", "total"}
        assert r.timings_ms["total"] >= r.timings_ms["extract"] >= 0
    assert len(errors) == 19
    assert np.median(errors) < 1.0, f"median rotation error {np.median(errors):.2f} deg"
    assert max(errors) < 2.0
    assert sum(r.new_keyframe for r in results) >= 2  # the camera turns 16 deg: the keyframe must move


def test_keyframe_features_are_promoted_not_recomputed(sequence):
    fe, backend, results, keyframe_features = sequence
    assert len(backend.extracted) == len(results) == 20  # one extract per frame, none for keyframes
    for i, r in enumerate(results):
        if r.new_keyframe:  # the active keyframe now holds exactly the object extracted for this frame
            assert keyframe_features[i] is backend.extracted[i]
        else:
            assert keyframe_features[i] is keyframe_features[i - 1]
    kf_indices = [r.keyframe_index for r in results]
    assert kf_indices == sorted(kf_indices) and kf_indices[0] == 0
    assert results[-1].cache_size == 1 and results[-1].cache_nbytes == fe.keyframe.features.nbytes > 0


def test_chained_odometry(tum, sequence):
    """T_world_current chains keyframe poses: its rotation follows the ground truth (relative to frame 0),
    and its translation is unit-scale and marked unknown by default."""
    frames, gt, _ = tum
    _, _, results, _ = sequence
    g0 = gt[frames[0][0]]
    errs = []
    for r in results:
        assert r.T_world_current is not None and not r.odometry_scale_known
        R_gt = (invert(g0) @ gt[r.stamp_ns])[:3, :3]
        errs.append(rotation_error_deg(r.T_world_current[:3, :3], R_gt))
    assert np.allclose(results[0].T_world_current, np.eye(4))
    assert max(errs) < 2.0, errs


def test_update_is_all_or_none(tum):
    frames, _, cam = tum
    backend = SiftBackend()
    fe = Frontend(backend)
    fe.process(frames[0][1], frames[0][0], cam)
    before = fe.values()
    for batch, words in [
        ({"max_matches": 10, "sift.ratio": 0.7, "ransac.threshold_px": "bad"}, "ransac.threshold_px"),
        ({"max_matches": 10, "sift.ratio": 5.0}, "sift.ratio"),
        ({"max_matches": 10, "no.such.param": 1}, "unknown"),
        ({"max_matches": 10, "precision": "fp64"}, "precision"),
        ({"keyframe.min_inliers": 10, "tracking.min_inliers": 30}, "tracking.min_inliers"),
        ({"ransac.method": "lmeds"}, "ransac.method"),
    ]:
        reason = fe.update(batch)
        assert reason and words in reason, (batch, reason)
        assert fe.values() == before
        assert backend.settings["sift.ratio"] == 0.8
    assert fe.update("max_matches=3").startswith("changes must be a mapping")
    # A valid batch applies whole, including a precision change that converts the cached keyframe.
    assert fe.update({"max_matches": 300, "sift.ratio": 0.75, "precision": "fp16", "keyframe_cache_size": 2}) is None
    assert fe.settings["max_matches"] == 300 and backend.settings["sift.ratio"] == 0.75
    assert backend.precision == "fp16" and fe.settings["keyframe_cache_size"] == 2
    assert fe.keyframe.features.precision == "fp16"
    assert fe.keyframe.features.data["descriptors"].dtype == np.float16
    r = fe.process(frames[3][1], frames[3][0], cam)
    assert r.status == "tracking" and len(r.matches) == 300
    assert all(k.features.precision == "fp16" for k in fe.cache)
    with pytest.raises(ValueError, match="ransac.threshold_px"):
        Frontend(SiftBackend(), {"ransac.threshold_px": 0.0})


def test_max_matches_keeps_the_highest_scores(tum):
    frames, _, cam = tum
    backend = SiftBackend()
    fe = Frontend(backend, {"max_matches": 60})
    fe.process(frames[0][1], frames[0][0], cam)
    keyframe = fe.keyframe.features
    r = fe.process(frames[4][1], frames[4][0], cam)
    everything = backend.match(keyframe, backend.extract(cv2.cvtColor(frames[4][1], cv2.COLOR_RGB2GRAY)))
    assert len(everything) > 200 and len(r.matches) == 60
    assert np.allclose(r.matches.scores, np.sort(everything.scores)[::-1][:60])
    assert np.all(np.diff(r.matches.scores) <= 0)


def test_world_covariance_follows_the_keyframes(tum, sequence):
    """Frames matched against the first keyframe (the origin, known exactly) carry the covariance of the inverse of
    their relative pose: rotation block ``R^T C_r R``; every later frame's grows from its keyframe's; the scale
    stays unknown along the track. Keyframe announcements carry the active keyframe's world pose."""
    _, _, results, _ = sequence
    first = results[0]
    assert np.array_equal(first.cov_world_current, np.zeros((6, 6)))
    assert np.array_equal(first.T_world_active_keyframe, np.eye(4)) and first.active_keyframe_stamp_ns == first.stamp_ns
    kf_cov = {first.stamp_ns: first.cov_world_current}
    kf_pose = {first.stamp_ns: first.T_world_current}
    for r in results[1:]:
        cov = r.cov_world_current
        assert cov.shape == (6, 6) and np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > -1e-9
        if r.keyframe_stamp_ns == first.stamp_ns:
            R, C_r = r.pose.R, r.pose.covariance[3:, 3:]
            np.testing.assert_allclose(cov[3:, 3:], R.T @ C_r @ R, rtol=1e-9, atol=1e-20)
        else:  # composed with the keyframe's: never more certain than the keyframe was
            assert np.trace(cov[3:, 3:]) > np.trace(kf_cov[r.keyframe_stamp_ns][3:, 3:])
        assert np.linalg.eigvalsh(cov[:3, :3]).max() > 1e5  # unit steps: the scale is marked unknown
        active = r.active_keyframe_stamp_ns
        if r.new_keyframe:
            assert active == r.stamp_ns and np.array_equal(r.T_world_active_keyframe, r.T_world_current)
            kf_cov[r.stamp_ns], kf_pose[r.stamp_ns] = cov, r.T_world_current
        else:
            assert active == r.keyframe_stamp_ns and np.array_equal(r.T_world_active_keyframe, kf_pose[active])


def test_lost_tracking_and_metric_scale_in_the_covariance(tum, shared):
    """With odometry.scale the translation (and its covariance) is in metres; a frame that loses tracking has no
    world pose, and the keyframe made from it starts at the last pose with LOST_VARIANCE added."""
    frames, _, cam = tum
    kitti_ds = shared / "data" / "kitti00_f100_109"
    kitti_seq = read_sequence(kitti_ds)
    kitti, kitti_cam = cv2.imread(str(kitti_seq.frames[0][1]), cv2.IMREAD_GRAYSCALE), kitti_seq.camera
    unit, metric = Frontend(SiftBackend()), Frontend(SiftBackend(), {"odometry.scale": 0.5})
    for stamp, image in frames[:3]:
        a, b = unit.process(image, stamp, cam), metric.process(image, stamp, cam)
    assert b.odometry_scale_known and not a.odometry_scale_known
    step_a, step_b = a.T_world_current[:3, 3], b.T_world_current[:3, 3]
    np.testing.assert_allclose(step_b, 0.5 * step_a, atol=1e-9)
    np.testing.assert_allclose(b.cov_world_current[:3, :3], 0.25 * a.cov_world_current[:3, :3], rtol=1e-9)
    np.testing.assert_allclose(b.cov_world_current[3:, 3:], a.cov_world_current[3:, 3:], rtol=1e-9)
    lost = metric.process(kitti, frames[3][0], kitti_cam)
    assert lost.status == "lost" and lost.T_world_current is None and lost.cov_world_current is None
    kf = metric.keyframe
    assert kf.stamp_ns == lost.stamp_ns and np.array_equal(kf.T_world, b.T_world_current)
    np.testing.assert_allclose(kf.covariance, b.cov_world_current + LOST_VARIANCE * np.eye(6))
    assert np.array_equal(lost.T_world_active_keyframe, b.T_world_current)


def test_relocalisation_from_the_keyframe_cache(tum, shared):
    """TUM frames, then an unrelated KITTI frame (tracking lost -> it becomes the keyframe), then a TUM frame:
    with a cache of 3 the frontend relocalises to a cached TUM keyframe; with a cache of 1 it cannot."""
    frames, gt, cam = tum
    kitti_ds = shared / "data" / "kitti00_f100_109"
    kitti_seq = read_sequence(kitti_ds)
    kitti_stamp, kitti_path = kitti_seq.frames[0]
    kitti_cam = kitti_seq.camera
    kitti = cv2.imread(str(kitti_path), cv2.IMREAD_GRAYSCALE)
    outcome = {}
    for size in (3, 1):
        fe = Frontend(SiftBackend(), {"keyframe_cache_size": size, "keyframe.max_parallax_px": 20.0})
        for stamp, image in frames[:8:2]:
            fe.process(image, stamp, cam)
        assert len(fe.cache) == min(size, 3)
        assert fe.cache_nbytes == sum(k.features.nbytes for k in fe.cache)
        lost = fe.process(kitti, kitti_stamp, kitti_cam)
        assert lost.status == "lost" and lost.pose is None and lost.new_keyframe
        assert lost.keyframe_reason == "tracking lost" and lost.T_world_current is None
        assert fe.keyframe.stamp_ns == kitti_stamp
        assert len(fe.cache) <= size
        stamp, image = frames[9]
        back = fe.process(image, stamp, cam)
        outcome[size] = back
        if size == 3:
            assert back.status == "relocalised" and not back.new_keyframe, back.keyframe_reason
            assert back.keyframe_reason == f"relocalised to keyframe @{back.keyframe_stamp_ns}"
            assert back.keyframe_stamp_ns in [s for s, _ in frames[:8]]
            assert back.relocalisation_tried[0] == back.keyframe_stamp_ns or len(back.relocalisation_tried) > 1
            T_gt = invert(gt[stamp]) @ gt[back.keyframe_stamp_ns]
            assert rotation_error_deg(back.pose.R, T_gt[:3, :3]) < 1.0
            assert fe.keyframe.stamp_ns == back.keyframe_stamp_ns  # the relocalised keyframe is active again
            assert back.T_world_current is not None
        else:
            assert back.status == "lost" and back.relocalisation_tried == []
    assert outcome[3].cache_size <= 3


def test_resize_long_edge_reports_original_pixels(tum):
    frames, gt, cam = tum
    backend = CountingSift()
    fe = Frontend(backend, {"resize_long_edge": 320})
    fe.process(frames[0][1], frames[0][0], cam)
    r = fe.process(frames[3][1], frames[3][0], cam)
    assert backend.extracted[-1].image_size == (240, 320)
    assert r.matches.kpts0[:, 0].max() > 400 and r.matches.kpts1[:, 1].max() > 300  # original 640x480 pixels
    T_gt = invert(gt[frames[3][0]]) @ gt[frames[0][0]]
    assert rotation_error_deg(r.pose.R, T_gt[:3, :3]) < 1.0
    # Changing the resize drops the cache: the next frame is a keyframe again, odometry continues.
    assert fe.update({"resize_long_edge": 0}) is None
    r = fe.process(frames[4][1], frames[4][0], cam)
    assert r.new_keyframe and r.status == "init" and "resize_long_edge" in r.keyframe_reason
    assert r.T_world_current is not None and not np.allclose(r.T_world_current, np.eye(4))


def test_bad_input_is_refused_with_a_reason(tum):
    frames, _, cam = tum
    fe = Frontend(SiftBackend())
    with pytest.raises(ValueError, match="uint8"):
        fe.process(frames[0][1].astype(np.float32), frames[0][0], cam)
    with pytest.raises(ValueError, match="focal"):
        fe.process(frames[0][1], frames[0][0], CameraModel.from_matrix(640, 480, np.diag([0.0, 1, 1])))
    with pytest.raises(ValueError, match="stamp_ns"):
        fe.process(frames[0][1], 1.5, cam)
    with pytest.raises(ValueError, match="aspect"):
        fe.process(frames[0][1], frames[0][0], CameraModel.from_matrix(640, 640, cam.K))
    assert fe.keyframe is None  # nothing happened
    r = fe.process(frames[0][1][::2, ::2].copy(), frames[0][0], cam)  # half size: the camera is rescaled
    assert r.status == "init"


def test_params_cover_frontend_backend_and_precision():
    fe = Frontend(SiftBackend())
    names = [p.name for p in fe.params()]
    assert len(names) == len(set(names))
    assert {p.name for p in FRONTEND_PARAMS} <= set(names)
    assert {"sift.ratio", "sift.max_keypoints", "precision", "keyframe_cache_size", "odometry.scale"} <= set(names)
    assert fe.settings["keyframe_cache_size"] == 1 and fe.settings["ransac.method"] == "poselib"


class NoConvertSift(SiftBackend):
    """Real SIFT whose cached features cannot be converted (as a GPU backend whose features cannot move)."""

    def convert_features(self, feats):
        return None


def test_unconvertible_cache_is_dropped_never_mixed(tum):
    frames, _, cam = tum
    fe = Frontend(NoConvertSift(), {"keyframe_cache_size": 3, "keyframe.max_parallax_px": 20.0})
    for stamp, image in frames[:6:2]:
        fe.process(image, stamp, cam)
    assert len(fe.cache) >= 2
    T_before = fe.process(frames[6][1], frames[6][0], cam).T_world_current
    assert fe.update({"precision": "fp16"}) is None
    assert len(fe.cache) == 0 and fe.cache_nbytes == 0
    r = fe.process(frames[7][1], frames[7][0], cam)
    assert r.status == "init" and r.new_keyframe and "cache dropped" in r.keyframe_reason
    assert np.allclose(r.T_world_current, T_before)  # the odometry carries on from the last known pose
    assert [k.features.precision for k in fe.cache] == ["fp16"]
    r = fe.process(frames[8][1], frames[8][0], cam)
    assert r.status == "tracking" and r.pose is not None


def test_rotation_compensated_parallax_ignores_turning(tum):
    """The camera turns while it moves: counting only the translation's parallax takes fewer keyframes
    (measured over the first 10 frames at 20 px: 5 keyframes by displacement, 3 rotation-compensated)."""
    frames, _, cam = tum
    backend = SiftBackend()
    counts = {}
    for mode in ("displacement", "rotation_compensated"):
        fe = Frontend(backend, {"keyframe.parallax": mode, "keyframe.max_parallax_px": 20.0})
        results = [fe.process(image, stamp, cam) for stamp, image in frames[:10]]
        assert all(r.status in ("init", "tracking") for r in results)
        counts[mode] = sum(r.new_keyframe for r in results)
        assert all(r.keyframe_reason.startswith("parallax") for r in results[1:] if r.new_keyframe)
    assert counts["rotation_compensated"] < counts["displacement"], counts


def test_nms_spreads_the_matches_and_keeps_the_local_best(tum):
    frames, _, cam = tum
    backend = SiftBackend()
    plain, spread = Frontend(backend), Frontend(SiftBackend(), {"nms.kernel_size": 5, "nms.cell_px": 8})
    for fe in (plain, spread):
        fe.process(frames[0][1], frames[0][0], cam)
    all_m = plain.process(frames[3][1], frames[3][0], cam).matches
    nms_m = spread.process(frames[3][1], frames[3][0], cam).matches
    assert 0 < len(nms_m) < len(all_m)
    # Survivors sit in cells at least kernel // 2 + 1 = 3 cells apart (Chebyshev) ...
    cells = np.floor((nms_m.kpts0 + 0.5) / 8).astype(int)  # pixel centres, as nms_matches bins them
    gaps = np.abs(cells[:, None, :] - cells[None, :, :]).max(-1) + np.eye(len(cells), dtype=int) * 99
    assert gaps.min() >= 3
    # ... and each is the best of all matches in its 5 x 5 cell neighbourhood.
    all_cells = np.floor((all_m.kpts0 + 0.5) / 8).astype(int)
    for c, score in zip(cells, nms_m.scores):
        near = np.abs(all_cells - c).max(-1) <= 2
        assert score >= all_m.scores[near].max() - 1e-6
    assert spread.update({"nms.kernel_size": 4}) is not None  # even windows are refused
    assert spread.settings["nms.kernel_size"] == 5


def test_a_bad_right_image_is_refused_before_anything_changes(shared):
    folder = shared / "data" / "kitti06_stereo_f000_050"
    camera = CameraModel.from_yaml(folder / "intrinsics.yaml")
    rig = StereoRig(camera, camera.K[0, 0], camera.K[0, 2], 0.537150653)
    left = cv2.imread(str(sorted((folder / "images").glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    fe = Frontend(SiftBackend(), input_mode="stereo")
    for bad, match in ((left.astype(np.float32), "right image.*uint8"), (left[:, :-8], "right image")):
        with pytest.raises(ValueError, match=match):
            fe.process(left, 1, camera, stereo=StereoFrame(bad, rig))
    assert fe.keyframe is None  # nothing happened, not even a frame counted
    r = fe.process(left, 1, camera, stereo=StereoFrame(left.copy(), rig))
    assert r.status == "init" and r.new_keyframe and r.frame_index == 0
