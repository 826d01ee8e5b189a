"""The stereo rig's self-calibrated disparity offset: the two-keyframe fit on controlled geometry (it finds a
known offset from a pose that the offset biased, and sees none where there is none), the running median, and the
Frontend on real KITTI stereo frames (new keyframes made with the estimate once enough pairs were fitted; off,
the configured offset)."""

import numpy as np
import pytest

from feature_matcher_ros.backends.sift import SiftBackend
from feature_matcher_ros.frontend import Frontend
from feature_matcher_ros.metric import StereoFrame
from feature_matcher_ros.se3 import rotation_from_rotvec
from feature_matcher_ros.stereo_calibration import (
    MAX_SD_PX,
    DisparityOffset,
    OffsetFit,
    Stereo2View,
    fit_disparity_offset,
)

K = np.array([[700.0, 0, 600], [0, 700.0, 180], [0, 0, 1]])
B = 0.54
FB = K[0, 0] * B


def _view(offset_true, noise_px=0.0, seed=0, forward=1.2, n=300):
    """Points 5-60 m ahead seen from two stereo keyframes ``forward`` metres apart; raw disparities (the true
    ones minus ``offset_true``, plus noise); the initial pose is the true one nudged (as PnP on biased depth)."""
    rng = np.random.default_rng(seed)
    Z0 = rng.uniform(5, 60, n)
    k0 = np.column_stack([rng.uniform(0, 1200, n), rng.uniform(0, 360, n)])
    X0 = np.column_stack([(k0[:, 0] - 600) * Z0 / 700, (k0[:, 1] - 180) * Z0 / 700, Z0])
    R = rotation_from_rotvec([0.0, 0.01, 0.0])
    t = np.array([0.02, 0.0, -forward])
    X1 = X0 @ R.T + t
    k1 = np.column_stack([700 * X1[:, 0] / X1[:, 2] + 600, 700 * X1[:, 1] / X1[:, 2] + 180])
    k1 += rng.normal(0, noise_px, k1.shape)
    d0 = FB / Z0 - offset_true + rng.normal(0, noise_px, n)
    d1 = FB / X1[:, 2] - offset_true + rng.normal(0, noise_px, n)
    return Stereo2View(k0, k1, d0, d1, rotation_from_rotvec([0.0, 0.012, 0.001]), t * 1.01, K, B)


@pytest.mark.parametrize("offset_true", [0.0, 0.3, -0.5])
def test_fit_finds_a_known_offset(offset_true):
    exact = fit_disparity_offset(_view(offset_true))
    assert exact is not None and abs(exact.offset_px - offset_true) < 1e-4
    noisy = fit_disparity_offset(_view(offset_true, noise_px=0.3, seed=1))
    assert noisy.points == 300 and 0 < noisy.sd_px < MAX_SD_PX
    assert abs(noisy.offset_px - offset_true) < 4 * noisy.sd_px
    # the initial offset does not change the answer (the fit starts there, on raw disparities)
    again = fit_disparity_offset(_view(offset_true, noise_px=0.3, seed=1), offset0=0.4)
    assert abs(again.offset_px - noisy.offset_px) < 1e-3


def test_fit_needs_points_and_depth_change():
    v = _view(0.2, noise_px=0.3)
    few = Stereo2View(v.k0[:10], v.k1[:10], v.d0[:10], v.d1[:10], v.R, v.t, K, B)
    assert fit_disparity_offset(few) is None
    # without motion along the optical axis the depths do not change: the offset is barely constrained
    side = fit_disparity_offset(_view(0.2, noise_px=0.3, forward=0.0))
    assert side is None or side.sd_px > 3 * fit_disparity_offset(v).sd_px


def test_running_median_skips_weak_fits():
    est = DisparityOffset()
    assert est.value() is None and est.count == 0
    for o in (0.1, 0.2, 5.0, 0.15):
        est.add(OffsetFit(o, 0.05, 100))
    est.add(OffsetFit(-9.0, MAX_SD_PX * 2, 100))  # too weak to count
    est.add(None)
    assert est.count == 4 and est.value() == pytest.approx(0.175)
    est.clear()
    assert est.value() is None


@pytest.fixture(scope="module")
def kitti(kitti06_stereo):
    return kitti06_stereo


def _run(kitti, settings):
    camera, rig, frames = kitti
    fe = Frontend(SiftBackend(), {"keyframe.max_parallax_px": 10.0, "depth.max_m": 80.0, **settings},
                  input_mode="stereo")
    made = []  # (frame, the offset of the keyframe it made, the estimate before it)
    for i, (left, right) in enumerate(frames):
        before = fe.disparity_offset_px
        r = fe.process(left, 1_000 + i, camera, stereo=StereoFrame(right, rig))
        if r.new_keyframe:
            made.append((i, fe.keyframe.disparity_offset_px, before))
    return fe, made


def test_frontend_self_calibrates_on_real_stereo_frames(kitti):
    """Every KITTI frame a keyframe: after 3 fitted pairs the new keyframes use the median estimate (a small
    positive offset on this snippet: its depths come out long without it, docs/robot.md); before, and with the
    calibration off, the configured offset."""
    fe, made = _run(kitti, {"stereo.self_calibrate_min_pairs": 3, "stereo.disparity_offset_px": 0.05,
                            "stereo.self_calibrate_max_sd_px": 10.0})
    assert len(made) >= 8 and fe.disparity_offset_fits >= 6
    assert all(off == 0.05 for _, off, _ in made[:4])  # the first keyframe and the three fitted before it counts
    assert all(off == before for _, off, before in made)  # each keyframe is made with the offset in force
    assert made[-1][1] != 0.05 and 0.0 < fe.disparity_offset_px < 0.4
    # an estimate not yet known well enough (its median's standard error above the limit) is not used
    assert fe.update({"stereo.self_calibrate_max_sd_px": 0.0}) is None and fe.disparity_offset_px == 0.05
    off, made_off = _run(kitti, {"stereo.self_calibrate": False, "stereo.disparity_offset_px": 0.05})
    assert off.disparity_offset_fits == 0 and all(o == 0.05 for _, o, _ in made_off)
    assert fe.update({"stereo.disparity_offset_px": 21.0}) is not None  # outside its range: refused
    fe.reset()
    assert fe.disparity_offset_fits == 0
