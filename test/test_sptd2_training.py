"""SPTD2 training (feature_matcher_ros/training/sptd2): losses, pairs and their flow, checkpoints, the teacher's
heatmaps following the warp, and the training and evaluation commands on real images."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feature_matcher_ros.backends.sptd2 import SPTD2Config
from feature_matcher_ros.backends.sptd2.model import SPTD2, load_checkpoint
from feature_matcher_ros.training.sptd2.checkpoint import load_trunk_from_torchvision, save_checkpoint
from feature_matcher_ros.training.sptd2.data import PairConfig, make_pair
from feature_matcher_ros.training.sptd2.losses import (
    LossConfig,
    cosim_loss,
    description_loss,
    level_correspondences,
    peaky_loss,
)

torch.set_num_threads(1)


def identity_flow(b: int, size: int):
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
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


def test_checkpoint_round_trip_and_torchvision_trunk_mapping(tmp_path, small_model, fast_model):
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

    with pytest.raises(ValueError, match="VGG trunk"):  # the fast variant's light trunk takes no VGG weights
        load_trunk_from_torchvision(fast_model, {})


def test_train_tool_runs_saves_and_resumes(tmp_path, shared: Path):
    from feature_matcher_ros.training.sptd2.train import main as train_main

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
    from feature_matcher_ros.training.sptd2.evaluate import main as eval_main

    assert eval_main(["--methods", "sift,orb", "--max-edge", "320", "--top-k", "500"]) == 0
    out = capsys.readouterr().out
    assert "| sift |" in out and "| orb |" in out and "MMA@3" in out


def test_homography_batcher_flow_and_teacher_follow_the_warp(tmp_path, graffiti):
    from feature_matcher_ros.training.sptd2.batches import HomographyBatcher, image_key

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
    assert (batch["image0"].shape == batch["teacher1"].shape == (4, 1, 128, 128)
            and batch["flow"].shape == (4, 128, 128, 2))
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
    from feature_matcher_ros.training.sptd2.batches import depth_flow, read_rgbd_sequence

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
    flow, valid = depth_flow(load(seq["depths"][a]), load(seq["depths"][b]),
                             torch.tensor(seq["K"], dtype=torch.float32), T_1_0)
    assert valid.float().mean() > 0.5
    im0, im1 = (cv2.imread(str(seq["images"][i]), cv2.IMREAD_GRAYSCALE).astype(np.float32) for i in (a, b))
    f, v = flow.numpy(), valid.numpy()
    err = lambda dx: np.abs(cv2.remap(im1, f[..., 0] + dx, f[..., 1], cv2.INTER_LINEAR) - im0)[v].mean()  # noqa: E731
    assert err(0) < min(err(4), err(-4))


def test_distillation_loss_rewards_the_teacher_map():
    from feature_matcher_ros.training.sptd2.losses import distillation_loss

    teacher = torch.zeros(1, 1, 32, 32)
    teacher[0, 0, ::8, ::8] = 1.0
    good = teacher * 0.98 + 0.01
    assert float(distillation_loss(good, teacher)) < 0.05
    assert float(distillation_loss(torch.full_like(teacher, 0.5), teacher)) == pytest.approx(2 * np.log(2), rel=1e-4)
    assert float(distillation_loss(torch.roll(good, 3, dims=-1), teacher)) > 2.0


@pytest.mark.slow  # a whole tool run: make test only
def test_train_tool_fast_variant_with_rgbd_pairs_teacher_and_export_only(tmp_path, shared: Path):
    from feature_matcher_ros.training.sptd2.batches import image_key
    from feature_matcher_ros.training.sptd2.train import main as train_main

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
    from feature_matcher_ros.training.sptd2.evaluate import main as eval_main

    assert eval_main(["--methods", "orb,untrained", "--max-edge", "320", "--top-k", "300", "--speed",
                      "--speed-repeat", "1", "--speed-threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "### Speed: 640x480" in out and "### Goal table" in out
    goal = out.split("### Goal table")[1]
    assert "| untrained |" in goal and "extract ms" in goal and "oxford_graffiti MMA@3" in goal


def test_train_tool_set_overrides_the_config(tmp_path, shared: Path):
    from feature_matcher_ros.training.sptd2.train import main as train_main

    images = str(shared / "data" / "tum_fr3_cabinet_rgbd" / "images")
    common = ["--variant", "fast", "--images", images, "--crop", "64", "--batch", "1", "--steps", "1",
              "--out", str(tmp_path / "run"), "--no-progress", "--export", str(tmp_path / "w.pt")]
    assert train_main(common + ["--set", "nope=1"]) == 2
    assert train_main(common + ["--set", "dim=32", "fine_scores=false", "key_threshold=0.5"]) == 0
    model, _ = load_checkpoint(str(tmp_path / "w.pt"))
    assert (model.config.dim, model.config.fine_scores, model.config.key_threshold) == (32, False, 0.5)


def test_train_tool_init_starts_from_exported_weights_and_resumes(tmp_path, shared: Path):
    from feature_matcher_ros.training.sptd2.train import main as train_main

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
