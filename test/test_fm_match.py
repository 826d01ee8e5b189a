"""fm-match on the fixture: --raw reproduces the official outputs; the normal path takes any size."""

import os
import subprocess
import sys

import numpy as np

from feature_matcher_ros.measure.parity import compare_matches


def fm_match(repo, *args):
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(
        [sys.executable, "-m", "feature_matcher_ros.tools.match", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=repo, timeout=300,
    )


def test_raw_matches_the_official_fixture(repo, fixture_dir, checkpoint, tmp_path):
    pair = "bridge_256x320"
    out_npz, drawing = tmp_path / "raw.npz", tmp_path / "raw.png"
    run = fm_match(
        repo, fixture_dir / f"{pair}_img0.png", fixture_dir / f"{pair}_img1.png", "--backend", "eloftr",
        "--weights", checkpoint, "--mode", "opt", "--threshold", "22.3", "--raw", "--out", out_npz, "--draw", drawing,
    )
    assert run.returncode == 0, run.stderr
    assert "matches" in run.stdout and drawing.stat().st_size > 1000
    got = np.load(out_npz)
    assert sorted(got.files) == ["i_ids_0", "j_ids_0", "mconf_0", "mkpts0_f_0", "mkpts1_f_0"]
    ref = {**np.load(fixture_dir / f"{pair}_stages.npz"), **np.load(fixture_dir / f"{pair}_opt.npz")}
    out = {k.removesuffix("_0"): got[k] for k in got.files}
    problems = compare_matches(out, ref, "opt", 22.3)
    assert not problems, "\n".join(problems)


def test_raw_rejects_sizes_that_are_not_multiples_of_32(repo, fixture_dir, checkpoint, tmp_path, shared):
    import cv2

    odd = tmp_path / "odd.png"
    img = cv2.imread(str(fixture_dir / "bridge_256x320_img1.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(odd), img[:300, :250])
    run = fm_match(repo, fixture_dir / "bridge_256x320_img0.png", odd, "--weights", checkpoint, "--raw")
    assert run.returncode == 2 and "multiples of 32" in run.stderr and "250x300" in run.stderr
    run = fm_match(repo, fixture_dir / "bridge_256x320_img0.png", tmp_path / "missing.png", "--weights", checkpoint)
    assert run.returncode == 2 and "missing.png" in run.stderr
    run = fm_match(repo, fixture_dir / "bridge_256x320_img0.png", odd)
    assert run.returncode == 2 and "--weights" in run.stderr


def test_streaming_several_images_any_size(repo, shared, checkpoint, tmp_path):
    """Colour 640x480 TUM frames shrunk to 200x150 (not multiples of 32): keypoints in their pixels.
    Two IMAGEs, so both go through the streaming path against the keyframe."""
    import cv2

    names = sorted((shared / "data" / "tum_fr2_desk" / "images").glob("*.png"))[:3]
    paths = []
    for k, name in enumerate(names):
        path = tmp_path / f"f{k}.png"
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(name)), (200, 150), interpolation=cv2.INTER_AREA))
        paths.append(path)
    out_npz = tmp_path / "m.npz"
    run = fm_match(repo, *paths, "--weights", checkpoint, "--threshold", "0.0188", "--out", out_npz,
                   "--draw", tmp_path / "d.png")
    assert run.returncode == 0, run.stderr
    got = np.load(out_npz)
    assert sorted(got.files) == ["kpts0_0", "kpts0_1", "kpts1_0", "kpts1_1", "scores_0", "scores_1"]
    assert (tmp_path / "d_0.png").is_file() and (tmp_path / "d_1.png").is_file()
    for k in (0, 1):
        k0, k1, s = got[f"kpts0_{k}"], got[f"kpts1_{k}"], got[f"scores_{k}"]
        assert len(s) > 0 and np.all((s > 0.0188) & (s <= 1))
        for kp in (k0, k1):
            assert np.all(kp > -5) and np.all(kp[:, 0] < 205) and np.all(kp[:, 1] < 155)
