"""The conv kernels' building blocks, Numba: one register-blocked matmul whose operand rows may be shifted
windows into other arrays, the im2col tile packing of the strided-conv path, and the short run helpers (copy,
zero, add, padded planes, the float64 row sum that batch norm uses too).

Plain indexed loops only (no slices in hot loops: a slice costs more than a short row copy). Every inner loop
runs along a contiguous axis, so LLVM vectorises it without fastmath.
"""
from __future__ import annotations

import numpy as np
from numba import njit

FMA = {"contract"}


@njit(cache=True, fastmath=FMA, error_model="numpy")
def gemm(a, arow, aoff, b, brow, boff, c, m, kd, t):
    """c[i, j] += sum over q < kd of a[arow[i], aoff[i] + q] * b[brow[q], boff[q] + j], for i < m, j < t.

    The row/offset vectors let an operand row be a shifted window of a padded image row (the implicit-GEMM
    convolution) or an ordinary matrix row (identity rows, zero offsets). 4x4 register blocks (then one 2x4:
    LeNet-5 C3 input gradient 0.36 -> 0.29 ms at batch 64). All indices are unsigned and no views are taken:
    that spares Numba's negative-index wraparound (which blocks vectorisation) and the reference counting of
    views (which costs more than a short block)."""
    tu = np.uint64(t)
    i = 0
    while i + 4 <= m:
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
            for j in range(tu):
                x0, x1, x2, x3 = b[r0, f0 + j], b[r1, f1 + j], b[r2, f2 + j], b[r3, f3 + j]
                c[i0, j] += w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
                c[i1, j] += w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
                c[i2, j] += w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
                c[i3, j] += w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3
            q += 4
        for rest in range(q, kd):
            r0, f0, u = np.uint64(brow[rest]), np.uint64(boff[rest]), np.uint64(rest)
            w00, w10, w20, w30 = a[a0, o0 + u], a[a1, o1 + u], a[a2, o2 + u], a[a3, o3 + u]
            for j in range(tu):
                x0 = b[r0, f0 + j]
                c[i0, j] += w00 * x0
                c[i1, j] += w10 * x0
                c[i2, j] += w20 * x0
                c[i3, j] += w30 * x0
        i += 4
    if i + 2 <= m:  # a 2x4 block: m = 6 (LeNet-5's C1 outputs, C3's inputs) would leave two single rows
        i0, i1 = np.uint64(i), np.uint64(i + 1)
        a0, a1, o0, o1 = np.uint64(arow[i]), np.uint64(arow[i + 1]), np.uint64(aoff[i]), np.uint64(aoff[i + 1])
        q = 0
        while q + 4 <= kd:
            r0, r1, r2, r3 = np.uint64(brow[q]), np.uint64(brow[q + 1]), np.uint64(brow[q + 2]), np.uint64(brow[q + 3])
            f0, f1, f2, f3 = np.uint64(boff[q]), np.uint64(boff[q + 1]), np.uint64(boff[q + 2]), np.uint64(boff[q + 3])
            u = np.uint64(q)
            w00, w01, w02, w03 = a[a0, o0 + u], a[a0, o0 + u + 1], a[a0, o0 + u + 2], a[a0, o0 + u + 3]
            w10, w11, w12, w13 = a[a1, o1 + u], a[a1, o1 + u + 1], a[a1, o1 + u + 2], a[a1, o1 + u + 3]
            for j in range(tu):
                x0, x1, x2, x3 = b[r0, f0 + j], b[r1, f1 + j], b[r2, f2 + j], b[r3, f3 + j]
                c[i0, j] += w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
                c[i1, j] += w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
            q += 4
        for rest in range(q, kd):
            r0, f0, u = np.uint64(brow[rest]), np.uint64(boff[rest]), np.uint64(rest)
            w00, w10 = a[a0, o0 + u], a[a1, o1 + u]
            for j in range(tu):
                x0 = b[r0, f0 + j]
                c[i0, j] += w00 * x0
                c[i1, j] += w10 * x0
        i += 2
    for row in range(i, m):
        i0, a0, o0 = np.uint64(row), np.uint64(arow[row]), np.uint64(aoff[row])
        q = 0
        while q + 4 <= kd:
            r0, r1, r2, r3 = np.uint64(brow[q]), np.uint64(brow[q + 1]), np.uint64(brow[q + 2]), np.uint64(brow[q + 3])
            f0, f1, f2, f3 = np.uint64(boff[q]), np.uint64(boff[q + 1]), np.uint64(boff[q + 2]), np.uint64(boff[q + 3])
            u = np.uint64(q)
            w00, w01, w02, w03 = a[a0, o0 + u], a[a0, o0 + u + 1], a[a0, o0 + u + 2], a[a0, o0 + u + 3]
            for j in range(tu):
                c[i0, j] += w00 * b[r0, f0 + j] + w01 * b[r1, f1 + j] + w02 * b[r2, f2 + j] + w03 * b[r3, f3 + j]
            q += 4
        for rest in range(q, kd):
            r0, f0, w00 = np.uint64(brow[rest]), np.uint64(boff[rest]), a[a0, o0 + np.uint64(rest)]
            for j in range(tu):
                c[i0, j] += w00 * b[r0, f0 + j]


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


@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def row_sum(row):
    """sum(row) in float64 (conv bias gradients, batch-norm means); reassociation lets LLVM keep vector partial
    sums (the order is fixed by the compiled code, so results do not depend on the thread count)."""
    total = 0.0
    for p in range(np.uint64(row.shape[0])):
        total += float(row[p])
    return total


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def zero_run(dst, d0, count):
    """dst[d0 + u] = 0 for u < count."""
    if count <= 0:
        return
    d = np.uint64(d0)
    for u in range(np.uint64(count)):
        dst[d + u] = 0


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
