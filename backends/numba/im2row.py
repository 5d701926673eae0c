"""The ``im2row`` conv path (see conv.py), Numba: every output pixel's receptive field gathered as one row,
then each output is one long dot product.

The input is first laid out channel-last and zero-padded, (N, G, Hp, Wp, Cg), so the window of output pixel
(oh, ow) on kernel row r is one contiguous run of S*Cg values (Cg per tap when the width is dilated). A tile
of 64 pixels gathers those runs into rows (pixel, (r, s, c)) that stay in L2, and the weights are rows
(k, (r, s, c)); y[k, pixel] = dot(w row, pixel row) is computed in 4x4 blocks of 16 vector accumulators
(``taps._dots4x4``). With many input channels the rows are long (ResNet's 32- and 64-channel 3x3 layers:
288 and 576), so the dots run near the FMA peak where the shifted path's short tiles do not: ResNet-20's 64-channel
8x8 layer at batch 128, forward 6.2 -> 1.8 ms (2-core AMD EPYC, float32).

The stride-1 input gradient is the same correlation of dy, padded by dil*(R-1) - pad on each side, with the
weights flipped and transposed (:func:`data_grad`).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activation import act_run, code
from .gemm import copy_run
from .taps import _dots4x4, cdiv

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]

ROW_TILE = 64             # pixels per task tile (ResNet-20 at batch 128: 32 to 128 within 5%, 224 10% slower)
MIN_TASKS = 64            # split into at least this many tasks when the shape allows


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _channel_last(x, xh, top, left):
    """xh[n, g, top + h, left + w, c] = x[n, g*Cg + c, h, w]; every other element of xh is 0. One task per
    padded row."""
    n_, c_, h_, w_ = x.shape
    groups, hp, cg = xh.shape[1], xh.shape[2], xh.shape[4]
    for task in prange(n_ * groups * hp):
        n, g, h = task // (groups * hp), (task // hp) % groups, task % hp - top
        row = xh[n, g, h + top]
        if h < 0 or h >= h_:
            row[:, :] = 0
            continue
        row[:left, :] = 0
        row[left + w_:, :] = 0
        for c in range(cg):
            src = x[n, g * cg + c, h]
            for w in range(w_):
                row[left + w, c] = src[w]


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _im2row_conv(xh, wr, b, out, r_, s_, sh, sw, dil_h, dil_w, tp, kind, slope):
    """out[n, g*Kg + k, oh, ow] = act(b[g*Kg + k] + dot(wr[g, k], row(n, g, oh, ow))), the row being the window
    of pixel (oh, ow) in the channel-last padded input xh, ordered (r, s, c) as wr's columns."""
    n_, groups, hp, wp, cg = xh.shape
    kg, rows = wr.shape[1], wr.shape[2]
    k_, oh_, ow_ = out.shape[1], out.shape[2], out.shape[3]
    p_ = oh_ * ow_
    xf = xh.reshape(n_, groups, hp * wp * cg)
    out_flat = out.reshape(-1)
    tiles = (p_ + tp - 1) // tp
    run = s_ * cg if dil_w == 1 else cg  # contiguous values per gathered run
    runs = rows // run
    zero = out.dtype.type(0)
    for task in prange(n_ * groups * tiles):
        n, g, tile = task // (groups * tiles), (task // tiles) % groups, task % tiles
        p0 = tile * tp
        t = min(tp, p_ - p0)
        src, weights = xf[n, g], wr[g]
        gathered = np.empty((t, rows), dtype=out.dtype)
        for j in range(t):
            oh, ow = (p0 + j) // ow_, (p0 + j) % ow_
            for q in range(runs):
                r, s = (q, 0) if dil_w == 1 else (q // s_, q % s_)
                copy_run(gathered[j], q * run, src, ((oh * sh + r * dil_h) * wp + ow * sw + s * dil_w) * cg, 1, run)
        acc = np.empty((kg, t), dtype=out.dtype)
        for kb in range(0, kg, 4):  # a short block repeats its last row or pixel and keeps only the real ones
            k1, k2, k3 = min(kb + 1, kg - 1), min(kb + 2, kg - 1), min(kb + 3, kg - 1)
            for jb in range(0, t, 4):
                j1, j2, j3 = min(jb + 1, t - 1), min(jb + 2, t - 1), min(jb + 3, t - 1)
                sums = _dots4x4(weights, kb, k1, k2, k3, gathered, jb, j1, j2, j3, 0, 0, 0, 0, 0, rows, zero)
                for i in range(min(4, kg - kb)):
                    for jj in range(min(4, t - jb)):
                        acc[kb + i, jb + jj] = sums[i * 4 + jj]
        flat = acc.reshape(-1)
        for k in range(kg):  # epilogue: bias + activation, one contiguous run of the output plane per channel
            kk = g * kg + k
            act_run(out_flat, (n * k_ + kk) * p_ + p0, flat, k * t, t, b[kk], kind, slope)


def _tile(pixels: int, images: int) -> int:
    """Pixels per task tile: ROW_TILE (a multiple of 4: whole dot blocks), or fewer for MIN_TASKS tasks."""
    return max(1, min(ROW_TILE, max(4, cdiv(cdiv(pixels * images, MIN_TASKS), 4) * 4), pixels))


def correlate(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, stride: Pair, padding: Pads,
              dilation: Pair, groups: int, kind: int, slope: float) -> None:
    """y (N, K, OH, OW) = act(cross_correlate(x, w) + b) by gathered rows (module docstring); ``kind`` is the
    activation's code (activation.code)."""
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    top, bottom, left, right = padding
    xh = np.empty((n, groups, h + top + bottom, wd + left + right, cg), dtype=x.dtype)
    _channel_last(x, xh, top, left)
    wr = np.ascontiguousarray(w.reshape(groups, k // groups, cg, r, s).transpose(0, 1, 3, 4, 2))
    wr = wr.reshape(groups, k // groups, r * s * cg)
    _im2row_conv(xh, wr, b, y, r, s, *stride, *dilation, _tile(y.shape[2] * y.shape[3], n * groups),
                 kind, slope)


def data_grad_fits(stride: Pair, padding: Pads, dilation: Pair, w_shape) -> bool:
    """The input gradient is a correlation of dy (:func:`data_grad`) when the stride is 1 and no side is
    padded past the kernel's reach (the flipped correlation's padding, dil*(R-1) - pad, is then >= 0)."""
    reach_h, reach_w = dilation[0] * (w_shape[2] - 1), dilation[1] * (w_shape[3] - 1)
    return stride == (1, 1) and max(padding[:2]) <= reach_h and max(padding[2:]) <= reach_w


def data_grad(dy: np.ndarray, w: np.ndarray, padding: Pads, dilation: Pair, groups: int,
              x_shape) -> np.ndarray:
    """Stride-1 input gradient: dy correlated with the flipped, transposed weights (per group), padded by
    dil*(R-1) - pad on each side (needs :func:`data_grad_fits`)."""
    k, cg, r, s = w.shape
    kg = k // groups
    wt = w.reshape(groups, kg, cg, r, s)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4).reshape(groups * cg, kg, r, s)
    reach_h, reach_w = dilation[0] * (r - 1), dilation[1] * (s - 1)
    flipped = (reach_h - padding[0], reach_h - padding[1], reach_w - padding[2], reach_w - padding[3])
    dx = np.empty(x_shape, dtype=dy.dtype)
    correlate(dy, np.ascontiguousarray(wt), np.zeros(groups * cg, dtype=dy.dtype), dx, (1, 1), flipped, dilation,
              groups, code(None), 0.0)
    return dx
