"""The ``direct`` conv path, Numba: plain loops per output or input plane, for convs with few outputs per group
(depthwise, channel multipliers), where a GEMM's 4x4 register blocks would be mostly empty and packing would
cost as much as the multiply-adds. Its stride-1 weight gradient runs on the wide grid (one long product run per
image and tap, not one per output row). The forward and the weight gradient skip padding taps, so a non-finite
weight is sent elsewhere by the plan (see plan.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..activation import act_run
from ._loops import MIN_TASKS, Pads, Pair, axpy_run, cdiv, geometry, pad_planes, padded, valid_range

WIDE_WEIGHT_TASKS = 8  # stride-1 weight gradient: tasks wanted (each ends in serial sums of span terms)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _forward(x, w, b, y, sh, sw, pt, pl, dil_h, dil_w, kind, slope):
    """One task per (n, k) output plane: sum of the group's taps, then bias + activation."""
    n_, c_, h_, w_ = x.shape
    k_, cg, r_, s_ = w.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    kg = k_ // (c_ // cg)
    y_flat = y.reshape(-1)
    for task in prange(n_ * k_):
        n, k = task // k_, task % k_
        c0 = (k // kg) * cg
        out = y[n, k]
        out[:, :] = 0
        for c in range(cg):
            for r in range(r_):
                for s in range(s_):
                    wv, off = w[k, c, r, s], s * dil_w - pl
                    lo, hi = valid_range(off, sw, w_, 0, ow_)
                    for oh in range(oh_):
                        ih = oh * sh - pt + r * dil_h
                        if 0 <= ih < h_:
                            axpy_run(out[oh], lo, 1, x[n, c0 + c, ih], lo * sw + off, sw, hi - lo, wv)
        act_run(y_flat, task * oh_ * ow_, y_flat, task * oh_ * ow_, oh_ * ow_, b[k], kind, slope)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _backward_data(dy, w, dx, sh, sw, pt, pl, dil_h, dil_w):
    """One task per (n, c) input plane, gathering from the group's output planes."""
    n_, c_, h_, w_ = dx.shape
    k_, cg, r_, s_ = w.shape
    oh_, ow_ = dy.shape[2], dy.shape[3]
    kg = k_ // (c_ // cg)
    for task in prange(n_ * c_):
        n, ci = task // c_, task % c_
        g, c = ci // cg, ci % cg
        plane = dx[n, ci]
        plane[:, :] = 0
        for k in range(g * kg, (g + 1) * kg):
            for r in range(r_):
                for s in range(s_):
                    wv, off = w[k, c, r, s], s * dil_w - pl
                    lo, hi = valid_range(off, sw, w_, 0, ow_)
                    for oh in range(oh_):
                        ih = oh * sh - pt + r * dil_h
                        if 0 <= ih < h_:
                            axpy_run(plane[ih], lo * sw + off, sw, dy[n, k, oh], lo, 1, hi - lo, wv)


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _product_run(lanes, g, row, lo, hi, start, step):
    """lanes[o] += g[o] * row[start + (o - lo) * step] for lo <= o < hi (unsigned indices: vectorises)."""
    if hi <= lo:
        return
    d, o, st = np.uint64(lo), np.uint64(start), np.uint64(step)
    if step == 1:
        for u in range(np.uint64(hi - lo)):
            lanes[d + u] += g[d + u] * row[o + u]
    else:
        for u in range(np.uint64(hi - lo)):
            lanes[d + u] += g[d + u] * row[o + u * st]


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _backward_weight(dy, x, part, sh, sw, pt, pl, dil_h, dil_w):
    """part[chunk, k, c, r, s]: the weight gradient from the chunk's share of the batch; one task per
    (chunk, k, c), one running sum per output column (a vector, so no reassociation is needed)."""
    n_, c_, h_, w_ = x.shape
    chunks, k_, cg, r_, s_ = part.shape
    oh_, ow_ = dy.shape[2], dy.shape[3]
    kg = k_ // (c_ // cg)
    for task in prange(chunks * k_ * cg):
        chunk, k, c = task // (k_ * cg), (task // cg) % k_, task % cg
        ci = (k // kg) * cg + c
        lanes = np.empty(ow_, dtype=part.dtype)
        for r in range(r_):
            for s in range(s_):
                off = s * dil_w - pl
                lo, hi = valid_range(off, sw, w_, 0, ow_)
                for ow in range(ow_):
                    lanes[ow] = 0
                for n in range(chunk * n_ // chunks, (chunk + 1) * n_ // chunks):
                    for oh in range(oh_):
                        ih = oh * sh - pt + r * dil_h
                        if 0 <= ih < h_:
                            _product_run(lanes, dy[n, k, oh], x[n, ci, ih], lo, hi, lo * sw + off, sw)
                part[chunk, k, c, r, s] = lanes.sum()


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _wide_weight(xp, dyw, part, wp, span, r_, s_, dil_h, dil_w):
    """Stride 1: part[chunk, k, c, r, s] = sum over the chunk's images and wide pixels u < span of
    dyw[n, k, u] * xp[n, ci, u + r*dil_h*wp + s*dil_w], one long vectorised run per (image, tap) instead of one
    per output row (dyw: dy on the wide grid of the padded planes xp, zero in the extra columns)."""
    n_, c_ = xp.shape[0], xp.shape[1]
    chunks, k_, cg = part.shape[0], part.shape[1], part.shape[2]
    kg = k_ // (c_ // cg)
    for task in prange(chunks * k_ * cg):
        chunk, k, c = task // (k_ * cg), (task // cg) % k_, task % cg
        ci = (k // kg) * cg + c
        lanes = np.empty(span, dtype=part.dtype)
        for r in range(r_):
            for s in range(s_):
                for u in range(span):
                    lanes[u] = 0
                for n in range(chunk * n_ // chunks, (chunk + 1) * n_ // chunks):
                    _product_run(lanes, dyw[n, k], xp[n, ci], 0, span, r * dil_h * wp + s * dil_w, 1)
                s0 = s1 = s2 = s3 = 0.0  # four interleaved chains in a fixed order: the adds pipeline
                for u in range(0, span - 3, 4):
                    s0, s1, s2, s3 = s0 + lanes[u], s1 + lanes[u + 1], s2 + lanes[u + 2], s3 + lanes[u + 3]
                for u in range(span - span % 4, span):
                    s0 += lanes[u]
                part[chunk, k, c, r, s] = (s0 + s1) + (s2 + s3)


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, stride: Pair, padding: Pads,
            dilation: Pair, groups: int, kind: int, slope: float) -> None:
    """y (N, K, OH, OW) = act(cross_correlate(x, w) + b), one task per output plane (groups follow from the
    shapes)."""
    _forward(x, w, b, y, *geometry(x.shape, w.shape, stride, padding, dilation)[2], kind, slope)


def data_grad(dy: np.ndarray, x_shape, w: np.ndarray, stride: Pair, padding: Pads, dilation: Pair,
              groups: int) -> np.ndarray:
    """dx, one task per input plane."""
    dx = np.empty(x_shape, dtype=dy.dtype)
    _backward_data(dy, w, dx, *geometry(x_shape, w.shape, stride, padding, dilation)[2])
    return dx


def weight_grad(dy: np.ndarray, x: np.ndarray, w_shape, stride: Pair, padding: Pads, dilation: Pair,
                groups: int) -> np.ndarray:
    """dw (K, Cg, R, S) from partials over chunks of the batch, summed in order; stride 1 on the wide grid."""
    n, k, oh, ow = dy.shape
    r, s = w_shape[2:]
    if stride == (1, 1):  # each chunk's partial ends in a serial sum per weight: fewer, longer tasks
        part = np.empty((min(n, cdiv(WIDE_WEIGHT_TASKS, k * w_shape[1])),) + tuple(w_shape), dtype=x.dtype)
        xp, wp = padded(x, *padding)
        dyw = np.empty((n, k, oh * wp), dtype=x.dtype)
        pad_planes(dy, dyw, 0, 0, wp)
        _wide_weight(xp, dyw, part, wp, (oh - 1) * wp + ow, r, s, *dilation)
    else:
        part = np.empty((min(n, cdiv(MIN_TASKS, k * w_shape[1])),) + tuple(w_shape), dtype=x.dtype)
        _backward_weight(dy, x, part, *geometry(x.shape, w_shape, stride, padding, dilation)[2])
    return part.sum(axis=0)
