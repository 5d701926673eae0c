"""The ``shifted`` conv path (stride 1), Numba: implicit GEMM with no im2col.

Every pass works on channel-major planes: x (zero-padded) and dy are laid out (C, N*Hp*Wp), every image's
padded plane in a row (dy at its output positions and 0 elsewhere, after a zero margin as long as the largest
tap offset). Tap (r, s) of position v then reads row element v + r*dil_h*Wp + s*dil_w: each GEMM operand row is
a shifted window of a whole row, so every loop is one long run per channel across the batch instead of one per
image, and tiles are long and whole vectors whatever the image size.

* Forward and input gradient: one GEMM over all positions v (:func:`_tap_gemm`), the taps as they are (x read
  at v + offset) or flipped (dy read at v - offset), keeping the real output (input) positions; the forward's
  epilogue adds the bias and applies the activation.
* Weight gradient: dw[k, (c, r, s)] = dot(dy[k, :], x[c, offset(r, s):]), a GEMM with a small M (Kg) and a
  huge reduction, done as long dot products, 4x4 (k, tap) blocks in 16 vector accumulators (``fastmath``
  reassociation, local to that loop: the summation order is fixed by the compiled code). Partials per chunk
  of pixels, in sub-runs that stay in L2, summed in a fixed order: results do not depend on the thread count.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ..activation import NONE, act_run, costly_remainder
from ._loops import (
    MIN_TASKS,
    Pads,
    Pair,
    activate_rows,
    cdiv,
    copy_run,
    dot_blocks,
    gemm,
    padded_plane,
    zero_run,
)

ACC_ELEMS = 1 << 14    # forward and input gradient: accumulator elements per task tile (64 KiB in float32)
TAP_CHUNKS = 8         # weight gradient: at most this many partials (fewer: less overhead) ...
TAP_MIN_RUN = 1024     # ... each over at least this many wide-grid pixels
RUN_ALIGN = 64         # ... and starting at a multiple of this many (vector loops without scalar remainders)
SUB_RUN = 4096         # ... taken this many pixels at a time (a multiple of RUN_ALIGN: the rows stay in L2)


@functools.lru_cache(maxsize=256)
def tap_rows(cg: int, r_: int, s_: int, wp: int, dil_h: int, dil_w: int) -> tuple[np.ndarray, np.ndarray]:
    """(channel, offset) of each GEMM row (c, r, s): the plane and the shift of its window. Cached per geometry
    (a conv calls it every pass; the callers never modify the arrays)."""
    shifts = (np.arange(r_)[:, None] * (dil_h * wp) + np.arange(s_)[None, :] * dil_w).reshape(-1)
    return np.repeat(np.arange(cg, dtype=np.int64), r_ * s_), np.tile(shifts, cg).astype(np.int64)


# ----------------------------------------------------------------------------------------------- layouts
@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _channel_major(x, xt, front, top, left, wp, plane):
    """xt[c, front + n * plane + (top + h) * wp + left + w] = x[n, c, h, w]; every other element of xt is 0."""
    n_, c_ = x.shape[0], x.shape[1]
    back = front + n_ * plane
    for task in prange(c_ * n_):
        c, n = task // n_, task % n_
        if n == 0:  # the first and last images' tasks zero the margins too
            zero_run(xt[c], 0, front)
        if n == n_ - 1:
            zero_run(xt[c], back, xt.shape[1] - back)
        padded_plane(xt[c], front + n * plane, x[n, c], top, left, wp, plane)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _tap_weight(dt, xt, part, chan, off, front, total, zero):
    """Stride 1: part[chunk, g, k, q] = sum over the chunk's share of u < total of dt[g*Kg + k, front + u] *
    xt[g*Cg + chan[q], front + u + off[q]], with dt (K, L) and xt (C, L) dy and the padded input channel-major on the
    wide grid (dy zero off the real outputs). One long run over the chunk's images per 4x4 block of (k, tap)."""
    chunks, groups, kg, rows = part.shape
    for task in prange(chunks * groups):
        chunk, g = task // groups, task % groups
        u0 = chunk * total // chunks // RUN_ALIGN * RUN_ALIGN  # whole vectors: only the last run has a remainder
        u1 = total if chunk == chunks - 1 else (chunk + 1) * total // chunks // RUN_ALIGN * RUN_ALIGN
        for i in range(kg):
            for q in range(rows):
                part[chunk, g, i, q] = 0
        for s0 in range(front + u0, front + u1, SUB_RUN):  # sub-runs: their rows stay in cache for every block
            dot_blocks(part, chunk, g, dt, xt, chan, off, np.int64(0), s0, min(s0 + SUB_RUN, front + u1), zero)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _tap_gemm(src, wq, out, b, chan, boff, wp, hp, top, left, tu, kind, slope):
    """out[n, g*M + i, h, w] = act(b[g*M + i] + sum over the group's q of wq[g, i, q] * src[g*Kq + chan[q],
    boff[q] + v]) at the padded-grid position v = n*hp*wp + (top + h)*wp + left + w: one GEMM over all the
    batch's planes, laid out channel-major in src (C, L), tiles of tu positions. The forward (x's planes,
    boff = the taps' offsets) and the input gradient (dy's, flipped taps) are both this correlation."""
    groups, m, kd = wq.shape
    n_, k_, h_, w_ = out.shape
    kq = src.shape[0] // groups
    total = n_ * hp * wp
    tiles = (total + tu - 1) // tu
    out_flat = out.reshape(-1)
    whole = costly_remainder(kind, out.itemsize)
    for task in prange(groups * tiles):
        g, tile = task // tiles, task % tiles
        v0 = tile * tu
        t = min(tu, total - v0)
        acc = np.zeros((m, tu), dtype=out.dtype)
        gemm(wq[g], np.arange(m), np.zeros(m, dtype=np.int64), src, chan + g * kq, boff + v0, acc, m, kd, t)
        flat = activate_rows(acc, t, b, g * m, kind, slope) if whole else acc.reshape(-1)
        for row in range(v0 // wp, (v0 + t - 1) // wp + 1):  # keep the real positions: bias, activation
            n, h = row // hp, row % hp - top
            lo, hi = max(row * wp + left, v0), min(row * wp + left + w_, v0 + t)
            if 0 <= h < h_ and hi > lo:
                for i in range(m):
                    dst, at = ((n * k_ + g * m + i) * h_ + h) * w_ + lo - row * wp - left, i * tu + lo - v0
                    if whole:
                        copy_run(out_flat, dst, flat, at, 1, hi - lo)
                    else:
                        act_run(out_flat, dst, flat, at, hi - lo, b[g * m + i], kind, slope)


def wide_dy(dy: np.ndarray, x_shape, w_shape, padding: Pads, dilation: Pair):
    """dy channel-major on the padded input's planes (see :func:`_channel_major`), after a zero margin as long
    as the largest tap offset (rounded up to RUN_ALIGN); returns it, the margin, Hp and Wp. Both backward passes
    take this tuple, so a backward computes it once."""
    hp, wp = x_shape[2] + padding[0] + padding[1], x_shape[3] + padding[2] + padding[3]
    reach = dilation[0] * (w_shape[2] - 1) * wp + dilation[1] * (w_shape[3] - 1)
    front = cdiv(reach, RUN_ALIGN) * RUN_ALIGN
    dt = np.empty((dy.shape[1], front + dy.shape[0] * hp * wp), dtype=dy.dtype)
    _channel_major(dy, dt, front, 0, 0, wp, hp * wp)
    return dt, front, hp, wp


def weight_grad(wide, x: np.ndarray, w_shape, padding: Pads, dilation: Pair, groups: int, oh: int,
                ow: int) -> np.ndarray:
    """Stride-1 weight gradient by :func:`_tap_weight` from dy as :func:`wide_dy` lays it out (``wide``) and x
    likewise: TAP_CHUNKS-at-most partials over contiguous runs of the batch's pixels, summed in a fixed order."""
    dt, front, hp, wp = wide
    n, c = x.shape[:2]
    k, cg, r, s = w_shape
    chan, off = tap_rows(cg, r, s, wp, *dilation)
    xt = np.empty((c, dt.shape[1]), dtype=x.dtype)
    _channel_major(x, xt, front, padding[0], padding[2], wp, hp * wp)
    total = (n - 1) * hp * wp + (oh - 1) * wp + ow
    part = np.empty((max(1, min(TAP_CHUNKS, total // TAP_MIN_RUN)), groups, k // groups, cg * r * s),
                    dtype=x.dtype)
    _tap_weight(dt, xt, part, chan, off, front, total, x.dtype.type(0))
    return part.sum(axis=0).reshape(w_shape)


def _grid_tile(positions: int, outputs: int, groups: int) -> int:
    """Positions per :func:`_tap_gemm` tile: whole vectors, at most ACC_ELEMS accumulator elements, and at
    least MIN_TASKS tasks."""
    tiles = max(cdiv(positions * outputs, ACC_ELEMS), cdiv(MIN_TASKS, groups))
    return min(cdiv(cdiv(positions, tiles), RUN_ALIGN) * RUN_ALIGN, positions)


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, padding: Pads, dilation: Pair,
            groups: int, kind: int, slope: float) -> None:
    """y = act(cross_correlate(x, w) + b) at stride 1 by :func:`_tap_gemm` on x's padded planes laid out
    channel-major, every image's in a row, so the tiles are long and whole vectors whatever the image size."""
    n, c, h, w_ = x.shape
    k, cg, r, s = w.shape
    hp, wp = h + padding[0] + padding[1], w_ + padding[2] + padding[3]
    chan, off = tap_rows(cg, r, s, wp, *dilation)
    xt = np.empty((c, n * hp * wp + off[-1]), dtype=x.dtype)
    _channel_major(x, xt, 0, padding[0], padding[2], wp, hp * wp)
    _tap_gemm(xt, w.reshape(groups, k // groups, -1), y, b, chan, off, wp, hp, 0, 0,
              _grid_tile(n * hp * wp, k // groups, groups), kind, slope)


def data_grad(wide, x_shape, w: np.ndarray, padding: Pads, dilation: Pair, groups: int) -> np.ndarray:
    """Stride-1 input gradient by :func:`_tap_gemm` from dy as :func:`wide_dy` lays it out (``wide``)."""
    dt, front, hp, wp = wide
    k, cg, r, s = w.shape
    kg = k // groups
    chan, off = tap_rows(kg, r, s, wp, *dilation)
    wt = np.ascontiguousarray(w.reshape(groups, kg, cg, r * s).transpose(0, 2, 1, 3)).reshape(groups, cg, -1)
    dx = np.empty(x_shape, dtype=dt.dtype)
    _tap_gemm(dt, wt, dx, np.zeros(x_shape[1], dtype=dt.dtype), chan, front - off, wp, hp, padding[0],
              padding[2], _grid_tile(x_shape[0] * hp * wp, cg, groups), NONE, 0.0)
    return dx
