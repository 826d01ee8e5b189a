"""Comparing two Efficient LoFTR runs with the parity recipe of the fixture (``fixtures/eloftr``).

Used by the tests (re-implementation vs the official outputs, streaming vs pairwise) and handy when
checking a new device or precision. Nothing here knows any expected values: a reference run is always
passed in (the fixture's arrays, or another path's outputs).

Recipe (tolerances from the fixture README):

* stage maps: backbone 1e-3, transformer 1e-2, fine map / windows 2e-3 (absolute);
  raw scores ``sim_*`` 3e-2 + 1e-3 rel; full-mode ``conf_*`` 2e-3 + 1e-2 rel;
* coarse match set: symmetric difference <= max(2, 1 % of the reference), every differing pair fragile
  in the reference (near-tie in its row/column or near the threshold);
* mconf on common matches: full 2e-3 + 1e-2 rel, opt 3e-2 + 1e-3 rel;
* keypoints on common matches whose stage-1 result is not a near-tie (relative top-2 gap >= 2e-4):
  ``mkpts0_f`` within 1e-4 px, ``mkpts1_f`` within 1e-3 px.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends.eloftr.coarse import dual_softmax, score_matrix


def decompress_checkpoint(xz_path: str | Path, cache_dir: str | Path, sha256: str | None = None) -> Path:
    """``xz_path`` decompressed once into ``cache_dir`` (atomic rename; reused when already there and,
    if ``sha256`` is given, when its digest matches)."""
    xz_path, cache_dir = Path(xz_path), Path(cache_dir)
    target = cache_dir / xz_path.name.removesuffix(".xz")

    def digest(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    if target.is_file() and (sha256 is None or digest(target) == sha256):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{target.name}.{os.getpid()}.tmp"
    with lzma.open(xz_path) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    if sha256 is not None and digest(tmp) != sha256:
        tmp.unlink()
        raise ValueError(f"{xz_path}: decompressed checkpoint has the wrong sha256")
    os.replace(tmp, target)
    return target


def fixture_manifest(fixture_dir: str | Path) -> dict[str, Any]:
    """The fixture's ``manifest.json`` (pairs, thresholds, checkpoint, tolerances)."""
    return json.loads((Path(fixture_dir) / "manifest.json").read_text())


def fixture_pairs(fixture_dir: str | Path) -> tuple[str, ...]:
    """The fixture's pair names, in the manifest's order."""
    return tuple(fixture_manifest(fixture_dir)["pairs"])


def fixture_thresholds(fixture_dir: str | Path) -> dict[str, float]:
    """The coarse threshold of each mode (``full``, ``opt``) the fixture's outputs were made with."""
    return {mode: float(thr) for mode, thr in fixture_manifest(fixture_dir)["thr"].items()}


def fixture_checkpoint(fixture_dir: str | Path, cache_dir: str | Path) -> Path:
    """The fixture's checkpoint, decompressed once into ``cache_dir`` and checked against its sha256."""
    info = fixture_manifest(fixture_dir)["checkpoint"]
    return decompress_checkpoint(Path(fixture_dir) / info["file"], cache_dir, info["sha256_of_decompressed"])


def _np(x: Any) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def score_summaries(tr_c0: torch.Tensor, tr_c1: torch.Tensor, temperature: float = 0.1) -> dict[str, np.ndarray]:
    """Row/column max, runner-up and log-sum-exp of ``sim`` and (full) ``conf`` from the transformer
    outputs ``(1, C, h, w)``: the fixture's ``sim_*`` / ``conf_*`` arrays for any run."""
    f0 = tr_c0[0].flatten(1).t().float()
    f1 = tr_c1[0].flatten(1).t().float()
    sim = score_matrix(f0, f1, temperature)
    out: dict[str, np.ndarray] = {}
    for name, mat in (("sim", sim), ("conf", dual_softmax(sim))):
        for axis, tag in ((1, "row"), (0, "col")):
            top = mat.topk(2, dim=axis).values
            top = top if axis == 1 else top.t()
            out[f"{name}_{tag}_max"], out[f"{name}_{tag}_2nd"] = _np(top[:, 0]), _np(top[:, 1])
            out[f"{name}_{tag}_argmax"] = _np(mat.argmax(axis))
        if name == "sim":
            out["sim_row_lse"], out["sim_col_lse"] = _np(torch.logsumexp(sim, 1)), _np(torch.logsumexp(sim, 0))
    return out


def _close(name: str, got: Any, want: Any, atol: float, rtol: float = 0.0) -> list[str]:
    got, want = _np(got), _np(want)
    if got.shape != want.shape:
        return [f"{name}: shape {got.shape} != reference {want.shape}"]
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bound = atol + rtol * np.abs(want.astype(np.float64))
    if not np.all(err <= bound):
        k = int(np.argmax(err - bound))
        return [f"{name}: max |diff| {err.max():.3g} (worst at flat {k}: {got.flat[k]:.6g} vs {want.flat[k]:.6g}), "
                f"tolerance {atol} + {rtol} rel"]
    return []


def compare_scores(summ: Mapping[str, Any], ref: Mapping[str, Any], mode: str) -> list[str]:
    """``sim_*`` (and for ``full`` ``conf_*``) summaries against a reference."""
    problems = []
    for key in ("sim_row_max", "sim_row_2nd", "sim_row_lse", "sim_col_max", "sim_col_2nd", "sim_col_lse"):
        if key in ref:
            problems += _close(key, summ[key], ref[key], 3e-2, 1e-3)
    if mode == "full":
        for key in ("conf_row_max", "conf_row_2nd", "conf_col_max", "conf_col_2nd"):
            if key in ref:
                problems += _close(key, summ[key], ref[key], 2e-3, 1e-2)
    return problems


def _fragile(i: int, j: int, ref: Mapping[str, Any], mode: str, thr: float) -> bool:
    if mode == "full":
        rmax, r2 = float(ref["conf_row_max"][i]), float(ref["conf_row_2nd"][i])
        cmax, c2 = float(ref["conf_col_max"][j]), float(ref["conf_col_2nd"][j])
        gap = min((rmax - r2) / max(rmax, 1e-30), (cmax - c2) / max(cmax, 1e-30))
        near_thr = min(abs(rmax - thr), abs(cmax - thr)) <= 0.02 * thr
        return gap < 2e-2 or near_thr
    rmax, r2 = float(ref["sim_row_max"][i]), float(ref["sim_row_2nd"][i])
    cmax, c2 = float(ref["sim_col_max"][j]), float(ref["sim_col_2nd"][j])
    return min(rmax - r2, cmax - c2) < 0.05 or min(abs(rmax - thr), abs(cmax - thr)) <= 0.05


def common_matches(ref: Mapping[str, Any], out: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(in ref, in out)`` of the ``(i, j)`` pairs present in both."""
    index = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(_np(out["i_ids"]), _np(out["j_ids"])))}
    a, b = [], []
    for k, (i, j) in enumerate(zip(_np(ref["i_ids"]), _np(ref["j_ids"]))):
        if (int(i), int(j)) in index:
            a.append(k)
            b.append(index[(int(i), int(j))])
    return np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)


def compare_matches(out: Mapping[str, Any], ref: Mapping[str, Any], mode: str, thr: float) -> list[str]:
    """Steps 2-5 of the recipe. ``ref`` needs ``i_ids, j_ids, mconf, mkpts0_f, mkpts1_f,
    fine_s1_top2`` and the ``sim_*`` (opt) or ``conf_*`` (full) row/column summaries; optional
    ``fine_idx_l/_r``, ``fine_heatmap``, ``fine_expec`` are compared too when both sides have them."""
    problems = []
    a = set(zip(_np(ref["i_ids"]).tolist(), _np(ref["j_ids"]).tolist()))
    b = set(zip(_np(out["i_ids"]).tolist(), _np(out["j_ids"]).tolist()))
    diff = a ^ b
    if len(diff) > max(2, 0.01 * len(a)):
        problems.append(f"coarse match sets differ by {len(diff)} of {len(a)} (allowed {max(2, int(0.01 * len(a)))})")
    solid = [d for d in sorted(diff) if not _fragile(d[0], d[1], ref, mode, thr)]
    if solid:
        problems.append(f"{len(solid)} differing coarse matches are not fragile in the reference, e.g. {solid[:3]}")
    ia, ib = common_matches(ref, out)
    if len(ia) == 0:
        return problems + (["no common matches"] if a else [])
    if mode == "full":
        problems += _close("mconf", _np(out["mconf"])[ib], _np(ref["mconf"])[ia], 2e-3, 1e-2)
    else:
        problems += _close("mconf", _np(out["mconf"])[ib], _np(ref["mconf"])[ia], 3e-2, 1e-3)
    top2 = _np(ref["fine_s1_top2"])[ia]
    ok = (top2[:, 0] - top2[:, 1]) / np.maximum(top2[:, 0], 1e-30) >= 2e-4
    problems += _close("mkpts0_f", _np(out["mkpts0_f"])[ib][ok], _np(ref["mkpts0_f"])[ia][ok], 1e-4)
    problems += _close("mkpts1_f", _np(out["mkpts1_f"])[ib][ok], _np(ref["mkpts1_f"])[ia][ok], 1e-3)
    for key, tol in (("fine_heatmap", 1e-4), ("fine_expec", 1e-4)):
        if key in out and key in ref:
            problems += _close(key, _np(out[key])[ib][ok], _np(ref[key])[ia][ok], tol)
    for key in ("fine_idx_l", "fine_idx_r"):
        if key in out and key in ref and not np.array_equal(_np(out[key])[ib][ok], _np(ref[key])[ia][ok]):
            problems.append(f"{key} differs on non-tie matches")
    return problems


def compare_windows(out: Mapping[str, Any], ref: Mapping[str, Any]) -> list[str]:
    """``fine_win0/1`` of the reference's first K matches, where those matches exist in ``out``."""
    K = len(_np(ref["fine_win0"]))
    first = {k: (int(i), int(j)) for k, (i, j) in enumerate(zip(_np(ref["i_ids"])[:K], _np(ref["j_ids"])[:K]))}
    index = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(_np(out["i_ids"]), _np(out["j_ids"])))}
    ka = [k for k, pair in first.items() if pair in index]
    kb = [index[first[k]] for k in ka]
    if not ka:
        return ["no common match among the reference's stored windows"]
    return _close("fine_win0", _np(out["fine_win0"])[kb], _np(ref["fine_win0"])[ka], 2e-3) + _close(
        "fine_win1", _np(out["fine_win1"])[kb], _np(ref["fine_win1"])[ka], 2e-3
    )


def load_fixture_reference(fixture_dir: str | Path, pair: str, mode: str) -> dict[str, np.ndarray]:
    """The fixture's arrays for one pair and mode: the mode's outputs plus the pair's stage summaries
    (``sim_*`` row/column summaries that the recipe's fragility test reads)."""
    fixture_dir = Path(fixture_dir)
    return {**np.load(fixture_dir / f"{pair}_stages.npz"), **np.load(fixture_dir / f"{pair}_{mode}.npz")}


# fp16 / bf16 against fp32 on one device, as measured on an H200 in three runs of fm-gpu-check (docs/gpu.md).
# With the fixture's random weights most coarse confidences are near-ties (full-mode probabilities around
# the 0.02 threshold), so the coarse set overlap (IoU) is reported but is no criterion: fp16 kept
# 48-85 % of the set, bf16 9-42 %, while the number of matches moved by at most 10 (of 45) or 7 %. On the
# common matches the fine stage-1 argmax flips for some of them, each flip a whole-pixel move: up to ~5 % in
# fp16 (p95 0.001-0.99 px), more in bf16 (p95 up to 1.4 px); only the medians stay under 0.01 px. cuDNN's
# autotuned algorithms differ from run to run, and so do these figures.
AGREEMENT = {
    "fp16": {"count_rel": 0.25, "kpt1_px_median": 0.05, "kpt1_px_p95": 1.5},
    "bf16": {"count_rel": 0.25, "kpt1_px_median": 0.05, "kpt1_px_p95": 2.5},
}


def agreement_problems(a: Mapping[str, float], precision: str) -> list[str]:
    """What in an :func:`agreement` result is outside ``AGREEMENT[precision]``."""
    tol = AGREEMENT[precision]
    problems = []
    if abs(a["matches"] - a["ref_matches"]) > max(12.0, tol["count_rel"] * a["ref_matches"]):
        problems.append(f"{int(a['matches'])} matches against {int(a['ref_matches'])} in fp32")
    for key in ("kpt1_px_median", "kpt1_px_p95"):
        if a.get(key, 0.0) > tol[key]:
            problems.append(f"{key} {a[key]:.3g} > {tol[key]}")
    return problems


def agreement(ref: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, float]:
    """How close two runs' matches are, when no fixed recipe applies (another precision, another device):
    ``iou`` of the coarse ``(i, j)`` sets, and on the common matches the median / 95th percentile / max
    of the ``mkpts1_f`` distance (px) and of ``|mconf|`` differences. ``mkpts0_f`` is a pure function of
    the stage-1 argmax, so its changes show in ``mkpts0_moved`` (fraction of common matches moved)."""
    a = set(zip(_np(ref["i_ids"]).tolist(), _np(ref["j_ids"]).tolist()))
    b = set(zip(_np(out["i_ids"]).tolist(), _np(out["j_ids"]).tolist()))
    ia, ib = common_matches(ref, out)
    result = {"ref_matches": float(len(a)), "matches": float(len(b)),
              "iou": len(a & b) / max(1, len(a | b)), "common": float(len(ia))}
    if len(ia):
        d1 = np.linalg.norm(_np(out["mkpts1_f"])[ib] - _np(ref["mkpts1_f"])[ia], axis=1)
        d0 = np.linalg.norm(_np(out["mkpts0_f"])[ib] - _np(ref["mkpts0_f"])[ia], axis=1)
        dc = np.abs(_np(out["mconf"])[ib].astype(np.float64) - _np(ref["mconf"])[ia])
        for name, d in (("kpt1_px", d1), ("mconf", dc)):
            result[f"{name}_median"] = float(np.median(d))
            result[f"{name}_p95"] = float(np.percentile(d, 95))
            result[f"{name}_max"] = float(d.max())
        result["mkpts0_moved"] = float(np.mean(d0 > 1e-3))
    return result
