"""The ``channels`` conv path, Numba: every pass reads a channel-last window of the input rows it needs.

Each task lays out the input rows of a band of output rows channel-last in a zero-padded window (rows x Wp x Cg,
channels innermost; NCHW transposed in L x L blocks by :func:`vectors.transpose_block`, L the elements per
vector). For one kernel row the taps' (s, c) are then one contiguous run of the window, so only real outputs
are computed, at any stride, and nothing is gathered: the shifted path computes every position of its wide grid
(1.27x the outputs of 8x8 planes) and im2row copies every window.

* Forward (:func:`_channels_forward`; task: image, group, band): simd.py's register tiles with the operands the
  other way round from the shifted path, the output channels as the vector axis: one broadcast window value per
  output position (a row of ``a``) times vectors of weights ((r, s, c) x output-channel rows of ``b``), one tile
  call per kernel row (per tap when dilated along the width). The epilogue transposes the accumulators back to
  NCHW, adds the bias (and the residual) and applies the activation.
* Input gradient (stride 1): that forward on dy with the weights flipped (``_loops.flipped_data_grad``).
* Weight gradient (:func:`_channels_weight`; task: chunk of images, group): dy's rows, as they are, times the
  window's (s, c) runs at the output positions, by the shared ``gemm``; one partial per chunk, summed in order.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ..activation import RELU, act_run, relu_sum_run
from ..vectors import VECTOR_BYTES, transpose_block
from ._loops import Pads, Pair, add_bias_run, cdiv, fill_window, gemm
from .simd import CHANNEL_ROWS, CHANNEL_TILES, fma_tile_channels, fma_tile_channels_narrow, lanes

POSITIONS = 256   # forward: output positions per task at most, unless one output row has more
WEIGHT_POSITIONS = 1024  # weight gradient: output positions per window at most (ResNet-20's whole images) ...
WEIGHT_CHUNKS = 8  # ... and partials (chunks of images) at most


@njit(cache=True, fastmath=False, error_model="numpy")
def tiles(acc, win, arow, aoff, wg, brow, boff, count, q0, q1):
    """acc[i, j] += sum over q0 <= q < q1 of win[aoff[i] + q] * wg[brow[q], j] for i < count (rounded up to the
    tile's rows; acc has CHANNEL_ROWS-rounded rows) and every column of acc: wide tiles, then narrow ones for the
    columns left over."""
    lane, cols = lanes(acc), acc.shape[1]
    wide_rows, wide_vectors = CHANNEL_TILES[0]
    narrow_rows, narrow_vectors = CHANNEL_TILES[1]
    j = 0
    while j + wide_vectors * lane <= cols:
        for i in range(0, count, wide_rows):
            fma_tile_channels(acc, win, arow, aoff, wg, brow, boff, i, j, q0, q1)
        j += wide_vectors * lane
    while j < cols:
        for i in range(0, count, narrow_rows):
            fma_tile_channels_narrow(acc, win, arow, aoff, wg, brow, boff, i, j, q0, q1)
        j += narrow_vectors * lane


@njit(cache=True, fastmath=False, error_model="numpy")
def epilogue(out, acc, count, b, res, n, k0, kg, h0, kind, slope, runs):
    """out[n, k0 + k] from flat output position h0 * OW on: act(acc[p, k] + b (+ res)) for p < count, k < kg
    (act((acc + bias) + res), as add_forward on the output): L channels at a time transposed back into runs
    (L x stride), then one run per channel."""
    _, k_, oh, ow = out.shape
    lane, kpad = lanes(acc), acc.shape[1]
    stride = runs.size // lane
    out_flat, acc_flat, res_flat = out.reshape(-1), acc.reshape(-1), res.reshape(-1)
    zero = np.zeros(1, dtype=out.dtype)[0]
    for kb in range(0, kg, lane):
        for p0 in range(0, count, lane):
            transpose_block(runs, p0, stride, acc_flat, p0 * kpad + kb, kpad)
        for kk in range(min(lane, kg - kb)):
            k = k0 + kb + kk
            dst = ((n * k_ + k) * oh + h0) * ow
            if res.size == 0:
                act_run(out_flat, dst, runs, kk * stride, count, b[k], kind, slope)
            elif kind == RELU:
                relu_sum_run(out_flat, dst, runs, kk * stride, b[k], res_flat, dst, count)
            else:
                add_bias_run(runs, kk * stride, b[k], res_flat, dst, count)
                act_run(out_flat, dst, runs, kk * stride, count, zero, kind, slope)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _channels_forward(x, wq, brow, boff, out, b, res, sh, sw, top, left, dh, dw, r_, s_, wp, band, kind, slope):
    """out = act(conv(x, w) + b (+ res)) (module docstring), wq the weights as (groups, (r, s, c), Kpad) with
    Kpad a multiple of the narrow tile's columns, brow[q] the row of wq for window offset q (boff zeros)."""
    n_, c_, _, _ = x.shape
    groups, _, kpad = wq.shape
    _, k_, oh, ow = out.shape
    cg, kg = c_ // groups, k_ // groups
    lane = lanes(out)
    bands = (oh + band - 1) // band
    win_rows = (band - 1) * sh + (r_ - 1) * dh + 1
    span = s_ if dw == 1 else 1  # kernel columns per tile call: (s, c) contiguous in the window when dw == 1
    for task in prange(n_ * groups * bands):
        n, g, h0 = task // (groups * bands), task // bands % groups, task % bands * band
        count = min(band, oh - h0) * ow
        tmp = np.empty(lane * lane, dtype=out.dtype)
        win = np.empty((1, win_rows * wp * cg), dtype=out.dtype)
        fill_window(win.reshape(-1), x, n, g * cg, cg, h0 * sh - top, win_rows, wp, left, tmp)
        rows = (count + CHANNEL_ROWS - 1) // CHANNEL_ROWS * CHANNEL_ROWS
        acc = np.zeros((max(rows, (count + lane - 1) // lane * lane), kpad), dtype=out.dtype)
        aoff = np.zeros(acc.shape[0], dtype=np.int64)  # rows past count read the window's start
        for p in range(count):
            aoff[p] = (p // ow * sh * wp + p % ow * sw) * cg
        arow = np.zeros(acc.shape[0], dtype=np.int64)
        for r in range(r_):
            for s in range(0, s_, span):
                q0 = (r * dh * wp + s * dw) * cg
                tiles(acc, win, arow, aoff, wq[g], brow, boff, count, q0, q0 + span * cg)
        runs = np.empty(lane * ((count + lane - 1) // lane * lane), dtype=out.dtype)
        epilogue(out, acc, count, b, res, n, g * kg, kg, h0, kind, slope, runs)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _channels_weight(dy, x, part, sh, sw, top, left, dh, dw, r_, s_, wp, band):
    """part[chunk, g, r * (S / span) + s / span, k, (s', c)] = sum over the chunk's images and output positions p
    of dy[n, g*Kg + k, p] * window(p + tap (r, s + s'), c): per band of ``band`` output rows the forward's
    window, then per kernel row (per tap when dilated along the width) one GEMM whose b rows are the window's
    (s', c) runs at the band's output positions: dy's rows times them, nothing gathered, only real outputs."""
    chunks, groups, _, kg, cols = part.shape
    n_, k_, oh, ow = dy.shape
    cg = x.shape[1] // groups
    lane = lanes(part)
    span = s_ if dw == 1 else 1
    rows = (band - 1) * sh + (r_ - 1) * dh + 1
    dy2 = dy.reshape(n_ * k_, oh * ow)
    for task in prange(chunks * groups):
        chunk, g = task // groups, task % groups
        mine = part[chunk, g]
        mine[:] = 0
        tmp = np.empty(lane * lane, dtype=part.dtype)
        win = np.empty((1, rows * wp * cg), dtype=part.dtype)
        boff, aoff = np.empty(band * ow, dtype=np.int64), np.empty(kg, dtype=np.int64)
        brow = np.zeros(band * ow, dtype=np.int64)
        for n in range(chunk * n_ // chunks, (chunk + 1) * n_ // chunks):
            arow = np.arange(kg) + n * k_ + g * kg
            for h0 in range(0, oh, band):
                count = min(band, oh - h0) * ow
                fill_window(win.reshape(-1), x, n, g * cg, cg, h0 * sh - top, rows, wp, left, tmp)
                aoff[:] = h0 * ow  # dy's rows from the band's first position
                for r in range(r_):
                    for s in range(0, s_, span):
                        shift = (r * dh * wp + s * dw) * cg
                        for p in range(count):
                            boff[p] = (p // ow * sh * wp + p % ow * sw) * cg + shift
                        gemm(dy2, arow, aoff, win, brow, boff, mine[r * (s_ // span) + s // span], kg, count, cols)


@functools.lru_cache(maxsize=64)
def _weight_rows(cg: int, r_: int, s_: int, wp: int, dh: int, dw: int) -> tuple[np.ndarray, np.ndarray]:
    """(brow, boff): brow[(r * dh * wp + s * dw) * cg + c] = (r * s_ + s) * cg + c, the weight row of the window
    offset of tap (r, s) and channel c; boff zeros (the callers never modify them)."""
    size = ((r_ - 1) * dh * wp + (s_ - 1) * dw + 1) * cg
    brow = np.zeros(size, dtype=np.int64)
    for r in range(r_):
        for s in range(s_):
            start = (r * dh * wp + s * dw) * cg
            brow[start:start + cg] = np.arange(cg) + (r * s_ + s) * cg
    return brow, np.zeros(size, dtype=np.int64)


def padded_columns(kg: int, itemsize: int) -> int:
    """Kpad: kg output channels rounded up to a multiple of the narrow tile's width (the columns of the tiles' b
    and accumulators)."""
    step = CHANNEL_TILES[1][1] * VECTOR_BYTES // itemsize
    return cdiv(kg, step) * step


def _padded_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """w (K, Cg, R, S) as (groups, R*S*Cg, Kpad): rows (r, s, c), columns the group's output channels and zeros up
    to :func:`padded_columns`."""
    k, cg, r, s = w.shape
    kg = k // groups
    wq = np.zeros((groups, r * s * cg, padded_columns(kg, w.itemsize)), dtype=w.dtype)
    wq[:, :, :kg] = w.reshape(groups, kg, cg, r, s).transpose(0, 3, 4, 2, 1).reshape(groups, r * s * cg, kg)
    return wq


def band_rows(out_hw: Pair, positions: int) -> int:
    """Output rows per task or window: equal bands of at most ``positions`` outputs (at least one row)."""
    oh, ow = out_hw
    return cdiv(oh, cdiv(oh, max(1, min(oh, positions // ow))))


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, stride: Pair, padding: Pads,
            dilation: Pair, groups: int, kind: int, slope: float, residual: np.ndarray | None = None) -> None:
    """y = act(cross_correlate(x, w) + b (+ residual)) by :func:`_channels_forward`."""
    _, cg, r, s = w.shape
    oh, ow = y.shape[2:]
    wp = x.shape[3] + padding[2] + padding[3]
    brow, boff = _weight_rows(cg, r, s, wp, *dilation)
    res = np.empty((0, 0, 0, 0), dtype=y.dtype) if residual is None else residual
    _channels_forward(x, _padded_weights(w, groups), brow, boff, y, b, res, *stride, padding[0], padding[2],
                      *dilation, r, s, wp, band_rows((oh, ow), POSITIONS), kind, slope)


def weight_grad(dy: np.ndarray, x: np.ndarray, w_shape, stride: Pair, padding: Pads, dilation: Pair,
                groups: int) -> np.ndarray:
    """dw (K, Cg, R, S) by :func:`_channels_weight`: at most WEIGHT_CHUNKS partials over the batch, summed in
    order (results do not depend on the thread count)."""
    k, cg, r, s = w_shape
    kg = k // groups
    span = s if dilation[1] == 1 else 1
    wp = x.shape[3] + padding[2] + padding[3]
    part = np.empty((min(WEIGHT_CHUNKS, x.shape[0]), groups, r * (s // span), kg, span * cg), dtype=x.dtype)
    band = band_rows(dy.shape[2:], WEIGHT_POSITIONS)
    _channels_weight(dy, x, part, *stride, padding[0], padding[2], *dilation, r, s, wp, band)
    summed = part.sum(axis=0).reshape(groups, r, s // span, kg, span, cg)  # (g, r, s-block, k, s', c)
    return np.ascontiguousarray(summed.transpose(0, 3, 5, 1, 2, 4)).reshape(w_shape)
