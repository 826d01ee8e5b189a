"""Coarse matching on the 1/8 tokens: scores, confidence, threshold, border removal, mutual NN.

``sim = (f0 / sqrt(C)) (f1 / sqrt(C))^T / temperature`` is an ``L x S`` matrix. Confidence is the
dual-softmax ``softmax_L(sim) * softmax_S(sim)`` (mode ``full``) or ``sim`` itself (mode ``opt``).
A match ``(i, j)`` needs ``conf[i, j] > thr`` (strict), both cells outside the ``border_rm`` outer rows
and columns of their grids, and ``conf[i, j]`` equal to the maximum of its row **and** of its column,
both maxima taken over the whole, unmasked matrix.

Two implementations, the same matches:

* :func:`match_coarse_reference` is the official computation on whole matrices (the pairwise reference
  path): the confidence matrix, boolean masks and full-size max comparisons, several ``L x S`` copies.
* :func:`match_coarse` (streaming) works on blocks of rows that stay in cache and never builds the
  confidence matrix: ``opt`` is one pass, ``full`` two passes in the log domain, and only the winners
  are exponentiated. It holds at most ``chunk_bytes`` of scores (beyond that ``full`` scores each block
  twice). Exact ties (equal floats in a row) resolve to the first column, like ``argmax``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .workspace import Workspace


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


def _score_dtype(mode: str, score_dtype: torch.dtype | None) -> torch.dtype:
    """Check ``mode``; the dtype of the score product (``full`` always fp32)."""
    if mode not in ("full", "opt"):
        raise ValueError(f"coarse matching mode must be 'full' or 'opt', not {mode!r}")
    return torch.float32 if score_dtype is None or mode == "full" else score_dtype


def match_coarse_reference(
    f0: torch.Tensor,
    f1: torch.Tensor,
    hw0: tuple[int, int],
    hw1: tuple[int, int],
    mode: str,
    threshold: float,
    border_rm: int = 2,
    temperature: float = 0.1,
    score_dtype: torch.dtype | None = None,
) -> CoarseMatches:
    """The official computation, step by step on whole matrices (the pairwise reference path).

    The ``(L, S)`` confidence matrix, a boolean candidate matrix, both maxima as full-size comparisons,
    then the row-wise ``max`` over the mask. Memory grows as ``L * S`` (several copies); the streaming
    path uses :func:`match_coarse`, which gives the same matches in bounded memory.
    """
    score_dtype = _score_dtype(mode, score_dtype)
    sim = score_matrix(f0.to(score_dtype), f1.to(score_dtype), temperature).float()
    conf = dual_softmax(sim) if mode == "full" else sim
    mask = (conf > threshold).view(*hw0, *hw1)
    b = border_rm
    if b > 0:  # every side of both grids
        mask[:b] = False
        mask[:, :b] = False
        mask[:, :, :b] = False
        mask[:, :, :, :b] = False
        mask[-b:] = False
        mask[:, -b:] = False
        mask[:, :, -b:] = False
        mask[:, :, :, -b:] = False
    mask = mask.view(conf.shape)
    mask = mask & (conf == conf.max(1, keepdim=True).values) & (conf == conf.max(0, keepdim=True).values)
    mask_v, all_j_ids = mask.max(1)
    i_ids = torch.nonzero(mask_v)[:, 0]
    j_ids = all_j_ids[i_ids]
    return CoarseMatches(i_ids, j_ids, conf[i_ids, j_ids])


def block_rows(rows: int, cols: int, device: torch.device, chunk_bytes: int) -> int:
    """Rows per block: about 2 MiB of fp32 scores on the CPU (the block stays in cache while it is
    reduced), up to ``chunk_bytes`` elsewhere (fewer kernel launches)."""
    budget = 2 * 2**20 if device.type == "cpu" else chunk_bytes
    return max(1, min(rows, budget // max(1, 4 * cols)))


@dataclass
class _BlockScores:
    """Scaled similarities ``a[rows] @ bt / temperature`` of a block of rows, written into ``buf``: all rows
    (``store``: computed once, read again without recomputing) or one block at a time."""

    a: torch.Tensor  # (L, C) image 0 features / sqrt(C), in the score dtype
    bt: torch.Tensor  # (C, S) image 1 features / sqrt(C), transposed
    buf: torch.Tensor  # (L or block rows, S) fp32
    store: bool
    temperature: float

    @property
    def rows(self) -> int:
        return self.a.shape[0]

    @property
    def cols(self) -> int:
        return self.bt.shape[1]

    def __call__(self, rows: slice, recompute: bool = True) -> torch.Tensor:
        out = self.buf[rows] if self.store else self.buf[: rows.stop - rows.start]
        if not recompute:
            return out
        if self.a.dtype == torch.float32:
            return torch.mm(self.a[rows], self.bt, out=out).div_(self.temperature)
        return out.copy_(torch.mm(self.a[rows], self.bt)).div_(self.temperature)


def _opt_pass(scores: _BlockScores, blocks: list[slice]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``opt``: one pass of row maxima and running column maxima -> ``(j_ids, mconf, mutual)``, each ``(L,)``."""
    device = scores.buf.device
    row_val = torch.empty(scores.rows, device=device)
    row_arg = torch.empty(scores.rows, dtype=torch.long, device=device)
    col_max = torch.full((scores.cols,), float("-inf"), device=device)
    for rows in blocks:
        s = scores(rows)
        torch.max(s, 1, out=(row_val[rows], row_arg[rows]))
        torch.maximum(col_max, s.amax(0), out=col_max)
    return row_arg, row_val, row_val == col_max[row_arg]


def _log_sum_exps(scores: _BlockScores, blocks: list[slice],
                   scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``full``, pass 1: row log-sum-exp per block and column log-sum-exp online (rescaled as the column maxima
    grow) -> ``(row_lse (L,), col_lse (S,))``."""
    device = scores.buf.device
    row_lse = torch.empty(scores.rows, device=device)
    col_max = torch.full((scores.cols,), float("-inf"), device=device)
    col_sum = torch.zeros(scores.cols, device=device)
    for rows in blocks:
        s = scores(rows)
        e = scratch[: s.shape[0]]
        m = s.amax(1)
        row_lse[rows] = m + torch.sub(s, m[:, None], out=e).exp_().sum(1).log_()
        grown = torch.maximum(col_max, s.amax(0))
        col_sum.mul_((col_max - grown).exp_())
        col_sum += torch.sub(s, grown[None], out=e).exp_().sum(0)
        col_max = grown
    return row_lse, col_max + col_sum.log_()


def _full_passes(scores: _BlockScores, blocks: list[slice],
                 scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``full`` (dual softmax in the log domain, ``log conf = 2 sim - row_lse - col_lse``): pass 2 takes the row
    maxima of ``log conf`` and the column maxima of ``2 sim - row_lse`` -> ``(j_ids, mconf, mutual)``, ``(L,)``."""
    device = scores.buf.device
    row_lse, col_lse = _log_sum_exps(scores, blocks, scratch)
    row_val = torch.empty(scores.rows, device=device)
    row_arg = torch.empty(scores.rows, dtype=torch.long, device=device)
    col_best = torch.full((scores.cols,), float("-inf"), device=device)  # column maxima of 2 sim - row_lse
    best = torch.empty(scores.rows, device=device)  # 2 sim - row_lse at each row's winner
    for rows in blocks:
        s = scores(rows, recompute=not scores.store)
        e = torch.mul(s, 2.0, out=scratch[: s.shape[0]]).sub_(row_lse[rows, None])
        torch.maximum(col_best, e.amax(0), out=col_best)
        torch.max(e.sub_(col_lse[None]), 1, out=(row_val[rows], row_arg[rows]))
        best[rows] = s.gather(1, row_arg[rows, None])[:, 0] * 2.0 - row_lse[rows]
    return row_arg, row_val.exp(), best == col_best[row_arg]


def coarse_rows(
    f0: torch.Tensor,
    f1: torch.Tensor,
    hw0: tuple[int, int],
    hw1: tuple[int, int],
    mode: str,
    threshold: float | torch.Tensor,
    border_rm: int = 2,
    temperature: float = 0.1,
    chunk_bytes: int = 128 * 2**20,
    score_dtype: torch.dtype | None = None,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every row's best column, in blocks of rows: ``(j_ids, mconf, valid)``, each ``(L,)``.

    Args:
        f0: ``(L, C)`` image 0 transformer features (row-major tokens of the ``hw0`` grid).
        f1: ``(S, C)`` image 1 transformer features.
        hw0, hw1: coarse grid sizes ``(h, w)``.
        mode: ``"full"`` (dual-softmax) or ``"opt"`` (raw score).
        threshold: strict lower bound on the confidence (a float or a 0-d tensor).
        chunk_bytes: the most bytes of scores held at once; a larger matrix is scored twice.
        score_dtype: dtype of the score product (``full`` always uses fp32; ``opt`` may use the
            features' dtype, as the official ``fp16matmul`` does on GPU).
        workspace: reusable buffers (optional).

    ``valid`` marks the rows whose best column is a match (above the threshold, mutual, both cells
    inside the border). ``opt`` is one pass: each block's row maxima and the running column maxima.
    ``full`` works in the log domain, ``log conf = 2 sim - row_lse - col_lse``: pass 1 gets the row
    log-sum-exp per block and the column log-sum-exp online (rescaled as the column maxima grow); pass 2
    takes the row maxima of ``log conf`` and the column maxima of ``2 sim - row_lse``. Only the winning
    entries are exponentiated. Every shape depends on the grid sizes alone and nothing reads back to the
    host, so the same code runs inside a CUDA graph.
    """
    score_dtype = _score_dtype(mode, score_dtype)
    L, S = f0.shape[0], f1.shape[0]
    device = f0.device
    ws = workspace if workspace is not None else Workspace()
    scale = f0.shape[-1] ** 0.5
    step = block_rows(L, S, device, chunk_bytes)
    blocks = [slice(r, min(L, r + step)) for r in range(0, L, step)]
    store = mode == "full" and L * S * 4 <= chunk_bytes  # keep pass 1's scores for pass 2
    scorer = _BlockScores(a=f0.to(score_dtype) / scale, bt=(f1.to(score_dtype) / scale).t(),
                          buf=ws.get("coarse.sim", (L if store else step, S), torch.float32, device),
                          store=store, temperature=temperature)
    if mode == "opt":
        j_ids, mconf, mutual = _opt_pass(scorer, blocks)
    else:
        scratch = ws.get("coarse.block", (step, S), torch.float32, device)
        j_ids, mconf, mutual = _full_passes(scorer, blocks, scratch)
    return j_ids, mconf, _valid_rows(mconf, mutual, j_ids, hw0, hw1, threshold, border_rm)


def coarse_rows_dense(
    f0: torch.Tensor,
    f1: torch.Tensor,
    hw0: tuple[int, int],
    hw1: tuple[int, int],
    mode: str,
    threshold: float | torch.Tensor,
    border_rm: int = 2,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`coarse_rows` on the whole ``(L, S)`` matrix in plain operators (what an ONNX export
    traces): the same log-domain formulation, ``logsumexp`` in place of the blocked sums, so the
    confidences agree within float rounding and only near-ties may differ."""
    scale = f0.shape[-1] ** 0.5
    dtype = _score_dtype(mode, f0.dtype)
    sim = torch.mm(f0.to(dtype) / scale, (f1.to(dtype) / scale).t()).float() / temperature
    if mode == "opt":
        mconf, j_ids = sim.max(1)
        mutual = mconf == sim.amax(0)[j_ids]
    else:
        e = 2.0 * sim - torch.logsumexp(sim, 1, keepdim=True)
        logc = e - torch.logsumexp(sim, 0, keepdim=True)
        best, j_ids = logc.max(1)
        mutual = e.gather(1, j_ids[:, None])[:, 0] == e.amax(0)[j_ids]
        mconf = best.exp()
    return j_ids, mconf, _valid_rows(mconf, mutual, j_ids, hw0, hw1, threshold, border_rm)


def _valid_rows(mconf: torch.Tensor, mutual: torch.Tensor, j_ids: torch.Tensor, hw0: tuple[int, int],
                hw1: tuple[int, int], threshold: float | torch.Tensor, border_rm: int) -> torch.Tensor:
    """``(L,)`` rows whose best column is a match: above the threshold, mutual, both cells inside the border
    (out-of-place operators only: the ONNX exporter traces this too)."""
    device = mconf.device
    return (mconf > threshold) & mutual & border_mask(*hw0, border_rm, device) & border_mask(*hw1, border_rm,
                                                                                             device)[j_ids]


def match_coarse(f0: torch.Tensor, f1: torch.Tensor, *args, **kwargs) -> CoarseMatches:
    """Coarse mutual-nearest-neighbour matches (the streaming path): :func:`coarse_rows` (same
    arguments), its valid rows kept. Same matches as the dense reference, ``mconf`` within float
    rounding."""
    j_ids, mconf, valid = coarse_rows(f0, f1, *args, **kwargs)
    i_ids = torch.arange(f0.shape[0], device=f0.device)
    return CoarseMatches(i_ids[valid], j_ids[valid], mconf[valid])


@dataclass
class CoarseCandidates:
    """At most K coarse matches in fixed-size tensors (the static path): valid ones first, ascending
    ``i_ids``, then the unused slots.

    Attributes:
        i_ids, j_ids: ``(K,)`` int64 cells (an unused slot repeats the first slot's cells).
        mconf: ``(K,)`` float32 confidence.
        valid: ``(K,)`` bool, which slots hold a match.
        count: 0-d int64, how many matches there were before the K best were kept (``> K``: truncated).
    """

    i_ids: torch.Tensor
    j_ids: torch.Tensor
    mconf: torch.Tensor
    valid: torch.Tensor
    count: torch.Tensor


def top_candidates(j_ids: torch.Tensor, mconf: torch.Tensor, valid: torch.Tensor, k: int) -> CoarseCandidates:
    """The ``k`` highest-confidence valid rows of :func:`coarse_rows` output as :class:`CoarseCandidates`
    (``topk`` over the scores with invalid rows at ``-inf``, instead of ``nonzero``): fixed shapes, no
    host synchronisation. ``k`` is at most ``L``."""
    L = mconf.shape[0]
    score = torch.where(valid, mconf.float(), torch.full_like(mconf, float("-inf"), dtype=torch.float32))
    picked = score.topk(k, sorted=False).indices
    keep = valid[picked]
    order = torch.where(keep, picked, picked + L).argsort()  # valid first, each part by row
    picked, keep = picked[order], keep[order]
    i_ids = torch.where(keep, picked, picked[:1])
    return CoarseCandidates(i_ids, j_ids[i_ids], mconf[i_ids].float(), keep, valid.sum())
