"""SPTD2 at run time: the design digest's invariants of the network, detection and matching, the shipped
weights and the backend on real images (training: test_sptd2_training.py)."""

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feature_matcher_ros.backends import create_backend
from feature_matcher_ros.backends.sptd2 import DEFAULT_WEIGHTS, SPTD2Backend, SPTD2Config
from feature_matcher_ros.backends.sptd2.inference import DetectionConfig, detect_and_describe, mutual_nearest_neighbours
from feature_matcher_ros.backends.sptd2.model import (
    AttentionBranch,
    FeatureUniformisation,
    load_checkpoint,
    select_keys,
    soft_keypoint_scores,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (128, 80)])
def test_shapes_unit_descriptors_and_score_range(small_model, size):
    with torch.no_grad():
        out = small_model(torch.rand(2, 1, *size))
    for level, stride in enumerate((4, 8, 16)):
        hl, wl = size[0] // stride, size[1] // stride
        d, s = out["descriptors"][level], out["scores"][level]
        assert d.shape == (2, 128, hl, wl) and s.shape == (2, 1, hl, wl)
        torch.testing.assert_close(d.norm(dim=1), torch.ones(2, hl, wl), atol=1e-5, rtol=0)
        assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0


def test_bad_input_sizes_are_clear_errors(small_model):
    with pytest.raises(ValueError, match="multiples of 16"):
        small_model(torch.rand(1, 1, 100, 96))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        small_model(torch.rand(1, 3, 64, 64))


def test_soft_scores_sum_to_one_and_isolated_peak_is_top_key():
    torch.manual_seed(1)
    features = torch.rand(2, 8, 12, 16) * 0.1
    features[0, 3, 7, 9] = 5.0
    features[1, 5, 2, 4] = 5.0
    scores = soft_keypoint_scores(features)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(2))
    assert float(scores.min()) >= 0
    index, keep = select_keys(scores, threshold=0.8, max_keys=50, min_keys=3)
    assert index.shape == keep.shape == (2, 50)
    assert int(index[0, 0]) == 7 * 16 + 9 and int(index[1, 0]) == 2 * 16 + 4
    assert keep[:, :3].all() and not keep.all()  # a lone peak leaves the rest under tau = 0.8
    top = torch.gather(scores, 1, index)
    assert bool((top[:, :-1] >= top[:, 1:]).all())  # sorted by score


def reference_attention(branch: AttentionBranch, queries, keys):
    """Plain full multi-head attention with the branch's own weights (no key selection)."""
    b, n, d = queries.shape
    h = branch.heads
    q = branch.to_q(branch.norm_q(queries)).view(b, n, h, d // h).transpose(1, 2)
    k, v = branch.to_kv(branch.norm_kv(keys)).chunk(2, dim=-1)
    k = k.reshape(b, -1, h, d // h).transpose(1, 2)
    v = v.reshape(b, -1, h, d // h).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
    x = queries + branch.out((attn @ v).transpose(1, 2).reshape(b, n, d))
    return x + branch.ffn(branch.norm_ffn(x))


def test_threshold_zero_with_all_keys_equals_full_attention():
    torch.manual_seed(2)
    branch = AttentionBranch(dim=32, heads=4, ffn_mult=2).eval()
    queries, keys = torch.randn(2, 40, 32), torch.randn(2, 24, 32)
    scores = soft_keypoint_scores(torch.rand(2, 6, 4, 6))  # 24 key positions
    index, keep = select_keys(scores, threshold=0.0, max_keys=24, min_keys=1)
    assert keep.all() and index.shape == (2, 24)
    with torch.no_grad():
        selected = branch(queries, keys, index, keep)
        full = branch(queries, keys)
        reference = reference_attention(branch, queries, keys)
    torch.testing.assert_close(selected, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(full, reference, atol=1e-5, rtol=0)
    # and a real threshold does select: fewer keys -> a different output
    index, keep = select_keys(scores, threshold=0.9, max_keys=24, min_keys=1)
    assert not keep.all()
    with torch.no_grad():
        assert (branch(queries, keys, index, keep) - full).abs().max() > 1e-3


def test_masked_keys_do_not_influence_the_output():
    torch.manual_seed(3)
    branch = AttentionBranch(dim=16, heads=2, ffn_mult=0).eval()
    queries, keys = torch.randn(1, 10, 16), torch.randn(1, 12, 16)
    index = torch.arange(12).view(1, 12)
    keep = torch.zeros(1, 12, dtype=torch.bool)
    keep[:, :5] = True
    changed = keys.clone()
    changed[:, 5:] = torch.randn(1, 7, 16) * 10
    with torch.no_grad():
        torch.testing.assert_close(branch(queries, keys, index, keep), branch(queries, changed, index, keep))
        torch.testing.assert_close(branch(queries, keys, index, keep), branch(queries, keys[:, :5]))


def test_feature_uniformisation_with_zero_gamma_is_the_projection():
    torch.manual_seed(4)
    fu = FeatureUniformisation(8, 16)
    x = torch.rand(2, 8, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(fu(x), fu.proj(x))
        fu.gamma.fill_(1.0)
        assert (fu(x) - fu.proj(x)).abs().max() > 1e-4


def test_detection_nms_topk_sorted_unit_descriptors(small_model):
    image = torch.rand(1, 1, 100, 124)  # not multiples of 16: padded inside
    out = detect_and_describe(small_model, image, DetectionConfig(top_k=300, nms_radius=1))
    k, s, d = out["keypoints"], out["scores"], out["descriptors"]
    assert 0 < len(k) <= 300 and d.shape == (len(k), 128)
    assert bool((s[:-1] >= s[1:]).all())
    torch.testing.assert_close(d.norm(dim=1), torch.ones(len(k)), atol=1e-5, rtol=0)
    assert float(k[:, 0].max()) < 124 and float(k[:, 1].max()) < 100
    cells = torch.round(k).long()
    gap = (cells[:, None, :] - cells[None, :, :]).abs().amax(-1) + 99 * torch.eye(len(k), dtype=torch.long)
    assert int(gap.min()) >= 1  # never two keypoints on one pixel; 3x3 NMS keeps integer maxima >= 2 apart
    integer = detect_and_describe(small_model, image,
                                  DetectionConfig(top_k=300, nms_radius=1, subpixel=False))["keypoints"]
    d_int = (integer[:, None, :] - integer[None, :, :]).abs().amax(-1) + 99 * torch.eye(len(integer))
    assert float(d_int.min()) >= 2


def test_mutual_nearest_neighbours():
    a = F.normalize(torch.randn(20, 16), dim=1)
    perm = torch.randperm(20)
    i0, i1, sim = mutual_nearest_neighbours(a, a[perm])
    assert len(i0) == 20 and torch.equal(perm[i1], i0)
    torch.testing.assert_close(sim, torch.ones(20))
    i0, _, _ = mutual_nearest_neighbours(a, a[perm], min_similarity=1.5)
    assert len(i0) == 0


def mma(matches, H, t=3.0) -> float:
    p = cv2.perspectiveTransform(matches.kpts0[None].astype(np.float64), H)[0]
    return float((np.linalg.norm(p - matches.kpts1, axis=1) <= t).mean()) if len(matches) else 0.0


def test_shipped_weights_load_with_their_record():
    assert DEFAULT_WEIGHTS.is_file(), f"shipped weights missing: {DEFAULT_WEIGHTS}"
    model, meta = load_checkpoint(str(DEFAULT_WEIGHTS))
    assert model.config == SPTD2Config.fast()
    assert meta["steps_done"] * meta["batch"] >= 20000 and meta["images"]  # training pairs seen
    record = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert record["steps_done"] == meta["steps_done"] and len(record["loss_history"]) > 0


def test_backend_on_real_pair_trained_beats_untrained(graffiti):
    im0, im1, H = graffiti
    trained = create_backend("sptd2", **{"sptd2.top_k": 1024})
    assert isinstance(trained, SPTD2Backend)
    f0, f1 = trained.extract(im0), trained.extract(im1)
    assert f0.image_size == im0.shape and 100 < len(f0.data["keypoints"]) <= 1024
    m = trained.match(f0, f1)
    assert len(m) > 50 and mma(m, H) > 0.3
    untrained = SPTD2Backend(weights="random", **{"sptd2.top_k": 1024})
    assert mma(trained.match(f0, f1), H) > mma(untrained.match_pair(im0, im1), H) + 0.1
    # live parameters: a similarity threshold and the ratio test only remove matches
    assert trained.validate({**trained.settings, "sptd2.top_k": 6000}) is not None
    trained.apply({**trained.settings, "sptd2.match_threshold": 0.9, "sptd2.ratio": 0.9})
    fewer = trained.match(f0, f1)
    assert len(fewer) < len(m) and float(fewer.scores.min()) >= 0.9


def test_backend_precisions_and_conversion(graffiti):
    im0 = np.ascontiguousarray(graffiti[0][:128, :160])
    backend = SPTD2Backend(precision="bf16")
    f_bf16 = backend.extract(im0)
    assert f_bf16.precision == "bf16" and f_bf16.data["descriptors"].dtype == torch.bfloat16
    backend.set_precision("fp32")
    f32 = backend.convert_features(f_bf16)
    assert f32.precision == "fp32" and f32.data["descriptors"].dtype == torch.float32
    assert len(backend.match(f32, backend.extract(im0))) > 0
    backend.set_precision("fp16")
    assert backend.extract(im0).data["descriptors"].dtype == torch.float16
    with pytest.raises(ValueError, match="precision"):
        SPTD2Backend(precision="int8")


def test_backend_bad_input_is_a_clear_error(tmp_path):
    backend = SPTD2Backend()
    with pytest.raises(ValueError, match="gray"):
        backend.extract(np.zeros((64, 64, 2), np.uint8))
    assert backend.extract(np.zeros((64, 64, 3), np.uint8)).image_size == (64, 64)  # RGB: converted, as everywhere
    with pytest.raises(ValueError, match="uint8"):
        backend.extract(np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="too small"):
        backend.extract(np.zeros((8, 64), np.uint8))
    with pytest.raises(ValueError, match="unknown settings"):
        SPTD2Backend(**{"sptd2.nope": 1})
    with pytest.raises(FileNotFoundError, match="not found"):
        SPTD2Backend(weights=str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable SPTD2 checkpoint"):
        SPTD2Backend(weights=str(bad))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            create_backend("sptd2", device="cuda")


def test_fast_variant_full_resolution_scores_and_small_descriptors(fast_model):
    config = SPTD2Config.fast()
    assert config.dim == 64 and config.trunk == "light" and config.fine_scores
    assert config.architecture_hash() != SPTD2Config.small().architecture_hash()
    with torch.no_grad():
        out = fast_model(torch.rand(2, 1, 64, 96))
    assert out["scores"][0].shape == (2, 1, 64, 96)  # S^1 at full resolution (depth-to-space head)
    for level, stride in enumerate((4, 8, 16)):
        assert out["descriptors"][level].shape == (2, 64, 64 // stride, 96 // stride)
        if level:
            assert out["scores"][level].shape == (2, 1, 64 // stride, 96 // stride)
        assert 0.0 <= float(out["scores"][level].min()) and float(out["scores"][level].max()) <= 1.0
    result = detect_and_describe(fast_model, torch.rand(1, 1, 100, 124), DetectionConfig(top_k=200))
    assert result["descriptors"].shape[1] == 64 and len(result["keypoints"]) <= 200
    with pytest.raises(ValueError, match="width_divisor"):
        SPTD2Config(trunk="light", width_divisor=4)


def test_position_embedding_cache_follows_the_weights(fast_model):
    position = fast_model.position
    with torch.no_grad():
        cached = position(12, 16, torch.device("cpu"), torch.float32)
        assert position(12, 16, torch.device("cpu"), torch.float32) is cached
    fresh = position(12, 16, torch.device("cpu"), torch.float32)  # grad enabled: computed, not cached
    torch.testing.assert_close(fresh.detach(), cached)
    with torch.no_grad():
        position.mlp[2].bias.add_(1.0)
        changed = position(12, 16, torch.device("cpu"), torch.float32)
        position.mlp[2].bias.sub_(1.0)
    torch.testing.assert_close(changed, cached + 1.0)


def test_mutual_nearest_neighbours_matches_brute_force():
    torch.manual_seed(7)
    for n0, n1 in ((300, 200), (50, 400)):
        a, b = F.normalize(torch.randn(n0, 16), dim=1), F.normalize(torch.randn(n1, 16), dim=1)
        sim = a @ b.t()
        expected = {(i, int(sim[i].argmax())) for i in range(n0) if int(sim[:, sim[i].argmax()].argmax()) == i}
        i0, i1, s = mutual_nearest_neighbours(a, b)
        assert set(zip(i0.tolist(), i1.tolist())) == expected
        torch.testing.assert_close(s, sim[i0, i1])


def test_score_levels_choose_the_map_keypoints_are_peaks_of(shared):
    """The shipped fast weights score level 1 at full resolution: ``auto`` detects on that level's logits (each
    keypoint a peak of its 3x3 window there), ranks by the levels' average; ``all`` is the average throughout
    and gives other keypoints; the small variant resolves ``auto`` to ``all``; an unknown choice is refused."""
    from feature_matcher_ros.backends.sptd2.inference import fused_score_map, image_to_tensor, pad_to_multiple

    backend = SPTD2Backend(**{"sptd2.top_k": 500})
    assert backend.settings["sptd2.score_levels"] == "auto" and backend.score_levels == "fine"
    image = cv2.imread(str(sorted((shared / "data" / "tum_fr2_desk" / "images").glob("*.png"))[0]),
                       cv2.IMREAD_GRAYSCALE)
    fine = backend.extract(image).data
    with torch.inference_mode():
        padded = pad_to_multiple(image_to_tensor(image))
        out = backend.model(padded)
    h, w = image.shape
    logits = out["score_logits"][0][0, 0, :h, :w]
    average = fused_score_map(out["scores"], (h, w), tuple(padded.shape[-2:]))[0]
    xy = torch.round(fine["keypoints"]).long()
    x, y = xy[:, 0].clamp(1, w - 2), xy[:, 1].clamp(1, h - 2)
    window = torch.stack([logits[y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    assert float((logits[y, x] >= window.max(0).values).float().mean()) > 0.95  # (a refined x.5 may round away)
    assert torch.all(fine["scores"][:-1] >= fine["scores"][1:])
    assert torch.allclose(fine["scores"], average[y, x], atol=1e-5)  # scored by the average at the peak
    backend.apply({"sptd2.score_levels": "all"})
    averaged = backend.extract(image).data
    shared_px = (torch.cdist(fine["keypoints"], averaged["keypoints"]).min(1).values < 0.5).float().mean()
    assert float(shared_px) < 0.5  # another map, other keypoints (measured: a fifth in common)
    assert SPTD2Backend(weights="random:small").score_levels == "all"
    assert backend.validate({**backend.settings, "sptd2.score_levels": "coarse"}) is not None
