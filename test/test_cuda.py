"""What only a CUDA device can show (marker ``cuda``; skipped without one). ``make gpu-check`` runs these.

Efficient LoFTR on CUDA in fp32 against the official fixture (both paths, every pair and mode), the
streaming path equal to the pairwise one on real frames, the static path's CUDA graphs equal to the dynamic path
(captured once per shape, mode and precision, the threshold live), buffers reused between frames (not reallocated),
stage timings from CUDA events, fp16 / bf16 runs close to fp32, SPTD2 on CUDA close to the CPU, and the
node over DDS on CUDA (when rclpy imports).
"""

import time

import cv2
import numpy as np
import pytest
import torch

from feature_matcher_ros.backends import create_backend
from feature_matcher_ros.backends.eloftr import EfficientLoFTRBackend
from feature_matcher_ros.measure.parity import (
    agreement,
    agreement_problems,
    compare_matches,
    load_fixture_reference,
    score_summaries,
)
from feature_matcher_ros.resources import data_dir

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check)"),
]



@pytest.fixture(scope="module")
def backend(checkpoint, thr):
    return EfficientLoFTRBackend(device="cuda", weights=str(checkpoint), threshold=thr["full"])


def use_mode(backend, mode, thr):
    backend.apply({"eloftr.mode": mode, "eloftr.threshold": thr[mode]})


def gray(path):
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, path
    return img


@pytest.fixture(scope="module")
def tum_gray():
    folder = data_dir() / "tum_fr2_desk" / "images"
    return [gray(p) for p in sorted(folder.glob("*.png"))[:6]]


@pytest.mark.parametrize("mode", ["full", "opt"])
def test_fp32_both_paths_match_the_official_fixture(backend, fixture_dir, pair, mode, thr):
    use_mode(backend, mode, thr)
    imgs = [gray(fixture_dir / f"{pair}_img{k}.png") for k in (0, 1)]
    ref = load_fixture_reference(fixture_dir, pair, mode)
    pairwise = backend.match_pair_native(*imgs, resize=False)[0]
    streaming = backend.match_native(*(backend.extract_native(img) for img in imgs))
    for out in (pairwise, streaming):
        assert out["mkpts1_f"].device.type == "cuda"
        problems = compare_matches(out, ref, mode, thr[mode])
        assert not problems, "\n".join(problems)


def test_streaming_equals_pairwise_on_real_frames(backend, tum_gray, thr):
    """640x480 TUM frames: the keyframe extracted once; each frame's streaming matches against the
    pairwise reference path on the same device, with the fixture's recipe."""
    use_mode(backend, "full", thr)
    keyframe = backend.extract(tum_gray[0])
    total = 0
    for frame in tum_gray[1:]:
        stream = backend.match_native(keyframe, backend.extract(frame), debug=True)
        ref, *_ = backend.match_pair_native(tum_gray[0], frame, debug=True)
        ref = {**ref, **score_summaries(ref["tr_c0"], ref["tr_c1"])}
        problems = compare_matches(stream, ref, "full", thr["full"])
        assert not problems, "\n".join(problems)
        total += len(ref["i_ids"])
    assert total > 20, "too few matches to compare"


def test_scratch_buffers_are_reused_between_frames(backend, tum_gray, thr):
    """A buffer kept on ``cuda:0`` must be found again for ``device='cuda'`` (not reallocated each frame)."""
    use_mode(backend, "full", thr)
    kf = backend.extract(tum_gray[0])
    backend.match(kf, backend.extract(tum_gray[1]))
    before = {k: v.data_ptr() for k, v in backend.model.workspace.buffers.items()}
    backend.match(kf, backend.extract(tum_gray[2]))
    after = {k: v.data_ptr() for k, v in backend.model.workspace.buffers.items()}
    assert before and {k: after[k] for k in before if k in after} == before


def test_stage_times_come_from_cuda_events(backend, tum_gray, thr):
    use_mode(backend, "full", thr)
    kf = backend.extract(tum_gray[0])
    feats = backend.extract(tum_gray[1])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    backend.match_native(kf, feats)  # the dynamic path, timed per stage (a CUDA-graph frame is timed whole)
    torch.cuda.synchronize()
    wall = 1000 * (time.perf_counter() - t0)
    stages = backend.stage_ms
    assert {"transformer", "coarse_matching", "fine_matching"} <= set(stages)
    assert all(v > 0 for v in stages.values()) and sum(stages.values()) <= wall * 1.05 + 1.0


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precisions_stay_close_to_fp32(checkpoint, fixture_dir, precision, thr):
    """Within parity.AGREEMENT (match count, keypoints on the common matches); gpu-check reports all figures."""
    imgs = [gray(fixture_dir / f"capitol_640x480_img{k}.png") for k in (0, 1)]
    outs = {}
    for p in ("fp32", precision):
        b = EfficientLoFTRBackend(device="cuda", precision=p, weights=str(checkpoint), threshold=thr["full"])
        outs[p] = b.match_native(*(b.extract_native(img) for img in imgs))
        assert torch.isfinite(outs[p]["mkpts1_f"]).all() and torch.isfinite(outs[p]["mconf"]).all()
    a = agreement(outs["fp32"], outs[precision])
    assert a["common"] > 0, a
    assert not agreement_problems(a, precision), a


def test_sptd2_on_cuda_matches_the_cpu(tum_gray):
    cpu, gpu = create_backend("sptd2", device="cpu"), create_backend("sptd2", device="cuda")
    m_cpu = cpu.match(cpu.extract(tum_gray[0]), cpu.extract(tum_gray[1]))
    m_gpu = gpu.match(gpu.extract(tum_gray[0]), gpu.extract(tum_gray[1]))
    assert len(m_gpu) > 50
    a = {tuple(np.round(k)) for k in m_cpu.kpts0}
    b = {tuple(np.round(k)) for k in m_gpu.kpts0}
    assert len(a & b) / len(a | b) > 0.8


@pytest.mark.parametrize("mode", ["full", "opt"])
def test_cuda_graphs_give_the_dynamic_paths_matches(backend, fixture_dir, pair, mode, thr):
    """The default on CUDA: eloftr.static with eloftr.cuda_graph, against the dynamic path on the device."""
    assert backend.uses_graphs
    use_mode(backend, mode, thr)
    imgs = [gray(fixture_dir / f"{pair}_img{k}.png") for k in (0, 1)]
    f0, f1 = (backend.extract_native(i) for i in imgs)
    dynamic = backend.match_native(f0, f1)
    out = backend.match_static(f0, f1)
    v = out["valid"]
    static = {k: out[k][v].cpu() for k in ("i_ids", "j_ids", "mconf", "mkpts0_f", "mkpts1_f")}
    assert int(out["count"]) == len(dynamic["i_ids"])
    assert static["i_ids"].tolist() == dynamic["i_ids"].cpu().tolist()
    assert static["j_ids"].tolist() == dynamic["j_ids"].cpu().tolist()
    for key in ("mkpts0_f", "mkpts1_f"):
        np.testing.assert_allclose(static[key].numpy(), dynamic[key].cpu().numpy(), atol=1e-3, err_msg=key)
    problems = compare_matches(static, load_fixture_reference(fixture_dir, pair, mode), mode, thr[mode])
    assert not problems, "\n".join(problems)


def test_cuda_graphs_capture_once_and_follow_live_settings(checkpoint, tum_gray, thr):
    b = EfficientLoFTRBackend(device="cuda", weights=str(checkpoint), threshold=thr["full"])
    kf = b.extract(tum_gray[0])
    frames = [b.extract(img) for img in tum_gray[1:4]]
    first = [b.match(kf, f) for f in frames]
    graphs = b.counters["eloftr.cuda_graphs"]
    assert graphs == 2  # one extraction graph (one size), one matching graph
    again = b.match(kf, frames[0])  # features made before later replays are intact (cloned out of the graph)
    np.testing.assert_array_equal(again.kpts1, first[0].kpts1)
    b.apply({"eloftr.threshold": thr["full"] * 2})  # an input of the graph: no new capture
    fewer = b.match(kf, frames[0])
    assert b.counters["eloftr.cuda_graphs"] == graphs and len(fewer) < len(first[0])
    assert (fewer.scores > thr["full"] * 2).all()
    b.apply({"eloftr.mode": "opt", "eloftr.threshold": thr["opt"]})  # another graph for the other mode
    b.match(kf, frames[0])
    assert b.counters["eloftr.cuda_graphs"] == graphs + 1
    b.set_precision("fp16")  # the graphs of fp32 are dropped; features are converted
    kf16 = b.convert_features(kf)
    m16 = b.match(kf16, b.extract(tum_gray[1]))
    assert len(m16) > 0 and b.counters["eloftr.cuda_graphs"] == graphs + 3
