"""Efficient LoFTR exported to ONNX (``fm-export``) and run by onnxruntime on the CPU (``runtime: onnxruntime``).

On every fixture pair and mode: the official matches by the fixture's recipe (fragile ones excepted), and
the torch fp32 static path's keypoints within 1e-3 px. Also: the sidecar, the threshold as a live input, and
what the export fixed (modes, precision, K, sizes) refused with a reason.
"""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from feature_matcher_ros.backends import create_backend  # noqa: E402
from feature_matcher_ros.backends.eloftr.onnx_export import ExportSpec, export_eloftr  # noqa: E402
from feature_matcher_ros.measure.parity import compare_matches, load_fixture_reference  # noqa: E402


def images(fixture_dir, pair):
    return [cv2.imread(str(fixture_dir / f"{pair}_img{k}.png"), cv2.IMREAD_UNCHANGED) for k in (0, 1)]


@pytest.fixture(scope="module")
def torch_backend(checkpoint, thr):
    return create_backend("eloftr", weights=str(checkpoint), threshold=thr["full"])


@pytest.fixture(scope="module")
def exports(torch_backend, checkpoint, fixture_dir, tmp_path_factory, repo):
    """pair -> export folder: the first pair through the fm-export command, the others through the API."""
    cache = {}

    def get(pair):
        if pair not in cache:
            out = tmp_path_factory.mktemp(f"onnx_{pair}")
            h0, w0 = images(fixture_dir, pair)[0].shape
            h1, w1 = images(fixture_dir, pair)[1].shape
            if not cache:
                run = subprocess.run([sys.executable, "-m", "feature_matcher_ros.tools.export", "--backend", "eloftr",
                                      "--weights", str(checkpoint), "--size", f"{w0}x{h0}", "--frame-size",
                                      f"{w1}x{h1}", "--out", str(out)], capture_output=True, text=True, cwd=repo,
                                     timeout=600)
                assert run.returncode == 0, run.stderr
                assert "eloftr.json" in run.stdout
            else:
                export_eloftr(torch_backend.model, out, ExportSpec((w0, h0), (w1, h1), weights=checkpoint))
            cache[pair] = out
        return cache[pair]

    return get


def onnx_backend(folder, mode, thr):
    return create_backend("eloftr", weights=str(folder), runtime="onnxruntime", mode=mode, threshold=thr[mode])


@pytest.mark.parametrize("mode", ["full", "opt"])
def test_onnxruntime_gives_the_official_matches_and_torchs_keypoints(exports, torch_backend, fixture_dir, pair,
                                                                    mode, thr):
    folder = exports(pair)
    ob = onnx_backend(folder, mode, thr)
    img0, img1 = images(fixture_dir, pair)
    out = ob.match_outputs(ob.extract(img0), ob.extract(img1))
    v = out["valid"].astype(bool)
    got = {"i_ids": out["i_ids"][v], "j_ids": out["j_ids"][v], "mconf": out["mconf"][v],
           "mkpts0_f": out["mkpts0"][v], "mkpts1_f": out["mkpts1"][v]}
    problems = compare_matches(got, load_fixture_reference(fixture_dir, pair, mode), mode, thr[mode])
    assert not problems, "\n".join(problems)
    # against torch fp32 on the common matches: keypoints within 1e-3 px
    torch_backend.apply({"eloftr.mode": mode, "eloftr.threshold": thr[mode]})
    f0, f1 = torch_backend.extract(img0), torch_backend.extract(img1)
    ref = torch_backend.model.match_static(f0.data, f1.data, mode, torch.tensor(thr[mode]), len(v))
    rv = ref["valid"].numpy()
    theirs = {p: r for r, p in enumerate(zip(ref["i_ids"].numpy()[rv].tolist(), ref["j_ids"].numpy()[rv].tolist()))}
    ours = list(zip(got["i_ids"].tolist(), got["j_ids"].tolist()))
    common = [(r, theirs[p]) for r, p in enumerate(ours) if p in theirs]
    assert len(common) >= 0.98 * max(len(ours), len(theirs)) and common
    a, b = np.array([c[0] for c in common]), np.array([c[1] for c in common])
    for key in ("mkpts0_f", "mkpts1_f"):
        diff = np.abs(got[key][a] - ref[key].numpy()[rv][b]).max()
        assert diff <= 1e-3, f"{key}: {diff} px"


def test_sidecar_says_what_was_exported(exports, checkpoint):
    folder = exports("capitol_640x480")
    sidecar = json.loads((folder / "eloftr.json").read_text())
    assert sidecar["keyframe_size"] == [640, 480] and sidecar["frame_size"] == [640, 480]
    assert sidecar["max_candidates"] == 2400 and sidecar["modes"] == ["full", "opt"]
    assert sidecar["precision"] == "fp32" and len(sidecar["weights_sha256"]) == 64
    assert sorted(sidecar["files"]["extract"]) == ["640x480"]
    for name in (*sidecar["files"]["extract"].values(), *sidecar["files"]["match"].values()):
        assert (folder / name).is_file()


def test_threshold_is_live_and_what_the_export_fixed_is_refused(exports, fixture_dir, thr):
    folder = exports("bridge_256x320")
    ob = onnx_backend(folder, "full", thr)
    img0, img1 = images(fixture_dir, "bridge_256x320")
    f0, f1 = ob.extract(img0), ob.extract(img1)
    low = len(ob.match(f0, f1))
    assert ob.validate({"eloftr.threshold": 0.3}) is None
    ob.apply({"eloftr.threshold": 0.3})
    high = ob.match(f0, f1)
    assert len(high) < low and (high.scores > 0.3).all()
    assert "K = 640" in ob.validate({"eloftr.max_candidates": 7})
    assert "static" in ob.validate({"eloftr.static": False})
    with pytest.raises(ValueError, match="fp32"):
        ob.set_precision("fp16")
    with pytest.raises(ValueError, match="fp32"):
        create_backend("eloftr", weights=str(folder), runtime="onnxruntime", precision="bf16")
    # an image of another size is resized to the export's; a features pair of other sizes is refused
    small = ob.extract(cv2.resize(img1, (160, 128)))
    assert small.data["net_size"] == img1.shape and small.image_size == (128, 160)
    only_full = exports("sanmarco_384x224_320x256")
    other = onnx_backend(only_full, "full", thr)
    g0, g1 = images(fixture_dir, "sanmarco_384x224_320x256")
    with pytest.raises(ValueError, match="matches"):
        other.match(other.extract(g1), other.extract(g1))


def test_runtime_onnxruntime_needs_an_export_folder(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="fm-export"):
        create_backend("eloftr", weights=str(tmp_path), runtime="onnxruntime")
    with pytest.raises(ValueError, match="runtime"):
        create_backend("sift", runtime="onnxruntime")


def test_tensorrt_where_installed(exports, fixture_dir, thr):
    """Runs only where this onnxruntime has the TensorRT provider (a Jetson, a GPU robot): same matches as the
    CPU provider within the fp32 tolerance (not run here: the CPU build has no TensorRT)."""
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no TensorRT provider")
    folder = exports("capitol_640x480")
    cpu = onnx_backend(folder, "full", thr)
    trt = create_backend("eloftr", weights=str(folder), runtime="onnxruntime", device="cuda", mode="full",
                         threshold=thr["full"])
    assert "TensorrtExecutionProvider" in trt.describe()["providers"]
    img0, img1 = images(fixture_dir, "capitol_640x480")
    a, b = cpu.match(cpu.extract(img0), cpu.extract(img1)), trt.match(trt.extract(img0), trt.extract(img1))
    assert abs(len(a) - len(b)) <= max(2, 0.01 * len(a))
