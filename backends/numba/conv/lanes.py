"""The ``lanes`` conv path (stride 1), Numba: the batch is the vector axis.

x is laid out (C, Hp, Wp, N), zero-padded, so along an output row the GEMM columns (w, n) are one contiguous
run of OW*N elements at every tap (the tap's operand row is that run shifted). The tiles are long whatever the
image size, and only real outputs are computed, where the shifted path computes every position of the padded
planes (twice the outputs for LeNet-5's C3: 14x14 planes for 10x10 outputs). The price is a transpose into
that layout and one out of it, so the path rule takes it for small planes with few weights per output.

* Forward: per (group, output row, run of pixels) one :func:`_loops.gemm` over the run's columns; the
  epilogue adds the bias, applies the activation and writes NCHW.
* Weight gradient: dw[k, (c, r, s)] = sum over output rows of the dot product of dy's row run (dy in the same
  layout) with x's run shifted by the tap, blocks of (k, tap) by :func:`_loops.dot_blocks`; one partial per
  chunk of output rows (a fixed number), summed in a fixed order: results do not depend on the thread count.

The input gradient has no lanes pass: its correlation runs over the input's own positions, where the shifted
path wastes nothing, so the plan gives it to the shifted path.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..activation import act_run
from ._loops import Pads, Pair, cdiv, dot_blocks, gemm, zero_run
from .shifted import tap_rows

RUN_COLUMNS = 2048   # forward: GEMM columns (pixels x images) per task, at most (unless one pixel has more)
WEIGHT_CHUNKS = 8    # weight gradient: partials (chunks of output rows) at most


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def to_lanes(x, xl, top, left, wp):
    """xl[c, ((top + h) * wp + left + w) * N + n] = x[n, c, h, w]; every other element of xl (C, Hp*Wp*N) is 0.
    One task per padded row."""
    n_, c_, h_, w_ = x.shape
    hp = xl.shape[1] // (wp * n_)
    nn = np.uint64(n_)
    for task in prange(c_ * hp):
        c, row = task // hp, task % hp
        h, base = row - top, row * wp * n_
        if h < 0 or h >= h_:
            zero_run(xl[c], base, wp * n_)
            continue
        zero_run(xl[c], base, left * n_)
        for w in range(w_):
            o = np.uint64(base + (left + w) * n_)
            for n in range(nn):
                xl[c, o + n] = x[n, c, h, w]
        zero_run(xl[c], base + (left + w_) * n_, (wp - left - w_) * n_)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _lanes_forward(xl, wq, out, b, chan, off, wp, run, kind, slope):
    """out[n, g*M + i, h, w] = act(b[g*M + i] + sum over q of wq[g, i, q] * xl[g*Cg + chan[q], off[q] +
    (h*wp + w)*N + n]), ``run`` pixels of a row per task."""
    groups, m, kd = wq.shape
    n_, k_, oh, ow = out.shape
    cg = xl.shape[0] // groups
    runs = (ow + run - 1) // run
    out_flat = out.reshape(-1)
    plane, nn = np.uint64(k_ * oh * ow), np.uint64(n_)
    for task in prange(groups * oh * runs):
        g, h, w0 = task // (oh * runs), (task // runs) % oh, task % runs * run
        pixels = min(run, ow - w0)
        t = pixels * n_
        acc = np.zeros((m, t), dtype=out.dtype)
        gemm(wq[g], np.arange(m), np.zeros(m, dtype=np.int64), xl, chan + g * cg, off + (h * wp + w0) * n_, acc,
             m, kd, t)
        flat, row = acc.reshape(-1), np.empty(t, dtype=out.dtype)
        for i in range(m):
            act_run(row, np.int64(0), flat, i * t, t, b[g * m + i], kind, slope)
            start = np.uint64(((g * m + i) * oh + h) * ow + w0)  # image 0's first pixel of the run
            for n in range(nn):
                dst = start + n * plane
                for w in range(np.uint64(pixels)):
                    out_flat[dst + w] = row[w * nn + n]


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _lanes_weight(dl, xl, part, chan, off, run, skip, zero):
    """part[chunk, g, k, q] = sum over the chunk's output rows h of sum over u < run of dl[g*Kg + k, h*run + u]
    * xl[g*Cg + chan[q], h*(run + skip) + off[q] + u]: dl is dy (K, OH*OW*N) and xl the padded x in the lanes
    layout, ``run`` = OW*N and ``skip`` = (Wp - OW)*N."""
    chunks, groups, kg, rows = part.shape
    oh = dl.shape[1] // run
    for task in prange(chunks * groups):
        chunk, g = task // groups, task % groups
        for i in range(kg):
            for q in range(rows):
                part[chunk, g, i, q] = 0
        for h in range(chunk * oh // chunks, (chunk + 1) * oh // chunks):
            dot_blocks(part, chunk, g, dl, xl, chan, off, h * skip, h * run, (h + 1) * run, zero)


def _lanes_input(x: np.ndarray, padding: Pads) -> tuple[np.ndarray, int]:
    """x zero-padded in the lanes layout (C, Hp*Wp*N), and Wp."""
    n, c, h, w = x.shape
    hp, wp = h + padding[0] + padding[1], w + padding[2] + padding[3]
    xl = np.empty((c, hp * wp * n), dtype=x.dtype)
    to_lanes(x, xl, padding[0], padding[2], wp)
    return xl, wp


def _taps(w_shape, wp: int, n: int, dilation: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(channel, offset in xl's row) of every GEMM row (c, r, s)."""
    chan, off = tap_rows(w_shape[1], w_shape[2], w_shape[3], wp, *dilation)
    return chan, off * n


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, padding: Pads, dilation: Pair,
            groups: int, kind: int, slope: float) -> None:
    """y = act(cross_correlate(x, w) + b) at stride 1, x in the lanes layout (module docstring)."""
    n, k, oh, ow = y.shape
    xl, wp = _lanes_input(x, padding)
    chan, off = _taps(w.shape, wp, n, dilation)
    run = cdiv(ow, cdiv(ow * n, RUN_COLUMNS))  # pixels per task: equal runs of at most RUN_COLUMNS columns
    _lanes_forward(xl, w.reshape(groups, k // groups, -1), y, b, chan, off, wp, run, kind, slope)


def weight_grad(dy: np.ndarray, x: np.ndarray, w_shape, padding: Pads, dilation: Pair, groups: int) -> np.ndarray:
    """Stride-1 weight gradient from dy and x in the lanes layout (module docstring)."""
    n, k, oh, ow = dy.shape
    xl, wp = _lanes_input(x, padding)
    dl, _ = _lanes_input(dy, (0, 0, 0, 0))
    chan, off = _taps(w_shape, wp, n, dilation)
    part = np.empty((min(WEIGHT_CHUNKS, oh), groups, k // groups, int(np.prod(w_shape[1:]))), dtype=x.dtype)
    _lanes_weight(dl, xl, part, chan, off, ow * n, (wp - ow) * n, x.dtype.type(0))
    return part.sum(axis=0).reshape(w_shape)
