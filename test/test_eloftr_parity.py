"""Efficient LoFTR parity with the official model on every fixture pair, in both modes.

The fixture (``shared/fixtures/eloftr``) holds the official code's outputs and intermediate tensors for
a random-weight checkpoint in the released layout. The comparison follows the fixture README's recipe
(see ``feature_matcher_ros.measure.parity``), including the stage checks (backbone maps, every
transformer layer, fine map) that catch RoPE and layer-schedule mistakes invisible in the matches.

Each pair's backbone and transformer run once for the whole module (shared by both modes; the
640x480 pair costs ~5 s through the whole model).
"""

import cv2
import numpy as np
import pytest
import torch

from feature_matcher_ros.backends.eloftr.loader import load_model
from feature_matcher_ros.measure.parity import (
    compare_matches,
    compare_scores,
    compare_windows,
    score_summaries,
)

MODES = ["full", "opt"]


@pytest.fixture(scope="module")
def model(checkpoint):
    torch.manual_seed(0)
    return load_model(checkpoint)


def load_image(fixture_dir, pair, k):
    img = cv2.imread(str(fixture_dir / f"{pair}_img{k}.png"), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 2
    return torch.from_numpy(img.astype(np.float32) / 255.0)[None, None]


@pytest.fixture(scope="module")
def runs(model, fixture_dir):
    """(pair, mode) -> (reference forward output with debug tensors, fixture arrays), computed lazily."""
    cache, maps = {}, {}

    def get(pair, mode):
        if (pair, mode) not in cache:
            ref = dict(np.load(fixture_dir / f"{pair}_{mode}.npz"))
            stages = dict(np.load(fixture_dir / f"{pair}_stages.npz"))
            if pair not in maps:  # backbone and transformer once per pair, shared by both modes
                img0, img1 = load_image(fixture_dir, pair, 0), load_image(fixture_dir, pair, 1)
                maps[pair] = model.reference_maps(img0, img1, debug=True)
            out = model.reference_match(maps[pair], mode, float(ref["thr"]), debug=True)
            cache[(pair, mode)] = (out, {**stages, **ref})
        return cache[(pair, mode)]

    return get


def _check(problems):
    assert not problems, "\n".join(problems)


def test_backbone_maps(runs, pair):
    out, ref = runs(pair, "full")
    problems = []
    for k in (0, 1):
        x1, x2, c = (t[0].numpy() for t in out[f"bb{k}"])
        for name, got in ((f"bb_c{k}", c), (f"bb_c{k}_chmean", c.mean((1, 2)))):
            problems += _close_abs(name, got, ref[name], 1e-3)
        for tag, m in (("x1", x1), ("x2", x2)):
            problems += _close_abs(f"bb_{tag}_{k}_tl16", m[:, :16, :16], ref[f"bb_{tag}_{k}_tl16"], 1e-3)
            problems += _close_abs(f"bb_{tag}_{k}_br16", m[:, -16:, -16:], ref[f"bb_{tag}_{k}_br16"], 1e-3)
            problems += _close_abs(f"bb_{tag}_{k}_chmean", m.mean((1, 2)), ref[f"bb_{tag}_{k}_chmean"], 1e-3)
    _check(problems)


def test_transformer_every_layer(runs, pair):
    """The only check that sees RoPE details (1-based positions, fp16 tables) and the cross schedule."""
    out, ref = runs(pair, "full")
    problems = []
    assert len(out["tr_layers"]) == 8
    for k in (0, 1):
        tr = out[f"tr_c{k}"][0].numpy()
        problems += _close_abs(f"tr_c{k}", tr, ref[f"tr_c{k}"], 1e-2)
        problems += _close_abs(f"tr_c{k}_chmean", tr.mean((1, 2)), ref[f"tr_c{k}_chmean"], 1e-2)
        pos = ref[f"coarse_pos{k}"]
        layers = np.stack([layer[k][0][:, pos[:, 0], pos[:, 1]].t().numpy() for layer in out["tr_layers"]])
        problems += _close_abs(f"tr_layers_c{k}_at_pos", layers, ref[f"tr_layers_c{k}_at_pos"], 1e-2)
        bb = out[f"bb{k}"][2][0][:, pos[:, 0], pos[:, 1]].t().numpy()
        problems += _close_abs(f"bb_c{k}_at_pos", bb, ref[f"bb_c{k}_at_pos"], 1e-3)
    _check(problems)


def test_fine_map(runs, pair):
    out, ref = runs(pair, "full")
    problems = []
    for k in (0, 1):
        fm = out[f"fine_map{k}"].numpy()
        problems += _close_abs(f"fine_map{k}_tl24", fm[:, :24, :24], ref[f"fine_map{k}_tl24"], 2e-3)
        problems += _close_abs(f"fine_map{k}_br24", fm[:, -24:, -24:], ref[f"fine_map{k}_br24"], 2e-3)
        problems += _close_abs(f"fine_map{k}_chmean", fm.mean((1, 2)), ref[f"fine_map{k}_chmean"], 2e-3)
    _check(problems)


@pytest.mark.parametrize("mode", MODES)
def test_scores(runs, pair, mode):
    out, ref = runs(pair, mode)
    _check(compare_scores(score_summaries(out["tr_c0"], out["tr_c1"]), ref, mode))


@pytest.mark.parametrize("mode", MODES)
def test_matches_and_keypoints(runs, pair, mode, manifest):
    out, ref = runs(pair, mode)
    assert len(ref["i_ids"]) == manifest["pairs"][pair]["num_matches"][mode]
    assert out["mkpts0_f"].shape == (len(out["i_ids"]), 2)
    _check(compare_matches(out, ref, mode, float(ref["thr"])))
    _check(compare_windows(out, ref))
    # the true coarse points and the stage-1 points, on common matches
    common = {(int(i), int(j)) for i, j in zip(ref["i_ids"], ref["j_ids"])}
    mine = [k for k, (i, j) in enumerate(zip(out["i_ids"].tolist(), out["j_ids"].tolist())) if (i, j) in common]
    assert len(mine) >= 0.98 * len(ref["i_ids"])


def _close_abs(name, got, want, atol):
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    if got.shape != want.shape:
        return [f"{name}: shape {got.shape} != {want.shape}"]
    return [] if err.max() <= atol else [f"{name}: max |diff| {err.max():.3g} > {atol}"]


def test_recipe_catches_a_wrong_rope(model, fixture_dir, runs):
    """Guard for the guard: with 0-based RoPE positions the layer check must fail on the fixture."""
    pair = "bridge_256x320"
    _, ref = runs(pair, "full")
    rope = model.loftr_coarse.rope
    saved = dict(rope._tables)

    def zero_based(h, w, device):
        cos, sin = _shifted(h, w, rope)
        return cos.to(device), sin.to(device)

    rope.tables = zero_based
    try:
        img0, img1 = load_image(fixture_dir, pair, 0), load_image(fixture_dir, pair, 1)
        layers = []
        with torch.inference_mode():
            _, _, c0 = model.backbone(img0)
            _, _, c1 = model.backbone(img1)
            model.loftr_coarse(c0, c1, collect=layers)
    finally:
        del rope.tables
        rope._tables = saved
    pos = ref["coarse_pos0"]
    got = np.stack([layer[0][0][:, pos[:, 0], pos[:, 1]].t().numpy() for layer in layers])
    assert _close_abs("tr_layers_c0_at_pos", got, ref["tr_layers_c0_at_pos"], 1e-2), "0-based RoPE went unnoticed"


def _shifted(h, w, rope):
    """RoPE tables built with 0-based positions (a deliberate bug)."""
    import math

    n = rope.d_model // 4
    freq = torch.exp(torch.arange(n, dtype=torch.float32) * (-math.log(10000.0) / n))
    rows = torch.arange(h, dtype=torch.float32)[:, None, None].expand(h, w, 1)
    cols = torch.arange(w, dtype=torch.float32)[None, :, None].expand(h, w, 1)
    angle = torch.empty(h, w, rope.d_model // 2)
    angle[..., 0::2] = rows * freq
    angle[..., 1::2] = cols * freq
    return torch.cos(angle).half().repeat_interleave(2, -1), torch.sin(angle).half().repeat_interleave(2, -1)
