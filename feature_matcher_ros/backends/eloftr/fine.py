"""Fine level: FPN-style fusion (1/8 -> 1/4 -> 1/2 -> full resolution) and two-stage fine matching.

Two ways to compute the fine features, the same numbers up to float rounding:

* :meth:`FinePreprocess.dense` is the official computation: the whole full-resolution fine map, then
  windows cut out of it (the pairwise reference path).
* :meth:`FinePreprocess.windows_sparse` (streaming) starts from the lateral 1x1 convs computed at
  extraction time (:meth:`FinePreprocess.laterals`, one image alone). When the requested windows'
  receptive field (traced back level by level) needs few tiles, the 3x3 convolutions run only on those
  tiles (4x4 at 1/4 and at 1/2 resolution); otherwise on the whole maps, which is then cheaper. The
  inner x2 upsamplings and lateral sums are whole-map (cheap, channels-last); the last x2 upsampling
  runs only inside the windows, as ``U @ patch @ U^T`` on each window's 6x6 half-resolution sources.

Window layout: image 0 uses the 8x8 block of pixels ``(8y..8y+7, 8x..8x+7)`` of coarse cell ``(x, y)``
(index ``8 ky + kx``); image 1 uses the 10x10 block ``(8y-1..8y+8, 8x-1..8x+8)``, zero outside the image
(index ``10 ky + kx``). Windows are channels-last: ``(M, 64, C)`` and ``(M, 100, C)``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .workspace import Workspace


def _conv_bn_stack(cin: int, cmid: int, cout: int) -> nn.Sequential:
    """3x3 conv -> BN -> LeakyReLU(0.01) -> 3x3 conv, no biases (indices 0, 1, 2, 3)."""
    return nn.Sequential(
        nn.Conv2d(cin, cmid, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cmid),
        nn.LeakyReLU(0.01),
        nn.Conv2d(cmid, cout, 3, 1, 1, bias=False),
    )


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _hwc(x: torch.Tensor) -> torch.Tensor:
    """``(1, C, H, W)`` -> ``(H, W, C)`` view (contiguous when ``x`` is channels-last)."""
    return x[0].permute(1, 2, 0)


def _up_sources(mask: torch.Tensor) -> torch.Tensor:
    """Low-res cells read by a x2 bilinear upsampling (align_corners False) of the True pixels of
    ``mask (H, W)``: low row ``k`` feeds high rows ``2k-1 .. 2k+2``. Returns ``(H/2, W/2)`` bool."""
    return F.max_pool2d(mask[None, None].float(), 4, 2, 1)[0, 0] > 0


def _dilate3(mask: torch.Tensor) -> torch.Tensor:
    """Cells within the 3x3 neighbourhood of a True cell: ``(H, W)`` bool -> same."""
    return F.max_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0] > 0


def window_sources(cells: torch.Tensor, grid_w: int, h2: int, w2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1/2-resolution rows and columns a x2 bilinear upsampling reads for the windows of coarse
    ``cells (M,)`` (stride 8). Window rows ``8y - 1 .. 8y + 8`` (the 10x10 windows; the 8x8 ones are
    inside) read half-res rows ``4y - 1 .. 4y + 4``; likewise columns. Clamped into the ``(h2, w2)`` map.
    Returns ``rows, cols`` each ``(M, 6)``."""
    k = torch.arange(6, device=cells.device) - 1
    rows = (cells // grid_w * 4)[:, None] + k
    cols = (cells % grid_w * 4)[:, None] + k
    return rows.clamp(0, h2 - 1), cols.clamp(0, w2 - 1)


@functools.lru_cache(maxsize=16)
def _upsample_matrix(size: int, pad: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(size, 6)`` weights of a x2 bilinear upsampling (align_corners False) from the 6 source rows of
    :func:`window_sources` to window offsets ``-pad .. size - pad - 1`` (relative to ``8y``): an even
    offset ``2q`` reads sources ``q, q+1`` with 1/4, 3/4, an odd one ``2q+1`` reads ``q+1, q+2`` with
    3/4, 1/4. At the map border the clamped sources reproduce the clamped taps exactly."""
    U = torch.zeros(size, 6, dtype=torch.float64)
    for t in range(size):
        o = t - pad
        q = o // 2
        if o % 2 == 0:
            U[t, q], U[t, q + 1] = 0.25, 0.75
        else:
            U[t, q + 1], U[t, q + 2] = 0.75, 0.25
    return U.to(device=device, dtype=dtype)  # shared, never written


def upsample2x_windows(
    half: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, cells: torch.Tensor, grid_w: int, size: int, pad: int
) -> torch.Tensor:
    """``upsample_x2(half)`` inside each cell's ``size x size`` window (pad 0 or 1), zero outside the image.

    ``half (h2, w2, C)`` channels-last; ``rows, cols (M, 6)`` from :func:`window_sources`. The upsampling
    is separable, ``U @ patch @ U^T`` on each 6x6 source patch. Returns ``(M, size*size, C)``.
    """
    M, C = rows.shape[0], half.shape[-1]
    patch = half[rows[:, :, None], cols[:, None, :]]  # (M, 6, 6, C)
    U = _upsample_matrix(size, pad, half.dtype, half.device)
    out = torch.matmul(U, patch.reshape(M, 6, 6 * C)).view(M, size, 6, C)  # along rows
    out = torch.matmul(U, out).reshape(M, size * size, C)  # along columns
    if pad:
        H, W = 2 * half.shape[0], 2 * half.shape[1]
        ys, xs = window_pixels(cells, grid_w, 8, size, pad)
        inside = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
        out = out * inside[..., None].to(out.dtype)
    return out


def window_pixels(cells: torch.Tensor, grid_w: int, stride: int, size: int,
                  pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel rows and columns of the ``size x size`` window of each coarse cell.

    ``cells (M,)`` row-major indices on a grid ``grid_w`` wide -> ``ys, xs`` each ``(M, size*size)``,
    window pixel ``(ky, kx)`` at ``(stride*y - pad + ky, stride*x - pad + kx)``, index ``size*ky + kx``.
    """
    k = torch.arange(size, device=cells.device)
    ys = (cells // grid_w * stride - pad)[:, None] + k
    xs = (cells % grid_w * stride - pad)[:, None] + k
    return (ys[:, :, None].expand(-1, size, size).reshape(len(cells), -1),
            xs[:, None, :].expand(-1, size, size).reshape(len(cells), -1))


def unfold_windows(fmap: torch.Tensor, stride: int, size: int, pad: int) -> torch.Tensor:
    """Every coarse cell's ``size x size`` window of ``fmap (C, H, W)``, as the official code cuts them
    (``unfold``, zero padding ``pad``): ``(L, size*size, C)``, index ``size*ky + kx``, L row-major cells."""
    C = fmap.shape[0]
    cols = F.unfold(fmap[None], kernel_size=size, stride=stride, padding=pad)  # (1, C*size*size, L)
    return cols.view(C, size * size, -1).permute(2, 1, 0)


def needed_tiles(need: torch.Tensor, tile: int) -> torch.Tensor:
    """``(H/tile, W/tile)`` bool: the ``tile x tile`` tiles of ``need (H, W)`` holding a True."""
    H, W = need.shape
    return need.reshape(H // tile, tile, W // tile, tile).any(3).any(1)


def tile_fraction(need: torch.Tensor, tile: int) -> float:
    """Fraction of the ``tile x tile`` tiles of ``need (H, W)`` holding a True."""
    return float(needed_tiles(need, tile).float().mean())


class _PaddedMap:
    """A channels-last ``(H + 2, W + 2, C)`` buffer with a zero border (the convs' zero padding),
    written tile by tile or whole."""

    def __init__(self, H: int, W: int, C: int, like: torch.Tensor, workspace: Workspace | None = None,
                 name: str = "") -> None:
        self.H, self.W = H, W
        shape = (H + 2, W + 2, C)
        if workspace is None:
            self.data = torch.zeros(shape, dtype=like.dtype, device=like.device)
        else:  # the border is never written, so it stays zero; stale interior values are finite
            # keyed by size too: a keyframe and a frame of different sizes keep a set each
            self.data = workspace.get(f"fine.{name}.{H}x{W}", shape, like.dtype, like.device, zero=True)

    @property
    def interior(self) -> torch.Tensor:
        return self.data[1:-1, 1:-1]

    def write_tiles(self, ty: torch.Tensor, tx: torch.Tensor, tile: int, values: torch.Tensor) -> None:
        """Write ``values (k, tile, tile, C)`` into the tiles at tile coordinates ``ty, tx (k,)``."""
        k = torch.arange(tile, device=ty.device)
        rows = 1 + ty[:, None] * tile + k
        cols = 1 + tx[:, None] * tile + k
        self.data[rows[:, :, None], cols[:, None, :]] = values

    def conv3x3_whole(self, weight: torch.Tensor) -> torch.Tensor:
        """A 3x3 conv (padding 1, no bias) on the whole map: ``(1, O, H, W)``, channels-last. The zero
        border is the padding, so the buffer is convolved as it lies (no copy)."""
        return F.conv2d(self.data.permute(2, 0, 1)[None], weight)

    def conv3x3_tiles(
        self, weight: torch.Tensor, need: torch.Tensor, tile: int, chunk_bytes: int = 32 * 2**20
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """A 3x3 conv (padding 1, no bias) on the ``tile x tile`` tiles that hold a True of
        ``need (H, W)``; yields ``(ty, tx, out (k, O, tile, tile))`` per chunk of tiles (at most
        ``chunk_bytes`` of gathered input patches per conv call: few large calls are the fast ones).

        Inside a computed tile, positions outside ``need`` may read inputs that were never computed;
        their values are meaningless but finite, and nothing needed ever reads them.
        """
        ty, tx = needed_tiles(need, tile).nonzero().unbind(1)
        k = torch.arange(tile + 2, device=need.device)
        chunk = max(1, chunk_bytes // ((tile + 2) ** 2 * self.data.shape[-1] * self.data.element_size()))
        for a in range(0, len(ty), chunk):
            cy, cx = ty[a : a + chunk], tx[a : a + chunk]
            rows = cy[:, None] * tile + k  # padded coordinates: the tile plus a one-pixel halo
            cols = cx[:, None] * tile + k
            patches = self.data[rows[:, :, None], cols[:, None, :]]  # (k, tile+2, tile+2, C)
            yield cy, cx, F.conv2d(patches.permute(0, 3, 1, 2), weight)


@dataclass
class FineSparseStats:
    """How much of each level the sparse path computed (fractions of the full maps)."""

    quarter: float
    half: float
    sparse: bool = True  # False: the whole maps were computed (the windows covered too much)


class FinePreprocess(nn.Module):
    """FPN fusion of the scaled transformer output with the backbone 1/4 and 1/2 maps.

    State-dict names: ``layer3_outconv``, ``layer2_outconv``, ``layer2_outconv2.{0,1,3}``,
    ``layer1_outconv``, ``layer1_outconv2.{0,1,3}`` (no biases; BN in eval mode).
    """

    def __init__(self, block_dims: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        d1, d2, d3 = block_dims
        self.layer3_outconv = nn.Conv2d(d3, d3, 1, bias=False)
        self.layer2_outconv = nn.Conv2d(d2, d3, 1, bias=False)
        self.layer2_outconv2 = _conv_bn_stack(d3, d3, d2)
        self.layer1_outconv = nn.Conv2d(d1, d2, 1, bias=False)
        self.layer1_outconv2 = _conv_bn_stack(d2, d2, d1)

    # -- official, whole maps -------------------------------------------------------------------------
    def dense(self, feat_c: torch.Tensor, x2: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """``feat_c (N, 256, h, w)`` (transformer output / 16), ``x2 (N, 128, 2h, 2w)``,
        ``x1 (N, 64, 4h, 4w)`` -> fine map ``(N, 64, 8h, 8w)``."""
        q = self.layer2_outconv(x2) + _up2(self.layer3_outconv(feat_c))
        q = self.layer2_outconv2(q)
        half = self.layer1_outconv(x1) + _up2(q)
        half = self.layer1_outconv2(half)
        return _up2(half)

    # -- streaming, only what the windows need ---------------------------------------------------------
    def laterals(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image 1x1 lateral convs: ``lat1 (1, 128, 4h, 4w)``, ``lat2 (1, 256, 2h, 2w)`` from
        ``x1 (1, 64, 4h, 4w)`` and ``x2 (1, 128, 2h, 2w)``, stored channels-last (the sparse path reads
        them pixel by pixel)."""
        return self.layer1_outconv(_channels_last(x1)), self.layer2_outconv(_channels_last(x2))  # stays channels-last

    def half_from_laterals(self, feat_c: torch.Tensor, lat1: torch.Tensor, lat2: torch.Tensor) -> torch.Tensor:
        """:meth:`dense` with the lateral convs already applied, up to the 1/2-resolution map
        ``(1, 64, 4h, 4w)`` (the last x2 upsampling is left to the window pixels)."""
        q = self.layer2_outconv2(lat2 + _up2(self.layer3_outconv(feat_c)))
        return self.layer1_outconv2(lat1 + _up2(q))

    # tile sides for the sparse convs: they divide the 1/4 and 1/2 maps of any valid input (sides
    # multiples of 32). Small tiles skip more of what nothing needs; measured at 640x480 with ~170
    # matches, 4x4 tiles beat 8x8 by ~20 % and 2x2 (more halo per tile) by ~10 %.
    QUARTER_TILE = 4
    HALF_TILE = 4
    # above this fraction of needed tiles one whole-map conv is cheaper than the tiles
    DENSE_ABOVE = 0.7
    # the sparse path as a whole pays off while at most this fraction of 1/2-resolution tiles is needed
    # (measured at 640x480 with scattered cells: equal costs from about half the tiles on)
    SPARSE_BELOW = 0.5
    # device types on which the sparse path is considered at all. On a GPU the whole-map convs take
    # fractions of a millisecond with fixed shapes (cudnn autotunes them once), while the masks and tile
    # lists cost host-device synchronisations and shapes that change every frame.
    SPARSE_DEVICES = ("cpu",)

    @staticmethod
    def _stack_tiles(
        stack: nn.Sequential,
        src: _PaddedMap,
        need_mid: torch.Tensor,
        need_out: torch.Tensor,
        tile: int,
        ws: Workspace | None = None,
        name: str = "",
    ) -> torch.Tensor:
        """``stack`` (conv, BN, LeakyReLU, conv) on the tiles the needed positions fall in: returns the
        channels-last ``(H, W, C_out)`` output (meaningful at ``need_out``)."""
        conv0, bn, conv3 = stack[0], stack[1], stack[3]
        w0, w3 = _channels_last(conv0.weight), _channels_last(conv3.weight)  # oneDNN's fast layout for NHWC input

        def bn_act(x: torch.Tensor) -> torch.Tensor:
            x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
            return F.leaky_relu(x, 0.01)

        mid = _PaddedMap(src.H, src.W, conv0.out_channels, src.data, ws, f"{name}.mid")
        if tile_fraction(need_mid, tile) > FinePreprocess.DENSE_ABOVE:
            mid.interior.copy_(_hwc(bn_act(src.conv3x3_whole(w0))))
        else:
            for ty, tx, out in src.conv3x3_tiles(w0, need_mid, tile):
                mid.write_tiles(ty, tx, tile, bn_act(out).permute(0, 2, 3, 1))
        if tile_fraction(need_out, tile) > FinePreprocess.DENSE_ABOVE:
            return _hwc(mid.conv3x3_whole(w3))
        dst = _PaddedMap(src.H, src.W, conv3.out_channels, src.data, ws, f"{name}.out")
        for ty, tx, out in mid.conv3x3_tiles(w3, need_out, tile):
            dst.write_tiles(ty, tx, tile, out.permute(0, 2, 3, 1))
        return dst.interior

    def windows_sparse(
        self,
        feat_c: torch.Tensor,
        lat1: torch.Tensor,
        lat2: torch.Tensor,
        cells: torch.Tensor,
        size: int,
        pad: int,
        stats: list | None = None,
        workspace: Workspace | None = None,
        dense: bool = False,
    ) -> torch.Tensor:
        """The ``size x size`` full-resolution windows (zero padding ``pad``) of coarse ``cells (M,)``.

        ``feat_c (1, 256, h, w)`` is the transformer output / 16; ``lat1``, ``lat2`` come from
        :meth:`laterals`. Returns ``(M, size*size, 64)``, what :func:`unfold_windows` cuts from the
        whole fine map. Only the receptive field of the windows is computed (each level's 3x3 convs on
        the tiles the next level reads, or on the whole map where those tiles cover most of it), and the
        last x2 upsampling only inside the windows (:func:`upsample2x_windows`). When the receptive field
        covers more than ``SPARSE_BELOW`` of the 1/2-resolution tiles, on devices not in
        ``SPARSE_DEVICES`` (GPUs), or with ``dense`` (fixed shapes: CUDA graphs, export), the whole maps
        are computed.
        """
        _, _, h, w = feat_c.shape
        rows, cols = window_sources(cells, w, 4 * h, 4 * w)
        if dense or feat_c.device.type not in self.SPARSE_DEVICES:
            if stats is not None:
                stats.append(FineSparseStats(1.0, 1.0, False))
            return upsample2x_windows(_hwc(self.half_from_laterals(feat_c, lat1, lat2)), rows, cols, cells, w, size,
                                      pad)
        need_h3 = torch.zeros(4 * h, 4 * w, dtype=torch.bool, device=feat_c.device)
        need_h3[rows[:, :, None], cols[:, None, :]] = True  # half-res outputs of layer1_outconv2.3
        need_h0 = _dilate3(need_h3)  # half-res outputs of layer1_outconv2.0
        need_hin = _dilate3(need_h0)  # half-res inputs
        need_q3 = _up_sources(need_hin)  # quarter-res outputs of layer2_outconv2.3
        need_q0 = _dilate3(need_q3)  # quarter-res outputs of layer2_outconv2.0
        sparse = tile_fraction(need_h0, self.HALF_TILE) <= self.SPARSE_BELOW
        if stats is not None:
            stats.append(FineSparseStats(float(need_q0.float().mean()), float(need_h0.float().mean()), sparse))
        if sparse:
            half = self._half_sparse(
                feat_c, _hwc(lat1), _hwc(lat2), need_q0, need_q3, need_h0, need_h3, workspace
            )
        else:  # the receptive field covers most of the map: whole-map convs are cheaper
            half = _hwc(self.half_from_laterals(feat_c, lat1, lat2))
        return upsample2x_windows(half, rows, cols, cells, w, size, pad)

    def _half_sparse(self, feat_c, lat1, lat2, need_q0, need_q3, need_h0, need_h3, ws=None) -> torch.Tensor:
        """The 1/2-resolution FPN output ``(4h, 4w, 64)``, meaningful at ``need_h3``, from the tiles the
        masks need (channels-last ``lat1``, ``lat2``)."""
        _, _, h, w = feat_c.shape

        # 1/8 -> 1/4: input = up2(layer3_outconv(c)) + lat2 (cheap whole-map ops, channels-last)
        top = _hwc(_up2(_channels_last(self.layer3_outconv(feat_c))))  # (2h, 2w, 256)
        q_in = _PaddedMap(2 * h, 2 * w, top.shape[-1], top, ws, "quarter.in")
        torch.add(lat2, top, out=q_in.interior)
        quarter = self._stack_tiles(self.layer2_outconv2, q_in, need_q0, need_q3, self.QUARTER_TILE, ws, "quarter")

        # 1/4 -> 1/2: input = up2(quarter) + lat1 (meaningful where the half-res convs read)
        h_in = _PaddedMap(4 * h, 4 * w, quarter.shape[-1], top, ws, "half.in")
        torch.add(lat1, _hwc(_up2(_channels_last(quarter.permute(2, 0, 1)[None]))), out=h_in.interior)
        return self._stack_tiles(self.layer1_outconv2, h_in, need_h0, need_h3, self.HALF_TILE, ws, "half")


@dataclass
class FineResult:
    """Fine matching outputs for M coarse matches (all ``(M, ...)``; keypoints ``(x, y)`` pixels)."""

    mkpts0: torch.Tensor  # (M, 2) stage-1 point in image 0 (final)
    mkpts1: torch.Tensor  # (M, 2) stage-1 point + sub-pixel offset in image 1 (final)
    mkpts0_s1: torch.Tensor
    mkpts1_s1: torch.Tensor
    idx_l: torch.Tensor  # (M,) image-0 window pixel of the stage-1 argmax
    idx_r: torch.Tensor  # (M,) image-1 inner-window pixel of the stage-1 argmax
    s1_top2: torch.Tensor  # (M, 2) best and runner-up stage-1 probabilities
    heatmap: torch.Tensor  # (M, 3, 3)
    expec: torch.Tensor  # (M, 2)


def fine_match(
    win0: torch.Tensor,
    win1: torch.Tensor,
    mkpts0_c: torch.Tensor,
    mkpts1_c: torch.Tensor,
    window: int = 8,
    slicedim: int = 8,
    temperature: float = 10.0,
) -> FineResult:
    """Two-stage fine matching.

    Args:
        win0: ``(M, W*W, C)`` image-0 windows; win1: ``(M, (W+2)^2, C)`` image-1 extended windows.
        mkpts0_c, mkpts1_c: ``(M, 2)`` coarse keypoints (``stride * cell``, the cell's top-left pixel).

    Stage 1: dual-softmax of ``(w0/sqrt(C)) . (w1/sqrt(C))`` over the first ``C - slicedim`` channels
    on the full extended window, cropped to the inner ``W x W`` afterwards; first argmax. Stage 2: the
    last ``slicedim`` channels give a 3x3 patch of the extended window centred on inner ``(r, c)`` (rows
    ``r-1..r+1`` with wrap-around, as the official indexing), softmax(/temperature), expectation over
    {-1, 0, 1} added to image 1's point.
    """
    M, WW, C = win0.shape
    E = window + 2
    cs = C - slicedim
    f0 = win0[..., :cs] / C**0.5
    f1 = win1[..., :cs] / C**0.5
    sim = f0 @ f1.transpose(1, 2)  # (M, WW, E*E)
    prob = torch.softmax(sim, 1) * torch.softmax(sim, 2)
    prob = prob.reshape(M, WW, E, E)[..., 1:-1, 1:-1].reshape(M, WW * WW)
    s1_top2 = prob.topk(2, dim=1).values if prob.shape[1] > 1 else prob
    idx = prob.argmax(1)
    idx_l, idx_r = idx // WW, idx % WW
    half = window / 2 - 0.5

    def offset(k: torch.Tensor) -> torch.Tensor:
        return (torch.stack([k % window - half, torch.div(k, window, rounding_mode="floor") - half], -1)
                .to(mkpts0_c.dtype))

    mkpts0_s1 = mkpts0_c + offset(idx_l)
    mkpts1_s1 = mkpts1_c + offset(idx_r)

    rows = torch.arange(M, device=win0.device)
    t0 = win0[rows, idx_l, cs:]  # (M, slicedim)
    t1 = win1[..., cs:] / slicedim**0.5  # (M, E*E, slicedim)
    t = (t1 @ t0[:, :, None])[..., 0].reshape(M, E, E)
    r, c = torch.div(idx_r, window, rounding_mode="floor"), idx_r % window
    step = torch.arange(-1, 2, device=win0.device)
    pr = (r[:, None] + step) % E  # row -1 wraps to the last row, like negative indexing
    pc = (c[:, None] + step) % E
    patch = t[rows[:, None, None], pr[:, :, None], pc[:, None, :]]  # (M, 3, 3)
    heat = torch.softmax(patch.reshape(M, 9) / temperature, -1).reshape(M, 3, 3)
    grid = step.to(heat.dtype)
    expec = torch.stack([(heat * grid[None, None, :]).sum((1, 2)), (heat * grid[None, :, None]).sum((1, 2))], -1)
    mkpts1 = mkpts1_s1 + expec * (3 // 2)
    return FineResult(mkpts0_s1, mkpts1.to(mkpts1_s1.dtype), mkpts0_s1, mkpts1_s1, idx_l, idx_r, s1_top2, heat, expec)
