"""Loading the official Efficient LoFTR checkpoint layout, and clear errors for everything else."""


import cv2
import numpy as np
import pytest
import torch

from feature_matcher_ros.backends.eloftr import CheckpointError, EfficientLoFTRBackend, load_model, read_state_dict


@pytest.fixture(scope="module")
def state(checkpoint):
    return read_state_dict(checkpoint)


def test_official_layout_loads_strictly(checkpoint, state):
    raw = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert len(raw) == 447 and all(k.startswith("matcher.") for k in raw)
    assert len(state) == 447 and not any(k.startswith("matcher.") for k in state)
    groups = {p: sum(k.startswith(p + ".") for k in state) for p in ("backbone", "loftr_coarse", "fine_preprocess")}
    assert groups == {"backbone": 342, "loftr_coarse": 88, "fine_preprocess": 17}
    unfused = load_model(checkpoint, fuse=False)
    n = {p: sum(v.numel() for k, v in unfused.named_parameters() if k.startswith(p)) for p in groups}
    assert round(sum(n.values()) / 1e6, 2) == 16.03 and round(n["backbone"] / 1e6, 2) == 9.53
    fused = load_model(checkpoint)
    assert fused.backbone.is_fused and not unfused.backbone.is_fused
    assert not fused.training
    # the checkpoint's weights are really in the model
    torch.testing.assert_close(fused.loftr_coarse.layers[3].q_proj.weight, state["loftr_coarse.layers.3.q_proj.weight"])


def test_fused_and_unfused_backbones_match_the_official_map(checkpoint, fixture_dir):
    img = cv2.imread(str(fixture_dir / "bridge_256x320_img0.png"), cv2.IMREAD_UNCHANGED)
    x = torch.from_numpy(img.astype(np.float32) / 255)[None, None]
    ref = np.load(fixture_dir / "bridge_256x320_stages.npz")["bb_c0"]
    for fuse in (True, False):
        model = load_model(checkpoint, fuse=fuse)
        with torch.inference_mode():
            c = model.backbone(x)[2][0].numpy()
        assert np.abs(c - ref).max() < 1e-3, f"fuse={fuse}"


def test_keys_without_prefix_and_extra_entries(checkpoint, state, tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": state, "epoch": 30, "hyper_parameters": {"lr": 1.0}}, path)
    model = load_model(path)
    torch.testing.assert_close(model.fine_preprocess.layer1_outconv.weight,
                               state["fine_preprocess.layer1_outconv.weight"])


def test_missing_file(tmp_path):
    path = tmp_path / "eloftr_outdoor.ckpt"
    with pytest.raises(CheckpointError, match="eloftr_outdoor.ckpt.*not found"):
        load_model(path)


def test_truncated_file(checkpoint, tmp_path):
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(checkpoint.read_bytes()[: 5 * 2**20])
    with pytest.raises(CheckpointError, match="truncated.ckpt.*cannot be read"):
        load_model(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.ckpt"):
        load_model(path)
    path = tmp_path / "bare.ckpt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="bare.ckpt.*no 'state_dict'"):
        load_model(path)


def test_another_models_checkpoint(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": torch.nn.Sequential(torch.nn.Linear(4, 4)).state_dict()}, path)
    with pytest.raises(CheckpointError,
                       match=r"other.ckpt.*447 missing keys: backbone\..*unexpected keys: 0.bias, 0.weight"):
        load_model(path)


def test_one_key_missing_or_renamed(state, tmp_path):
    broken = dict(state)
    broken["loftr_coarse.layers.7.merge.weights"] = broken.pop("loftr_coarse.layers.7.merge.weight")
    path = tmp_path / "renamed.ckpt"
    torch.save({"state_dict": broken}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "renamed.ckpt" in message
    assert "1 missing keys: loftr_coarse.layers.7.merge.weight" in message
    assert "1 unexpected keys: loftr_coarse.layers.7.merge.weights" in message


def test_wrong_shape(state, tmp_path):
    broken = dict(state)
    broken["fine_preprocess.layer3_outconv.weight"] = torch.zeros(128, 256, 1, 1)
    path = tmp_path / "shape.ckpt"
    torch.save({"state_dict": broken}, path)
    with pytest.raises(CheckpointError, match="shape.ckpt.*fine_preprocess.layer3_outconv.weight"):
        load_model(path)


def test_backend_needs_weights_and_reports_bad_files(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        EfficientLoFTRBackend()
    with pytest.raises(CheckpointError, match="nothing.ckpt"):
        EfficientLoFTRBackend(weights=str(tmp_path / "nothing.ckpt"))
    with pytest.raises(ValueError, match="outside"):
        EfficientLoFTRBackend(weights=str(tmp_path / "nothing.ckpt"), threshold=3.0)
