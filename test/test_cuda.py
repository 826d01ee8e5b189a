"""What only a CUDA device can show (marker ``cuda``; skipped without one). ``make gpu-check`` runs these.

Efficient LoFTR on CUDA in fp32 against the official fixture (both paths, every pair and mode), the
streaming path equal to the pairwise one on real frames, buffers reused between frames (not reallocated),
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
    backend.match(kf, feats)  # returns numpy matches: the frame's work has finished
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
