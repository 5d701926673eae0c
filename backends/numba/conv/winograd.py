"""The ``winograd`` conv path (3x3 kernels, stride 1, no dilation), Numba: Winograd's minimal filtering F(2x2, 3x3).

Each 2x2 block of outputs (a tile) is computed from the 4x4 block of input it sees with 16 products per input
and output channel instead of 36: the input tile d and the kernel g are transformed, V = B^T d B and U = G g G^T,
the 16 elementwise positions (xi) each become one GEMM over the input channels, M[xi] = V[xi] x U[xi], and the
output tile is A^T M A. So the GEMMs do 4/9 of the direct conv's multiplies; the transforms are additions (and
halvings in G, applied to the weights once per call, in float64); the transforms' coefficients are 0, +-1 and
+-1/2, and the float32 error measured against float64 stays within 1.5 times the direct conv's (ResNet-20 sizes).

Operands are the channels path's (channels.py): each task (image, group, band of output rows) lays its input rows
out channel-last in a zero-padded window (``fill_window``), so every transform is a loop over channels that
vectorises, the GEMMs are the channels path's register tiles (tiles as rows, output channels as the vector
axis), and the channels epilogue transposes the output back to NCHW, adds the bias (and residual) and activates.

Non-finite values: a transform mixes the 16 inputs of a tile, so one inf reaches outputs as NaN where the direct
conv gives inf (inf - inf), and inputs above a quarter of the dtype's range (8.5e37 in float32) overflow in V
where the direct conv's sums need not. Each task checks its windows for both (``(x * 4) * 0`` is NaN exactly
then), and a call that met one, or whose weights or transformed weights are not finite, is recomputed on the
channels path.

* Forward (:func:`forward`; task: image, group, band of output rows): for ResNet-20's 32- and 64-channel 3x3
  layers (see plan.py).
* Input gradient (stride 1): that forward on dy with the weights flipped (``_loops.flipped_data_grad``).
* Weight gradient (:func:`weight_grad`; task: chunk of images, group): dU[xi] = sum over tiles of V[xi]^T x
  dM[xi], dM = A dY A^T the output gradient's tiles transformed, one partial per chunk of images summed in order,
  then dw = G^T dU G per kernel (float64).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic
from numba.np.arrayobj import make_array

from ..vectors import (
    I64,
    check_runs,
    masked_load,
    masked_store,
    splat,
    transpose_block,
    vector_loop,
    vector_type,
)
from . import channels
from ._loops import Pads, Pair, cdiv, fill_window
from .channels import WEIGHT_CHUNKS
from .simd import CHANNEL_ROWS, lanes

TILES = 64  # output tiles (2x2 outputs each) per forward task at most (unless one row of tiles has more), and
           # at least per weight-gradient GEMM


def fits(w_shape, stride: Pair, dilation: Pair) -> bool:
    """Whether the path can run a pass with these weights: 3x3 kernels, stride 1, no dilation."""
    return tuple(w_shape[2:]) == (3, 3) and stride == (1, 1) and dilation == (1, 1)


def _window_tile(size: int, transform, name: str):
    """The intrinsic ``tile(v, v0, plane, win, w0, row, cg)``: v[v0 + xi * plane + c] = (T d T^T)[xi] for c < cg,
    xi = 4 i + j, d[a][b] = win[w0 + a * row + b * cg + c] the tile's size x size values (channel-last) and T the
    4 x size matrix that ``transform`` applies to ``size`` values (vectors): first along d's rows, then along
    the columns of that. Whole vectors of channels, the last one masked; v and win 1-D C-contiguous arrays of
    one float dtype."""

    def tile(typingctx, v, v0, plane, win, w0, row, cg):
        check_runs(name, v, win)
        return types.void(v, types.intp, types.intp, win, types.intp, types.intp, types.intp), codegen

    def codegen(context, builder, signature, args):
        v_, win_ = (make_array(signature.args[i])(context, builder, args[i]) for i in (0, 3))
        v0, plane, w0, row, cg = args[1], args[2], args[4], args[5], args[6]
        itemsize, lanes, vec = vector_type(context, signature.args[0].dtype)
        index = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))

        def step(c):
            mask = builder.icmp_signed("<", builder.add(index, splat(builder, index.type, c)),
                                       splat(builder, index.type, cg))
            d = [[masked_load(builder, builder.gep(win_.data, [builder.add(builder.add(w0, c), builder.add(
                builder.mul(row, ir.Constant(I64, a)), builder.mul(cg, ir.Constant(I64, b))))]), vec, mask)
                for b in range(size)] for a in range(size)]
            rows = [transform(builder, d[a]) for a in range(size)]  # d T^T, row by row
            for j in range(4):  # then T (d T^T), column by column
                for i, value in enumerate(transform(builder, [rows[a][j] for a in range(size)])):
                    at = builder.add(builder.add(v0, c), builder.mul(plane, ir.Constant(I64, 4 * i + j)))
                    masked_store(builder, value, builder.gep(v_.data, [at]), mask)

        vector_loop(builder, cg, lanes, name, step)
        return context.get_dummy_value()

    tile.__name__ = tile.__qualname__ = name
    return intrinsic(tile)


def _b_transform(builder, d):
    """(d0 - d2, d1 + d2, d2 - d1, d1 - d3): B^T applied to four values (vectors)."""
    return [builder.fsub(d[0], d[2]), builder.fadd(d[1], d[2]), builder.fsub(d[2], d[1]), builder.fsub(d[1], d[3])]


@intrinsic
def _output_tile(typingctx, y, y0, y1, m, m0, plane, kpad, right, below):
    """``_output_tile(y, y0, y1, m, m0, plane, kpad, right, below)``: a tile's 2x2 outputs (A^T M A, A^T = [[1, 1,
    1, 0], [0, 1, -1, -1]]) for k < kpad, M[xi] = m[m0 + xi * plane + k]: the top row's at y[y0 + k] and (where
    ``right``) y[y0 + kpad + k], the bottom row's (where ``below``) at y1 likewise. y and m are 1-D C-contiguous
    arrays of one float dtype."""
    check_runs("_output_tile", y, m)
    sig = types.void(y, types.intp, types.intp, m, types.intp, types.intp, types.intp, types.boolean, types.boolean)

    def codegen(context, builder, signature, args):
        y_, m_ = (make_array(signature.args[i])(context, builder, args[i]) for i in (0, 3))
        y0, y1, m0, plane, kpad, right, below = args[1], args[2], args[4], args[5], args[6], args[7], args[8]
        itemsize, lanes, vec = vector_type(context, signature.args[0].dtype)
        index = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
        flags = ir.VectorType(ir.IntType(1), lanes)

        def step(k):
            mask = builder.icmp_signed("<", builder.add(index, splat(builder, index.type, k)),
                                       splat(builder, index.type, kpad))
            mv = [masked_load(builder, builder.gep(m_.data, [builder.add(builder.add(m0, k), builder.mul(
                plane, ir.Constant(I64, xi)))]), vec, mask) for xi in range(16)]
            rows = [_a_transform(builder, mv[4 * i:4 * i + 4]) for i in range(4)]  # M A, row by row
            left = _a_transform(builder, [r[0] for r in rows])  # A^T (M A): the outputs' left column (top, bottom)
            second = _a_transform(builder, [r[1] for r in rows])  # ... and their right column
            right_mask = builder.and_(mask, splat(builder, flags, right))
            below_mask = builder.and_(mask, splat(builder, flags, below))
            for at, value, where in ((y0, left[0], mask), (builder.add(y0, kpad), second[0], right_mask),
                                     (y1, left[1], below_mask),
                                     (builder.add(y1, kpad), second[1], builder.and_(right_mask, below_mask))):
                masked_store(builder, value, builder.gep(y_.data, [builder.add(at, k)]), where)

        vector_loop(builder, kpad, lanes, "winograd_out", step)
        return context.get_dummy_value()
    return sig, codegen


def _a_transform(builder, m):
    """((m0 + m1) + m2, (m1 - m2) - m3): A^T applied to four values (vectors)."""
    return [builder.fadd(builder.fadd(m[0], m[1]), m[2]), builder.fsub(builder.fsub(m[1], m[2]), m[3])]


def _a_spread(builder, e):
    """(e0, e0 + e1, e0 - e1, -e1): A applied to two values (vectors), the adjoint of :func:`_a_transform`."""
    return [e[0], builder.fadd(e[0], e[1]), builder.fsub(e[0], e[1]), builder.fneg(e[1])]


_input_tile = _window_tile(4, _b_transform, "winograd_input_tile")
"""V = B^T d B of a tile's 4x4 inputs d, B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
_gradient_tile = _window_tile(2, _a_spread, "winograd_gradient_tile")
"""dM = A e A^T of a tile's 2x2 output gradients e, A = [[1, 0], [1, 1], [1, -1], [0, -1]]: the gradient of M (the
GEMMs' outputs) from the tile's."""


@njit(cache=True, fastmath=False, error_model="numpy")
def _input_transform(v, win, first, tiles, tw, wp, cg, rows):
    """v[xi, first + t, c] = (B^T d B)[xi] for tile t < tiles of the window (d: its 4x4 inputs from window
    position (2 * (t // tw), 2 * (t % tw))); v is (16, rows, cg), flat."""
    for t in range(tiles):
        _input_tile(v, (first + t) * cg, rows * cg, win, (2 * (t // tw) * wp + 2 * (t % tw)) * cg, wp * cg, cg)


@njit(cache=True, fastmath=False, error_model="numpy")
def _output_transform(y, m, tiles, tw, ow, out_rows, rows, kpad):
    """y[p, k] = (A^T M A) of tile t at its outputs p (band position (2 * (t // tw) + a) * ow + 2 * (t % tw) + b,
    those inside the band's out_rows x ow outputs); m is (16, rows, kpad), y (positions, kpad), both flat."""
    for t in range(tiles):
        oh, ow0 = 2 * (t // tw), 2 * (t % tw)
        p = (oh * ow + ow0) * kpad
        _output_tile(y, p, p + ow * kpad, m, t * kpad, rows * kpad, kpad, ow0 + 1 < ow, oh + 1 < out_rows)


@njit(cache=True, fastmath=False, error_model="numpy")
def _transformable(win, cg):
    """True when the window's elements are all finite and below the transforms' overflow (x * 4 finite in the
    window's dtype), checked per channel lane so that the loop vectorises."""
    chk = np.zeros(cg, dtype=win.dtype)
    four = np.full(1, 4.0, dtype=win.dtype)[0]
    for p in range(np.uint64(win.size // cg)):
        at = p * np.uint64(cg)
        for c in range(np.uint64(cg)):
            chk[c] += (win[at + c] * four) * chk[c]
    for c in range(cg):
        if chk[c] != 0.0:
            return False
    return True


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _winograd_forward(x, u, out, b, res, top, left, wp, band, kind, slope, bad):
    """out = act(conv3x3(x, w) + b (+ res)) (module docstring), u the transformed weights (groups, 16, Cg, Kpad);
    bad[task] set where the task's window holds a value the transforms cannot take (the caller recomputes)."""
    n_, c_, _, _ = x.shape
    groups, _, cg, kpad = u.shape
    _, k_, oh, ow = out.shape
    kg = k_ // groups
    lane = lanes(out)
    bands = (oh + band - 1) // band
    tw = (ow + 1) // 2
    for task in prange(n_ * groups * bands):
        n, g, h0 = task // (groups * bands), task // bands % groups, task % bands * band
        out_rows = min(band, oh - h0)
        th = (out_rows + 1) // 2
        tiles = th * tw
        tmp = np.empty(lane * lane, dtype=out.dtype)
        win = np.empty((2 * th + 2) * wp * cg, dtype=out.dtype)
        fill_window(win, x, n, g * cg, cg, h0 - top, 2 * th + 2, wp, left, tmp)
        if not _transformable(win, cg):
            bad[task] = True
            continue
        rows = (tiles + CHANNEL_ROWS - 1) // CHANNEL_ROWS * CHANNEL_ROWS
        v = np.empty((16, 1, rows * cg), dtype=out.dtype)
        _input_transform(v.reshape(-1), win, 0, tiles, tw, wp, cg, rows)
        aoff = np.zeros(rows, dtype=np.int64)  # rows past the tiles read the first tile's
        for t in range(tiles):
            aoff[t] = t * cg
        arow, brow, boff = np.zeros(rows, dtype=np.int64), np.arange(cg), np.zeros(cg, dtype=np.int64)
        m = np.zeros((16, rows, kpad), dtype=out.dtype)
        for xi in range(16):
            channels.tiles(m[xi], v[xi], arow, aoff, u[g, xi], brow, boff, tiles, 0, cg)
        count = out_rows * ow
        padded = (count + lane - 1) // lane * lane
        y = np.empty((padded, kpad), dtype=out.dtype)
        _output_transform(y.reshape(-1), m.reshape(-1), tiles, tw, ow, out_rows, rows, kpad)
        runs = np.empty(lane * padded, dtype=out.dtype)
        channels.epilogue(out, y, count, b, res, n, g * kg, kg, h0, kind, slope, runs)


@njit(cache=True, fastmath=False, error_model="numpy")
def _gradient_transform(dm, win, first, tiles, tw, wp, kg, rows, kpad):
    """dm[xi, first + t, k] = (A e A^T)[xi] for tile t < tiles of the output-gradient window (e: its 2x2 outputs
    from window position (2 * (t // tw), 2 * (t % tw))); dm is (16, rows, kpad), flat."""
    for t in range(tiles):
        _gradient_tile(dm, (first + t) * kpad, rows * kpad, win, (2 * (t // tw) * wp + 2 * (t % tw)) * kg, wp * kg,
                       kg)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _winograd_weight(dy, x, part, top, left, wp, band, bad):
    """part[chunk, g, xi, c, k] = sum over the chunk's images and their tiles t of V[xi, t, c] * dM[xi, t, k]
    (the gradient of U; module docstring): per band of output rows, the input and output-gradient windows
    transformed into buffers of at least TILES tiles (the bands of several images for small planes); then per xi
    V's buffer transposed (tiles along its rows) and one GEMM over the tiles on the channels path's tiles (rows =
    input channels, vectors = output channels); bad[chunk, g] set where a window holds a value the transforms
    cannot take (the caller recomputes)."""
    chunks, groups, _, crows, kpad = part.shape
    n_, k_, oh, ow = dy.shape
    cg, kg = x.shape[1] // groups, k_ // groups
    lane = lanes(part)
    tw = (ow + 1) // 2
    th = (min(band, oh) + 1) // 2
    per = (oh + band - 1) // band  # bands per image
    rows = max(TILES, th * tw)
    dwp = 2 * tw
    for task in prange(chunks * groups):
        chunk, g = task // groups, task % groups
        mine = part[chunk, g]
        mine[:] = 0
        tmp = np.empty(lane * lane, dtype=x.dtype)
        win = np.empty((2 * th + 2) * wp * cg, dtype=x.dtype)
        dwin = np.empty(2 * th * dwp * kg, dtype=x.dtype)
        v = np.empty(16 * rows * cg, dtype=x.dtype)
        vt = np.empty((cg, rows), dtype=x.dtype)
        dm = np.zeros((16, rows, kpad), dtype=x.dtype)  # the columns past kg stay 0
        arow = np.zeros(crows, dtype=np.int64)  # row c of V[xi]^T, rows past cg read row 0
        arow[:cg] = np.arange(cg)
        aoff, brow, boff = np.zeros(crows, dtype=np.int64), np.arange(rows), np.zeros(rows, dtype=np.int64)
        filled = 0
        units = ((chunk + 1) * n_ // chunks - chunk * n_ // chunks) * per
        for unit in range(units):
            n, h0 = chunk * n_ // chunks + unit // per, unit % per * band
            out_rows = min(band, oh - h0)
            tiles = (out_rows + 1) // 2 * tw
            x_rows, dy_rows = 2 * ((out_rows + 1) // 2) + 2, 2 * ((out_rows + 1) // 2)
            fill_window(win, x, n, g * cg, cg, h0 - top, x_rows, wp, left, tmp)
            fill_window(dwin, dy, n, g * kg, kg, h0, dy_rows, dwp, 0, tmp)
            if not (_transformable(win[:x_rows * wp * cg], cg) and _transformable(dwin[:dy_rows * dwp * kg], kg)):
                bad[chunk, g] = True
                break
            _input_transform(v, win, filled, tiles, tw, wp, cg, rows)
            _gradient_transform(dm.reshape(-1), dwin, filled, tiles, tw, dwp, kg, rows, kpad)
            filled += tiles
            if unit == units - 1 or filled + th * tw > rows:  # no room for another band: the GEMMs
                for xi in range(16):
                    _transpose(vt.reshape(-1), rows, v, xi * rows * cg, filled, cg)
                    channels.tiles(mine[xi], vt, arow, aoff, dm[xi], brow, boff, cg, 0, filled)
                filled = 0


@njit(cache=True, fastmath=False, error_model="numpy")
def _transpose(dst, dstride, src, s0, rows, cols):
    """dst[c * dstride + t] = src[s0 + t * cols + c] for t < rows, c < cols: L x L blocks by transpose_block, the
    edges element by element."""
    lane = lanes(dst)
    whole_r, whole_c = rows - rows % lane, cols - cols % lane
    for t0 in range(0, whole_r, lane):
        for c0 in range(0, whole_c, lane):
            transpose_block(dst, c0 * dstride + t0, dstride, src, s0 + t0 * cols + c0, cols)
    for t in range(rows):
        for c in range(whole_c if t < whole_r else 0, cols):
            dst[c * dstride + t] = src[s0 + t * cols + c]


def transformed_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """U = G g G^T of w (K, Cg, 3, 3) as (groups, 16, Cg, Kpad): per position xi, the input channels' rows of the
    group's output channels, zeros up to ``channels.padded_columns``."""
    k, cg = w.shape[:2]
    kg = k // groups
    u = np.zeros((groups, 16, cg, channels.padded_columns(kg, w.itemsize)), dtype=w.dtype)
    _weight_transform(np.ascontiguousarray(w.reshape(groups, kg, cg, 9).transpose(0, 2, 3, 1)), u)
    return u


@njit(cache=True, fastmath=False, error_model="numpy")
def _weight_transform(wt, u):
    """u[g, 4 i + j, c, k] = (G g G^T)[i, j] of the kernel wt[g, c, :, k] (the 9 taps, row by row), in float64,
    G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]: columns first (t = g G^T), then G t; each
    step one loop over the output channels, contiguous in every array it reads and writes (so it vectorises)."""
    groups, cg, _, kg = wt.shape
    src, dst = wt.reshape(-1), u.reshape(-1)
    t = np.empty(12 * kg)  # t[r, j, k]
    kpad = u.shape[3]
    for g in range(groups):
        for c in range(cg):
            base = (g * cg + c) * 9 * kg
            for r in range(3):
                for j in range(4):
                    at = base + 3 * r * kg
                    _g_row(t, (4 * r + j) * kg, src, at, at + kg, at + 2 * kg, kg, j)
            for i in range(4):
                for j in range(4):
                    _g_row(dst, ((g * 16 + 4 * i + j) * cg + c) * kpad, t, j * kg, (4 + j) * kg, (8 + j) * kg, kg, i)


@njit(cache=True, fastmath=False, error_model="numpy")
def _g_row(dst, d0, src, a0, b0, e0, count, i):
    """dst[d0 + k] = row i of G (a, b, e) = (a, (a + b + e) / 2, (a - b + e) / 2, e)[i], in float64, for a, b, e =
    src[a0 + k], src[b0 + k], src[e0 + k], k < count."""
    d, a_, b_, e_ = np.uint64(d0), np.uint64(a0), np.uint64(b0), np.uint64(e0)
    for k in range(np.uint64(count)):
        a, b, e = np.float64(src[a_ + k]), np.float64(src[b_ + k]), np.float64(src[e_ + k])
        dst[d + k] = a if i == 0 else 0.5 * (a + b + e) if i == 1 else 0.5 * (a - b + e) if i == 2 else e


def band_rows(out_hw: Pair) -> int:
    """Output rows per task: an even number (whole tiles), equal bands of at most TILES tiles."""
    return 2 * channels.band_rows((cdiv(out_hw[0], 2), cdiv(out_hw[1], 2)), TILES)


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, stride: Pair, padding: Pads,
            dilation: Pair, groups: int, kind: int, slope: float, residual: np.ndarray | None = None) -> None:
    """y = act(cross_correlate(x, w) + b (+ residual)) by :func:`_winograd_forward` (needs :func:`fits`); on the
    channels path instead where a value could not take the transforms (module docstring)."""
    oh, ow = y.shape[2:]
    u = transformed_weights(w, groups)
    res = np.empty((0, 0, 0, 0), dtype=y.dtype) if residual is None else residual
    band = band_rows((oh, ow))
    bad = np.ones(1, dtype=np.bool_)
    if np.isfinite(u).all():
        bad = np.zeros(x.shape[0] * groups * cdiv(oh, band), dtype=np.bool_)
        _winograd_forward(x, u, y, b, res, padding[0], padding[2], 2 * cdiv(ow, 2) + 2, band, kind, slope, bad)
    if bad.any():
        channels.forward(x, w, b, y, stride, padding, dilation, groups, kind, slope, residual)


def weight_grad(dy: np.ndarray, x: np.ndarray, w_shape, stride: Pair, padding: Pads, dilation: Pair,
                groups: int) -> np.ndarray:
    """dw (K, Cg, 3, 3) = G^T dU G per kernel (:func:`_weight_from_partials`), dU summed over at most
    WEIGHT_CHUNKS partials of :func:`_winograd_weight` in order (results do not depend on the thread count); on
    the channels path instead where a value could not take the transforms (module docstring)."""
    k, cg = w_shape[:2]
    kg = k // groups
    oh, ow = dy.shape[2:]
    chunks = min(WEIGHT_CHUNKS, x.shape[0])
    rows = cdiv(cg, CHANNEL_ROWS) * CHANNEL_ROWS
    part = np.empty((chunks, groups, 16, rows, channels.padded_columns(kg, x.itemsize)), dtype=x.dtype)
    bad = np.zeros((chunks, groups), dtype=np.bool_)
    _winograd_weight(dy, x, part, padding[0], padding[2], 2 * cdiv(ow, 2) + 2, band_rows((oh, ow)), bad)
    if bad.any():
        return channels.weight_grad(dy, x, w_shape, stride, padding, dilation, groups)
    dw = np.empty((groups, kg, cg, 9), dtype=x.dtype)
    _weight_from_partials(part, dw)
    return dw.reshape(w_shape)


@njit(cache=True, fastmath=False, error_model="numpy")
def _weight_from_partials(part, dw):
    """dw[g, k, c, 3 r + s] = (G^T dU G)[r, s], dU[xi] = the sum of part[:, g, xi, c, k] over the chunks in order
    (in the arrays' dtype), the transform in float64, G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2,
    1]]; loops over the output channels innermost (contiguous in part)."""
    chunks, groups, _, _, _ = part.shape
    _, kg, cg, _ = dw.shape
    du = np.empty((16, kg), dtype=part.dtype)
    t = np.empty((12, kg))
    for g in range(groups):
        for c in range(cg):
            for xi in range(16):
                for k in range(kg):
                    du[xi, k] = part[0, g, xi, c, k]
                for chunk in range(1, chunks):
                    for k in range(kg):
                        du[xi, k] += part[chunk, g, xi, c, k]
            for j in range(4):  # G^T along i: t[r, j]
                for k in range(kg):
                    m0, m1 = np.float64(du[j, k]), np.float64(du[4 + j, k])
                    m2, m3 = np.float64(du[8 + j, k]), np.float64(du[12 + j, k])
                    t[j, k], t[4 + j, k], t[8 + j, k] = m0 + 0.5 * (m1 + m2), 0.5 * (m1 - m2), 0.5 * (m1 + m2) + m3
            for r in range(3):  # then along j
                for k in range(kg):
                    m0, m1, m2, m3 = t[4 * r, k], t[4 * r + 1, k], t[4 * r + 2, k], t[4 * r + 3, k]
                    dw[g, k, c, 3 * r] = m0 + 0.5 * (m1 + m2)
                    dw[g, k, c, 3 * r + 1] = 0.5 * (m1 - m2)
                    dw[g, k, c, 3 * r + 2] = 0.5 * (m1 + m2) + m3
