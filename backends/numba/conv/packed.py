"""The ``packed`` conv path, Numba: im2col tiles plus the GEMM, for strided convs with few weights per output
or outputs much narrower than the padded input; col2im for the input gradient.

Tiles of output pixels, flat over (n, oh, ow), are packed as columns (c, r, s) that stay in L2 (TILE_ELEMS)
and multiplied by the group's weight rows. Tasks: forward over (pixel tile, group); input gradient over (block
of whole images, group), so col2im scatters within its own images (race-free); weight gradient over (batch
chunk, group), one partial per chunk, summed afterwards. When the one output pixel sees the whole unpadded
input (LeNet-5's C5), x is its own im2col matrix and each pass is a plain matmul (:func:`dense_geometry`), done
by NumPy's BLAS on one thread as the Linear layers' (see conv/plan.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..activation import NONE, act_run, activate, costly_remainder
from ._loops import (
    MIN_TASKS,
    MIN_TILE,
    Pads,
    Pair,
    activate_rows,
    add_run,
    cdiv,
    copy_run,
    gemm,
    geometry,
    valid_range,
    zero_run,
)

TILE_ELEMS = 1 << 15   # im2col elements per task tile (128 KiB in float32: stays in L2)
MAX_TILE = 1024        # pixels per tile at most: short enough to stay in cache
WEIGHT_CHUNKS = 32     # at most this many partial weight gradients


# ----------------------------------------------------------------------------------------------- packing
@njit(cache=True, fastmath=False, error_model="numpy")
def tile_cols(x, cols, j0, t, c0, cg, r_, s_, oh_, ow_, sh, sw, pt, pl, dil_h, dil_w, scatter):
    """Columns of output pixels j0 .. j0+t-1 (flat over (n, oh, ow)) for input channels c0 .. c0+cg-1:
    ``cols[(c, r, s), j - j0] = xpad[n, c0 + c, oh*sh + r*dil_h, ow*sw + s*dil_w]`` (padding reads 0).
    With ``scatter`` the transpose instead: x[...] += cols[...] (col2im; padding cells are dropped)."""
    h_, w_ = x.shape[2], x.shape[3]
    p_ = oh_ * ow_
    los, his = np.empty(s_, dtype=np.int64), np.empty(s_, dtype=np.int64)
    for s in range(s_):
        los[s], his[s] = valid_range(s * dil_w - pl, sw, w_, 0, ow_)
    jj = 0
    while jj < t:  # one segment of an output row at a time
        n = (j0 + jj) // p_
        p = j0 + jj - n * p_
        oh = p // ow_
        ow0 = p - oh * ow_
        ow1 = min(ow_, ow0 + t - jj)
        base = jj - ow0
        for c in range(cg):
            for r in range(r_):
                ih = oh * sh - pt + r * dil_h
                q0 = (c * r_ + r) * s_
                if ih < 0 or ih >= h_:
                    if not scatter:
                        for q in range(q0, q0 + s_):
                            zero_run(cols[q], jj, ow1 - ow0)
                    continue
                row = x[n, c0 + c, ih]
                for s in range(s_):
                    col = cols[q0 + s]
                    lo = min(max(los[s], ow0), ow1)
                    hi = max(lo, min(his[s], ow1))
                    start = lo * sw + s * dil_w - pl
                    if scatter:
                        add_run(row, start, sw, col, base + lo, hi - lo)
                    else:
                        zero_run(col, jj, lo - ow0)
                        copy_run(col, base + lo, row, start, sw, hi - lo)
                        zero_run(col, base + hi, ow1 - hi)
        jj += ow1 - ow0


@njit(cache=True, fastmath=False, error_model="numpy")
def tile_rows(y3, buf, j0, t, k0, m, transpose):
    """The (m, t) block of y3 viewed as (K, N*P) at rows k0.., columns j0..: buf[i, j - j0] = y3[n, k0 + i, p]
    for the pixels j = (n, p); buf[j - j0, i] instead when ``transpose``."""
    p_ = y3.shape[2]
    jj = 0
    while jj < t:
        n = (j0 + jj) // p_
        p = j0 + jj - n * p_
        cnt = min(p_ - p, t - jj)
        for i in range(m):
            if transpose:
                for q in range(cnt):
                    buf[jj + q, i] = y3[n, k0 + i, p + q]
            else:
                copy_run(buf[i], jj, y3[n, k0 + i], p, 1, cnt)
        jj += cnt


# ----------------------------------------------------------------------------------------------- kernels
@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _packed_forward(x, w3, b, y3, tp, r_, s_, oh_, ow_, sh, sw, pt, pl, dil_h, dil_w, kind, slope):
    """y3[n, k, p] = act(sum over the group's (c, r, s) of w3[g, k, (c, r, s)] * cols + b[k])."""
    groups, kg, rows = w3.shape
    cg, k_, p_ = x.shape[1] // groups, y3.shape[1], y3.shape[2]
    total = y3.shape[0] * p_
    y_flat = y3.reshape(-1)
    tiles = (total + tp - 1) // tp
    for task in prange(tiles * groups):
        tile, g = task // groups, task % groups
        j0 = tile * tp
        t = min(tp, total - j0)
        cols = np.empty((rows, tp), dtype=y3.dtype)
        acc = np.zeros((kg, tp), dtype=y3.dtype)
        tile_cols(x, cols, j0, t, g * cg, cg, r_, s_, oh_, ow_, sh, sw, pt, pl, dil_h, dil_w, False)
        gemm(w3[g], np.arange(kg), np.zeros(kg, dtype=np.int64), cols, np.arange(rows),
             np.zeros(rows, dtype=np.int64), acc, kg, rows, t)
        whole = costly_remainder(kind, y3.itemsize)
        flat = activate_rows(acc, t, b, g * kg, kind, slope) if whole else acc.reshape(-1)
        jj = 0
        while jj < t:  # epilogue: bias + activation, back to NCHW
            n = (j0 + jj) // p_
            p = j0 + jj - n * p_
            cnt = min(p_ - p, t - jj)
            for k in range(kg):
                kk = g * kg + k
                if whole:
                    copy_run(y_flat, (n * k_ + kk) * p_ + p, flat, k * tp + jj, 1, cnt)
                else:
                    act_run(y_flat, (n * k_ + kk) * p_ + p, flat, k * tp + jj, cnt, b[kk], kind, slope)
            jj += cnt


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _packed_backward_data(dy3, wt3, dx, ib, tp, r_, s_, oh_, ow_, sh, sw, pt, pl, dil_h, dil_w):
    """dx (zeroed) += col2im(w^T @ dy), one task per (block of ib images, group)."""
    groups, rows, kg = wt3.shape
    n_, cg, p_ = dx.shape[0], dx.shape[1] // groups, dy3.shape[2]
    blocks = (n_ + ib - 1) // ib
    for task in prange(blocks * groups):
        blk, g = task // groups, task % groups
        j_end = min(n_, (blk + 1) * ib) * p_
        dyt = np.empty((kg, tp), dtype=dx.dtype)
        cols = np.empty((rows, tp), dtype=dx.dtype)
        for j0 in range(blk * ib * p_, j_end, tp):
            t = min(tp, j_end - j0)
            tile_rows(dy3, dyt, j0, t, g * kg, kg, False)
            for q in range(rows):
                for jj in range(t):
                    cols[q, jj] = 0
            gemm(wt3[g], np.arange(rows), np.zeros(rows, dtype=np.int64), dyt, np.arange(kg),
                 np.zeros(kg, dtype=np.int64), cols, rows, kg, t)
            tile_cols(dx, cols, j0, t, g * cg, cg, r_, s_, oh_, ow_, sh, sw, pt, pl, dil_h, dil_w, True)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _packed_weight(dy3, x, part, tp, r_, s_, oh_, ow_, sh, sw, pt, pl, dil_h, dil_w):
    """part[chunk, g, (c, r, s), k] (zeroed) += cols @ dy^T over the chunk's share of the N*OH*OW pixels."""
    chunks, groups, rows, kg = part.shape
    cg = x.shape[1] // groups
    total = dy3.shape[0] * dy3.shape[2]
    for task in prange(chunks * groups):
        chunk, g = task // groups, task % groups
        j_end = (chunk + 1) * total // chunks
        cols = np.empty((rows, tp), dtype=x.dtype)
        dyt = np.empty((tp, kg), dtype=x.dtype)
        for j0 in range(chunk * total // chunks, j_end, tp):
            t = min(tp, j_end - j0)
            tile_cols(x, cols, j0, t, g * cg, cg, r_, s_, oh_, ow_, sh, sw, pt, pl, dil_h, dil_w, False)
            tile_rows(dy3, dyt, j0, t, g * kg, kg, True)
            gemm(cols, np.arange(rows), np.zeros(rows, dtype=np.int64), dyt, np.arange(t),
                 np.zeros(t, dtype=np.int64), part[chunk, g], rows, t, kg)


# ----------------------------------------------------------------------------------------------- the passes
def _tile(rows: int, total: int, tasks_outside: int = 1) -> int:
    """Pixels per tile: cache-sized, at least MIN_TILE, and short enough for MIN_TASKS tasks in all."""
    tp = max(MIN_TILE, min(TILE_ELEMS // rows, MAX_TILE))
    return max(1, min(tp, max(MIN_TILE, cdiv(total * tasks_outside, MIN_TASKS)), total))


def dense_geometry(x_shape, w_shape, padding: Pads, groups: int, outputs: int) -> bool:
    """One output pixel that sees the whole unpadded input: x is its own im2col matrix (a plain matmul)."""
    return groups == 1 and outputs == 1 and padding == (0, 0, 0, 0) and tuple(x_shape[2:]) == tuple(w_shape[2:])


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, stride: Pair, padding: Pads,
            dilation: Pair, groups: int, kind: int, slope: float) -> None:
    """y (N, K, OH, OW) = act(cross_correlate(x, w) + b), a plain matmul for :func:`dense_geometry`."""
    n, k, r, s = x.shape[0], w.shape[0], w.shape[2], w.shape[3]
    oh, ow, geo = geometry(x.shape, w.shape, stride, padding, dilation)
    if dense_geometry(x.shape, w.shape, padding, groups, oh * ow):
        y2 = y.reshape(n, k)
        np.matmul(x.reshape(n, -1), w.reshape(k, -1).T, out=y2)
        y2 += b
        if kind != NONE:
            activate(y2.reshape(-1), kind, slope)
        return
    w3 = w.reshape(groups, k // groups, -1)
    tp = _tile(w3.shape[2], n * oh * ow, groups)
    _packed_forward(x, w3, b, y.reshape(n, k, oh * ow), tp, r, s, oh, ow, *geo, kind, slope)


def dense_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, need_dx: bool, need_dw: bool):
    """(dx, dw) for :func:`dense_geometry`, each a plain matmul (None when not needed)."""
    n, k = dy.shape[:2]
    x2, dy2, w2 = x.reshape(n, -1), dy.reshape(n, k), w.reshape(k, -1)
    dx = (dy2 @ w2).reshape(x.shape) if need_dx else None
    dw = (dy2.T @ x2).reshape(w.shape) if need_dw else None
    return dx, dw


def weight_grad(dy: np.ndarray, x: np.ndarray, w_shape, stride: Pair, padding: Pads, dilation: Pair,
                groups: int) -> np.ndarray:
    """dw (K, Cg, R, S): packed tiles times dy, in at most WEIGHT_CHUNKS partials summed in order."""
    n, k, oh, ow = dy.shape
    r, s = w_shape[2:]
    geo = geometry(x.shape, w_shape, stride, padding, dilation)[2]
    rows = w_shape[1] * r * s
    tp = _tile(rows, n * oh * ow)
    part = np.zeros((min(WEIGHT_CHUNKS, cdiv(n * oh * ow, tp)), groups, rows, k // groups), dtype=x.dtype)
    _packed_weight(dy.reshape(n, k, oh * ow), x, part, tp, r, s, oh, ow, *geo)
    return np.ascontiguousarray(part.sum(axis=0).transpose(0, 2, 1)).reshape(w_shape)


def data_grad(dy: np.ndarray, x_shape, w: np.ndarray, stride: Pair, padding: Pads, dilation: Pair,
              groups: int) -> np.ndarray:
    """dx: the weight rows times dy tiles, scattered back by col2im (tasks of whole images: race-free)."""
    n, k, oh, ow = dy.shape
    kg, rows, (r, s) = k // groups, w[0].size, w.shape[2:]
    dx = np.zeros(x_shape, dtype=dy.dtype)
    tp = _tile(rows, n * oh * ow)
    ib = min(n, max(cdiv(MIN_TILE, oh * ow), cdiv(n, MIN_TASKS)))  # whole images per task: race-free
    wt3 = np.ascontiguousarray(w.reshape(groups, kg, rows).transpose(0, 2, 1))
    _packed_backward_data(dy.reshape(n, k, oh * ow), wt3, dx, ib, min(ib * oh * ow, tp), r, s, oh, ow,
                          *geometry(x_shape, w.shape, stride, padding, dilation)[2])
    return dx
