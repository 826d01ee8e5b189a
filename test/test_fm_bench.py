"""fm-bench as a command on the fixture checkpoint: the JSON the issue asks for, self-consistent.

Speed is measured by the command, never asserted here: only that both paths ran on the same frames, found
the same matches, and that the numbers add up.
"""

import json
import os
import subprocess
import sys


def test_fm_bench_json(repo, checkpoint):
    env = {**os.environ, "PYTHONPATH": str(repo)}
    run = subprocess.run(
        [sys.executable, "-m", "feature_matcher_ros.measure.bench", "--weights", str(checkpoint), "--size", "320x256",
         "--frames", "2", "--threads", "2", "--mode", "opt", "--threshold", "22.3", "--uncached", "--json",
         "--dynamic", "--runtime", "onnxruntime"],
        capture_output=True, text=True, env=env, cwd=repo, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"pairwise_fps", "streaming_fps", "stage_ms", "peak_rss_mb"} <= set(r)
    assert (r["backend"], r["device"], r["precision"], r["size"], r["frames"], r["threads"]) == (
        "eloftr", "cpu", "fp32", "320x256", 2, 2)
    assert r["settings"] == {"eloftr.mode": "opt", "eloftr.threshold": 22.3, "eloftr.static": True,
                             "eloftr.max_candidates": 0, "eloftr.cuda_graph": True}
    # both paths matched the same frames and found the same matches (streaming = pairwise)
    assert r["matches_streaming"] == r["matches_pairwise"] > 5
    assert abs(r["speedup"] - r["streaming_fps"] / r["pairwise_fps"]) < 1e-9
    assert abs(r["streaming_ms_per_frame"] * r["streaming_fps"] - 1000.0) < 1e-6
    # the per-frame stages: the streaming path extracts one image and matches; the reference does it all
    assert ({"extract.backbone", "transformer", "coarse_matching", "fine_preprocess", "fine_matching"}
            <= set(r["stage_ms"]))
    assert {"backbone", "transformer", "coarse_matching", "fine_preprocess"} <= set(r["pairwise_stage_ms"])
    assert sum(r["stage_ms"].values()) <= r["streaming_ms_per_frame"] * 1.05
    assert 0 < r["peak_rss_streaming_mb"] <= r["peak_rss_mb"]
    assert r["keyframe_mb"] > 1.0 and r["scratch_mb"] > 1.0
    assert abs(r["uncached_ms_per_frame"] * r["uncached_fps"] - 1000.0) < 1e-6  # --uncached ran
    # beside it on the same frames: the dynamic path and onnxruntime on an export made for the run
    assert set(r["variants"]) == {"dynamic", "onnxruntime"}
    for v in r["variants"].values():
        assert v["matches"] == r["matches_streaming"]
        assert abs(v["ratio_to_streaming"] * r["streaming_ms_per_frame"] - v["ms_per_frame"]) < 1e-6


def test_fm_bench_human_output_and_bad_arguments(repo):
    env = {**os.environ, "PYTHONPATH": str(repo)}
    run = subprocess.run([sys.executable, "-m", "feature_matcher_ros.measure.bench",
                          "--backend", "sift", "--frames", "1"],
                         capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "speed-up" in run.stdout and "held between frames" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "feature_matcher_ros.measure.bench", "--size", "640by480"],
                         capture_output=True, text=True, env=env, cwd=repo, timeout=60)
    assert bad.returncode == 2 and "--size" in bad.stderr
