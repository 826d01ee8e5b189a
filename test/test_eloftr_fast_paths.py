"""The streaming path's faster pieces against the official computation they replace.

Fed the official transformer outputs stored in the fixture (capitol, 640x480): blocked log-domain coarse
matching (score matrix kept, or scored twice under a small memory bound) gives the official match set,
the same as the whole-matrix reference; the factored transformer MLP equals the official
concatenate-then-project order; the reference path's unfold windows equal per-pixel gathering.
"""

import numpy as np
import pytest
import torch

from feature_matcher_ros.backends.eloftr.coarse import match_coarse, match_coarse_reference
from feature_matcher_ros.backends.eloftr.fine import unfold_windows, upsample2x_windows, window_pixels, window_sources
from feature_matcher_ros.backends.eloftr.loader import load_model
from feature_matcher_ros.backends.eloftr.workspace import Workspace

PAIR = "capitol_640x480"


@pytest.fixture(scope="module")
def stages(fixture_dir):
    return dict(np.load(fixture_dir / f"{PAIR}_stages.npz"))


def tokens(stages, k):
    return torch.from_numpy(stages[f"tr_c{k}"]).float().flatten(1).t().contiguous()  # (L, 256)


@pytest.mark.parametrize("mode", ["full", "opt"])
@pytest.mark.parametrize("memory", ["stored", "scored_twice"])
def test_blocked_coarse_matching_equals_the_official_matches(stages, fixture_dir, mode, memory, thr):
    f0, f1 = tokens(stages, 0), tokens(stages, 1)
    hw = (60, 80)
    official = dict(np.load(fixture_dir / f"{PAIR}_{mode}.npz"))
    reference = match_coarse_reference(f0, f1, hw, hw, mode, thr[mode])
    chunk = 128 * 2**20 if memory == "stored" else 4 * 2**20  # 4800 x 4800 fp32 is 88 MiB
    ws = Workspace()
    for _ in range(2):  # the second call reuses the workspace's stale buffers
        blocked = match_coarse(f0, f1, hw, hw, mode, thr[mode], chunk_bytes=chunk, workspace=ws)
        assert torch.equal(blocked.i_ids, reference.i_ids) and torch.equal(blocked.j_ids, reference.j_ids)
        rel = 1e-4 if mode == "full" else 0.0  # full: exp of a log-domain value, opt: the same raw score
        torch.testing.assert_close(blocked.mconf, reference.mconf, rtol=rel, atol=0.0)
    # full mode keeps the whole score matrix only when it fits the bound; opt never needs it
    whole = mode == "full" and memory == "stored"
    assert (ws.buffers["coarse.sim"].shape[0] == 4800) == whole
    # and the official code's own matches, on its own transformer outputs
    ours = set(zip(blocked.i_ids.tolist(), blocked.j_ids.tolist()))
    theirs = set(zip(official["i_ids"].tolist(), official["j_ids"].tolist()))
    assert len(theirs) > 50 and ours == theirs, sorted(ours ^ theirs)


def test_factored_mlp_equals_the_official_order(checkpoint, stages):
    model = load_model(checkpoint)
    c0 = torch.from_numpy(stages["tr_c0"])[None]
    c1 = torch.from_numpy(stages["tr_c1"])[None]
    with torch.inference_mode():
        official = model.loftr_coarse(c0, c1)
        factored = model.loftr_coarse(c0, c1, factored=True)
    for a, b in zip(official, factored):
        assert a.abs().max() > 1.0
        torch.testing.assert_close(b, a, atol=1e-3, rtol=0.0)  # float rounding only (recipe: 1e-2)


def test_unfold_windows_equal_gathered_pixels():
    torch.manual_seed(0)
    fmap = torch.randn(8, 64, 96)  # (C, H, W): an 8 x 12 coarse grid
    cells = torch.tensor([0, 5, 11, 12, 50, 95])
    for size, pad in ((8, 0), (10, 1)):
        windows = unfold_windows(fmap, 8, size, pad)
        assert windows.shape == (96, size * size, 8)
        ys, xs = window_pixels(cells, 12, 8, size, pad)
        inside = (ys >= 0) & (ys < 64) & (xs >= 0) & (xs < 96)
        gathered = fmap[:, ys.clamp(0, 63), xs.clamp(0, 95)].permute(1, 2, 0) * inside[..., None]
        assert torch.equal(windows[cells], gathered)
        if pad:
            assert not inside.all()  # the zero padding was exercised


@pytest.mark.parametrize("size, pad", [(8, 0), (10, 1)])
def test_window_upsampling_equals_the_whole_map_upsampling(size, pad):
    """Upsampling only inside the windows (6x6 sources each) = upsampling the whole map, then unfolding."""
    torch.manual_seed(1)
    half = torch.randn(1, 16, 24, 32)  # a 6 x 8 coarse grid at 1/2 resolution
    full = torch.nn.functional.interpolate(half, scale_factor=2.0, mode="bilinear", align_corners=False)
    cells = torch.arange(48)  # every cell: all four borders and corners
    rows, cols = window_sources(cells, 8, 24, 32)
    got = upsample2x_windows(half[0].permute(1, 2, 0), rows, cols, cells, 8, size, pad)
    want = unfold_windows(full[0], 8, size, pad)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0.0)


def test_workspace_reuses_and_bounds_its_buffers():
    ws = Workspace(max_buffers=2)
    a = ws.get("a", (4, 4), torch.float32, torch.device("cpu"), zero=True)
    a += 1.0
    assert ws.get("a", (4, 4), torch.float32, torch.device("cpu"), zero=True) is a  # reused, contents kept
    assert float(a.sum()) == 16.0
    assert ws.get("a", (4, 5), torch.float32, torch.device("cpu")) is not a  # another shape: a new buffer
    ws.get("b", (2,), torch.float32, torch.device("cpu"))
    ws.get("c", (2,), torch.bfloat16, torch.device("cpu"))
    assert list(ws.buffers) == ["b", "c"] and ws.nbytes == 2 * 4 + 2 * 2  # least recently used dropped
    import copy

    assert copy.deepcopy(ws).buffers == {}  # a copied model starts empty
