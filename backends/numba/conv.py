"""Convolution, Numba: four kernels, chosen per shape by :func:`plan`, all parallel over the output they write.

* ``shifted`` (stride 1): implicit GEMM with no im2col. On the zero-padded input planes, tap (r, s) of output
  pixel u = oh * Wp + ow reads plane element u + r*dil_h*Wp + s*dil_w, so each GEMM operand row is a shifted
  window of a plane that stays in cache; outputs are computed on the padded width ("wide" grid) and the extra
  columns dropped. The backward passes (taps.py) run on channel-major planes of the whole batch: the weight
  gradient as long 4x4-blocked dot products, the input gradient as one GEMM with the flipped taps.
  LeNet-5 at batch 64, float32: C3 dw 0.74 -> 0.23 ms, dx 0.47 -> 0.29 ms; C1 dw 0.43 -> 0.17 ms.
* ``im2row`` (many weights per output): each output pixel's window gathered channel-last as one row, each output
  one long dot product (im2row.py); the stride-1 input gradient is the same correlation of dy, other input
  gradients scatter the rows back; the weight gradient multiplies dy by the gathered rows. ResNet-20 at batch
  128: 64-channel 8x8 layer forward 6.4 -> 2.1 ms, dx 4.3 -> 2.7 ms; 32-to-64 stride-2 forward 3.0 -> 1.5 ms,
  dx 3.3 -> 1.9 ms, dw 3.2 -> 1.5 ms.
* ``packed`` (strided convs with few weights per output, or outputs much narrower than the padded input):
  im2col tiles plus the GEMM; col2im for the input gradient. When the one output pixel sees the whole unpadded
  input (LeNet-5's C5), x is its own im2col matrix and each pass is a plain matmul (forward 0.115 -> 0.067 ms).
* ``direct`` (few outputs per group, e.g. depthwise): plain loops per output plane; the GEMM's 4x4 register
  blocks would be mostly empty. Its stride-1 weight gradient runs on the wide grid.

Rule (:func:`plan`), with Kg = K / groups and Cg*R*S weights per output: direct when Kg < 4; the plain matmul
for LeNet-5's C5 geometry; strided convs: im2row from ROW_MIN_STRIDED (64) weights per output, else packed
(direct weight gradient when Kg < 8); stride 1: the weight gradient is shifted unless the padded width exceeds
MAX_WIDE_WASTE (1.5) times the output width (then packed); the forward is im2row from ROW_MIN (256) weights per
output, else as the weight gradient; the input gradient is im2row from Kg*R*S >= ROW_MIN when the padded planes
are over DATA_ROW_WASTE (1.4) times the input (the 8x8 layers, where the shifted grid is mostly padding), else
shifted when the weight gradient is and the padded width is at most 1.5 times the input width, else packed.
``path=`` forces one (the tests run every path on every shape).

Non-finite values land where PyTorch puts them, which treats padding taps as real zeros (a NaN or inf weight
times a padding zero is NaN) and multiplies nothing else: the direct forward and weight gradient skip padding
taps, and the shifted and im2row passes also multiply margins and wide-grid columns that are no real tap (0 * NaN
is NaN). So a non-finite weight sends the direct forward and the shifted/im2row input gradient to the packed
path, and a non-finite weight (or bias) gradient from the direct or shifted path is recomputed on the packed
path; the checks read only the weights and the weight gradient (small: 1-5 us per check, measured for LeNet-5
and 64-channel 3x3 weights), and finite inputs take the same paths as before.

Why no BLAS: NumPy's OpenBLAS keeps its own thread pool, which spins after each call and fights Numba's pool for
the cores (10-30 ms stalls per conv when they alternate); and its kernels here are AVX2 ("Haswell") while LLVM
compiles these loops for the machine (AVX-512 on this EPYC: the im2row dots reach 270 GFLOP/s on two cores,
single-thread OpenBLAS 125).

Task decomposition (race-free, thread-count independent, so results do not depend on NUMBA_NUM_THREADS):
forward over (image, group, pixel tile); backward-data over (group, position tile) for shifted and (image
block, group) for packed (col2im scatters within its own images); backward-weight over (batch chunk, group)
with one partial gradient per chunk (shifted: per run of pixels, see taps.py), summed afterwards.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from cnnkit.backends import LEAKY_SLOPE, conv_output_size, implements

from . import direct, im2row, taps
from .activation import SIGMOID, act_run, code
from .gemm import copy_run, gemm, padded_plane, row_sum, tile_cols, tile_rows
from .taps import cdiv, tap_rows

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]

GEMM_MIN_ROWS = 4      # outputs per group below which forward and backward-data loop directly
WEIGHT_GEMM_MIN = 8    # ... and below which a strided backward-weight does
MAX_WIDE_WASTE = 1.5
TILE_ELEMS = 1 << 15   # packed: im2col elements per task tile (128 KiB in float32: stays in L2)
ACC_ELEMS = 1 << 14    # shifted: accumulator elements per task tile (64 KiB in float32)
MIN_TILE, MAX_TILE = 32, 1024  # pixels per tile: long enough to vectorise, short enough to stay in cache
MIN_TASKS = 64         # split work into at least this many tasks when the shape allows
WEIGHT_CHUNKS = 32     # at most this many partial weight gradients
WIDE_WEIGHT_TASKS = 8  # direct stride-1 weight gradient: tasks wanted (each ends in serial sums of span terms)
ROW_MIN = 256          # im2row: weights per output (Cg*R*S) from which stride-1 convs gather rows ...
ROW_MIN_STRIDED = 64   # ... and strided ones (the packed path's tiles are short there)
DATA_ROW_WASTE = 1.4   # ... and the input gradient when the padded planes exceed the input by this factor
PATHS = ("direct", "shifted", "packed", "im2row")


# ----------------------------------------------------------------------------------------------- shifted path
@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _pad_planes(x, xp, top, left, wp):
    """xp[n, c, (top + h) * wp + left + w] = x[n, c, h, w]; every other element of xp (N, C, L) is 0."""
    n_, c_ = x.shape[0], x.shape[1]
    for task in prange(n_ * c_):
        n, c = task // c_, task % c_
        padded_plane(xp[n, c], 0, x[n, c], top, left, wp, xp.shape[2])


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _activate_rows(acc, t, b, k0, kind, slope):
    """act(acc[k, :t] + b[k0 + k]) for every row k of a (K, T) accumulator tile, flattened. Used for tanh and
    sigmoid: activating whole rows (rather than the short runs of real output columns the epilogue copies) keeps
    the vectorised loop off its slow scalar remainder. Not in place: overlapping runs would defeat vectorising."""
    flat = acc.reshape(-1)
    done = np.empty_like(flat)
    width = acc.shape[1]
    for k in range(acc.shape[0]):
        act_run(done, k * width, flat, k * width, t, b[k0 + k], kind, slope)
    return done


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
        flat = _activate_rows(acc, t, b, g * kg, kind, slope) if whole else acc.reshape(-1)
        for row in range(ua // wp, (ua + t - 1) // wp + 1):  # epilogue: keep the real columns, bias, act
            lo, hi = max(row * wp, ua), min(row * wp + ow_, ua + t)
            for k in range(kg):
                kk = g * kg + k
                dst, src = ((n * k_ + kk) * oh_ + row) * ow_ + lo - row * wp, k * tu + lo - ua
                if whole:
                    copy_run(out_flat, dst, flat, src, 1, hi - lo)
                else:
                    act_run(out_flat, dst, flat, src, hi - lo, b[kk], kind, slope)


# ----------------------------------------------------------------------------------------------- packed path
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
        whole = kind >= SIGMOID
        flat = _activate_rows(acc, t, b, g * kg, kind, slope) if whole else acc.reshape(-1)
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
def _dense(a, b, c):
    """c = a @ b (c is overwritten), one task per block of 4 rows of c."""
    m, kd = a.shape
    brow, boff = np.arange(kd), np.zeros(kd, dtype=np.int64)
    for task in prange((m + 3) // 4):
        i0 = task * 4
        rows = min(4, m - i0)
        blk = c[i0:i0 + rows]
        blk[:, :] = 0
        gemm(a, np.arange(i0, i0 + rows), np.zeros(rows, dtype=np.int64), b, brow, boff, blk, rows, kd, b.shape[1])


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _dense_forward(w2, xt, b, yt, kind, slope):
    """yt[k, n] = act(b[k] + sum over q of w2[k, q] * xt[q, n]), one task per block of 4 rows of yt."""
    m, kd = w2.shape
    n_ = yt.shape[1]
    brow, boff = np.arange(kd), np.zeros(kd, dtype=np.int64)
    yt_flat = yt.reshape(-1)
    for task in prange((m + 3) // 4):
        i0 = task * 4
        rows = min(4, m - i0)
        acc = np.zeros((rows, n_), dtype=yt.dtype)
        gemm(w2, np.arange(i0, i0 + rows), np.zeros(rows, dtype=np.int64), xt, brow, boff, acc, rows, kd, n_)
        flat = acc.reshape(-1)
        for i in range(rows):
            act_run(yt_flat, (i0 + i) * n_, flat, i * n_, n_, b[i0 + i], kind, slope)


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


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _bias_grad(dy3, db):
    """db[k] = sum of dy over (n, oh, ow), accumulated in float64 (vector partial sums per plane, then the
    planes in order)."""
    for k in prange(dy3.shape[1]):
        total = 0.0
        for n in range(dy3.shape[0]):
            total += row_sum(dy3[n, k])
        db[k] = total


# ----------------------------------------------------------------------------------------------- the ops
def _tile(rows: int, total: int, tasks_outside: int = 1) -> int:
    """Pixels per tile: cache-sized, at least MIN_TILE, and short enough for MIN_TASKS tasks in all."""
    tp = max(MIN_TILE, min(TILE_ELEMS // rows, MAX_TILE))
    return max(1, min(tp, max(MIN_TILE, cdiv(total * tasks_outside, MIN_TASKS)), total))


def plan(x_shape, w_shape, stride: Pair, padding: Pads, dilation: Pair, groups: int,
         path: str | None = None) -> tuple[str, str, str]:
    """The paths (forward, backward-weight, backward-data) of this conv; see the module docstring."""
    if path is not None:
        if path not in PATHS:
            raise ValueError(f"path must be None or one of {PATHS}, got {path!r}")
        if path == "shifted" and stride != (1, 1):
            raise ValueError("path='shifted' needs stride 1")
        return path, path, path
    kg = w_shape[0] // groups
    if kg < GEMM_MIN_ROWS:
        return "direct", "direct", "direct"
    out_h = conv_output_size(x_shape[2], w_shape[2], stride[0], padding[0], padding[1], dilation[0])
    out_w = conv_output_size(x_shape[3], w_shape[3], stride[1], padding[2], padding[3], dilation[1])
    if _dense_geometry(x_shape, w_shape, padding, groups, out_h * out_w):
        return "packed", "packed", "packed"
    reduction = w_shape[1] * w_shape[2] * w_shape[3]
    if stride != (1, 1):
        route = "im2row" if reduction >= ROW_MIN_STRIDED else "packed"
        return route, "direct" if kg < WEIGHT_GEMM_MIN else route, route
    padded_h, padded_w = x_shape[2] + padding[0] + padding[1], x_shape[3] + padding[2] + padding[3]
    weight = "shifted" if padded_w <= MAX_WIDE_WASTE * out_w else "packed"
    forward = "im2row" if reduction >= ROW_MIN else weight
    if (kg * w_shape[2] * w_shape[3] >= ROW_MIN and padded_h * padded_w > DATA_ROW_WASTE * x_shape[2] * x_shape[3]
            and im2row.data_grad_fits(stride, padding, dilation, w_shape)):
        data = "im2row"
    else:
        data = "shifted" if weight == "shifted" and padded_w <= MAX_WIDE_WASTE * x_shape[3] else "packed"
    return forward, weight, data


def _geometry(x_shape, w_shape, stride: Pair, padding: Pads, dilation: Pair):
    oh = conv_output_size(x_shape[2], w_shape[2], stride[0], padding[0], padding[1], dilation[0])
    ow = conv_output_size(x_shape[3], w_shape[3], stride[1], padding[2], padding[3], dilation[1])
    return oh, ow, (stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1])


def _padded(x: np.ndarray, top: int, bottom: int, left: int, right: int) -> tuple[np.ndarray, int]:
    """x as (N, C, Hp*Wp) zero-padded planes (no copy when there is no padding), and Wp."""
    n, c, h, w = x.shape
    hp, wp = h + top + bottom, w + left + right
    if top == bottom == left == right == 0:
        return x.reshape(n, c, h * w), wp
    xp = np.empty((n, c, hp * wp), dtype=x.dtype)
    _pad_planes(x, xp, top, left, wp)
    return xp, wp


def _shifted_tile(outputs: int, n: int, groups: int, oh: int, ow: int, wp: int) -> int:
    """Wide-grid pixels per shifted tile: the operand rows are windows of planes already in cache, so the
    tile is bounded by the accumulator (ACC_ELEMS), then split evenly, into enough tiles for MIN_TASKS tasks."""
    total = (oh - 1) * wp + ow
    tiles = max(cdiv(total, max(MIN_TILE, ACC_ELEMS // outputs)), min(cdiv(MIN_TASKS, n * groups),
                                                                        cdiv(total, MIN_TILE)))
    return cdiv(total, tiles)


def _finite(a: np.ndarray) -> bool:
    """True when ``a`` (weights or a weight gradient: small) holds no NaN or inf."""
    return bool(np.isfinite(a).all())


def _dense_geometry(x_shape, w_shape, padding: Pads, groups: int, outputs: int) -> bool:
    """One output pixel that sees the whole unpadded input: x is its own im2col matrix (a plain matmul)."""
    return groups == 1 and outputs == 1 and padding == (0, 0, 0, 0) and tuple(x_shape[2:]) == tuple(w_shape[2:])

@implements("numba")
def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair, padding: Pads,
                   dilation: Pair, groups: int, activation: str | None = None,
                   path: str | None = None) -> np.ndarray:
    """y = act(cross_correlate(x, w) + b), shape (N, K, OH, OW); ``path`` forces one of PATHS."""
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w, dtype=x.dtype)
    n, k, r, s = x.shape[0], w.shape[0], w.shape[2], w.shape[3]
    oh, ow, geo = _geometry(x.shape, w.shape, stride, padding, dilation)
    b = np.zeros(k, dtype=x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    y = np.empty((n, k, oh, ow), dtype=x.dtype)
    kind = code(activation)
    route = plan(x.shape, w.shape, stride, padding, dilation, groups, path)[0]
    if route == "direct" and not _finite(w):  # padding taps must give w * 0 (see the module docstring)
        route = "packed"
    w3 = w.reshape(groups, k // groups, -1)
    if route == "direct":
        direct.forward(x, w, b, y, *geo, kind, LEAKY_SLOPE)
    elif route == "shifted":
        xp, wp = _padded(x, *padding)
        _shifted_conv(xp, w3, b, y, wp, r, s, *dilation, _shifted_tile(w3.shape[1], n, groups, oh, ow, wp),
                      kind, LEAKY_SLOPE)
    elif route == "im2row":
        im2row.correlate(x, w, b, y, stride, padding, dilation, groups, kind, LEAKY_SLOPE)
    elif _dense_geometry(x.shape, w.shape, padding, groups, oh * ow):
        yt = np.empty((k, n), dtype=x.dtype)
        _dense_forward(w.reshape(k, -1), np.ascontiguousarray(x.reshape(n, -1).T), b, yt, kind, LEAKY_SLOPE)
        y.reshape(n, k)[:] = yt.T
    else:
        tp = _tile(w3.shape[2], n * oh * ow, groups)
        _packed_forward(x, w3, b, y.reshape(n, k, oh * ow), tp, r, s, oh, ow, *geo, kind, LEAKY_SLOPE)
    return y


@implements("numba")
def conv2d_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pads, dilation: Pair,
                    groups: int, need_dx: bool = True, need_db: bool = True, need_dw: bool = True,
                    path: str | None = None):
    """(dx, dw, db) of the pre-activation conv output's gradient ``dy``; each is None when not needed."""
    x = np.ascontiguousarray(x)
    w, dy = np.ascontiguousarray(w, dtype=x.dtype), np.ascontiguousarray(dy, dtype=x.dtype)
    n, k, oh, ow = dy.shape
    db = None
    if need_db:
        db = np.empty(k, dtype=x.dtype)
        _bias_grad(dy.reshape(n, k, oh * ow), db)
    _, weight_route, data_route = plan(x.shape, w.shape, stride, padding, dilation, groups, path)
    if need_dx and data_route in ("shifted", "im2row") and not _finite(w):  # see the module docstring
        data_route = "packed"
    if data_route == "packed" and _dense_geometry(x.shape, w.shape, padding, groups, oh * ow):
        x2, dy2, w2 = x.reshape(n, -1), dy.reshape(n, k), w.reshape(k, -1)
        dx, dw = np.empty_like(x2) if need_dx else None, np.empty_like(w2) if need_dw else None
        if need_dw:
            _dense(np.ascontiguousarray(dy2.T), x2, dw)
        if need_dx:
            _dense(dy2, w2, dx)
        return (dx.reshape(x.shape) if need_dx else None), (dw.reshape(w.shape) if need_dw else None), db
    wide = None
    if (need_dw and weight_route == "shifted") or (need_dx and data_route == "shifted"):
        wide = taps.wide_dy(dy, x.shape, w.shape, padding, dilation)
    dw = _weight_grad(weight_route, dy, x, w, stride, padding, dilation, groups, wide) if need_dw else None
    if (need_dw and weight_route in ("direct", "shifted")
            and not (_finite(dw) and (db is None or _finite(db)))):  # see the module docstring
        dw = _weight_grad("packed", dy, x, w, stride, padding, dilation, groups, None)
    dx = _data_grad(data_route, dy, x.shape, w, stride, padding, dilation, groups, wide) if need_dx else None
    return dx, dw, db


def _weight_grad(route: str, dy, x, w, stride: Pair, padding: Pads, dilation: Pair, groups: int, wide):
    """dw by the backward-weight path ``route`` (see :func:`plan`); ``wide`` is taps.wide_dy's layout of dy."""
    n, k, oh, ow = dy.shape
    r, s = w.shape[2:]
    geo = _geometry(x.shape, w.shape, stride, padding, dilation)[2]
    if route == "direct":
        if stride == (1, 1):  # each chunk's partial ends in a serial sum per weight: fewer, longer tasks
            part = np.empty((min(n, cdiv(WIDE_WEIGHT_TASKS, k * w.shape[1])),) + w.shape, dtype=x.dtype)
            xp, wp = _padded(x, *padding)
            dyw = np.empty((n, k, oh * wp), dtype=x.dtype)
            _pad_planes(dy, dyw, 0, 0, wp)
            direct.wide_weight(xp, dyw, part, wp, (oh - 1) * wp + ow, r, s, *dilation)
        else:
            part = np.empty((min(n, cdiv(MIN_TASKS, k * w.shape[1])),) + w.shape, dtype=x.dtype)
            direct.backward_weight(dy, x, part, *geo)
        return part.sum(axis=0)
    if route == "shifted":
        return taps.weight_grad(*wide, x, w, padding, dilation, groups, oh, ow)
    if route == "im2row":
        return im2row.weight_grad(dy, x, w.shape, stride, padding, dilation, groups, WEIGHT_CHUNKS // 4)
    rows = w[0].size
    tp = _tile(rows, n * oh * ow)
    part = np.zeros((min(WEIGHT_CHUNKS, cdiv(n * oh * ow, tp)), groups, rows, k // groups), dtype=x.dtype)
    _packed_weight(dy.reshape(n, k, oh * ow), x, part, tp, r, s, oh, ow, *geo)
    return np.ascontiguousarray(part.sum(axis=0).transpose(0, 2, 1)).reshape(w.shape)


def _data_grad(route: str, dy, x_shape, w, stride: Pair, padding: Pads, dilation: Pair, groups: int, wide):
    """dx by the backward-data path ``route`` (see :func:`plan`); ``wide`` is taps.wide_dy's layout of dy."""
    if route == "direct":
        dx = np.empty(x_shape, dtype=dy.dtype)
        direct.backward_data(dy, w, dx, *_geometry(x_shape, w.shape, stride, padding, dilation)[2])
        return dx
    if route == "im2row" and im2row.data_grad_fits(stride, padding, dilation, w.shape):
        return im2row.data_grad(dy, w, padding, dilation, groups, x_shape)
    if route == "im2row":
        return im2row.scatter_data_grad(dy, w, stride, padding, dilation, groups, x_shape)
    if route == "shifted":
        return taps.data_grad(*wide, x_shape, w, padding, dilation, groups, ACC_ELEMS, MIN_TASKS)
    n, k, oh, ow = dy.shape
    kg, rows, (r, s) = k // groups, w[0].size, w.shape[2:]
    dx = np.zeros(x_shape, dtype=dy.dtype)
    tp = _tile(rows, n * oh * ow)
    ib = min(n, max(cdiv(MIN_TILE, oh * ow), cdiv(n, MIN_TASKS)))  # whole images per task: race-free
    wt3 = np.ascontiguousarray(w.reshape(groups, kg, rows).transpose(0, 2, 1))
    _packed_backward_data(dy.reshape(n, k, oh * ow), wt3, dx, ib, min(ib * oh * ow, tp), r, s, oh, ow,
                          *_geometry(x_shape, w.shape, stride, padding, dilation)[2])
    return dx
