"""Efficient LoFTR streaming path: keyframe features extracted once, matched against many frames.

Streaming (extract + match, receptive-field-only fine FPN, chunked coarse scores) must equal the
pairwise reference path within the fixture's parity recipe: on the fixture pairs (against the official
outputs) and on a real sequence (tum_fr2_desk frames, against this backend's own pairwise path).
Also: live settings, precision changes with feature conversion, resizing to multiples of 32 with
keypoints mapped back, and clear errors for bad input.
"""


import cv2
import numpy as np
import pytest
import torch

from feature_matcher_ros.backends import Features, create_backend
from feature_matcher_ros.backends.eloftr import EfficientLoFTRBackend
from feature_matcher_ros.measure.parity import (
    compare_matches,
    compare_windows,
    score_summaries,
)


@pytest.fixture(scope="module")
def backend(checkpoint, thr):
    return EfficientLoFTRBackend(device="cpu", weights=str(checkpoint), threshold=thr["full"])


def set_mode(backend, mode, thr):
    change = {"eloftr.mode": mode, "eloftr.threshold": thr[mode]}
    assert backend.validate(change) is None
    backend.apply(change)


def gray(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None
    return img


@pytest.fixture(scope="module")
def fixture_feats(backend, fixture_dir):
    cache = {}

    def get(pair):
        if pair not in cache:
            cache[pair] = tuple(backend.extract_native(gray(fixture_dir / f"{pair}_img{k}.png")) for k in (0, 1))
        return cache[pair]

    return get


@pytest.mark.parametrize("mode", ["full", "opt"])
def test_streaming_matches_official_fixture(backend, fixture_feats, fixture_dir, pair, mode, thr):
    feats0, feats1 = fixture_feats(pair)
    set_mode(backend, mode, thr)
    out = backend.match_native(feats0, feats1, debug=True)
    ref = {**np.load(fixture_dir / f"{pair}_stages.npz"), **np.load(fixture_dir / f"{pair}_{mode}.npz")}
    problems = compare_matches(out, ref, mode, thr[mode]) + compare_windows(out, ref)
    assert not problems, "\n".join(problems)
    assert len(out["fine_fraction"]) == 2 and all(s.half < 0.6 for s in out["fine_fraction"])


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("pair", ["bridge_256x320", "sanmarco_384x224_320x256"])
def test_both_fine_strategies_match_official_fixture(backend, fixture_feats, fixture_dir, pair, sparse, monkeypatch,
                                                    thr):
    """Receptive-field-only fine FPN (forced) and whole-map FPN from cached laterals (forced)."""
    from feature_matcher_ros.backends.eloftr.fine import FinePreprocess

    monkeypatch.setattr(FinePreprocess, "SPARSE_BELOW", 1.0 if sparse else -1.0)
    feats0, feats1 = fixture_feats(pair)
    set_mode(backend, "opt", thr)
    out = backend.match_native(feats0, feats1, debug=True)
    assert [s.sparse for s in out["fine_fraction"]] == [sparse, sparse]
    ref = {**np.load(fixture_dir / f"{pair}_stages.npz"), **np.load(fixture_dir / f"{pair}_opt.npz")}
    problems = compare_matches(out, ref, "opt", thr["opt"]) + compare_windows(out, ref)
    assert not problems, "\n".join(problems)


def test_keyframe_features_are_not_modified_by_matching(backend, fixture_feats, thr):
    feats0, feats1 = fixture_feats("bridge_256x320")
    before = {k: v.clone() for k, v in feats0.data.items() if torch.is_tensor(v)}
    set_mode(backend, "full", thr)
    backend.match(feats0, feats1)
    for k, v in before.items():
        assert torch.equal(v, feats0.data[k]), k


@pytest.fixture(scope="module")
def tum_frames(shared):
    folder = shared / "data" / "tum_fr2_desk"
    names = [line.split()[1] for line in (folder / "images.txt").read_text().splitlines() if not line.startswith("#")]
    frames = []
    for name in (names[0], names[4]):
        img = cv2.imread(str(folder / name), cv2.IMREAD_GRAYSCALE)
        frames.append(cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA))
    return frames


def test_streaming_equals_pairwise_on_sequence(backend, tum_frames, thr):
    """320x240 frames: the backend resizes them to 320x256; the keyframe is extracted once."""
    set_mode(backend, "full", thr)
    keyframe = backend.extract(tum_frames[0])
    assert keyframe.image_size == (240, 320) and keyframe.data["net_size"] == (256, 320)
    total = 0
    for frame in tum_frames[1:]:
        stream = backend.match_native(keyframe, backend.extract(frame), debug=True)
        ref, *_ = backend.match_pair_native(tum_frames[0], frame, debug=True)
        ref = {**ref, **score_summaries(ref["tr_c0"], ref["tr_c1"])}
        problems = compare_matches(stream, ref, "full", thr["full"])
        assert not problems, "\n".join(problems)
        total += len(ref["i_ids"])
        # caller-pixel matches of both paths lie inside the 320x240 frames (up to the model's -3.5 shift)
        for out in (stream, ref):
            m = backend._scale(out, (240, 320), (240, 320), (256, 320), (256, 320))
            assert len(m) == len(out["i_ids"])
            assert np.all(m.kpts0 >= -4) and np.all(m.kpts0[:, 0] < 324) and np.all(m.kpts1[:, 1] < 244)
    assert total > 20, "too few matches to compare"


def test_keypoints_map_back_to_caller_pixels(backend, tum_frames, thr):
    """Any size is resized to the nearest multiples of 32 and its keypoints are scaled back by the
    pixel-centre convention (sizes that are already multiples are not resized)."""
    set_mode(backend, "full", thr)
    key, frame = tum_frames[0][:224, :288], tum_frames[1][:224, :288]  # 288x224: multiples of 32
    assert backend._network_image(key)[0].shape == (224, 288)  # already multiples: not resized
    # a non-multiple size is resized to the nearest multiple and mapped back
    odd0 = cv2.resize(key, (300, 230), interpolation=cv2.INTER_AREA)
    odd1 = cv2.resize(frame, (300, 230), interpolation=cv2.INTER_AREA)
    f0, f1 = backend.extract(odd0), backend.extract(odd1)
    assert f0.image_size == (230, 300) and f0.data["net_size"] == (224, 288)
    out = backend.match_native(f0, f1)
    m = backend._to_matches(out, f0, f1)  # what match() returns
    assert len(m) == len(out["i_ids"]) > 0
    assert np.all(m.kpts0[:, 0] < 300 + 4) and np.all(m.kpts1[:, 1] < 230 + 4)
    sx, sy = 300 / 288, 230 / 224
    np.testing.assert_allclose(m.kpts1[:, 0], (out["mkpts1_f"][:, 0].numpy() + 0.5) * sx - 0.5, atol=1e-4)
    np.testing.assert_allclose(m.kpts0[:, 1], (out["mkpts0_f"][:, 1].numpy() + 0.5) * sy - 0.5, atol=1e-4)


def live(settings):
    """The live settings (the read-only static-path ones left out)."""
    return {k: settings[k] for k in ("eloftr.mode", "eloftr.threshold")}


def test_live_settings(backend, fixture_feats, thr):
    set_mode(backend, "full", thr)
    # mode change without a threshold: the new mode's default (said beforehand, changing nothing)
    before = dict(backend.settings)
    assert live(backend.effective_settings({"eloftr.mode": "opt"})) == {"eloftr.mode": "opt", "eloftr.threshold": 25.0}
    assert backend.settings == before
    backend.apply({"eloftr.mode": "opt"})
    assert live(backend.settings) == {"eloftr.mode": "opt", "eloftr.threshold": 25.0}
    backend.apply({"eloftr.mode": "full"})
    assert backend.settings["eloftr.threshold"] == 0.2
    # thresholds are checked against the mode's range
    assert "outside (0, 1)" in backend.validate({"eloftr.threshold": 1.5})
    assert "outside (0, 1)" in backend.validate({"eloftr.threshold": 0.0})
    assert backend.validate({"eloftr.mode": "opt", "eloftr.threshold": 30.0}) is None
    assert "0" in backend.validate({"eloftr.mode": "opt", "eloftr.threshold": -1.0})
    assert backend.validate({"eloftr.mode": "fast"}) is not None
    assert backend.validate({"eloftr.threshold": "high"}) is not None
    assert backend.settings["eloftr.mode"] == "full"  # validate changed nothing
    # a higher threshold keeps a subset of the matches
    feats0, feats1 = fixture_feats("bridge_256x320")
    set_mode(backend, "full", thr)
    low = backend.match_native(feats0, feats1)
    backend.apply({"eloftr.threshold": 0.3})
    high = backend.match_native(feats0, feats1)
    low_set = set(zip(low["i_ids"].tolist(), low["j_ids"].tolist()))
    high_set = set(zip(high["i_ids"].tolist(), high["j_ids"].tolist()))
    assert high_set < low_set and bool((high["mconf"] > 0.3).all())
    set_mode(backend, "full", thr)


@pytest.mark.parametrize("precision, side", [("bf16", 128), ("fp16", 32)])
def test_precision_change_converts_features(backend, tum_frames, precision, side, thr):
    """Reduced precision on CPU (torch supports both; fp16 convs are very slow on CPU, so tiny images)."""
    set_mode(backend, "full", thr)
    key, frame = tum_frames[0][:side, :side], tum_frames[1][:side, :side]
    feats0 = backend.extract(key)
    assert feats0.precision == "fp32" and feats0.data["feat"].dtype == torch.float32
    try:
        backend.set_precision(precision)
        assert backend.model.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        conv = backend.convert_features(feats0)
        assert conv.precision == precision and conv.data["feat"].dtype == backend.model.dtype
        assert conv.data["lat1"].dtype == backend.model.dtype
        feats1 = backend.extract(frame)
        assert feats1.precision == precision and feats1.data["lat2"].dtype == backend.model.dtype
        out = backend.match_native(conv, feats1)
        assert out["mkpts0_f"].dtype == torch.float32
        if precision == "bf16":  # unconverted fp32 features are converted on the fly by match()
            m = backend.match(feats0, feats1)
            assert len(m) == len(out["i_ids"]) > 0
    finally:
        backend.set_precision("fp32")
    assert backend.model.dtype == torch.float32 and backend.convert_features(feats0) is feats0


def test_bad_inputs_give_clear_errors(backend):
    with pytest.raises(ValueError, match="uint8"):
        backend.extract(np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="shape"):
        backend.extract(np.zeros((64, 64, 2), np.uint8))
    with pytest.raises(ValueError, match="multiples of 32"):
        backend.extract_native(np.zeros((100, 64), np.uint8))
    with pytest.raises(ValueError, match="made by 'sift'"):
        backend.match(Features("sift", (64, 64)), Features("sift", (64, 64)))
    with pytest.raises(ValueError, match="precision"):
        backend.set_precision("fp8")
    # a blank image has no structure: no matches, but no crash either
    blank = backend.extract(np.zeros((64, 64), np.uint8))
    assert len(backend.match(blank, blank)) >= 0


def test_cuda_without_cuda_is_a_startup_error(checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA"):
        create_backend("eloftr", device="cuda", weights=str(checkpoint))
    with pytest.raises(RuntimeError, match="CUDA"):
        EfficientLoFTRBackend(device="cuda", weights=str(checkpoint))
