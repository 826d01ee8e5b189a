"""Efficient LoFTR's static-shape streaming path (``eloftr.static``): at most K matches in fixed-size tensors.

Where K is at least the number of matches it gives the dynamic streaming path's match set and keypoints, on
every fixture pair and mode, in both of its forms (the CPU form, and the export form with plain-operator
coarse matching and the whole-map fine FPN that ONNX and CUDA graphs use), and the official outputs by the
fixture's recipe. With a smaller K it keeps the K best by confidence and counts the truncation.
"""

import cv2
import numpy as np
import pytest
import torch

from feature_matcher_ros.backends.eloftr import EfficientLoFTRBackend
from feature_matcher_ros.frontend import Frontend
from feature_matcher_ros.measure.parity import compare_matches, load_fixture_reference


@pytest.fixture(scope="module")
def backend(checkpoint, thr):
    return EfficientLoFTRBackend(device="cpu", weights=str(checkpoint), threshold=thr["full"])


@pytest.fixture(scope="module")
def feats(backend, fixture_dir):
    cache = {}

    def get(pair):
        if pair not in cache:
            imgs = [cv2.imread(str(fixture_dir / f"{pair}_img{k}.png"), cv2.IMREAD_UNCHANGED) for k in (0, 1)]
            cache[pair] = tuple(backend.extract_native(img) for img in imgs)
        return cache[pair]

    return get


def use(backend, mode, thr, **extra):
    change = {"eloftr.mode": mode, "eloftr.threshold": thr[mode], **extra}
    assert backend.validate(change) is None
    backend.apply(change)


def valid_part(out):
    v = out["valid"]
    return {k: out[k][v] for k in ("i_ids", "j_ids", "mconf", "mkpts0_f", "mkpts1_f")}


def pairs_of(out):
    return list(zip(out["i_ids"].tolist(), out["j_ids"].tolist()))


@pytest.mark.parametrize("export", [False, True], ids=["cpu", "export"])
@pytest.mark.parametrize("mode", ["full", "opt"])
def test_static_equals_dynamic_and_the_official_outputs(backend, feats, fixture_dir, pair, mode, export, thr):
    f0, f1 = feats(pair)
    use(backend, mode, thr)
    dynamic = backend.match_native(f0, f1)
    k = backend.model.candidate_count(f0.data, f1.data)
    out = backend.model.match_static(f0.data, f1.data, mode, torch.tensor(thr[mode]), k, export=export)
    assert out["mkpts0_f"].shape == (k, 2) and out["valid"].shape == (k,) and out["count"].shape == ()
    static = valid_part(out)
    assert int(out["count"]) == len(dynamic["i_ids"]) <= k
    assert pairs_of(static) == pairs_of(dynamic)  # same set, same order (ascending keyframe cell)
    for key, tol in (("mkpts0_f", 1e-4), ("mkpts1_f", 1e-4), ("mconf", 1e-4 if mode == "full" else 1e-3)):
        np.testing.assert_allclose(static[key].numpy(), dynamic[key].numpy(), atol=tol, err_msg=key)
    problems = compare_matches(static, load_fixture_reference(fixture_dir, pair, mode), mode, thr[mode])
    assert not problems, "\n".join(problems)


def test_default_k_is_half_the_frames_coarse_cells(backend, feats):
    f0, f1 = feats("capitol_640x480")
    assert backend.model.candidate_count(f0.data, f1.data) == 2400  # 80 x 60 cells / 2
    assert backend.model.candidate_count(f0.data, f1.data, 10**6) == 4800  # at most the keyframe's cells


@pytest.mark.parametrize("mode", ["full", "opt"])
def test_a_small_k_keeps_the_best_and_counts_the_truncation(backend, feats, mode, thr):
    f0, f1 = feats("capitol_640x480")
    use(backend, mode, thr)
    dynamic = backend.match_native(f0, f1)
    n = len(dynamic["i_ids"])
    k = 25
    out = backend.model.match_static(f0.data, f1.data, mode, torch.tensor(thr[mode]), k)
    assert int(out["count"]) == n > k and bool(out["valid"].all())
    best = set(np.argsort(-dynamic["mconf"].numpy(), kind="stable")[:k].tolist())
    index = {p: r for r, p in enumerate(pairs_of(dynamic))}
    kept = {index[p] for p in pairs_of(out)}
    assert kept == best
    # through the backend: the truncation is counted and reported
    use(backend, mode, thr, **{"eloftr.max_candidates": k})
    try:
        before = backend.truncated_frames
        m = backend.match(f0, f1)
        assert len(m) == k and backend.truncated_frames == before + 1
        assert backend.counters["eloftr.candidates"] == f"{n}/{k}"
        assert backend.counters["eloftr.truncated_frames"] == before + 1
    finally:
        backend.apply({"eloftr.max_candidates": 0})


def test_backend_match_is_the_same_on_both_paths(backend, feats, thr):
    f0, f1 = feats("sanmarco_384x224_320x256")
    use(backend, "full", thr)
    static = backend.match(f0, f1)
    backend.apply({"eloftr.static": False})
    try:
        dynamic = backend.match(f0, f1)
        assert backend.counters == {}
    finally:
        backend.apply({"eloftr.static": True})
    assert len(static) == len(dynamic) > 20
    for key in ("kpts0", "kpts1", "scores"):
        np.testing.assert_allclose(getattr(static, key), getattr(dynamic, key), atol=1e-4, err_msg=key)


def test_static_settings_are_read_only(checkpoint, thr):
    """Set at start-up (a node's params file); a live change is refused with the reason, nothing applied."""
    backend = EfficientLoFTRBackend(device="cpu", weights=str(checkpoint), threshold=thr["full"],
                                    **{"eloftr.max_candidates": 100})
    frontend = Frontend(backend, {})
    for change in ({"eloftr.max_candidates": 5}, {"eloftr.static": False}, {"eloftr.cuda_graph": False}):
        reason = frontend.update(change)
        assert reason is not None and "read-only" in reason
    assert backend.settings["eloftr.max_candidates"] == 100 and backend.settings["eloftr.static"]
    assert "max_candidates" in (frontend.update({"eloftr.max_candidates": -1}) or "")
