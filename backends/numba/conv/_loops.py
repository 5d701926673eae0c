"""The loops every conv path shares, Numba: one register-blocked matmul whose operand rows may be shifted windows
into other arrays, the blocks of long dot products (the weight gradients'), the short run helpers (copy, zero, add,
axpy, padded planes), and the tiling constants and geometry helpers of the paths.

Plain indexed loops only (no slices in hot loops: a slice costs more than a short row copy). Every inner loop
runs along a contiguous axis, so LLVM vectorises it without fastmath. Numba's cache keys a kernel on its own
file only: the kernels of the other modules inline or call these, so after editing this file delete the cache
files (``__pycache__/*.nbi``, ``*.nbc``) of the whole package.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from cnnkit.backends import conv_output_size

from ..activation import NONE, act_run
from ..vectors import transpose_block
from .simd import (
    DOT_TILE,
    SHORT,
    SIX,
    TALL,
    WIDE,
    dot_tile,
    fma_tile,
    fma_tile_narrow,
    fma_tile_short,
    fma_tile_short_narrow,
    fma_tile_six,
    fma_tile_six_narrow,
    lanes,
    tile_fits,
)

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]

FMA = {"contract"}
MIN_TILE = 32          # pixels per tile at least: long enough to vectorise
MIN_TASKS = 64         # split work into at least this many tasks when the shape allows
PANEL_DEPTH = 160      # gemm: rows of b per panel at most (160 x 3 vectors of 64 bytes: 30 KiB of a 48 KiB L1)


def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b."""
    return -(-a // b)


def geometry(x_shape, w_shape, stride: Pair, padding: Pads, dilation: Pair):
    """(OH, OW, (sh, sw, pad_top, pad_left, dil_h, dil_w)): the output size and the kernels' geometry arguments."""
    oh = conv_output_size(x_shape[2], w_shape[2], stride[0], padding[0], padding[1], dilation[0])
    ow = conv_output_size(x_shape[3], w_shape[3], stride[1], padding[2], padding[3], dilation[1])
    return oh, ow, (stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1])


def flip_fits(stride: Pair, padding: Pads, dilation: Pair, w_shape) -> bool:
    """The input gradient is a forward conv of dy (:func:`flipped_data_grad`) when the stride is 1 and no side
    is padded past the kernel's reach (the flipped correlation's padding, dil*(R-1) - pad, is then >= 0)."""
    reach_h, reach_w = dilation[0] * (w_shape[2] - 1), dilation[1] * (w_shape[3] - 1)
    return stride == (1, 1) and max(padding[:2]) <= reach_h and max(padding[2:]) <= reach_w


def flipped_data_grad(forward, dy: np.ndarray, w: np.ndarray, padding: Pads, dilation: Pair, groups: int,
                      x_shape) -> np.ndarray:
    """Stride-1 input gradient by a path's ``forward``: dy correlated with the weights flipped and transposed per
    group, padded by dil*(R-1) - pad on each side (needs :func:`flip_fits`)."""
    k, cg, r, s = w.shape
    kg = k // groups
    wt = w.reshape(groups, kg, cg, r, s)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4).reshape(groups * cg, kg, r, s)
    reach_h, reach_w = dilation[0] * (r - 1), dilation[1] * (s - 1)
    flipped = (reach_h - padding[0], reach_h - padding[1], reach_w - padding[2], reach_w - padding[3])
    dx = np.empty(x_shape, dtype=dy.dtype)
    forward(dy, np.ascontiguousarray(wt), np.zeros(groups * cg, dtype=dy.dtype), dx, (1, 1), flipped, dilation,
            groups, NONE, 0.0)
    return dx


# ----------------------------------------------------------------------------------------------- matmul
@njit(cache=True, fastmath=FMA, error_model="numpy")
def gemm(a, arow, aoff, b, brow, boff, c, m, kd, t):
    """c[i, j] += sum over q < kd of a[arow[i], aoff[i] + q] * b[brow[q], boff[q] + j], for i < m, j < t.

    The row/offset vectors let an operand row be a shifted window of a padded image row (the implicit-GEMM
    convolution) or an ordinary matrix row (identity rows, zero offsets). Register tiles (simd.py) where they
    fit, panel by panel of b (WIDE vectors wide, PANEL_DEPTH rows deep: it stays in L1 for every row tile):
    TALL x WIDE tiles, a SIX-row one when six or seven rows are left over (else a SHORT one), NARROW ones for
    the columns left over; the rest in the block loops of :func:`gemm_blocks`."""
    zero = np.int64(0)  # not the literal 0, for which numba would compile gemm_blocks once more
    done = zero
    if tile_fits(a, b, c) and kd > 0:
        lane = lanes(c)
        wide, narrow = t - t % (WIDE * lane), t - t % lane
        tall = m - m % TALL
        six = TALL > SIX and m - tall >= SIX
        short = tall + SIX if six else m - m % SHORT
        panels = (kd + PANEL_DEPTH - 1) // PANEL_DEPTH
        depth = (kd + panels - 1) // panels  # equal panels
        for j in range(0, narrow, WIDE * lane):
            for q0 in range(0, kd, depth):
                q1 = min(q0 + depth, kd)
                if j < wide:
                    for i in range(0, tall, TALL):
                        fma_tile(c, a, arow, aoff, b, brow, boff, i, j, q0, q1)
                    if six:
                        fma_tile_six(c, a, arow, aoff, b, brow, boff, tall, j, q0, q1)
                    elif short > tall:
                        fma_tile_short(c, a, arow, aoff, b, brow, boff, tall, j, q0, q1)
                else:
                    for jn in range(j, narrow, lane):
                        for i in range(0, tall, TALL):
                            fma_tile_narrow(c, a, arow, aoff, b, brow, boff, i, jn, q0, q1)
                        if six:
                            fma_tile_six_narrow(c, a, arow, aoff, b, brow, boff, tall, jn, q0, q1)
                        elif short > tall:
                            fma_tile_short_narrow(c, a, arow, aoff, b, brow, boff, tall, jn, q0, q1)
        gemm_blocks(a, arow, aoff, b, brow, boff, c, zero, short, kd, narrow, t)
        done = short
    gemm_blocks(a, arow, aoff, b, brow, boff, c, done, m, kd, zero, t)


@njit(cache=True, fastmath=FMA, error_model="numpy")
def gemm_blocks(a, arow, aoff, b, brow, boff, c, i0, i1, kd, j0, t):
    """:func:`gemm` for rows i0 <= i < i1 and columns j0 <= j < t in loops LLVM vectorises: 4x4 register blocks,
    then one 2x4 block, then single rows. All indices are unsigned and no views are taken: that spares Numba's
    negative-index wraparound (which blocks vectorisation) and the reference counting of views (which costs
    more than a short block)."""
    i = i0
    while i + 4 <= i1:
        _gemm_rows4(a, arow, aoff, b, brow, boff, c, i, kd, j0, t)
        i += 4
    if i + 2 <= i1:  # a 2x4 block: m = 6 (LeNet-5's C1 outputs, C3's inputs) would leave two single rows
        _gemm_rows2(a, arow, aoff, b, brow, boff, c, i, kd, j0, t)
        i += 2
    for row in range(i, i1):
        _gemm_row(a, arow, aoff, b, brow, boff, c, row, kd, j0, t)


@njit(cache=True, fastmath=FMA, error_model="numpy")
def _gemm_rows4(a, arow, aoff, b, brow, boff, c, i, kd, j0, t):
    """Rows i .. i+3 of :func:`gemm_blocks`: 4x4 blocks (four rows of c, four of b), then the remaining rows of b."""
    ju, tu = np.uint64(j0), np.uint64(t)
    i0, i1, i2, i3 = np.uint64(i), np.uint64(i + 1), np.uint64(i + 2), np.uint64(i + 3)
    a0, a1, a2, a3 = np.uint64(arow[i]), np.uint64(arow[i + 1]), np.uint64(arow[i + 2]), np.uint64(arow[i + 3])
    o0, o1, o2, o3 = np.uint64(aoff[i]), np.uint64(aoff[i + 1]), np.uint64(aoff[i + 2]), np.uint64(aoff[i + 3])
    q = 0
    while q + 4 <= kd:
        r0, r1, r2, r3 = np.uint64(brow[q]), np.uint64(brow[q + 1]), np.uint64(brow[q + 2]), np.uint64(brow[q + 3])
        f0, f1, f2, f3 = np.uint64(boff[q]), np.uint64(boff[q + 1]), np.uint64(boff[q + 2]), np.uint64(boff[q + 3])
        u = np.uint64(q)
        w00, w01, w02, w03 = a[a0, o0 + u], a[a0, o0 + u + 1], a[a0, o0 + u + 2], a[a0, o0 + u + 3]
        w10, w11, w12, w13 = a[a1, o1 + u], a[a1, o1 + u + 1], a[a1, o1 + u + 2], a[a1, o1 + u + 3]
        w20, w21, w22, w23 = a[a2, o2 + u], a[a2, o2 + u + 1], a[a2, o2 + u + 2], a[a2, o2 + u + 3]
        w30, w31, w32, w33 = a[a3, o3 + u], a[a3, o3 + u + 1], a[a3, o3 + u + 2], a[a3, o3 + u + 3]
        for j in range(ju, tu):
            x0, x1, x2, x3 = b[r0, f0 + j], b[r1, f1 + j], b[r2, f2 + j], b[r3, f3 + j]
            c[i0, j] += w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
            c[i1, j] += w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
            c[i2, j] += w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
            c[i3, j] += w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3
        q += 4
    for rest in range(q, kd):
        r0, f0, u = np.uint64(brow[rest]), np.uint64(boff[rest]), np.uint64(rest)
        w00, w10, w20, w30 = a[a0, o0 + u], a[a1, o1 + u], a[a2, o2 + u], a[a3, o3 + u]
        for j in range(ju, tu):
            x0 = b[r0, f0 + j]
            c[i0, j] += w00 * x0
            c[i1, j] += w10 * x0
            c[i2, j] += w20 * x0
            c[i3, j] += w30 * x0


@njit(cache=True, fastmath=FMA, error_model="numpy")
def _gemm_rows2(a, arow, aoff, b, brow, boff, c, i, kd, j0, t):
    """Rows i and i+1 of :func:`gemm_blocks`: 2x4 blocks, then the remaining rows of b."""
    ju, tu = np.uint64(j0), np.uint64(t)
    i0, i1 = np.uint64(i), np.uint64(i + 1)
    a0, a1, o0, o1 = np.uint64(arow[i]), np.uint64(arow[i + 1]), np.uint64(aoff[i]), np.uint64(aoff[i + 1])
    q = 0
    while q + 4 <= kd:
        r0, r1, r2, r3 = np.uint64(brow[q]), np.uint64(brow[q + 1]), np.uint64(brow[q + 2]), np.uint64(brow[q + 3])
        f0, f1, f2, f3 = np.uint64(boff[q]), np.uint64(boff[q + 1]), np.uint64(boff[q + 2]), np.uint64(boff[q + 3])
        u = np.uint64(q)
        w00, w01, w02, w03 = a[a0, o0 + u], a[a0, o0 + u + 1], a[a0, o0 + u + 2], a[a0, o0 + u + 3]
        w10, w11, w12, w13 = a[a1, o1 + u], a[a1, o1 + u + 1], a[a1, o1 + u + 2], a[a1, o1 + u + 3]
        for j in range(ju, tu):
            x0, x1, x2, x3 = b[r0, f0 + j], b[r1, f1 + j], b[r2, f2 + j], b[r3, f3 + j]
            c[i0, j] += w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
            c[i1, j] += w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
        q += 4
    for rest in range(q, kd):
        r0, f0, u = np.uint64(brow[rest]), np.uint64(boff[rest]), np.uint64(rest)
        w00, w10 = a[a0, o0 + u], a[a1, o1 + u]
        for j in range(ju, tu):
            x0 = b[r0, f0 + j]
            c[i0, j] += w00 * x0
            c[i1, j] += w10 * x0


@njit(cache=True, fastmath=FMA, error_model="numpy")
def _gemm_row(a, arow, aoff, b, brow, boff, c, row, kd, j0, t):
    """Row ``row`` of :func:`gemm_blocks`: four rows of b at a time, then the remaining ones."""
    ju, tu = np.uint64(j0), np.uint64(t)
    i0, a0, o0 = np.uint64(row), np.uint64(arow[row]), np.uint64(aoff[row])
    q = 0
    while q + 4 <= kd:
        r0, r1, r2, r3 = np.uint64(brow[q]), np.uint64(brow[q + 1]), np.uint64(brow[q + 2]), np.uint64(brow[q + 3])
        f0, f1, f2, f3 = np.uint64(boff[q]), np.uint64(boff[q + 1]), np.uint64(boff[q + 2]), np.uint64(boff[q + 3])
        u = np.uint64(q)
        w00, w01, w02, w03 = a[a0, o0 + u], a[a0, o0 + u + 1], a[a0, o0 + u + 2], a[a0, o0 + u + 3]
        for j in range(ju, tu):
            c[i0, j] += w00 * b[r0, f0 + j] + w01 * b[r1, f1 + j] + w02 * b[r2, f2 + j] + w03 * b[r3, f3 + j]
        q += 4
    for rest in range(q, kd):
        r0, f0, w00 = np.uint64(brow[rest]), np.uint64(boff[rest]), a[a0, o0 + np.uint64(rest)]
        for j in range(ju, tu):
            c[i0, j] += w00 * b[r0, f0 + j]


@njit(cache=True, fastmath=False, error_model="numpy")
def dot_blocks(part, chunk, g, d, xs, chan, off, shift, u0, u1, zero):
    """part[chunk, g, k, q] += sum over u0 <= u < u1 of d[g*Kg + k, u] * xs[g*Cg + chan[q], u + off[q] + shift]
    for every (k, q): the weight gradients' shifted dot products over one run, in blocks of simd.DOT_TILE (k, q)
    pairs (a short block repeats its last row or column into a scratch block)."""
    groups, kg, taps = part.shape[1], part.shape[2], part.shape[3]
    cg = xs.shape[0] // groups
    rows, cols = DOT_TILE
    block = np.empty((rows, cols), dtype=part.dtype)
    astart, bstart = np.empty(rows, dtype=np.int64), np.empty(cols, dtype=np.int64)
    mine = part[chunk, g]
    for kb in range(0, kg, rows):
        for i in range(rows):
            astart[i] = (g * kg + min(kb + i, kg - 1)) * d.shape[1] + u0
        for qb in range(0, taps, cols):
            for j in range(cols):
                q = min(qb + j, taps - 1)
                bstart[j] = (g * cg + chan[q]) * xs.shape[1] + u0 + off[q] + shift
            if kb + rows <= kg and qb + cols <= taps:
                dot_tile(mine, kb, qb, d, astart, xs, bstart, u1 - u0)
                continue
            block[:] = zero
            dot_tile(block, 0, 0, d, astart, xs, bstart, u1 - u0)
            for i in range(min(rows, kg - kb)):
                for j in range(min(cols, taps - qb)):
                    mine[kb + i, qb + j] += block[i, j]


# ----------------------------------------------------------------------------------------------- runs
@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def copy_run(dst, d0, src, s0, sstep, count):
    """dst[d0 + u] = src[s0 + u * sstep] for u < count; starts must be >= 0. Unsigned indices (vectorisable)."""
    if count <= 0:
        return
    d, o, n = np.uint64(d0), np.uint64(s0), np.uint64(count)
    if sstep == 1:
        for u in range(n):
            dst[d + u] = src[o + u]
    else:
        st = np.uint64(sstep)
        for u in range(n):
            dst[d + u] = src[o + u * st]


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def zero_run(dst, d0, count):
    """dst[d0 + u] = 0 for u < count."""
    if count <= 0:
        return
    d = np.uint64(d0)
    for u in range(np.uint64(count)):
        dst[d + u] = 0


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def add_run(dst, d0, dstep, src, s0, count):
    """dst[d0 + u * dstep] += src[s0 + u] for u < count; starts must be >= 0."""
    if count <= 0:
        return
    d, o, n, dt = np.uint64(d0), np.uint64(s0), np.uint64(count), np.uint64(dstep)
    if dstep == 1:
        for u in range(n):
            dst[d + u] += src[o + u]
    else:
        for u in range(n):
            dst[d + u * dt] += src[o + u]


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def add_bias_run(dst, d0, bias, src, s0, count):
    """dst[d0 + u] = (dst[d0 + u] + bias) + src[s0 + u] for u < count; starts must be >= 0."""
    if count <= 0:
        return
    d, o, n = np.uint64(d0), np.uint64(s0), np.uint64(count)
    for u in range(n):
        dst[d + u] = (dst[d + u] + bias) + src[o + u]


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def axpy_run(dst, d0, dstep, src, s0, sstep, count, alpha):
    """dst[d0 + u * dstep] += alpha * src[s0 + u * sstep] for u < count; starts must be >= 0."""
    if count <= 0:
        return
    d, o, n = np.uint64(d0), np.uint64(s0), np.uint64(count)
    if dstep == 1 and sstep == 1:
        for u in range(n):
            dst[d + u] += alpha * src[o + u]
    else:
        dt, st = np.uint64(dstep), np.uint64(sstep)
        for u in range(n):
            dst[d + u * dt] += alpha * src[o + u * st]


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def valid_range(off, stride, size, lo_bound, hi_bound):
    """[lo, hi) within [lo_bound, hi_bound): the output positions o with 0 <= o * stride + off < size."""
    lo = 0 if off >= 0 else (stride - 1 - off) // stride
    hi = (size - 1 - off) // stride + 1 if off < size else 0
    lo = min(max(lo, lo_bound), hi_bound)
    return lo, max(lo, min(hi, hi_bound))


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def activate_rows(acc, t, b, k0, kind, slope):
    """act(acc[k, :t] + b[k0 + k]) for every row k of a (K, T) accumulator tile, flattened. Used where the
    activation's remainder is costly (activation.costly_remainder): activating whole rows (rather than the short
    runs of real output columns the epilogue copies) keeps the vectorised loop off its slow scalar remainder.
    Not in place: overlapping runs would defeat vectorising."""
    flat = acc.reshape(-1)
    done = np.empty_like(flat)
    width = acc.shape[1]
    for k in range(acc.shape[0]):
        act_run(done, k * width, flat, k * width, t, b[k0 + k], kind, slope)
    return done


# ----------------------------------------------------------------------------------------------- padded planes
@njit(cache=True, fastmath=False, error_model="numpy")
def fill_window(win, x, n, c0, cg, ih0, rows, wp, left, tmp):
    """win[((i * wp + left + iw) * cg + c] = x[n, c0 + c, ih0 + i, iw] for window rows i < rows, 0 in the margins
    and in rows outside the image: a zero-padded channel-last window of image n's channels c0 .. c0+cg-1 (the
    channels path's, im2row's padded image). L x L blocks of (channels, positions) transposed, straight into the
    window along image rows at least L wide, else through tmp (L * L elements) along the flat positions of the
    rows."""
    _, c_, h_, w_ = x.shape
    lane = lanes(win)
    plane, row_len = h_ * w_, wp * cg
    first, last = max(ih0, 0), min(ih0 + rows, h_)
    for i in range(rows):
        if i + ih0 < first or i + ih0 >= last:
            zero_run(win, i * row_len, row_len)
        else:
            zero_run(win, i * row_len, left * cg)
            zero_run(win, (i * wp + left + w_) * cg, (wp - left - w_) * cg)
    flat = x.reshape(-1)
    blocks_c = cg - cg % lane
    for cb in range(0, blocks_c, lane):
        src = (n * c_ + c0 + cb) * plane
        if w_ >= lane:
            for ih in range(first, last):
                for w0 in range(0, w_ - w_ % lane, lane):
                    transpose_block(win, ((ih - ih0) * wp + left + w0) * cg + cb, cg, flat, src + ih * w_ + w0, plane)
        else:
            for f0 in range(first * w_, last * w_ - lane + 1, lane):
                transpose_block(tmp, 0, lane, flat, src + f0, plane)
                for j in range(lane):
                    f = f0 + j
                    copy_run(win, ((f // w_ - ih0) * wp + left + f % w_) * cg + cb, tmp, j * lane, 1, lane)
    whole_w = w_ - w_ % lane  # what the blocks covered: these columns of each row, or flat positions before whole_f
    whole_f = last * w_ - (last - first) * w_ % lane
    for f in range(first * w_, last * w_):  # the rest of the channels and positions
        covered = f % w_ < whole_w if w_ >= lane else f < whole_f
        dst = ((f // w_ - ih0) * wp + left + f % w_) * cg
        for c in range(blocks_c if covered else 0, cg):
            win[dst + c] = flat[(n * c_ + c0 + c) * plane + f]


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def padded_plane(dst, base, src, top, left, wp, plane):
    """dst[base + (top + h) * wp + left + w] = src[h, w], and 0 on the rest of dst[base:base + plane] (the
    padding only: each element is written once)."""
    h_, w_ = src.shape
    zero_run(dst, base, top * wp + left)
    for h in range(h_):
        o = base + (top + h) * wp + left
        copy_run(dst, o, src[h], 0, 1, w_)
        zero_run(dst, o + w_, (o + wp if h < h_ - 1 else base + plane) - o - w_)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def pad_planes(x, xp, top, left, wp):
    """xp[n, c, (top + h) * wp + left + w] = x[n, c, h, w]; every other element of xp (N, C, L) is 0."""
    n_, c_ = x.shape[0], x.shape[1]
    for task in prange(n_ * c_):
        n, c = task // c_, task % c_
        padded_plane(xp[n, c], 0, x[n, c], top, left, wp, xp.shape[2])


def padded(x: np.ndarray, top: int, bottom: int, left: int, right: int) -> tuple[np.ndarray, int]:
    """x as (N, C, Hp*Wp) zero-padded planes (no copy when there is no padding), and Wp."""
    n, c, h, w = x.shape
    hp, wp = h + top + bottom, w + left + right
    if top == bottom == left == right == 0:
        return x.reshape(n, c, h * w), wp
    xp = np.empty((n, c, hp * wp), dtype=x.dtype)
    pad_planes(x, xp, top, left, wp)
    return xp, wp
