"""Max, average and Lp pooling, Numba: every kernel is parallel over the (n, c) planes, so forward writes and
backward scatter-adds stay inside one thread's plane (race-free).

Windows follow PyTorch: a window starts at ``o * stride - padding``; padding cells are -inf for max and 0 for
the sums; with ceil_mode the last window may hang past the padded input, and those cells never count.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from cnnkit.backends import LEAKY_SLOPE, implements, pool_output_size

from .activation import (
    LEAKY_RELU,
    RELU,
    SCALED_TANH,
    SIGMOID,
    TANH,
    activation_backward,
    code,
    leaky_relu_grad,
    relu_grad,
    scaled_tanh_grad,
    sigmoid_grad,
    tanh_grad,
)

Pair = tuple[int, int]


def _planes(x: np.ndarray) -> np.ndarray:
    """x as a contiguous (N*C, H, W) stack of planes."""
    return np.ascontiguousarray(x).reshape(-1, x.shape[2], x.shape[3])


def _output(x_shape, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool) -> Pair:
    return tuple(pool_output_size(x_shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode)
                 for a in (0, 1))


@njit(cache=True, fastmath=False, error_model="numpy")
def _span(o, stride, pad, kernel, size, count_include_pad):
    """PyTorch's avg window along one axis: (first, last + 1) clipped to the input, and its divisor length
    (clipped to the padded input when count_include_pad, else to the input)."""
    start = o * stride - pad
    end = min(start + kernel, size + pad)
    full = end - start
    start, end = max(start, 0), min(end, size)
    return start, end, full if count_include_pad else end - start


# ----------------------------------------------------------------------------------------------- max
@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _max_forward(x, y, argmax, kh, kw, sh, sw, ph, pw, dh, dw):
    h_, w_ = x.shape[1], x.shape[2]
    for t in prange(x.shape[0]):
        for oh in range(y.shape[1]):
            for ow in range(y.shape[2]):
                best = -np.inf
                where = -1  # stays -1 (with -inf) only for a window that holds no input cell
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if 0 <= ih < h_:
                        for j in range(kw):
                            iw = ow * sw - pw + j * dw
                            if 0 <= iw < w_:
                                v = x[t, ih, iw]
                                if v > best or v != v or where < 0:  # first maximum; a NaN wins
                                    best = v
                                    where = ih * w_ + iw
                y[t, oh, ow] = best
                argmax[t, oh, ow] = where


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _max_backward(dy, argmax, dx):
    for t in prange(dx.shape[0]):
        plane = dx[t]
        plane[:] = 0
        for o in range(dy.shape[1]):
            if argmax[t, o] >= 0:
                plane[argmax[t, o]] += dy[t, o]


@implements("numba")
def max_pool2d_forward(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair,
                       ceil_mode: bool):
    """(y, argmax): window maxima with -inf padding; argmax is the flat h * W + w index of the first maximum."""
    out = _output(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    y = np.empty(x.shape[:2] + out, dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.int64)
    _max_forward(_planes(x), y.reshape(-1, *out), argmax.reshape(-1, *out), *kernel_size, *stride, *padding,
                 *dilation)
    return y, argmax


@implements("numba")
def max_pool2d_backward(dy: np.ndarray, argmax: np.ndarray, x_shape) -> np.ndarray:
    """Scatter-adds dy onto the argmax cells of each plane."""
    n, c, h, w = x_shape
    dx = np.empty((n * c, h * w), dtype=dy.dtype)
    _max_backward(np.ascontiguousarray(dy).reshape(n * c, -1),
                  np.ascontiguousarray(argmax, dtype=np.int64).reshape(n * c, -1), dx)
    return dx.reshape(x_shape)


# ----------------------------------------------------------------------------------------------- average
@njit(cache=True, fastmath=False, error_model="numpy")
def _inner(sw, pw, kw, w_, ow_):
    """[lo, hi): the output columns whose window lies wholly inside the input row (its divisor is then kw in
    both count_include_pad modes)."""
    lo = min((pw + sw - 1) // sw, ow_)
    return lo, max(lo, min(ow_, (w_ + pw - kw) // sw + 1))


@njit(cache=True, fastmath=False, error_model="numpy")
def _column_divisors(sw, pw, kw, w_, ow_, include_pad):
    """The width part of each output column's divisor (the forward and the backward share it)."""
    dvw = np.empty(ow_)
    for ow in range(ow_):
        dvw[ow] = _span(ow, sw, pw, kw, w_, include_pad)[2]
    return dvw


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _avg_forward(x, y, kh, kw, sh, sw, ph, pw, include_pad):
    """Window sums added in (row, column) order; the columns of inner windows as one vectorised run per tap."""
    h_, w_ = x.shape[1], x.shape[2]
    lo, hi = _inner(sw, pw, kw, w_, y.shape[2])
    dvw = _column_divisors(sw, pw, kw, w_, y.shape[2], include_pad)
    for t in prange(x.shape[0]):
        lanes = np.empty(y.shape[2], dtype=np.float64)
        for oh in range(y.shape[1]):
            h0, h1, dvh = _span(oh, sh, ph, kh, h_, include_pad)
            for ow in range(y.shape[2]):
                lanes[ow] = 0.0
            for ih in range(h0, h1):
                row = x[t, ih]
                for j in range(kw):
                    off = np.uint64(j - pw + lo * sw)
                    for u in range(np.uint64(hi - lo)):
                        lanes[np.uint64(lo) + u] += row[off + u * np.uint64(sw)]
            for ow in range(y.shape[2] if lo > 0 or hi < y.shape[2] else 0):  # the edge windows
                if lo <= ow < hi:
                    continue
                w0, w1, _ = _span(ow, sw, pw, kw, w_, include_pad)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        lanes[ow] += x[t, ih, iw]
            for ow in range(y.shape[2]):
                y[t, oh, ow] = lanes[ow] / (dvh * dvw[ow])


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _avg_backward(dy, dx, kh, kw, sh, sw, ph, pw, include_pad):
    """Each window adds dy / divisor to its cells; inner windows' columns as one vectorised run per tap."""
    h_, w_ = dx.shape[1], dx.shape[2]
    lo, hi = _inner(sw, pw, kw, w_, dy.shape[2])
    dvw = _column_divisors(sw, pw, kw, w_, dy.shape[2], include_pad)
    for t in prange(dx.shape[0]):
        plane = dx[t]
        plane[:, :] = 0
        g = np.empty(dy.shape[2], dtype=np.float64)
        for oh in range(dy.shape[1]):
            h0, h1, dvh = _span(oh, sh, ph, kh, h_, include_pad)
            for ow in range(dy.shape[2]):
                g[ow] = dy[t, oh, ow] / (dvh * dvw[ow])
            for ow in range(dy.shape[2] if lo > 0 or hi < dy.shape[2] else 0):  # the edge windows
                if ow < lo or ow >= hi:
                    w0, w1, _ = _span(ow, sw, pw, kw, w_, include_pad)
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            plane[ih, iw] += g[ow]
            for ih in range(h0, h1):
                row = plane[ih]
                for j in range(kw):
                    off = np.uint64(j - pw + lo * sw)
                    for u in range(np.uint64(hi - lo)):
                        row[off + u * np.uint64(sw)] += g[np.uint64(lo) + u]


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _tiled_forward(x, y, kh, kw):
    """Tiled windows (stride = kernel, no padding, all whole): each output one sum, the same (row, column)
    order as :func:`_avg_forward`, no per-row lanes; one task per plane."""
    area = float(kh * kw)
    for t in prange(x.shape[0]):
        for oh in range(y.shape[1]):
            for ow in range(y.shape[2]):
                acc = 0.0
                for i in range(kh):
                    for j in range(kw):
                        acc += x[t, oh * kh + i, ow * kw + j]
                y[t, oh, ow] = acc / area


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _tiled_2x2_forward(x, y):
    """:func:`_tiled_forward` of 2x2 windows (LeNet's pool), written out (much faster than the two short
    loops) and a kernel of its own, so that a model pooling only 2x2 does not compile the general loops."""
    for t in prange(x.shape[0]):
        for oh in range(y.shape[1]):
            r0, r1 = x[t, 2 * oh], x[t, 2 * oh + 1]
            for ow in range(y.shape[2]):
                y[t, oh, ow] = (((float(r0[2 * ow]) + r0[2 * ow + 1]) + r1[2 * ow]) + r1[2 * ow + 1]) / 4.0


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _tiled_backward(dy, dx, kh, kw):
    """Tiled windows: every cell of a window gets dy / area; cells past the last whole window get 0."""
    area = float(kh * kw)
    for t in prange(dx.shape[0]):
        plane = dx[t]
        for oh in range(dy.shape[1]):
            for ow in range(dy.shape[2]):
                g = dy[t, oh, ow] / area
                for i in range(kh):
                    for j in range(kw):
                        plane[oh * kh + i, ow * kw + j] = g
            for iw in range(dy.shape[2] * kw, dx.shape[2]):
                for i in range(kh):
                    plane[oh * kh + i, iw] = 0
        plane[dy.shape[1] * kh:, :] = 0


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _tiled_2x2_backward(dy, dx, y, kind, slope, quarter):
    """:func:`_tiled_backward` of 2x2 windows, written out with flat unsigned indices: each dy / 4 to both rows
    of its window (``quarter``: 1/4 in the arrays' dtype, so g is what the plain backward stores), through the
    backward of activation ``kind`` (from its output y) when there is one."""
    t_, h_, w_ = dx.shape
    oh_, ow_ = dy.shape[1], dy.shape[2]
    dxf, dyf, yf, width, covered = dx.reshape(-1), dy.reshape(-1), y.reshape(-1), np.uint64(w_), np.uint64(2 * ow_)
    for t in prange(t_):
        for oh in range(oh_):
            row, src = np.uint64((t * h_ + 2 * oh) * w_), np.uint64((t * oh_ + oh) * ow_)
            _spread_rows(dxf, row, width, dyf, src, covered, yf, kind, slope, quarter)
            for iw in range(covered, width):
                dxf[row + iw] = 0
                dxf[row + width + iw] = 0
        for iw in range(np.uint64((t * h_ + 2 * oh_) * w_), np.uint64((t + 1) * h_ * w_)):
            dxf[iw] = 0


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _spread_rows(dx, row, width, dy, src, covered, y, kind, slope, quarter):
    """dx at both rows of a row of 2x2 windows (from flat index row, width apart) = the window's dy / 4, through
    activation ``kind``'s backward: one loop per kind (so each vectorises), the *_grad functions of activation.py."""
    if kind == RELU:
        for iw in range(covered):
            g = dy[src + (iw >> np.uint64(1))] * quarter
            dx[row + iw] = relu_grad(g, y[row + iw], slope)
            dx[row + width + iw] = relu_grad(g, y[row + width + iw], slope)
    elif kind == LEAKY_RELU:
        for iw in range(covered):
            g = dy[src + (iw >> np.uint64(1))] * quarter
            dx[row + iw] = leaky_relu_grad(g, y[row + iw], slope)
            dx[row + width + iw] = leaky_relu_grad(g, y[row + width + iw], slope)
    elif kind == SIGMOID:
        for iw in range(covered):
            g = dy[src + (iw >> np.uint64(1))] * quarter
            dx[row + iw] = sigmoid_grad(g, y[row + iw], slope)
            dx[row + width + iw] = sigmoid_grad(g, y[row + width + iw], slope)
    elif kind == TANH:
        for iw in range(covered):
            g = dy[src + (iw >> np.uint64(1))] * quarter
            dx[row + iw] = tanh_grad(g, y[row + iw], slope)
            dx[row + width + iw] = tanh_grad(g, y[row + width + iw], slope)
    elif kind == SCALED_TANH:
        for iw in range(covered):
            g = dy[src + (iw >> np.uint64(1))] * quarter
            dx[row + iw] = scaled_tanh_grad(g, y[row + iw], slope)
            dx[row + width + iw] = scaled_tanh_grad(g, y[row + width + iw], slope)
    else:
        for iw in range(covered):
            g = dy[src + (iw >> np.uint64(1))] * quarter
            dx[row + iw] = g
            dx[row + width + iw] = g


def _tiled(x_shape, out: Pair, kernel: Pair, stride: Pair, padding: Pair) -> bool:
    """True when the windows tile the input: stride = kernel, no padding, none hanging past the input (the
    divisor is then the window area in both count_include_pad modes)."""
    return (stride == kernel and padding == (0, 0) and out[0] * kernel[0] <= x_shape[2]
            and out[1] * kernel[1] <= x_shape[3] and out[0] > 0 and out[1] > 0)


@implements("numba")
def avg_pool2d_forward(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair, ceil_mode: bool,
                       count_include_pad: bool) -> np.ndarray:
    """Window sums over the zero-padded input divided by PyTorch's divisor."""
    out = _output(x.shape, kernel_size, stride, padding, (1, 1), ceil_mode)
    y = np.empty(x.shape[:2] + out, dtype=x.dtype)
    if not _tiled(x.shape, out, kernel_size, stride, padding):
        _avg_forward(_planes(x), y.reshape(-1, *out), *kernel_size, *stride, *padding, bool(count_include_pad))
    elif kernel_size == (2, 2):
        _tiled_2x2_forward(_planes(x), y.reshape(-1, *out))
    else:
        _tiled_forward(_planes(x), y.reshape(-1, *out), *kernel_size)
    return y


@implements("numba")
def avg_pool2d_backward(dy: np.ndarray, x_shape, kernel_size: Pair, stride: Pair, padding: Pair, ceil_mode: bool,
                        count_include_pad: bool, activation: str | None = None, y: np.ndarray | None = None,
                        negative_slope: float = LEAKY_SLOPE) -> np.ndarray:
    """Each input cell gets dy / divisor from every window that holds it; then, with ``activation``, the
    activation's backward from its output y (in the same pass for 2x2 tiles, LeNet's pools)."""
    n, c, h, w = x_shape
    dx = np.empty((n * c, h, w), dtype=dy.dtype)
    tiled = _tiled(x_shape, dy.shape[2:], kernel_size, stride, padding)
    if tiled and kernel_size == (2, 2):
        _tiled_2x2_backward(_planes(dy), dx, dx if activation is None else _planes(y), code(activation),
                            float(negative_slope), dy.dtype.type(0.25))
        return dx.reshape(x_shape)
    if tiled:
        _tiled_backward(_planes(dy), dx, *kernel_size)
    else:
        _avg_backward(_planes(dy), dx, *kernel_size, *stride, *padding, bool(count_include_pad))
    dx = dx.reshape(x_shape)
    return dx if activation is None else activation_backward(dx, y, activation, negative_slope)


# ----------------------------------------------------------------------------------------------- Lp
@njit(cache=True, fastmath=False, error_model="numpy")
def _pow(a, p):
    """a ** p for a >= 0, exact for the common p = 1 and p = 2."""
    if p == 2.0:
        return a * a
    if p == 1.0:
        return a
    return a ** p


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _lp_forward(x, y, p, kh, kw, sh, sw, ph, pw):
    h_, w_ = x.shape[1], x.shape[2]
    for t in prange(x.shape[0]):
        for oh in range(y.shape[1]):
            h0, h1, _ = _span(oh, sh, ph, kh, h_, False)
            for ow in range(y.shape[2]):
                w0, w1, _ = _span(ow, sw, pw, kw, w_, False)
                acc = 0.0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        acc += _pow(abs(float(x[t, ih, iw])), p)
                y[t, oh, ow] = acc ** (1.0 / p)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _lp_backward(dy, x, y, dx, p, kh, kw, sh, sw, ph, pw):
    """dx = sign(x) |x|^(p-1) * sum over windows of dy / y^(p-1); windows with y == 0 and cells with x == 0
    give 0. Non-finite values as the NumPy backend (PyTorch's autograd of the formula): a NaN window passes
    dy / NaN^(p-1) on, and a NaN cell has sign 0."""
    h_, w_ = x.shape[1], x.shape[2]
    for t in prange(x.shape[0]):
        plane = dx[t]
        plane[:, :] = 0
        for oh in range(y.shape[1]):
            h0, h1, _ = _span(oh, sh, ph, kh, h_, False)
            for ow in range(y.shape[2]):
                yv = float(y[t, oh, ow])
                if yv != 0.0:  # (a NaN window too)
                    w0, w1, _ = _span(ow, sw, pw, kw, w_, False)
                    g = dy[t, oh, ow] / _pow(yv, p - 1.0)
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            plane[ih, iw] += g
        for ih in range(h_):
            for iw in range(w_):
                v = float(x[t, ih, iw])
                sign = 1.0 if v > 0.0 else (-1.0 if v < 0.0 else 0.0)  # 0 for a NaN, as torch.sign
                local = 0.0 if v == 0.0 else sign * _pow(abs(v), p - 1.0)
                plane[ih, iw] *= local


@implements("numba")
def lp_pool2d_forward(x: np.ndarray, p: float, kernel_size: Pair, stride: Pair, padding: Pair,
                      ceil_mode: bool) -> np.ndarray:
    """y = (window sum of |x| ** p) ** (1 / p), padding cells counting as 0."""
    out = _output(x.shape, kernel_size, stride, padding, (1, 1), ceil_mode)
    y = np.empty(x.shape[:2] + out, dtype=x.dtype)
    _lp_forward(_planes(x), y.reshape(-1, *out), float(p), *kernel_size, *stride, *padding)
    return y


@implements("numba")
def lp_pool2d_backward(dy: np.ndarray, x: np.ndarray, y: np.ndarray, p: float, kernel_size: Pair, stride: Pair,
                       padding: Pair, ceil_mode: bool) -> np.ndarray:
    """dx = sign(x) |x|^(p-1) * sum over windows of dy / y^(p-1)."""
    dx = np.empty((x.shape[0] * x.shape[1],) + x.shape[2:], dtype=x.dtype)
    _lp_backward(_planes(dy.astype(x.dtype, copy=False)), _planes(x), _planes(y.astype(x.dtype, copy=False)),
                 dx, float(p), *kernel_size, *stride, *padding)
    return dx.reshape(x.shape)
