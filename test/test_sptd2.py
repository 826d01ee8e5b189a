"""SPTD2: the design digest's invariants, the training pieces, and the backend on real images."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feature_matcher_ros.backends import create_backend
from feature_matcher_ros.backends.sptd2 import DEFAULT_WEIGHTS, SPTD2Backend, SPTD2Config
from feature_matcher_ros.backends.sptd2.data import PairConfig, make_pair
from feature_matcher_ros.backends.sptd2.inference import DetectionConfig, detect_and_describe, mutual_nearest_neighbours
from feature_matcher_ros.backends.sptd2.losses import cosim_loss, description_loss, level_correspondences, peaky_loss, LossConfig
from feature_matcher_ros.backends.sptd2.model import (
    SPTD2, AttentionBranch, FeatureUniformisation, load_checkpoint, load_trunk_from_torchvision, save_checkpoint,
    select_keys, soft_keypoint_scores,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small_model() -> SPTD2:
    torch.manual_seed(0)
    return SPTD2(SPTD2Config.small()).eval()


@pytest.fixture(scope="module")
def graffiti(shared: Path):
    """img1, img2 of Oxford graffiti at half size and the ground-truth homography for that size."""
    folder = shared / "data" / "oxford_graffiti"
    im0 = cv2.imread(str(folder / "images" / "img1.png"), cv2.IMREAD_GRAYSCALE)
    im1 = cv2.imread(str(folder / "images" / "img2.png"), cv2.IMREAD_GRAYSCALE)
    H = np.loadtxt(folder / "homographies" / "H_img1_to_img2.txt")
    s = np.array([[0.5, 0, -0.25], [0, 0.5, -0.25], [0, 0, 1]])  # x' = (x + 0.5) / 2 - 0.5
    half = lambda im: cv2.resize(im, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)  # noqa: E731
    return half(im0), half(im1), s @ H @ np.linalg.inv(s)


# -- network invariants ----------------------------------------------------------------------------------------
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


# -- losses and data ---------------------------------------------------------------------------------------------
def identity_flow(b: int, size: int):
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys], -1).expand(b, -1, -1, -1).contiguous(), torch.ones(b, size, size, dtype=torch.bool)


def test_detection_losses_properties():
    torch.manual_seed(5)
    flow, valid = identity_flow(2, 64)
    scores = torch.rand(2, 1, 16, 16)
    pts0, pts1, ok = level_correspondences(flow, valid, 4)
    torch.testing.assert_close(pts1[0], pts0, atol=1e-4, rtol=0)  # identity flow maps cell centres to themselves
    assert float(cosim_loss(scores, scores, ok, 4)) == pytest.approx(0.0, abs=1e-5)
    assert float(cosim_loss(scores, torch.rand(2, 1, 16, 16), ok, 4)) > 0.01
    flat, peaked = torch.full((1, 1, 16, 16), 0.5), torch.zeros(1, 1, 16, 16)
    peaked[0, 0, ::4, ::4] = 1.0
    for s in (flat, peaked, scores):
        assert 0.0 <= float(peaky_loss(s, 4)) <= 1.0
    assert float(peaky_loss(peaked, 4)) < float(peaky_loss(flat, 4))


def test_description_loss_finite_without_correspondences_and_prefers_matching_descriptors():
    torch.manual_seed(6)
    flow, valid = identity_flow(1, 64)
    pts0, pts1, ok = level_correspondences(flow, valid, 4)
    d = F.normalize(torch.randn(1, 32, 16, 16), dim=1)
    s = torch.rand(1, 1, 16, 16)
    cfg = LossConfig()
    none = description_loss(d, d, s, s, pts0, pts1, torch.zeros_like(ok), 4, (64, 64), cfg)
    assert torch.isfinite(none) and float(none) == 0.0
    same = description_loss(d, d, s, s, pts0, pts1, ok, 4, (64, 64), cfg)
    other = description_loss(d, F.normalize(torch.randn(1, 32, 16, 16), dim=1), s, s, pts0, pts1, ok, 4, (64, 64), cfg)
    assert float(same) < float(other)


def test_training_pair_flow_is_correct(shared: Path):
    image = cv2.imread(str(shared / "data" / "tum_fr2_desk" / "images" / sorted(
        p.name for p in (shared / "data" / "tum_fr2_desk" / "images").iterdir())[0]), cv2.IMREAD_GRAYSCALE)
    rng = np.random.default_rng(0)
    for _ in range(4):
        im0, im1, flow, valid = make_pair(rng, image, PairConfig(crop=128, photometric=False))
        assert im0.shape == im1.shape == (128, 128) and flow.shape == (128, 128, 2) and valid.mean() > 0.2
        warped = cv2.remap(im1, flow[..., 0], flow[..., 1], cv2.INTER_LINEAR)
        err = np.abs(warped.astype(float) - im0)[valid].mean()
        shifted = np.abs(np.roll(im0, 3, axis=1).astype(float) - im0)[valid].mean()
        assert err < 0.4 * shifted


# -- inference and backend ---------------------------------------------------------------------------------------
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
    integer = detect_and_describe(small_model, image, DetectionConfig(top_k=300, nms_radius=1, subpixel=False))["keypoints"]
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
    assert model.config == SPTD2Config.small()
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


def test_checkpoint_round_trip_and_torchvision_trunk_mapping(tmp_path, small_model):
    path = tmp_path / "w.pt"
    save_checkpoint(small_model, str(path), meta={"note": "test"}, half=False)
    loaded, meta = load_checkpoint(str(path))
    assert meta == {"note": "test"}
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["scores"][0], small_model(x)["scores"][0])
    # a torchvision-style RGB state dict (features.0..42) maps onto a grayscale trunk
    rgb = {k: v.clone() for k, v in small_model.trunk.state_dict().items()}
    rgb["features.0.weight"] = rgb["features.0.weight"].repeat(1, 3, 1, 1) / 3
    target = SPTD2(SPTD2Config.small())
    load_trunk_from_torchvision(target, rgb)
    torch.testing.assert_close(target.trunk.features[0].weight, small_model.trunk.features[0].weight)
    del rgb["features.40.weight"]
    with pytest.raises(KeyError, match="features.40.weight"):
        load_trunk_from_torchvision(target, rgb)


# -- console tools -------------------------------------------------------------------------------------------------
def test_train_tool_runs_saves_and_resumes(tmp_path, shared: Path):
    from feature_matcher_ros.tools.train_sptd2 import main as train_main

    images = str(shared / "data" / "tum_fr2_desk" / "images")
    common = ["--images", images, "--crop", "64", "--batch", "1", "--out", str(tmp_path / "run"), "--no-progress"]
    assert train_main(common + ["--steps", "1", "--save-every", "1"]) == 0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 1
    export = tmp_path / "w.pt"
    assert train_main(common + ["--steps", "2", "--resume", "--export", str(export)]) == 0
    model, meta = load_checkpoint(str(export))
    assert meta["steps_done"] == 2 and export.with_suffix(".json").is_file()
    with pytest.raises(SystemExit):
        train_main(["--images", images, "--crop", "70"])


def test_eval_tool_prints_markdown_table(capsys):
    from feature_matcher_ros.tools.eval_sptd2 import main as eval_main

    assert eval_main(["--methods", "sift,orb", "--max-edge", "320", "--top-k", "500"]) == 0
    out = capsys.readouterr().out
    assert "| sift |" in out and "| orb |" in out and "MMA@3" in out


# -- the fast variant, device-side pairs, teacher distillation ------------------------------------------------------
@pytest.fixture(scope="module")
def fast_model() -> SPTD2:
    torch.manual_seed(0)
    return SPTD2(SPTD2Config.fast()).eval()


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
    with pytest.raises(ValueError, match="VGG trunk"):
        load_trunk_from_torchvision(fast_model, {})
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


def test_homography_batcher_flow_and_teacher_follow_the_warp(tmp_path, graffiti):
    from feature_matcher_ros.backends.sptd2.batches import HomographyBatcher, image_key

    image = graffiti[0]
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), image)
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    corners = cv2.cornerHarris(image.astype(np.float32), 3, 3, 0.04)
    heat = (255 * np.clip(corners / corners.max() * 20, 0, 1)).astype(np.uint8)
    cv2.imwrite(str(teacher_dir / (image_key(path) + ".png")), heat)
    batcher = HomographyBatcher([path], PairConfig(crop=128, photometric=False), teacher_dir=teacher_dir, seed=3)
    batch = batcher.batch(4)
    assert batch["image0"].shape == batch["teacher1"].shape == (4, 1, 128, 128) and batch["flow"].shape == (4, 128, 128, 2)
    for i in range(4):
        valid = batch["valid"][i].numpy()
        assert valid.mean() > 0.2
        flow = batch["flow"][i].numpy()
        for key in ("image", "teacher"):
            a, b = batch[f"{key}0"][i, 0].numpy(), batch[f"{key}1"][i, 0].numpy()
            warped = cv2.remap(b, flow[..., 0], flow[..., 1], cv2.INTER_LINEAR)
            err = np.abs(warped - a)[valid].mean()
            shifted = np.abs(np.roll(a, 3, axis=1) - a)[valid].mean()
            assert err < 0.5 * shifted, (key, err, shifted)


def test_depth_flow_is_exact_on_a_plane_and_real_pairs_line_up(shared: Path):
    from feature_matcher_ros.backends.sptd2.batches import depth_flow, read_rgbd_sequence

    K = torch.tensor([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])
    depth = torch.full((48, 64), 2.0)
    T = torch.eye(4)
    T[0, 3] = -0.1  # camera 1 sits 0.1 m to the right: the plane moves 100 * 0.1 / 2 = 5 px left
    flow, valid = depth_flow(depth, depth, K, T)
    xs = torch.arange(64, dtype=torch.float32).expand(48, -1)
    assert bool(valid[:, 5:].all()) and not bool(valid[:, :4].any())  # the left columns leave the image
    torch.testing.assert_close(flow[..., 0][valid], (xs - 5.0)[valid])
    # a real pair: image 1 sampled at the flow matches image 0 better than sampled 4 px off
    seq = read_rgbd_sequence(shared / "data" / "tum_fr3_cabinet_rgbd")
    a, b = seq["pairs"][0]
    load = lambda p: torch.from_numpy(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.float32) / seq["depth_scale"])  # noqa: E731
    T_1_0 = torch.tensor(np.linalg.inv(seq["poses"][b]) @ seq["poses"][a], dtype=torch.float32)
    flow, valid = depth_flow(load(seq["depths"][a]), load(seq["depths"][b]), torch.tensor(seq["K"], dtype=torch.float32), T_1_0)
    assert valid.float().mean() > 0.5
    im0, im1 = (cv2.imread(str(seq["images"][i]), cv2.IMREAD_GRAYSCALE).astype(np.float32) for i in (a, b))
    f, v = flow.numpy(), valid.numpy()
    err = lambda dx: np.abs(cv2.remap(im1, f[..., 0] + dx, f[..., 1], cv2.INTER_LINEAR) - im0)[v].mean()  # noqa: E731
    assert err(0) < min(err(4), err(-4))


def test_distillation_loss_rewards_the_teacher_map():
    from feature_matcher_ros.backends.sptd2.losses import distillation_loss

    teacher = torch.zeros(1, 1, 32, 32)
    teacher[0, 0, ::8, ::8] = 1.0
    good = teacher * 0.98 + 0.01
    assert float(distillation_loss(good, teacher)) < 0.05
    assert float(distillation_loss(torch.full_like(teacher, 0.5), teacher)) == pytest.approx(2 * np.log(2), rel=1e-4)
    assert float(distillation_loss(torch.roll(good, 3, dims=-1), teacher)) > 2.0


@pytest.mark.slow  # a whole tool run: make test only
def test_train_tool_fast_variant_with_rgbd_pairs_teacher_and_export_only(tmp_path, shared: Path):
    from feature_matcher_ros.backends.sptd2.batches import image_key
    from feature_matcher_ros.tools.train_sptd2 import main as train_main

    seq = shared / "data" / "tum_fr3_cabinet_rgbd"
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for path in sorted((seq / "images").iterdir()):
        cv2.imwrite(str(teacher / (image_key(path) + ".png")), np.zeros((480, 640), np.uint8) + 1)
    common = ["--variant", "fast", "--images", str(seq / "images"), "--rgbd", str(seq), "--teacher", str(teacher),
              "--crop", "64", "--batch", "2", "--real-fraction", "0.5", "--out", str(tmp_path / "run"), "--no-progress"]
    assert train_main(common + ["--steps", "2", "--save-every", "1"]) == 0
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["steps_done"] == 2 and record["pairs_per_step"] == {"homography": 1, "rgbd": 1}
    assert record["loss_history"][-1]["distill"] > 0 and len(record["images"]) == 38
    export = tmp_path / "fast.pt"
    assert train_main(common + ["--steps", "2", "--export-only", "--export", str(export)]) == 0
    model, meta = load_checkpoint(str(export))
    assert model.config == SPTD2Config.fast() and meta["steps_done"] == 2
    assert json.loads(export.with_suffix(".json").read_text())["rgbd"] == str(seq)


@pytest.mark.slow  # a whole tool run: make test only
def test_eval_tool_speed_and_goal_table(capsys):
    from feature_matcher_ros.tools.eval_sptd2 import main as eval_main

    assert eval_main(["--methods", "orb,untrained", "--max-edge", "320", "--top-k", "300", "--speed",
                      "--speed-repeat", "1", "--speed-threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "### Speed: 640x480" in out and "### Goal table" in out
    goal = out.split("### Goal table")[1]
    assert "| untrained |" in goal and "extract ms" in goal and "oxford_graffiti MMA@3" in goal


def test_train_tool_set_overrides_the_config(tmp_path, shared: Path):
    from feature_matcher_ros.tools.train_sptd2 import main as train_main

    images = str(shared / "data" / "tum_fr3_cabinet_rgbd" / "images")
    common = ["--variant", "fast", "--images", images, "--crop", "64", "--batch", "1", "--steps", "1",
              "--out", str(tmp_path / "run"), "--no-progress", "--export", str(tmp_path / "w.pt")]
    assert train_main(common + ["--set", "nope=1"]) == 2
    assert train_main(common + ["--set", "dim=32", "fine_scores=false", "key_threshold=0.5"]) == 0
    model, _ = load_checkpoint(str(tmp_path / "w.pt"))
    assert (model.config.dim, model.config.fine_scores, model.config.key_threshold) == (32, False, 0.5)


def test_train_tool_init_starts_from_exported_weights_and_resumes(tmp_path, shared: Path):
    from feature_matcher_ros.tools.train_sptd2 import main as train_main

    images = str(shared / "data" / "tum_fr3_cabinet_rgbd" / "images")
    common = ["--images", images, "--crop", "64", "--batch", "1", "--no-progress"]
    first = tmp_path / "first.pt"
    assert train_main(common + ["--variant", "fast", "--set", "dim=32", "--steps", "1", "--out", str(tmp_path / "a"),
                                "--export", str(first)]) == 0
    start, _ = load_checkpoint(str(first))
    with pytest.raises(SystemExit):
        train_main(common + ["--init", str(first), "--resume"])
    # --init: the file's network and weights (not --variant's), a fresh run whose record names where it began
    run = ["--init", str(first), "--lr", "0", "--lr-end", "0", "--out", str(tmp_path / "b")]
    assert train_main(common + run + ["--steps", "1", "--save-every", "1"]) == 0
    record = json.loads((tmp_path / "b" / "record.json").read_text())
    assert record["steps_done"] == 1 and record["variant"] == "fast" and record["config"]["dim"] == 32
    assert record["init"]["weights"] == str(first) and record["init"]["steps_done"] == 1
    # resuming that run keeps its network and its origin without --init
    export = tmp_path / "b.pt"
    assert train_main(common + ["--out", str(tmp_path / "b"), "--steps", "2", "--resume", "--export", str(export)]) == 0
    model, meta = load_checkpoint(str(export))
    assert model.config == start.config and meta["steps_done"] == 2 and meta["init"]["sha1"]
    assert meta["variant"] == "fast"  # its name too, not --variant's default
    for name, value in start.state_dict().items():  # lr 0: only BatchNorm running statistics may move
        if "running" not in name and "num_batches" not in name:
            torch.testing.assert_close(model.state_dict()[name], value, atol=2e-3, rtol=1e-3, msg=name)
