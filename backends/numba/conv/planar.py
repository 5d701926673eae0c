"""The ``planar`` conv path, Numba: the output channels as the vector axis, the input planes read as they are.

For convs with few input channels per group (LeNet-5's C3: 6), where the channels path's channel-last window
would be all scalar tails. Each task copies the input rows it needs into a zero-padded planar window (Cg planes of
rows x Wp, NCHW as it is), and every operand element is then an offset into it: output position p at
``aoff[p]`` (its top-left tap), tap (c, r, s) at ``aq[q]``. simd.py's gather tiles take a's element at the sum
of the two, so nothing is transposed on the way in and only real outputs are computed, at any stride.

* Forward (task: group, run of images, taken band of output rows by band): rows = output positions, one
  broadcast window value per position times a vector of weights ((c, r, s) x output-channel rows), the whole
  reduction in one tile call; the channels path's epilogue transposes the accumulators back to NCHW, adds the
  bias (and the residual) and applies the activation, or (conv2d_pool_forward) the pooled epilogue also
  averages 2x2 windows while the band is in cache.
* Weight gradient (task: chunk of images, group): the transpose, dw^T[(c, r, s), k] = sum over output positions p
  of window(aoff[(c, r, s)] + aq[p]) * dy^T[p, k], dy's rows transposed per image to positions x channels; one
  partial per chunk of images, summed in order (results do not depend on the thread count).
* Input gradient (stride 1): that forward on dy with the weights flipped (``_loops.flipped_data_grad``).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ..activation import act_run
from ..vectors import VECTOR_BYTES, pool_pairs, transpose_block
from ._loops import MIN_TASKS, Pads, Pair, cdiv, copy_run, zero_run
from .channels import POSITIONS, WEIGHT_CHUNKS, band_rows, epilogue
from .simd import (
    LINE,
    LINE_ROWS,
    PLANAR_TILES,
    fma_gather_tile,
    fma_gather_tile_narrow,
    fma_line_tile,
    fma_slide_tile,
    lanes,
)

WEIGHT_POSITIONS = 1024  # weight gradient: output positions per window at most


@njit(cache=True, fastmath=False, error_model="numpy")
def _fill_planes(win, x, n, c0, cg, ih0, rows, wp, left):
    """win[(c * rows + i) * wp + left + iw] = x[n, c0 + c, ih0 + i, iw] for c < cg and window rows i < rows, 0 in
    the margins and in rows outside the image."""
    _, c_, h_, w_ = x.shape
    flat = x.reshape(-1)
    if wp == w_ and 0 <= ih0 and ih0 + rows <= h_:  # no margins, every row inside: one run per plane
        for c in range(cg):
            copy_run(win, c * rows * wp, flat, ((n * c_ + c0 + c) * h_ + ih0) * w_, 1, rows * wp)
        return
    for c in range(cg):
        for i in range(rows):
            dst, ih = (c * rows + i) * wp, ih0 + i
            if ih < 0 or ih >= h_:
                zero_run(win, dst, wp)
            else:
                zero_run(win, dst, left)
                copy_run(win, dst + left, flat, ((n * c_ + c0 + c) * h_ + ih) * w_, 1, w_)
                zero_run(win, dst + left + w_, wp - left - w_)


@njit(cache=True, fastmath=False, error_model="numpy")
def _gather_tiles(acc, a, arow, aoff, aq, b, brow, boff, count, q0, q1, lined, slide):
    """acc[i, j] += sum over q0 <= q < q1 of a[0, aoff[i] + aq[q]] * b[brow[q], boff[q] + j] for i < count
    (plus up to the narrow tile's rows - 1: acc must have them) and every column of acc: line tiles
    when ``lined`` (rows in lines of LINE consecutive elements of a; slide tiles when the taps also come in
    runs of LINE consecutive elements from q0 on, ``slide``), else wide tiles, then narrow ones for the rows
    left over."""
    lane, cols = lanes(acc), acc.shape[1]
    wide, narrow = (LINE_ROWS if lined else PLANAR_TILES[0][0]), PLANAR_TILES[1][0]
    whole = count - count % wide
    for j in range(0, cols, lane):
        for i in range(0, whole, wide):
            if slide:
                fma_slide_tile(acc, a, arow, aoff, aq, b, brow, boff, i, j, q0, q1)
            elif lined:
                fma_line_tile(acc, a, arow, aoff, aq, b, brow, boff, i, j, q0, q1)
            else:
                fma_gather_tile(acc, a, arow, aoff, aq, b, brow, boff, i, j, q0, q1)
        for i in range(whole, count, narrow):
            fma_gather_tile_narrow(acc, a, arow, aoff, aq, b, brow, boff, i, j, q0, q1)


@njit(cache=True, fastmath=False, error_model="numpy")
def _position_offsets(aoff, count, ow, sh, sw, wp):
    """aoff[p] = the window offset of output position p's top-left tap, for p < count; later entries 0."""
    aoff[:] = 0
    for p in range(count):
        aoff[p] = p // ow * sh * wp + p % ow * sw


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _planar_forward(x, wq, brow, boff, aq, out, b, res, sh, sw, top, left, win_rows, wp, band, kind, slope,
                    pooled, oh, ow, slide):
    """out = act(conv(x, w) + b (+ res)) (module docstring), wq the weights as (groups, (c, r, s), Kpad), aq the
    window offset of each row of wq; ``slide``: kernel rows of LINE taps at unit dilation (slide tiles). A task
    takes a run of images (its buffers allocated once), band by band. With a non-empty ``pooled`` (band then
    even, or all oh rows) also its 2x2 average pool, out written only if it is not empty (:func:`_pool_epilogue`)."""
    n_, c_, _, _ = x.shape
    groups, taps, kpad = wq.shape
    k_ = b.size
    cg, kg = c_ // groups, k_ // groups
    lane, narrow = lanes(out), PLANAR_TILES[1][0]
    rows = max(band * ow + narrow, (band * ow + lane - 1) // lane * lane)  # narrow tiles after the wide ones;
    # the epilogue transposes whole L x L blocks
    runs_of = min(n_, MIN_TASKS)
    lined = sw == 1 and ow % LINE == 0
    for task in prange(groups * runs_of):
        g, run = task // runs_of, task % runs_of
        win = np.empty((1, cg * win_rows * wp), dtype=out.dtype)
        aoff, arow = np.empty(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
        acc = np.empty((rows, kpad), dtype=out.dtype)
        runs, done = np.empty(lane * rows, dtype=out.dtype), np.empty(rows, dtype=out.dtype)
        _position_offsets(aoff, band * ow, ow, sh, sw, wp)  # every band's (a short last band's rows past its
        # count read the window's later rows, which are filled: in bounds, their sums not kept)
        for n in range(run * n_ // runs_of, (run + 1) * n_ // runs_of):
            for h0 in range(0, oh, band):
                count = min(band, oh - h0) * ow
                _fill_planes(win.reshape(-1), x, n, g * cg, cg, h0 * sh - top, win_rows, wp, left)
                acc[:] = 0
                _gather_tiles(acc, win, arow, aoff, aq, wq[g], brow, boff, count, 0, taps, lined, lined and slide)
                if pooled.size > 0:
                    _pool_epilogue(out, pooled, acc, count, b, n, g * kg, kg, h0, ow, kind, slope, runs, done)
                else:
                    epilogue(out, acc, count, b, res, n, g * kg, kg, h0, kind, slope, runs)


@njit(cache=True, fastmath=False, error_model="numpy")
def _pool_epilogue(out, pooled, acc, count, b, n, k0, kg, h0, ow, kind, slope, runs, done):
    """The channels path's epilogue for a band of count / ow rows from output row h0 (even): each channel's rows
    transposed back into runs and activated (act(acc + bias)) into done (not in place: that would keep LLVM off
    its vector loop), copied to out when it is not empty, and averaged in 2x2 windows into pooled (an odd last
    row or column is in no window)."""
    k_, ph_, pw_ = pooled.shape[1], pooled.shape[2], pooled.shape[3]
    lane, kpad = lanes(acc), acc.shape[1]
    stride = runs.size // lane
    rows, oh = count // ow, out.shape[2]
    out_flat, acc_flat, pooled_flat = out.reshape(-1), acc.reshape(-1), pooled.reshape(-1)
    for kb in range(0, kg, lane):
        for p0 in range(0, count, lane):
            transpose_block(runs, p0, stride, acc_flat, p0 * kpad + kb, kpad)
        for kk in range(min(lane, kg - kb)):
            k = k0 + kb + kk
            act_run(done, np.int64(0), runs, kk * stride, count, b[k], kind, slope)
            if out.size > 0:
                copy_run(out_flat, ((n * k_ + k) * oh + h0) * ow, done, 0, 1, count)
            for r in range(0, rows - 1, 2):
                if (h0 + r) // 2 < ph_:
                    pool_pairs(pooled_flat, ((n * k_ + k) * ph_ + (h0 + r) // 2) * pw_, done, r * ow, ow, pw_)


@njit(cache=True, fastmath=False, error_model="numpy")
def _transposed_rows(dst, dy, n, k0, kg, p0, count):
    """dst[p, k] = dy[n, k0 + k, p0 + p] for p < count, k < kg: L x L blocks, then single elements."""
    _, k_, oh, ow = dy.shape
    lane, kpad, plane = lanes(dst), dst.shape[1], oh * ow
    flat, out = dy.reshape(-1), dst.reshape(-1)
    whole_k, whole_p = kg - kg % lane, count - count % lane
    src = (n * k_ + k0) * plane + p0
    for kb in range(0, whole_k, lane):
        for pb in range(0, whole_p, lane):
            transpose_block(out, pb * kpad + kb, kpad, flat, src + kb * plane + pb, plane)
    for p in range(count):
        for k in range(0 if p >= whole_p else whole_k, kg):
            out[p * kpad + k] = flat[src + k * plane + p]


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _planar_weight(dy, x, part, tap_off, taps, sh, sw, top, left, win_rows, wp, band, lined):
    """part[chunk, g, (c, r, s), k] = sum over the chunk's images and output positions p of dy[n, g*Kg + k, p] *
    window(tap_off[(c, r, s)] + offset of p) for the first ``taps`` rows (module docstring); its later rows and
    its columns past Kg are scratch. ``lined``: the taps come in lines of LINE consecutive window elements (unit
    dilation along S, a multiple of LINE)."""
    chunks, groups, rows, kpad = part.shape
    n_, k_, oh, ow = dy.shape
    cg, kg = x.shape[1] // groups, k_ // groups
    arow = np.zeros(rows, dtype=np.int64)
    for task in prange(chunks * groups):
        chunk, g = task // groups, task % groups
        mine = part[chunk, g]
        mine[:] = 0
        win = np.empty((1, cg * win_rows * wp), dtype=part.dtype)
        dyt = np.zeros((band * ow, kpad), dtype=part.dtype)
        aq = np.empty(band * ow, dtype=np.int64)
        brow, boff = np.arange(band * ow), np.zeros(band * ow, dtype=np.int64)
        _position_offsets(aq, band * ow, ow, sh, sw, wp)  # every band's (the reduction stops at its count)
        for n in range(chunk * n_ // chunks, (chunk + 1) * n_ // chunks):
            for h0 in range(0, oh, band):
                count = min(band, oh - h0) * ow
                _fill_planes(win.reshape(-1), x, n, g * cg, cg, h0 * sh - top, win_rows, wp, left)
                _transposed_rows(dyt, dy, n, g * kg, kg, h0 * ow, count)
                _gather_tiles(mine, win, arow, tap_off, aq, dyt, brow, boff, taps, 0, count, lined, np.bool_(False))


@functools.lru_cache(maxsize=64)
def _tap_offsets(cg: int, r_: int, s_: int, win_rows: int, wp: int, dh: int, dw: int, rows: int) -> np.ndarray:
    """The window offset of each tap (c, r, s) in that order, then zeros up to ``rows`` entries (the callers never
    modify it)."""
    taps = (np.arange(cg)[:, None, None] * (win_rows * wp) + np.arange(r_)[None, :, None] * (dh * wp)
            + np.arange(s_)[None, None, :] * dw).reshape(-1)
    return np.concatenate([taps, np.zeros(rows - taps.size, dtype=np.int64)]).astype(np.int64)


def _window(x_shape, w_shape, out_hw: Pair, stride: Pair, padding: Pads, dilation: Pair, positions: int,
            pairs: bool = False):
    """(band, window rows, Wp): output rows per task (an even number unless all, with ``pairs``) and the planar
    window they read."""
    band = band_rows(out_hw, positions)
    if pairs and band % 2 and band < out_hw[0]:
        band += 1
    return band, (band - 1) * stride[0] + (w_shape[2] - 1) * dilation[0] + 1, x_shape[3] + padding[2] + padding[3]


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, stride: Pair, padding: Pads,
            dilation: Pair, groups: int, kind: int, slope: float, residual: np.ndarray | None = None,
            pooled: np.ndarray | None = None, out_hw: Pair | None = None) -> None:
    """y = act(cross_correlate(x, w) + b (+ residual)) by :func:`_planar_forward`; with ``pooled``, also its 2x2
    average pool there, y (empty when not needed) of output size ``out_hw``."""
    k, cg, r, s = w.shape
    kg, lane = k // groups, VECTOR_BYTES // w.itemsize
    oh, ow = y.shape[2:] if out_hw is None else out_hw
    band, win_rows, wp = _window(x.shape, w.shape, (oh, ow), stride, padding, dilation, POSITIONS,
                                 pooled is not None)
    wq = np.zeros((groups, cg * r * s, cdiv(kg, lane) * lane), dtype=w.dtype)
    wq[:, :, :kg] = w.reshape(groups, kg, cg * r * s).transpose(0, 2, 1)
    taps = cg * r * s
    aq = _tap_offsets(cg, r, s, win_rows, wp, *dilation, taps)
    empty = np.empty((0, 0, 0, 0), dtype=x.dtype)
    res = empty if residual is None else residual
    _planar_forward(x, wq, np.arange(taps), np.zeros(taps, dtype=np.int64), aq, y, b, res, *stride, padding[0],
                    padding[2], win_rows, wp, band, kind, slope, empty if pooled is None else pooled, oh, ow,
                    s == LINE and dilation[1] == 1)


def weight_grad(dy: np.ndarray, x: np.ndarray, w_shape, stride: Pair, padding: Pads, dilation: Pair,
                groups: int) -> np.ndarray:
    """dw (K, Cg, R, S) by :func:`_planar_weight`: at most WEIGHT_CHUNKS partials over the batch, summed in order."""
    k, cg, r, s = w_shape
    kg, lane, taps = k // groups, VECTOR_BYTES // x.itemsize, cg * r * s
    band, win_rows, wp = _window(x.shape, w_shape, dy.shape[2:], stride, padding, dilation, WEIGHT_POSITIONS)
    rows = taps + PLANAR_TILES[1][0]  # the narrow tiles after the wide ones may pass the taps
    part = np.empty((min(WEIGHT_CHUNKS, x.shape[0]), groups, rows, cdiv(kg, lane) * lane), dtype=x.dtype)
    _planar_weight(dy, x, part, _tap_offsets(cg, r, s, win_rows, wp, *dilation, rows), taps, *stride, padding[0],
                   padding[2], win_rows, wp, band, dilation[1] == 1 and s % LINE == 0)
    summed = part.sum(axis=0)[:, :taps, :kg]  # (groups, (c, r, s), k)
    return np.ascontiguousarray(summed.transpose(0, 2, 1)).reshape(w_shape)
