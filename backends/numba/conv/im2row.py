"""The ``im2row`` conv path, Numba: every output pixel's receptive field gathered as one row, then each output
is one long dot product; for convs with many weights per output.

The input is first laid out channel-last and zero-padded, (N, G, Hp, Wp, Cg), so the window of output pixel
(oh, ow) on kernel row r is one contiguous run of S*Cg values (Cg per tap when the width is dilated). A tile
of 64 pixels gathers those runs into rows (pixel, (r, s, c)) that stay in L2; the tile's outputs are those
rows times the weights as columns ((r, s, c), k), the register-tiled GEMM of ``_loops.gemm``, transposed to
channel-major planes in the epilogue. With many input channels the reduction is long (ResNet's 32- and
64-channel 3x3 layers: 288 and 576), and no work is spent on padding, which is most of a padded 8x8 plane.

The stride-1 input gradient is the same correlation of dy, padded by dil*(R-1) - pad on each side, with the
weights flipped and transposed (``_loops.flipped_data_grad`` with :func:`forward`). Other input gradients compute
each output pixel's row of contributions (dy times the weight rows, a GEMM along the rows) and scatter it back
onto its window (:func:`scatter_data_grad`); the weight gradient is dy times the gathered rows
(:func:`weight_grad`).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..activation import act_run
from ..vectors import transpose_block
from ._loops import MIN_TASKS, Pads, Pair, add_run, cdiv, copy_run, fill_window, gemm
from .simd import lanes

ROW_TILE = 64             # pixels per task tile (a multiple of 8: whole register tiles; see bench/NOTES.md)
WEIGHT_CHUNKS = 8         # at most this many partial weight gradients


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _channel_last(x, xh, top, left):
    """xh[n, g, top + h, left + w, c] = x[n, g*Cg + c, h, w]; every other element of xh is 0. One task per image
    and group (``_loops.fill_window``: blocks transposed in registers)."""
    groups, hp, wp, cg = xh.shape[1], xh.shape[2], xh.shape[3], xh.shape[4]
    lane = lanes(xh)
    for task in prange(x.shape[0] * groups):
        n, g = task // groups, task % groups
        tmp = np.empty(lane * lane, dtype=xh.dtype)
        fill_window(xh[n, g].reshape(-1), x, n, g * cg, cg, -top, hp, wp, left, tmp)


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _window_rows(img, buf, p0, t, ow_, wp, cg, s_, sh, sw, dil_h, dil_w, scatter):
    """buf[j, (r, s, c)] = img[((oh*sh + r*dil_h) * wp + ow*sw + s*dil_w) * cg + c] for the output pixels
    (oh, ow) = p0 + j, j < t, of one flattened channel-last padded image; with ``scatter`` the transpose
    instead: img[...] += buf[j, ...] (pixels' windows overlap: the caller owns the whole image)."""
    run = s_ * cg if dil_w == 1 else cg  # contiguous values per run
    for j in range(t):
        oh, ow = (p0 + j) // ow_, (p0 + j) % ow_
        for q in range(buf.shape[1] // run):
            r, s = (q, 0) if dil_w == 1 else (q // s_, q % s_)
            start = ((oh * sh + r * dil_h) * wp + ow * sw + s * dil_w) * cg
            if scatter:
                add_run(img, start, 1, buf[j], q * run, run)
            else:
                copy_run(buf[j], q * run, img, start, 1, run)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _im2row_conv(xh, wc, b, out, r_, s_, sh, sw, dil_h, dil_w, tp, kind, slope):
    """out[n, g*Kg + k, oh, ow] = act(b[g*Kg + k] + dot(row(n, g, oh, ow), wc[g, :, k])), the row being the window
    of pixel (oh, ow) in the channel-last padded input xh, ordered (r, s, c) as wc's rows: per tile, the
    gathered rows times the weight columns (a GEMM), transposed to channel-major in the epilogue."""
    n_, groups, hp, wp, cg = xh.shape
    rows, kg = wc.shape[1], wc.shape[2]
    k_, oh_, ow_ = out.shape[1], out.shape[2], out.shape[3]
    p_ = oh_ * ow_
    xf = xh.reshape(n_, groups, hp * wp * cg)
    out_flat = out.reshape(-1)
    tiles = (p_ + tp - 1) // tp
    for task in prange(n_ * groups * tiles):
        n, g, tile = task // (groups * tiles), (task // tiles) % groups, task % tiles
        p0 = tile * tp
        t = min(tp, p_ - p0)
        gathered = np.empty((t, rows), dtype=out.dtype)
        _window_rows(xf[n, g], gathered, p0, t, ow_, wp, cg, s_, sh, sw, dil_h, dil_w, False)
        by_pixel = np.zeros((t, kg), dtype=out.dtype)
        gemm(gathered, np.arange(t), np.zeros(t, dtype=np.int64), wc[g], np.arange(rows),
             np.zeros(rows, dtype=np.int64), by_pixel, t, rows, kg)
        acc = np.empty((kg, t), dtype=out.dtype)
        for j in range(t):
            for k in range(kg):
                acc[k, j] = by_pixel[j, k]
        flat = acc.reshape(-1)
        for k in range(kg):  # epilogue: bias + activation, one contiguous run of the output plane per channel
            kk = g * kg + k
            act_run(out_flat, (n * k_ + kk) * p_ + p0, flat, k * t, t, b[kk], kind, slope)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _im2row_weight(xh, dy3, part, ow_, s_, sh, sw, dil_h, dil_w, tp):
    """part[chunk, g, k, (r, s, c)] = sum over the chunk's images n and pixels p of dy3[n, g*Kg + k, p] *
    row(n, g, p)[(r, s, c)]: gathered tiles times dy, a GEMM whose vectors run along the long rows."""
    chunks, groups, kg, rows = part.shape
    n_, hp, wp, cg = xh.shape[0], xh.shape[2], xh.shape[3], xh.shape[4]
    p_ = dy3.shape[2]
    xf = xh.reshape(n_, groups, hp * wp * cg)
    for task in prange(chunks * groups):
        chunk, g = task // groups, task % groups
        acc = part[chunk, g]
        acc[:, :] = 0
        gathered = np.empty((tp, rows), dtype=part.dtype)
        arow, aoff = g * kg + np.arange(kg), np.empty(kg, dtype=np.int64)
        brow, boff = np.arange(tp), np.zeros(tp, dtype=np.int64)
        for n in range(chunk * n_ // chunks, (chunk + 1) * n_ // chunks):
            for p0 in range(0, p_, tp):
                t = min(tp, p_ - p0)
                _window_rows(xf[n, g], gathered, p0, t, ow_, wp, cg, s_, sh, sw, dil_h, dil_w, False)
                aoff[:] = p0
                gemm(dy3[n], arow, aoff, gathered, brow, boff, acc, kg, t, rows)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _im2row_scatter(dyh, wr, dxh, s_, sh, sw, dil_h, dil_w, tp):
    """dxh[n, g] = sum over output pixels p of their windows' contributions sum_k dy[n, g*Kg + k, p] * wr[g, k],
    scattered back onto the channel-last padded image (one task per image and group: race-free)."""
    n_, groups, oh_, ow_, kg = dyh.shape
    rows, hp, wp, cg = wr.shape[2], dxh.shape[2], dxh.shape[3], dxh.shape[4]
    p_ = oh_ * ow_
    dyf, dxf = dyh.reshape(n_, groups, p_ * kg), dxh.reshape(n_, groups, hp * wp * cg)
    for task in prange(n_ * groups):
        n, g = task // groups, task % groups
        dxf[n, g, :] = 0
        acc = np.empty((tp, rows), dtype=dxh.dtype)
        arow, aoff = np.full(tp, g, dtype=np.int64), np.empty(tp, dtype=np.int64)
        brow, boff = np.arange(kg), np.zeros(kg, dtype=np.int64)
        for p0 in range(0, p_, tp):
            t = min(tp, p_ - p0)
            acc[:, :] = 0
            for j in range(t):
                aoff[j] = (p0 + j) * kg
            gemm(dyf[n], arow, aoff, wr[g], brow, boff, acc, t, kg, rows)
            _window_rows(dxf[n, g], acc, p0, t, ow_, wp, cg, s_, sh, sw, dil_h, dil_w, True)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _channel_first(xh, x, top, left):
    """x[n, g*Cg + c, h, w] = xh[n, g, top + h, left + w, c]: the inverse of _channel_last, padding dropped; L x L
    blocks of (positions, channels) transposed by vectors.transpose_block, the rest one by one. One task per
    image and group (a task per row would share the cache lines of narrow planes' rows with other threads)."""
    n_, c_, h_, w_ = x.shape
    groups, wp, cg = xh.shape[1], xh.shape[3], xh.shape[4]
    lane, plane = lanes(x), h_ * w_
    whole_c, whole_w = cg - cg % lane, w_ - w_ % lane
    x_flat = x.reshape(-1)
    for task in prange(n_ * groups):
        n, g = task // groups, task % groups
        img = xh[n, g].reshape(-1)
        first = (n * c_ + g * cg) * plane
        for h in range(h_):
            src, dst = ((top + h) * wp + left) * cg, first + h * w_
            for c0 in range(0, whole_c, lane):
                for w0 in range(0, whole_w, lane):
                    transpose_block(x_flat, dst + c0 * plane + w0, plane, img, src + w0 * cg + c0, cg)
        for c in range(cg):  # the rest, plane by plane (unsigned indices: no wraparound checks)
            for h in range(h_):
                src, dst = np.uint64(((top + h) * wp + left) * cg + c), np.uint64(first + c * plane + h * w_)
                for w in range(np.uint64(whole_w if c < whole_c else 0), np.uint64(w_)):
                    x_flat[dst + w] = img[src + w * np.uint64(cg)]


def _tile(pixels: int, images: int) -> int:
    """Pixels per task tile: ROW_TILE (a multiple of 8: whole register tiles), or fewer for MIN_TASKS tasks."""
    return max(1, min(ROW_TILE, max(8, cdiv(cdiv(pixels * images, MIN_TASKS), 8) * 8), pixels))


def _channel_last_copy(x: np.ndarray, groups: int, padding: Pads) -> np.ndarray:
    """x (N, C, H, W) as a zero-padded channel-last (N, G, Hp, Wp, Cg) array."""
    n, c, h, w = x.shape
    top, bottom, left, right = padding
    xh = np.empty((n, groups, h + top + bottom, w + left + right, c // groups), dtype=x.dtype)
    _channel_last(x, xh, top, left)
    return xh


def _weight_rows(w: np.ndarray, groups: int) -> np.ndarray:
    """Weights (K, Cg, R, S) as rows (G, Kg, R*S*Cg) ordered (r, s, c) like the gathered windows."""
    k, cg, r, s = w.shape
    return np.ascontiguousarray(w.reshape(groups, k // groups, cg, r, s).transpose(0, 1, 3, 4, 2)).reshape(
        groups, k // groups, r * s * cg)


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, stride: Pair, padding: Pads,
              dilation: Pair, groups: int, kind: int, slope: float) -> None:
    """y (N, K, OH, OW) = act(cross_correlate(x, w) + b) by gathered rows (module docstring); ``kind`` is the
    activation's code (activation.code)."""
    xh, n = _channel_last_copy(x, groups, padding), x.shape[0]
    columns = np.ascontiguousarray(_weight_rows(w, groups).transpose(0, 2, 1))
    _im2row_conv(xh, columns, b, y, w.shape[2], w.shape[3], *stride, *dilation,
                 _tile(y.shape[2] * y.shape[3], n * groups), kind, slope)


def weight_grad(dy: np.ndarray, x: np.ndarray, w_shape, stride: Pair, padding: Pads, dilation: Pair,
                groups: int) -> np.ndarray:
    """dw (K, Cg, R, S) by gathered windows times dy, in at most WEIGHT_CHUNKS partials over the batch summed in
    order."""
    n, k, oh, ow = dy.shape
    _, cg, r, s = w_shape
    xh = _channel_last_copy(x, groups, padding)
    part = np.empty((min(WEIGHT_CHUNKS, n), groups, k // groups, r * s * cg), dtype=x.dtype)
    _im2row_weight(xh, dy.reshape(n, k, oh * ow), part, ow, s, *stride, *dilation, ROW_TILE)
    dw = part.sum(axis=0).reshape(groups, k // groups, r, s, cg).transpose(0, 1, 4, 2, 3)
    return np.ascontiguousarray(dw).reshape(w_shape)


def scatter_data_grad(dy: np.ndarray, w: np.ndarray, stride: Pair, padding: Pads, dilation: Pair, groups: int,
                      x_shape) -> np.ndarray:
    """dx for any stride: each output pixel's contributions to its window (dy times the weight rows), scattered
    onto a channel-last padded image, then back to NCHW without the padding."""
    n, c, h, wd = x_shape
    top, bottom, left, right = padding
    dxh = np.empty((n, groups, h + top + bottom, wd + left + right, c // groups), dtype=dy.dtype)
    _im2row_scatter(_channel_last_copy(dy, groups, (0, 0, 0, 0)), _weight_rows(w, groups), dxh, w.shape[3],
                    *stride, *dilation, ROW_TILE)
    dx = np.empty(x_shape, dtype=dy.dtype)
    _channel_first(dxh, dx, top, left)
    return dx
