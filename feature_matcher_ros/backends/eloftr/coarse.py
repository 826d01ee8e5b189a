"""Coarse matching on the 1/8 tokens: scores, confidence, threshold, border removal, mutual NN.

``sim = (f0 / sqrt(C)) (f1 / sqrt(C))^T / temperature`` is an ``L x S`` matrix. Confidence is the
dual-softmax ``softmax_L(sim) * softmax_S(sim)`` (mode ``full``) or ``sim`` itself (mode ``opt``).
A match ``(i, j)`` needs ``conf[i, j] > thr`` (strict), both cells outside the ``border_rm`` outer rows
and columns of their grids, and ``conf[i, j]`` equal to the maximum of its row **and** of its column,
both maxima taken over the whole, unmasked matrix.

The matrix is never held whole unless it fits ``chunk_bytes``: rows are processed in chunks. Mode
``full`` needs the column log-sum-exp over all rows before any confidence is known, so its chunks are
scored twice when there is more than one chunk (a bounded-memory trade). Exact ties (equal floats in a
row) resolve to the first column, like ``argmax``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CoarseMatches:
    """Matches on the coarse grids, ordered by ascending ``i_ids``.

    Attributes:
        i_ids: ``(M,)`` int64 row-major cell index in image 0 (``i = y * w0 + x``).
        j_ids: ``(M,)`` int64 cell index in image 1.
        mconf: ``(M,)`` float32 confidence (probability for ``full``, raw score for ``opt``).
    """

    i_ids: torch.Tensor
    j_ids: torch.Tensor
    mconf: torch.Tensor

    def __len__(self) -> int:
        return int(self.i_ids.numel())


def score_matrix(f0: torch.Tensor, f1: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """``(L, C)``, ``(S, C)`` -> ``(L, S)`` raw score ``sim`` (the official order of operations)."""
    scale = f0.shape[-1] ** 0.5
    return torch.mm(f0 / scale, (f1 / scale).t()).div_(temperature)


def dual_softmax(sim: torch.Tensor) -> torch.Tensor:
    """``softmax over L * softmax over S`` of a whole ``(L, S)`` matrix (the reference definition)."""
    return torch.softmax(sim, 0) * torch.softmax(sim, 1)


def border_mask(h: int, w: int, border: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(h * w,)`` bool, True for cells at least ``border`` cells away from every edge."""
    keep = torch.zeros(h, w, dtype=torch.bool, device=device)
    if h > 2 * border and w > 2 * border:
        keep[border : h - border, border : w - border] = True
    return keep.reshape(-1)


def _row_chunks(rows: int, cols: int, elem_bytes: int, chunk_bytes: int) -> list[slice]:
    step = max(1, min(rows, chunk_bytes // max(1, cols * elem_bytes)))
    return [slice(a, min(rows, a + step)) for a in range(0, rows, step)]


def match_coarse(
    f0: torch.Tensor,
    f1: torch.Tensor,
    hw0: tuple[int, int],
    hw1: tuple[int, int],
    mode: str,
    threshold: float,
    border_rm: int = 2,
    temperature: float = 0.1,
    chunk_bytes: int = 128 * 2**20,
    score_dtype: torch.dtype | None = None,
) -> CoarseMatches:
    """Coarse mutual-nearest-neighbour matches.

    Args:
        f0: ``(L, C)`` image 0 transformer features (row-major tokens of the ``hw0`` grid).
        f1: ``(S, C)`` image 1 transformer features.
        hw0, hw1: coarse grid sizes ``(h, w)``.
        mode: ``"full"`` (dual-softmax) or ``"opt"`` (raw score).
        threshold: strict lower bound on the confidence.
        chunk_bytes: upper bound on the bytes of one row chunk of the score matrix.
        score_dtype: dtype of the score product (``full`` always uses fp32; ``opt`` may use the
            features' dtype, as the official ``fp16matmul`` does on GPU).
    """
    if mode not in ("full", "opt"):
        raise ValueError(f"coarse matching mode must be 'full' or 'opt', not {mode!r}")
    if score_dtype is None or mode == "full":
        score_dtype = torch.float32
    f0 = f0.to(score_dtype)
    f1 = f1.to(score_dtype)
    L, S = f0.shape[0], f1.shape[0]
    device = f0.device
    chunks = _row_chunks(L, S, 4, chunk_bytes)
    keep_all = len(chunks) == 1
    kept: torch.Tensor | None = None

    def scores(rows: slice) -> torch.Tensor:
        return score_matrix(f0[rows], f1, temperature).float()

    row_lse = col_lse = None
    if mode == "full":
        row_lse = torch.empty(L, device=device)
        col_lse = torch.full((S,), float("-inf"), device=device)
        for rows in chunks:
            sim = scores(rows)
            row_lse[rows] = torch.logsumexp(sim, 1)
            col_lse = torch.logaddexp(col_lse, torch.logsumexp(sim, 0))
            if keep_all:
                kept = sim

    row_max = torch.empty(L, device=device)
    row_arg = torch.empty(L, dtype=torch.long, device=device)
    col_max = torch.full((S,), float("-inf"), device=device)
    for rows in chunks:
        conf = kept if kept is not None else scores(rows)
        if mode == "full":
            # softmax_L * softmax_S = exp(sim - col_lse) * exp(sim - row_lse), in place on the chunk
            conf = conf.mul_(2.0).sub_(col_lse[None, :]).sub_(row_lse[rows, None]).exp_()
        values, args = conf.max(1)
        row_max[rows], row_arg[rows] = values, args
        col_max = torch.maximum(col_max, conf.amax(0))
        del conf
    kept = None

    i_ids = torch.arange(L, device=device)
    j_ids = row_arg
    valid = (row_max > threshold) & (row_max == col_max[j_ids])
    valid &= border_mask(*hw0, border_rm, device)[i_ids] & border_mask(*hw1, border_rm, device)[j_ids]
    return CoarseMatches(i_ids[valid], j_ids[valid], row_max[valid])
