"""CasMTR max-pool NMS (feature_matcher_ros.backends.nms) on known layouts."""

import numpy as np
import pytest
import torch

from feature_matcher_ros.backends.nms import maxpool_nms, nms_matches


def peak_map() -> torch.Tensor:
    conf = torch.zeros(32, 32)
    conf[5, 5] = 1.0  # strongest peak
    conf[5, 7] = 0.8  # 2 cells right of it: suppressed by k = 5, kept by k = 3
    conf[20, 20] = 0.5  # isolated
    conf[28, 2:5] = 0.3  # flat plateau of three equal values
    conf[10, 25] = 0.1  # weak isolated peak
    return conf


def kept(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(map(int, p)) for p in mask.nonzero()}


def test_known_peaks_kernel_5():
    assert kept(maxpool_nms(peak_map(), 5, 0.0)) == {(5, 5), (20, 20), (28, 2), (10, 25)}


def test_known_peaks_kernel_3_keeps_neighbour_two_cells_away():
    assert kept(maxpool_nms(peak_map(), 3, 0.0)) == {(5, 5), (5, 7), (20, 20), (28, 2), (10, 25)}


def test_threshold_is_strict_and_applies_after_nms():
    assert kept(maxpool_nms(peak_map(), 5, 0.3)) == {(5, 5), (20, 20)}


def test_kernel_one_is_threshold_only():
    conf = peak_map()
    assert torch.equal(maxpool_nms(conf, 1, 0.05), conf > 0.05)
    assert torch.equal(maxpool_nms(conf, 0, 0.05), conf > 0.05)


def test_batched_shapes_and_dtypes():
    conf = peak_map()
    batch = torch.stack([conf, conf.flip(-1)])
    for x in (batch, batch[:, None], batch.half()):
        mask = maxpool_nms(x, 5, 0.0)
        assert mask.shape == x.shape and mask.dtype == torch.bool
        assert kept(mask.reshape(2, 32, 32)[0]) == kept(maxpool_nms(conf, 5, 0.0))


def test_survivors_are_spaced_by_half_the_kernel():
    torch.manual_seed(0)
    conf = torch.rand(64, 80)
    for k in (3, 5, 7, 9):
        pts = maxpool_nms(conf, k, 0.0).nonzero().numpy()
        assert len(pts) > 10
        d = np.abs(pts[:, None, :] - pts[None, :, :]).max(-1)
        d[np.arange(len(pts)), np.arange(len(pts))] = 99
        assert d.min() >= k // 2 + 1


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="odd"):
        maxpool_nms(torch.zeros(8, 8), 4)
    with pytest.raises(ValueError, match="expects"):
        maxpool_nms(torch.zeros(2, 3, 8, 8), 3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        maxpool_nms(np.zeros((8, 8)), 3)


def test_nms_over_matches():
    # image-0 positions (x, y) with scores; cells of 4 px
    kpts0 = np.array([[10, 10], [12, 10], [20, 10], [60, 40], [61, 41], [100, 5]], float)
    scores = np.array([0.9, 0.95, 0.5, 0.7, 0.2, 0.05])
    keep = nms_matches(kpts0, scores, (64, 128), kernel_size=3, cell=4)
    # [12,10] (cell 3) beats [10,10] (cell 2); [20,10] (cell 5) is 2 cells away from it (kept with k=3);
    # [61,41] shares a cell with the better [60,40]; [100,5] is isolated
    assert list(keep) == [1, 3, 2, 5]
    keep5 = nms_matches(kpts0, scores, (64, 128), kernel_size=5, cell=4)
    assert list(keep5) == [1, 3, 5]
    assert list(nms_matches(kpts0, scores, (64, 128), kernel_size=0, threshold=0.1)) == [1, 0, 3, 2, 4]
    assert len(nms_matches(np.zeros((0, 2)), np.zeros(0), (10, 10))) == 0
    with pytest.raises(ValueError, match="scores"):
        nms_matches(kpts0, scores[:2], (64, 128))
