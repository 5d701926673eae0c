"""The ``shifted`` conv path (stride 1), Numba: implicit GEMM with no im2col.

Every pass reads its operands on a *wide grid*: per channel, the batch's (Hp, Wp) planes one after the other,
each image at (0, 0) of its plane and zeros after it (:func:`grid_shape`: as many zero rows and columns as the
larger padding of each axis, which serve both sides, since a tap reaching past the left edge of a row lands in
the previous row's zero columns). Output position v = n*Hp*Wp + h*Wp + w then reads tap (r, s) at
v + (r*dil_h - pad_top)*Wp + s*dil_w - pad_left: each GEMM operand row is a shifted window of one channel's
grid, so every loop is one long run across the batch instead of one per image, and tiles are long and whole
vectors whatever the image size. The grid is never laid out in memory as a whole: each task copies the
window of it that its tile reads (:func:`grid_window`), which stays in cache for the GEMM and spares a pass
over the whole batch through memory.

* Forward and input gradient: one GEMM over all positions v (:func:`_tap_gemm`), the taps as they are (x read
  at v + offset) or flipped (dy read at v - offset), keeping the real output (input) positions; the forward's
  epilogue adds the bias and applies the activation.
* Weight gradient: dw[k, (c, r, s)] = dot(dy[k, :], x[c, offset(r, s):]), a GEMM with a small M (Kg) and a
  huge reduction, done as long dot products in blocks of (k, tap) pairs (``simd.dot_tile``: a vector
  accumulator per pair, summed across its lanes in a fixed order). Partials per chunk of pixels, in sub-runs
  that stay in L2, summed in a fixed order: results do not depend on the thread count.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ..activation import (
    NONE,
    RELU,
    act_pool_pairs,
    act_run,
    act_run_inline,
    costly_remainder,
    pools_activated,
    relu_sum_run,
)
from ..vectors import copy_padded, pool_pairs
from ._loops import (
    MIN_TASKS,
    Pads,
    Pair,
    activate_rows,
    add_bias_run,
    cdiv,
    copy_run,
    dot_blocks,
    gemm,
    zero_run,
)

ACC_ELEMS = 1 << 14    # forward and input gradient: accumulator elements per task tile (64 KiB in float32)
TAP_CHUNKS = 8         # weight gradient: at most this many partials (fewer: less overhead) ...
TAP_MIN_RUN = 1024     # ... each over at least this many wide-grid pixels
RUN_ALIGN = 64         # ... and starting at a multiple of this many (vector loops without scalar remainders)
SUB_RUN = 4096         # ... taken this many pixels at a time (a multiple of RUN_ALIGN: the rows stay in L2)


def grid_shape(x_shape, out_hw: Pair, padding: Pads) -> Pair:
    """(Hp, Wp) of the wide grid's planes for an input of shape x_shape and an output of out_hw: the input plus
    the larger padding of each axis, and at least the output."""
    return (max(x_shape[2] + max(padding[0], padding[1]), out_hw[0]),
            max(x_shape[3] + max(padding[2], padding[3]), out_hw[1]))


@functools.lru_cache(maxsize=256)
def tap_rows(cg: int, r_: int, s_: int, wp: int, dil_h: int, dil_w: int, top: int = 0,
             left: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(channel, offset) of each GEMM row (c, r, s): the plane and the shift of its window, (r*dil_h - top)*wp +
    s*dil_w - left. Cached per geometry (a conv calls it every pass; the callers never modify the arrays)."""
    shifts = (np.arange(r_)[:, None] * (dil_h * wp) + np.arange(s_)[None, :] * dil_w).reshape(-1) - top * wp - left
    return np.repeat(np.arange(cg, dtype=np.int64), r_ * s_), np.tile(shifts, cg).astype(np.int64)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _tap_weight(dy, x, part, chan, off, lo, reach, hp, wp, total, zero):
    """Stride 1: part[chunk, g, k, q] = sum over the chunk's share of u < total of dy(g*Kg + k, u) *
    x(g*Cg + chan[q], u + lo + off[q]), dy and x read on their wide grids (:func:`grid_window`; dy is zero off
    the real outputs); 0 <= off[q] <= reach. The chunk's run is taken SUB_RUN positions at a time,
    the task copying the windows of both grids that a sub-run reads: they stay in L2 for every block of
    (k, tap) of :func:`dot_blocks`."""
    chunks, groups, kg, rows = part.shape
    cg = x.shape[1] // groups
    for task in prange(chunks * groups):
        chunk, g = task // groups, task % groups
        u0 = chunk * total // chunks // RUN_ALIGN * RUN_ALIGN  # whole vectors: only the last run has a remainder
        u1 = total if chunk == chunks - 1 else (chunk + 1) * total // chunks // RUN_ALIGN * RUN_ALIGN
        for i in range(kg):
            for q in range(rows):
                part[chunk, g, i, q] = 0
        dys = np.empty((kg * groups, SUB_RUN), dtype=x.dtype)  # the group's rows only are filled and read
        xs = np.empty((cg * groups, SUB_RUN + reach), dtype=x.dtype)
        for s0 in range(u0, u1, SUB_RUN):
            count = min(SUB_RUN, u1 - s0)
            grid_window(dys, g * kg, kg, count, dy, g * kg, s0, hp, wp)
            grid_window(xs, g * cg, cg, count + reach, x, g * cg, s0 + lo, hp, wp)
            dot_blocks(part, chunk, g, dys, xs, chan, off, np.int64(0), np.int64(0), count, zero)


@njit(cache=True, fastmath=False, error_model="numpy")
def grid_window(dst, r0, chans, count, src, c0, u0, hp, wp):
    """dst[r0 + c, j] = position u0 + j of channel c0 + c's wide grid, for c < chans and j < count: the batch's
    (hp, wp) planes one after the other, src[n, :, h, w] at (h, w) of plane n, 0 elsewhere (the planes' margins,
    before the first plane and past the last; u0 may be negative). One padded row at a time, every
    channel's run of it in turn (the row's arithmetic done once)."""
    n_, c_, h_, w_ = src.shape
    plane, width = hp * wp, dst.shape[1]
    end, last = u0 + count, n_ * plane
    flat, out = src.reshape(-1), dst.reshape(-1)
    u = min(u0, end)
    if u < 0:  # before the first plane: zeros
        _zero_columns(out, r0, chans, width, u - u0, min(end, 0) - u)
        u = min(end, 0)
    if u < min(end, last):
        n, h, row = u // plane, u % plane // wp, u - u % wp  # then kept up row by row: no divisions
        while u < min(end, last):  # one padded row at a time
            stop = min(end, row + wp)
            if h < h_:  # the row's image columns from u on, then its zero columns
                hi = max(u, min(stop, row + w_))
                at = ((n * c_ + c0) * h_ + h) * w_ + u - row
                for c in range(chans):
                    copy_padded(out, (r0 + c) * width - u0 + u, flat, at + c * h_ * w_, hi - u, stop - u)
            else:
                _zero_columns(out, r0, chans, width, u - u0, stop - u)
            u, row, h = stop, row + wp, h + 1
            if h == hp:
                n, h = n + 1, 0
    if u < end:  # past the last plane
        _zero_columns(out, r0, chans, width, u - u0, end - u)


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _zero_columns(out, r0, chans, width, j, count):
    """Columns j ... j + count - 1 of rows r0 ... r0 + chans - 1 of a (rows, width) array (flat) set to 0."""
    for c in range(chans):
        zero_run(out, (r0 + c) * width + j, count)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _tap_gemm(src, wq, out, b, res, chan, boff, lo, reach, hp, wp, tu, kind, slope, pooled, oh, ow):
    """out[n, g*M + i, h, w] = act(b[g*M + i] + sum over the group's q of wq[g, i, q] * grid(g*Kq + chan[q],
    v + lo + boff[q]) (+ res[n, g*M + i, h, w] unless res is None, after the bias), 0 <= boff[q] <= reach,
    at the wide-grid position v = n*hp*wp + h*wp + w, grid being src's wide grid (:func:`grid_window`): one
    GEMM over all the batch's planes, tiles of tu positions, each task copying the window of the grid its tile
    reads. The forward (x's grid, boff = the taps' offsets) and the input gradient (dy's, flipped taps:
    -offsets) are both this correlation. With a non-empty ``pooled`` (tu then a multiple of the plane: whole
    images per tile) the epilogue also writes the 2x2 average pool of the (oh, ow) output, and out only if it
    is not empty (:func:`_grid_pool_epilogue`). No residual is None, not an empty array: numba then compiles a
    version without the residual's epilogue (pooled stays a runtime choice, so that a pooled forward and an
    input gradient share one version)."""
    groups, m, kd = wq.shape
    kq = src.shape[1] // groups
    total = src.shape[0] * hp * wp
    tiles = (total + tu - 1) // tu
    for task in prange(groups * tiles):
        g, v0 = task // tiles, task % tiles * tu
        t = min(tu, total - v0)
        window = np.empty((kq, t + reach), dtype=out.dtype)
        grid_window(window, np.int64(0), kq, window.shape[1], src, g * kq, v0 + lo, hp, wp)
        acc = np.zeros((m, tu), dtype=out.dtype)
        gemm(wq[g], np.arange(m), np.zeros(m, dtype=np.int64), window, chan, boff, acc, m, kd, t)
        if pooled.size > 0:
            _grid_pool_epilogue(out, pooled, acc, t, b, g, v0, hp * wp, wp, oh, ow, kind, slope)
        else:
            _grid_epilogue(out, acc, t, b, res, g, v0, hp, wp, kind, slope)


@njit(cache=True, fastmath=False, error_model="numpy")
def _grid_pool_epilogue(out, pooled, acc, t, b, g, v0, plane, wp, oh, ow, kind, slope):
    """For the whole images of the tile (t positions from v0, a multiple of the plane): act(acc + bias) over the
    tile's whole rows (one long run per channel), then two output rows at a time copied to out when it is not
    empty and averaged in 2x2 windows into pooled (an odd last row or column is in no window). With out empty and
    an activation the pool can apply (activation.pools_activated), each pair of rows is activated and pooled in
    one pass instead, in registers."""
    m, tu = acc.shape
    k_, ph_, pw_ = pooled.shape[1], pooled.shape[2], pooled.shape[3]
    pooled_flat, out_flat = pooled.reshape(-1), out.reshape(-1)
    in_pool = out.size == 0 and pools_activated(kind, acc.itemsize)
    done = acc.reshape(-1) if in_pool else activate_rows(acc, t, b, g * m, kind, slope)
    for img in range(t // plane):
        n = v0 // plane + img
        for i in range(m):
            k = g * m + i
            for h in range(0, oh, 2):
                at, to = i * tu + img * plane + h * wp, ((n * k_ + k) * ph_ + h // 2) * pw_
                if out.size > 0:
                    for r in range(min(2, oh - h)):
                        copy_run(out_flat, ((n * k_ + k) * oh + h + r) * ow, done, at + r * wp, 1, ow)
                if h + 1 < oh and in_pool:
                    act_pool_pairs(pooled_flat, to, done, at, wp, pw_, b[k], kind)
                elif h + 1 < oh:
                    pool_pairs(pooled_flat, to, done, at, wp, pw_)


@njit(cache=True, fastmath=False, error_model="numpy")
def _grid_epilogue(out, acc, t, b, res, g, v0, hp, wp, kind, slope):
    """out at the real positions among the tile's t from wide-grid position v0: act(acc + bias), or with a
    residual act((acc + bias) + res) as add_forward would compute it on the conv's output (a loop of its own:
    the residual's branches slow the plain one)."""
    if res is not None:
        _grid_epilogue_sum(out, acc, t, b, res, g, v0, hp, wp, kind, slope)
        return
    m, tu = acc.shape
    n_, k_, h_, w_ = out.shape
    out_flat = out.reshape(-1)
    whole = costly_remainder(kind, out.itemsize)
    flat = activate_rows(acc, t, b, g * m, kind, slope) if whole else acc.reshape(-1)
    for row in range(v0 // wp, (v0 + t - 1) // wp + 1):
        n, h = row // hp, row % hp
        lo, hi = max(row * wp, v0), min(row * wp + w_, v0 + t)
        if h < h_ and hi > lo:
            for i in range(m):
                dst, at = ((n * k_ + g * m + i) * h_ + h) * w_ + lo - row * wp, i * tu + lo - v0
                if whole:
                    copy_run(out_flat, dst, flat, at, 1, hi - lo)
                else:
                    act_run_inline(out_flat, dst, flat, at, hi - lo, b[g * m + i], kind, slope)


@njit(cache=True, fastmath=False, error_model="numpy")
def _grid_epilogue_sum(out, acc, t, b, res, g, v0, hp, wp, kind, slope):
    """:func:`_grid_epilogue` with the residual res (not None): act((acc + bias) + res)."""
    m, tu = acc.shape
    n_, k_, h_, w_ = out.shape
    out_flat, res_flat, flat = out.reshape(-1), res.reshape(-1), acc.reshape(-1)
    zero = np.zeros(1, dtype=out.dtype)[0]
    for row in range(v0 // wp, (v0 + t - 1) // wp + 1):
        n, h = row // hp, row % hp
        lo, hi = max(row * wp, v0), min(row * wp + w_, v0 + t)
        if h < h_ and hi > lo:
            for i in range(m):
                dst, at = ((n * k_ + g * m + i) * h_ + h) * w_ + lo - row * wp, i * tu + lo - v0
                if kind == RELU:  # one loop for the common case (ResNets)
                    relu_sum_run(out_flat, dst, flat, at, b[g * m + i], res_flat, dst, hi - lo)
                else:
                    add_bias_run(flat, at, b[g * m + i], res_flat, dst, hi - lo)
                    act_run(out_flat, dst, flat, at, hi - lo, zero, kind, slope)


def weight_grad(dy: np.ndarray, x: np.ndarray, w_shape, padding: Pads, dilation: Pair, groups: int) -> np.ndarray:
    """Stride-1 weight gradient by :func:`_tap_weight`: TAP_CHUNKS-at-most partials over contiguous runs of the
    batch's wide grid, summed in a fixed order."""
    n, _, h, w_ = x.shape
    k, cg, r, s = w_shape
    oh, ow = dy.shape[2:]
    hp, wp = grid_shape(x.shape, (oh, ow), padding)
    taps = _grid_taps(cg, r, s, wp, *dilation, padding[0], padding[2])
    total = (n - 1) * hp * wp + (oh - 1) * wp + ow
    part = np.empty((max(1, min(TAP_CHUNKS, total // TAP_MIN_RUN)), groups, k // groups, cg * r * s),
                    dtype=x.dtype)
    _tap_weight(dy, x, part, *taps, hp, wp, total, x.dtype.type(0))
    return part.sum(axis=0).reshape(w_shape)


@functools.lru_cache(maxsize=256)
def _grid_taps(cg: int, r_: int, s_: int, wp: int, dil_h: int, dil_w: int, top: int, left: int,
               flipped: bool = False) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(chan, off - lo, lo, reach): :func:`tap_rows` with the offsets (negated when ``flipped``: the input
    gradient's) taken from the lowest one, lo, and the highest of them, reach (the kernels' window of a tile of
    t positions is t + reach wide, from the tile's start + lo). Cached as tap_rows is."""
    chan, off = tap_rows(cg, r_, s_, wp, dil_h, dil_w, top, left)
    off = -off if flipped else off
    lo = int(off.min())
    return chan, off - lo, lo, int(off.max()) - lo


def _grid_tile(positions: int, outputs: int, groups: int) -> int:
    """Positions per :func:`_tap_gemm` tile: whole vectors, at most ACC_ELEMS accumulator elements, and at
    least MIN_TASKS tasks."""
    tiles = max(cdiv(positions * outputs, ACC_ELEMS), cdiv(MIN_TASKS, groups))
    return min(cdiv(cdiv(positions, tiles), RUN_ALIGN) * RUN_ALIGN, positions)


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, padding: Pads, dilation: Pair,
            groups: int, kind: int, slope: float, residual: np.ndarray | None = None,
            pooled: np.ndarray | None = None, out_hw: Pair | None = None) -> None:
    """y = act(cross_correlate(x, w) + b + residual) at stride 1 by :func:`_tap_gemm` on x's wide grid; with
    ``pooled``, also its 2x2 average pool there, y (empty when not needed) of output size ``out_hw``."""
    k, cg, r, s = w.shape
    oh, ow = y.shape[2:] if out_hw is None else out_hw
    hp, wp = grid_shape(x.shape, (oh, ow), padding)
    taps = _grid_taps(cg, r, s, wp, *dilation, padding[0], padding[2])
    tile = _grid_tile(x.shape[0] * hp * wp, k // groups, groups)
    if pooled is not None:
        tile = max(1, tile // (hp * wp)) * hp * wp  # whole images per tile
    _tap_gemm(x, w.reshape(groups, k // groups, -1), y, b, residual, *taps, hp, wp, tile, kind, slope,
              np.empty((0, 0, 0, 0), x.dtype) if pooled is None else pooled, oh, ow)


def data_grad(dy: np.ndarray, x_shape, w: np.ndarray, padding: Pads, dilation: Pair, groups: int) -> np.ndarray:
    """Stride-1 input gradient by :func:`_tap_gemm`: dy on the forward's grid, the taps flipped."""
    hp, wp = grid_shape(x_shape, dy.shape[2:], padding)
    k, cg, r, s = w.shape
    kg = k // groups
    taps = _grid_taps(kg, r, s, wp, *dilation, padding[0], padding[2], flipped=True)
    wt = np.ascontiguousarray(w.reshape(groups, kg, cg, r * s).transpose(0, 2, 1, 3)).reshape(groups, cg, -1)
    dx = np.empty(x_shape, dtype=dy.dtype)
    _tap_gemm(dy, wt, dx, np.zeros(x_shape[1], dtype=dy.dtype), None, *taps, hp, wp,
              _grid_tile(x_shape[0] * hp * wp, cg, groups), NONE, 0.0, np.empty((0, 0, 0, 0), dy.dtype), *x_shape[2:])
    return dx
