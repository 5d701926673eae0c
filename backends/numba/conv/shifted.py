"""The ``shifted`` conv path (stride 1), Numba: implicit GEMM with no im2col.

Forward: on the zero-padded input planes, tap (r, s) of output pixel u = oh * Wp + ow reads plane element
u + r*dil_h*Wp + s*dil_w, so each GEMM operand row is a shifted window of a plane that stays in cache; outputs
are computed on the padded width ("wide" grid) and the extra columns dropped.

Backward, on channel-major planes: x (zero-padded) and dy are laid out (C, N*Hp*Wp), every image's padded plane
in a row, dy at its output positions and 0 elsewhere, after a zero margin as long as the largest tap offset.
Tap (r, s) is then one shift of a whole row, so every loop is one long run per channel across the batch instead
of one per image: tiles are long and aligned whatever the image size.

* Weight gradient: dw[k, (c, r, s)] = dot(dy[k, :], x[c, offset(r, s):]), a GEMM with a small M (Kg) and a
  huge reduction, done as long dot products, 4x4 (k, tap) blocks in 16 vector accumulators (``fastmath``
  reassociation, local to that loop: the summation order is fixed by the compiled code). Partials per chunk
  of pixels, in sub-runs that stay in L2, summed in a fixed order: results do not depend on the thread count.
* Input gradient: one GEMM over all positions v with the flipped taps (dy read at v - offset(r, s)), keeping
  the real input positions.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..activation import SIGMOID, act_run
from ._loops import (
    MIN_TASKS,
    MIN_TILE,
    Pads,
    Pair,
    activate_rows,
    cdiv,
    copy_run,
    dots4x4,
    gemm,
    padded,
    padded_plane,
    zero_run,
)

ACC_ELEMS = 1 << 14    # forward and input gradient: accumulator elements per task tile (64 KiB in float32)
TAP_CHUNKS = 8         # weight gradient: at most this many partials (fewer: less overhead) ...
TAP_MIN_RUN = 1024     # ... each over at least this many wide-grid pixels
RUN_ALIGN = 64         # ... and starting at a multiple of this many (vector loops without scalar remainders)
SUB_RUN = 4096         # ... taken this many pixels at a time (a multiple of RUN_ALIGN: the rows stay in L2)


@njit(cache=True, fastmath=False, error_model="numpy")
def tap_rows(cg, r_, s_, wp, dil_h, dil_w):
    """(channel, offset) of each GEMM row (c, r, s): the plane and the shift of its window."""
    rows = cg * r_ * s_
    chan, off = np.empty(rows, dtype=np.int64), np.empty(rows, dtype=np.int64)
    for c in range(cg):
        for r in range(r_):
            for s in range(s_):
                q = (c * r_ + r) * s_ + s
                chan[q], off[q] = c, r * dil_h * wp + s * dil_w
    return chan, off


# ----------------------------------------------------------------------------------------------- forward
@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _shifted_conv(xp, wq, b, out, wp, r_, s_, dil_h, dil_w, tu, kind, slope):
    """out[n, k, y, x] = act(b[k] + sum over the group's (c, r, s) of wq[g, k, (c, r, s)] *
    xp[n, g*Cg + c, (y + r*dil_h) * wp + x + s*dil_w]): a stride-1 correlation of the padded
    planes xp (N, C, Hp*wp), on the wide grid u = row * wp + col, tiles of tu pixels."""
    groups, kg, rows = wq.shape
    n_, cg = xp.shape[0], xp.shape[1] // groups
    k_, oh_, ow_ = out.shape[1], out.shape[2], out.shape[3]
    out_flat = out.reshape(-1)
    u_end = (oh_ - 1) * wp + ow_
    tiles = (u_end + tu - 1) // tu
    chan, off = tap_rows(cg, r_, s_, wp, dil_h, dil_w)
    for task in prange(n_ * groups * tiles):
        n, g, tile = task // (groups * tiles), (task // tiles) % groups, task % tiles
        ua = tile * tu
        t = min(tu, u_end - ua)
        acc = np.zeros((kg, tu), dtype=out.dtype)
        arow, aoff = np.arange(kg), np.zeros(kg, dtype=np.int64)
        gemm(wq[g], arow, aoff, xp[n], chan + g * cg, off + ua, acc, kg, rows, t)
        whole = kind >= SIGMOID
        flat = activate_rows(acc, t, b, g * kg, kind, slope) if whole else acc.reshape(-1)
        for row in range(ua // wp, (ua + t - 1) // wp + 1):  # epilogue: keep the real columns, bias, act
            lo, hi = max(row * wp, ua), min(row * wp + ow_, ua + t)
            for k in range(kg):
                kk = g * kg + k
                dst, src = ((n * k_ + kk) * oh_ + row) * ow_ + lo - row * wp, k * tu + lo - ua
                if whole:
                    copy_run(out_flat, dst, flat, src, 1, hi - lo)
                else:
                    act_run(out_flat, dst, flat, src, hi - lo, b[kk], kind, slope)


def _forward_tile(outputs: int, n: int, groups: int, oh: int, ow: int, wp: int) -> int:
    """Wide-grid pixels per forward tile: the operand rows are windows of planes already in cache, so the
    tile is bounded by the accumulator (ACC_ELEMS), then split evenly, into enough tiles for MIN_TASKS tasks."""
    total = (oh - 1) * wp + ow
    tiles = max(cdiv(total, max(MIN_TILE, ACC_ELEMS // outputs)), min(cdiv(MIN_TASKS, n * groups),
                                                                        cdiv(total, MIN_TILE)))
    return cdiv(total, tiles)


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, padding: Pads, dilation: Pair,
            groups: int, kind: int, slope: float) -> None:
    """y (N, K, OH, OW) = act(cross_correlate(x, w) + b) at stride 1; ``kind`` is the activation's code."""
    n, k, r, s = x.shape[0], w.shape[0], w.shape[2], w.shape[3]
    oh, ow = y.shape[2], y.shape[3]
    xp, wp = padded(x, *padding)
    _shifted_conv(xp, w.reshape(groups, k // groups, -1), b, y, wp, r, s, *dilation,
                  _forward_tile(k // groups, n, groups, oh, ow, wp), kind, slope)


# ----------------------------------------------------------------------------------------------- backward
@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _channel_major(x, xt, front, top, left, wp, plane):
    """xt[c, front + n * plane + (top + h) * wp + left + w] = x[n, c, h, w]; every other element of xt is 0."""
    n_, c_ = x.shape[0], x.shape[1]
    for task in prange(c_ * n_):
        c, n = task // n_, task % n_
        if n == 0:  # the first image's task zeroes the front margin too
            zero_run(xt[c], 0, front)
        padded_plane(xt[c], front + n * plane, x[n, c], top, left, wp, plane)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _tap_weight(dt, xt, part, chan, off, front, total, zero):
    """Stride 1: part[chunk, g, k, q] = sum over the chunk's share of u < total of dt[g*Kg + k, front + u] *
    xt[g*Cg + chan[q], front + u + off[q]], with dt (K, L) and xt (C, L) dy and the padded input channel-major on the
    wide grid (dy zero off the real outputs). One long run over the chunk's images per 4x4 block of (k, tap)."""
    chunks, groups, kg, rows = part.shape
    cg = xt.shape[0] // groups
    for task in prange(chunks * groups):
        chunk, g = task // groups, task % groups
        u0 = chunk * total // chunks // RUN_ALIGN * RUN_ALIGN  # whole vectors: only the last run has a remainder
        u1 = total if chunk == chunks - 1 else (chunk + 1) * total // chunks // RUN_ALIGN * RUN_ALIGN
        last = g * kg + kg - 1  # a short block repeats its last row
        for i in range(kg):
            for q in range(rows):
                part[chunk, g, i, q] = 0
        for s0 in range(front + u0, front + u1, SUB_RUN):  # sub-runs: their rows stay in cache for every block
            s1 = min(s0 + SUB_RUN, front + u1)
            for kb in range(0, kg, 4):
                k0, k1, k2, k3 = g * kg + kb, min(g * kg + kb + 1, last), min(g * kg + kb + 2, last), \
                    min(g * kg + kb + 3, last)
                for qb in range(0, rows, 4):
                    q0, q1, q2, q3 = qb, min(qb + 1, rows - 1), min(qb + 2, rows - 1), min(qb + 3, rows - 1)
                    sums = dots4x4(dt, k0, k1, k2, k3, xt, g * cg + chan[q0], g * cg + chan[q1], g * cg + chan[q2],
                                   g * cg + chan[q3], off[q0], off[q1], off[q2], off[q3], s0, s1, zero)
                    for i in range(min(4, kg - kb)):
                        for j in range(min(4, rows - qb)):
                            part[chunk, g, kb + i, qb + j] += sums[i * 4 + j]


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _tap_data(dt, wt, dx, chan, off, front, wp, hp, top, left, tu):
    """Stride 1: dx[n, g*Cg + c, h, w] = sum over the group's (k, r, s) of wt[g, c, (k, r, s)] *
    dt[g*Kg + k, front + v - offset(r, s)] at the padded-grid position v = n*plane + (top + h)*wp + left + w:
    the transposed correlation as one GEMM over all the batch's planes, tiles of tu positions."""
    groups, cg, kd = wt.shape
    n_, c_, h_, w_ = dx.shape
    kg = dt.shape[0] // groups
    total = n_ * hp * wp
    tiles = (total + tu - 1) // tu
    dx_flat = dx.reshape(-1)
    boff = front - off
    for task in prange(groups * tiles):
        g, tile = task // tiles, task % tiles
        v0 = tile * tu
        t = min(tu, total - v0)
        acc = np.zeros((cg, tu), dtype=dx.dtype)
        gemm(wt[g], np.arange(cg), np.zeros(cg, dtype=np.int64), dt, chan + g * kg, boff + v0, acc, cg, kd, t)
        flat = acc.reshape(-1)
        for row in range(v0 // wp, (v0 + t - 1) // wp + 1):  # keep the real input positions
            n, h = row // hp, row % hp - top
            lo, hi = max(row * wp + left, v0), min(row * wp + left + w_, v0 + t)
            if 0 <= h < h_ and hi > lo:
                for c in range(cg):
                    copy_run(dx_flat, ((n * c_ + g * cg + c) * h_ + h) * w_ + lo - row * wp - left, flat,
                             c * tu + lo - v0, 1, hi - lo)


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


def data_grad(wide, x_shape, w: np.ndarray, padding: Pads, dilation: Pair, groups: int) -> np.ndarray:
    """Stride-1 input gradient by :func:`_tap_data` from dy as :func:`wide_dy` lays it out (``wide``): tiles of
    whole vectors, at most ACC_ELEMS accumulator elements each, and at least MIN_TASKS tasks."""
    dt, front, hp, wp = wide
    k, cg, r, s = w.shape
    kg = k // groups
    chan, off = tap_rows(kg, r, s, wp, *dilation)
    wt = np.ascontiguousarray(w.reshape(groups, kg, cg, r * s).transpose(0, 2, 1, 3)).reshape(groups, cg, -1)
    total = x_shape[0] * hp * wp
    tiles = max(cdiv(total * cg, ACC_ELEMS), cdiv(MIN_TASKS, groups))
    tu = min(cdiv(cdiv(total, tiles), RUN_ALIGN) * RUN_ALIGN, total)
    dx = np.empty(x_shape, dtype=dt.dtype)
    _tap_data(dt, wt, dx, chan, off, front, wp, hp, padding[0], padding[2], tu)
    return dx
