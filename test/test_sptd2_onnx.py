"""SPTD2 extraction exported to ONNX (onnx_export.py) and run by onnxruntime: the same detections, scores and
descriptors as the torch path on real images, the same matches through the backend, and the baked settings
guarded by validate()."""

import json
import warnings

import cv2
import numpy as np
import pytest
import torch

from feature_matcher_ros.backends.nms import maxpool_nms
from feature_matcher_ros.backends.sptd2 import SPTD2Backend
from feature_matcher_ros.backends.sptd2.inference import image_to_tensor

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from feature_matcher_ros.backends.sptd2.onnx_export import (  # noqa: E402 - after the skips
    SIDECAR,
    OnnxSPTD2Backend,
    OnnxSPTD2Extractor,
    baked_settings,
    export_sptd2,
    local_maximum_mask,
    write_sidecar,
)

SIZE = (240, 320)  # (H, W)
TOP_K = 128  # fewer than the ~200 detections of these frames at this size: top-K truncation is exercised
FRAMES = (0, 4)
# Scores and descriptors agree to ~1e-6 (different conv kernels). The sub-pixel fit divides score differences
# by the peak's curvature, so a flat peak moves by up to ~1e-3 px (a few float32 ulps at x ~ 300): nearly
# every keypoint is within 1e-4 px, all within KP_ATOL (far below the 0.5 px a wrong detection or a missing
# refinement moves one).
KP_ATOL, KP_TIGHT, KP_TIGHT_FRACTION = 2e-3, 1e-4, 0.9
VALUE_ATOL = 1e-4


@pytest.fixture(scope="module")
def torch_backend():
    return SPTD2Backend(**{"sptd2.top_k": TOP_K})


@pytest.fixture(scope="module")
def export(tmp_path_factory, torch_backend):
    out = tmp_path_factory.mktemp("sptd2_onnx")
    entry = export_sptd2(torch_backend, out, SIZE)
    write_sidecar(out, [entry])
    return out, entry


@pytest.fixture(scope="module")
def images(shared):
    files = sorted((shared / "data" / "tum_fr2_desk" / "images").glob("*.png"))
    out = []
    for index in FRAMES:
        gray = cv2.imread(str(files[index]), cv2.IMREAD_GRAYSCALE)
        out.append(cv2.resize(gray, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_AREA))
    return out


def assert_same_features(ref: dict, got: dict) -> None:
    """``got`` (numpy, onnxruntime) holds ``ref``'s (torch) detections in the same order and values."""
    assert set(got) == {"keypoints", "scores", "descriptors"}
    k_ref, k_got = ref["keypoints"].float().numpy(), got["keypoints"]
    assert k_got.shape == k_ref.shape, f"{len(k_got)} keypoints from onnxruntime, {len(k_ref)} from torch"
    error = np.abs(k_got - k_ref).max(axis=1)
    assert float(error.max()) <= KP_ATOL, f"keypoints differ by up to {error.max():.2e} px"
    assert float((error <= KP_TIGHT).mean()) >= KP_TIGHT_FRACTION, f"{(error > KP_TIGHT).sum()} keypoints off"
    np.testing.assert_allclose(got["scores"], ref["scores"].float().numpy(), rtol=0, atol=VALUE_ATOL)
    np.testing.assert_allclose(got["descriptors"], ref["descriptors"].float().numpy(), rtol=0, atol=VALUE_ATOL)
    for key, dtype in (("keypoints", np.float32), ("scores", np.float32), ("descriptors", np.float32)):
        assert got[key].dtype == dtype


def test_export_is_fixed_shape_and_described(export, torch_backend):
    out, entry = export
    assert entry["file"] == f"sptd2_extract_{SIZE[0]}x{SIZE[1]}.onnx" and (out / entry["file"]).is_file()
    assert entry["size"] == list(SIZE) and entry["top_k"] == TOP_K and entry["precision"] == "fp32"
    assert entry["nms_radius"] == 1 and entry["detection_threshold"] == 0.0 and entry["key_threshold"] == 0.8
    assert entry["score_levels"] == "fine"  # "auto" resolved for the shipped fast weights (full-resolution level 1)
    dim = torch_backend.model.config.dim  # the shipped default's descriptor size (64: the fast variant)
    assert entry["descriptor_dim"] == dim == 64
    assert json.loads((out / SIDECAR).read_text())["entries"] == [entry]
    extractor = OnnxSPTD2Extractor(out / entry["file"], threads=1)
    assert extractor.entry == entry  # the file describes itself too
    shapes = {o.name: o.shape for o in extractor.session.get_outputs()}
    assert shapes == {"keypoints": [TOP_K, 2], "scores": [TOP_K], "descriptors": [TOP_K, dim], "valid": [TOP_K]}
    assert extractor.session.get_inputs()[0].shape == [1, 1, *SIZE]
    with pytest.raises(ValueError, match="takes a"):
        extractor(np.zeros((1, 1, SIZE[0], SIZE[1] + 16), np.float32))
    with pytest.raises(ValueError, match="precision"):
        export_sptd2(torch_backend, out, SIZE, precision="bf16")


def test_onnxruntime_equals_torch_on_real_images(export, torch_backend, images):
    out, entry = export
    extractor = OnnxSPTD2Extractor(out / entry["file"], threads=2, providers=["CPUExecutionProvider"])
    for gray in images:
        got = extractor(image_to_tensor(gray).numpy())
        assert len(got["keypoints"]) == TOP_K  # these frames have more detections than K
        assert_same_features(torch_backend.extract(gray).data, got)


def test_a_wrong_export_fails_the_comparison(export, torch_backend, images, tmp_path):
    """The comparison above catches a graph that differs from the torch path in a baked setting."""
    out, entry = export
    gray = images[0]
    reference = torch_backend.extract(gray).data
    other = OnnxSPTD2Extractor(tmp_path / export_sptd2(torch_backend, tmp_path, SIZE, top_k=TOP_K - 1)["file"],
                               threads=2)
    with pytest.raises(AssertionError, match="keypoints from onnxruntime"):
        assert_same_features(reference, other(image_to_tensor(gray).numpy()))
    extractor = OnnxSPTD2Extractor(out / entry["file"], threads=2)
    for changed in ({"sptd2.key_threshold": 0.5}, {"sptd2.nms_radius": 3}, {"sptd2.score_levels": "all"}):
        torch_backend.apply(changed)
        try:
            with pytest.raises(AssertionError):
                assert_same_features(torch_backend.extract(gray).data, extractor(image_to_tensor(gray).numpy()))
        finally:
            torch_backend.apply({"sptd2.key_threshold": 0.8, "sptd2.nms_radius": 1, "sptd2.score_levels": "auto"})


def test_onnx_backend_matches_like_torch(export, torch_backend, images):
    out, entry = export
    for source in (out, out / entry["file"]):  # the folder (sptd2.json) or the file (its metadata)
        backend = SPTD2Backend(onnx=source)
        assert backend.settings["sptd2.top_k"] == TOP_K  # taken from the export
        assert backend.describe()["onnx"] == str(source)
        feats = [backend.extract(gray) for gray in images]
        ref_feats = [torch_backend.extract(gray) for gray in images]
        for f, r in zip(feats, ref_feats):
            assert f.image_size == r.image_size and f.backend == "sptd2"
            assert_same_features(r.data, {k: v.numpy() for k, v in f.data.items()})
        matches = backend.match(*feats)
        reference = torch_backend.match(*ref_feats)
        assert len(reference) > 30
        assert len(matches) == len(reference)
        np.testing.assert_allclose(matches.kpts0, reference.kpts0, rtol=0, atol=KP_ATOL)
        np.testing.assert_allclose(matches.kpts1, reference.kpts1, rtol=0, atol=KP_ATOL)
        np.testing.assert_allclose(matches.scores, reference.scores, rtol=0, atol=VALUE_ATOL)


def test_baked_settings_are_guarded_and_sizes_checked(export, images):
    out, entry = export
    backend = SPTD2Backend(onnx=out)
    for key, value in (("sptd2.top_k", 64), ("sptd2.nms_radius", 3), ("sptd2.detection_threshold", 0.1),
                       ("sptd2.key_threshold", 0.5), ("sptd2.score_levels", "all")):
        reason = backend.validate({**backend.settings, key: value})
        assert reason is not None and key in reason and "ONNX export" in reason and str(out) in reason
    assert backend.validate({**backend.settings, "sptd2.match_threshold": 0.5, "sptd2.ratio": 0.9}) is None
    # the node passes every parameter (here the export's values, score_levels at its default auto): auto score
    # levels are the export's
    node_values = {**{p.name: p.default for p in SPTD2Backend.PARAMS},
                   **{k: v for k, v in baked_settings(entry).items() if k != "sptd2.score_levels"}}
    assert SPTD2Backend(onnx=out, **node_values).settings["sptd2.score_levels"] == "auto"
    with pytest.raises(ValueError, match="baked into the ONNX export"):
        SPTD2Backend(onnx=out, **{"sptd2.top_k": 2048})
    with pytest.raises(ValueError, match="320x240"):
        backend.extract(cv2.resize(images[0], (160, 120)))
    with pytest.raises(FileNotFoundError, match=SIDECAR):
        SPTD2Backend(onnx=out.parent)
    # the calling convention of create_backend(..., runtime="onnxruntime"): weights = the export
    adapted = OnnxSPTD2Backend(weights=out)
    assert adapted.name == "sptd2" and adapted.settings == backend.settings and adapted.onnx_path == str(out)
    with pytest.raises(ValueError, match="needs weights"):
        OnnxSPTD2Backend()


def test_nms_ties_settle_as_torch_in_onnxruntime(tmp_path):
    """Plateaus (exact ties) keep the first position in scan order, in the graph as in maxpool_nms."""

    class Nms(torch.nn.Module):
        def forward(self, score):
            return local_maximum_mask(score, 2)

    score = torch.randint(0, 3, (23, 31), generator=torch.Generator().manual_seed(0)).float()
    path = tmp_path / "nms.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation warning
        torch.onnx.export(Nms(), (score,), str(path), dynamo=False, opset_version=17, input_names=["score"])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"score": score.numpy()})
    expected = maxpool_nms(score, 5, float("-inf"))
    assert expected.sum() < (score == 2).sum()  # ties were settled
    np.testing.assert_array_equal(got[0], expected.numpy())
    np.testing.assert_array_equal(local_maximum_mask(score, 2).numpy(), expected.numpy())
