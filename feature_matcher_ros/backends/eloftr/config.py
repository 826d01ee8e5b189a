"""Efficient LoFTR configuration: one dataclass holding the official defaults.

The released checkpoint serves two configurations that differ only in coarse matching:

* ``full``: dual-softmax confidence in (0, 1), default threshold 0.2;
* ``opt``: the raw scaled dot product as confidence (about 20...150), default threshold 25.

Everything else (architecture sizes, border removal, temperatures) is shared and fixed by the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("full", "opt")
DEFAULT_THRESHOLDS = {"full": 0.2, "opt": 25.0}


def threshold_problem(mode: str, threshold: float) -> str | None:
    """Why ``threshold`` is not usable in ``mode``, or None.

    ``full`` thresholds a probability, so it must lie strictly inside (0, 1); ``opt`` thresholds a raw
    score, which must be positive (the official default is 25).
    """
    if mode not in MODES:
        return f"eloftr.mode must be one of {list(MODES)}, got {mode!r}"
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        return f"eloftr.threshold must be a number, got {threshold!r}"
    if threshold != threshold or threshold in (float("inf"), float("-inf")):
        return f"eloftr.threshold must be finite, got {threshold!r}"
    if mode == "full" and not 0.0 < threshold < 1.0:
        return f"eloftr.threshold {threshold} is outside (0, 1), the range of mode 'full' (default 0.2)"
    if mode == "opt" and not threshold > 0.0:
        return f"eloftr.threshold {threshold} must be > 0 in mode 'opt' (raw score; default 25)"
    return None


@dataclass
class EloftrConfig:
    """Architecture and matching settings (official ``full_default_cfg`` / ``opt_default_cfg``).

    Attributes mirror the official lower-case keys; only ``mode`` and ``threshold`` change at run time.
    """

    # backbone (RepVGG stages 0-3)
    block_dims: tuple[int, int, int] = (64, 128, 256)
    # coarse transformer
    d_model: int = 256
    nhead: int = 8
    layer_names: tuple[str, ...] = ("self", "cross") * 4
    agg_size0: int = 4  # query aggregation: depthwise conv, kernel = stride
    agg_size1: int = 4  # key/value aggregation: max-pool, kernel = stride
    rope: bool = True
    npe: tuple[int, int, int, int] = (832, 832, 832, 832)  # train H, train W, test H, test W
    # coarse matching
    mode: str = "full"
    threshold: float = DEFAULT_THRESHOLDS["full"]
    border_rm: int = 2
    dsmax_temperature: float = 0.1
    # fine level
    resolution: tuple[int, int] = (8, 1)
    fine_window_size: int = 8
    local_regress_temperature: float = 10.0
    local_regress_slicedim: int = 8
    # memory bound for the L x S coarse score matrix (bytes held at once). On a GPU a larger bound keeps
    # the whole matrix of a 1280x720 pair (830 MB) between the two passes of ``full`` instead of scoring
    # it twice, in fewer, larger kernels.
    score_chunk_bytes: int = 128 * 2**20
    gpu_score_chunk_bytes: int = 2**30

    @property
    def coarse_stride(self) -> int:
        return self.resolution[0]

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (coarse stride x aggregation size = 32)."""
        return self.resolution[0] * max(self.agg_size0, self.agg_size1)
