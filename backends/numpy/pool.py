"""Max, average and Lp pooling, NumPy reference: pad once, then loop over the kh*kw window taps, each tap a
strided slice over all (n, c, oh, ow) at once.

With ceil_mode the last window may hang past the padded input; the input is padded further on the right/bottom
so every tap's slice exists, and those extra cells never count (max: -inf, sums: 0, divisors: clipped).
"""
from __future__ import annotations

import numpy as np

from cnnkit.backends import CONV_POOL, LEAKY_SLOPE, implements, pool_output_size

from .activation import activation_backward
from .conv import conv2d_forward, pad_nchw, window_slice

Pair = tuple[int, int]


def _out_size(x_shape, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool) -> Pair:
    return tuple(pool_output_size(x_shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode)
                 for a in (0, 1))


def _pad(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, out: Pair,
         value: float = 0.0) -> np.ndarray:
    """``x`` padded by ``padding`` on both sides, plus whatever ceil_mode's last window needs on the far side."""
    extra = [max(0, (out[a] - 1) * stride[a] + (kernel[a] - 1) * dilation[a] + 1 - (x.shape[2 + a] + 2 * padding[a]))
             for a in (0, 1)]
    return pad_nchw(x, padding[0], padding[0] + extra[0], padding[1], padding[1] + extra[1], value)


def _taps(kernel: Pair, stride: Pair, dilation: Pair, out: Pair):
    """(i, j, slices) for every window tap, slices selecting that tap's padded-input cell for every output."""
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield i, j, (Ellipsis, window_slice(i, dilation[0], stride[0], out[0]),
                         window_slice(j, dilation[1], stride[1], out[1]))


def _window_sum(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair, out: Pair) -> np.ndarray:
    """Sum of each (zero-padded) window."""
    xpad = _pad(x, kernel, stride, padding, (1, 1), out)
    total = np.zeros(x.shape[:2] + out, dtype=x.dtype)
    for _, _, taps in _taps(kernel, stride, (1, 1), out):
        total += xpad[taps]
    return total


def _window_scatter(g: np.ndarray, x_shape, kernel: Pair, stride: Pair, padding: Pair) -> np.ndarray:
    """Transpose of :func:`_window_sum`: each input cell gets the sum of g over the windows that hold it."""
    out = g.shape[2:]
    h, w = x_shape[2:]
    gpad = _pad(np.zeros(x_shape, dtype=g.dtype), kernel, stride, padding, (1, 1), out)
    for _, _, taps in _taps(kernel, stride, (1, 1), out):
        gpad[taps] += g
    return gpad[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w].copy()


# ----------------------------------------------------------------------------------------------- max
@implements("numpy")
def max_pool2d_forward(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair,
                       ceil_mode: bool):
    """(y, argmax): window maxima with -inf padding; argmax is the flat h * W + w index of the first maximum
    (a NaN wins, like PyTorch)."""
    h, w = x.shape[2:]
    out = _out_size(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    xpad = _pad(x, kernel_size, stride, padding, dilation, out, value=-np.inf)
    top = np.arange(out[0]) * stride[0] - padding[0]     # input row of tap 0 for every output row
    left = np.arange(out[1]) * stride[1] - padding[1]
    y = np.full(x.shape[:2] + out, -np.inf, dtype=x.dtype)
    argmax = np.full(y.shape, -1, dtype=np.int64)
    for i, j, taps in _taps(kernel_size, stride, dilation, out):
        rows, cols = top[:, None] + i * dilation[0], left[None, :] + j * dilation[1]
        real = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        v = xpad[taps]
        # a real cell also wins when nothing has yet (a window of -inf still points into the input)
        take = (v > y) | np.isnan(v) | ((argmax < 0) & real)
        np.copyto(y, v, where=take)
        np.copyto(argmax, np.broadcast_to(rows * w + cols, y.shape), where=take)
    return y, argmax


@implements("numpy")
def max_pool2d_backward(dy: np.ndarray, argmax: np.ndarray, x_shape) -> np.ndarray:
    """Scatter-add dy onto the argmax cells (bincount over flat indices, one pass over the outputs).
    A window that covers no input cell (argmax -1, possible with dilation and padding) passes no gradient."""
    n, c, h, w = x_shape
    plane = np.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (h * w)
    empty = argmax < 0
    flat = np.where(empty, 0, plane + argmax).ravel()
    dx = np.bincount(flat, weights=np.where(empty, 0, dy).ravel(), minlength=n * c * h * w)
    return dx.astype(dy.dtype, copy=False).reshape(x_shape)


# ----------------------------------------------------------------------------------------------- average
def _divisor(x_shape, kernel: Pair, stride: Pair, padding: Pair, out: Pair, count_include_pad: bool) -> np.ndarray:
    """(OH, OW) window sizes, PyTorch's rule: windows clipped to the padded input, and further to the real
    input unless count_include_pad."""
    sizes = []
    for a in (0, 1):
        start = np.arange(out[a]) * stride[a] - padding[a]
        end = np.minimum(start + kernel[a], x_shape[2 + a] + padding[a])
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, x_shape[2 + a])
        sizes.append(end - start)
    return np.outer(*sizes)


@implements("numpy")
def avg_pool2d_forward(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair, ceil_mode: bool,
                       count_include_pad: bool) -> np.ndarray:
    """Window sums over the zero-padded input divided by PyTorch's divisor."""
    out = _out_size(x.shape, kernel_size, stride, padding, (1, 1), ceil_mode)
    divisor = _divisor(x.shape, kernel_size, stride, padding, out, count_include_pad).astype(x.dtype)
    return _window_sum(x, kernel_size, stride, padding, out) / divisor


@implements("numpy")
def avg_pool2d_backward(dy: np.ndarray, x_shape, kernel_size: Pair, stride: Pair, padding: Pair, ceil_mode: bool,
                        count_include_pad: bool, activation: str | None = None, y: np.ndarray | None = None,
                        negative_slope: float = LEAKY_SLOPE) -> np.ndarray:
    """Each input cell gets dy / divisor from every window that holds it; then, with ``activation``, the
    activation's backward from its output y."""
    divisor = _divisor(x_shape, kernel_size, stride, padding, dy.shape[2:], count_include_pad).astype(dy.dtype)
    dx = _window_scatter(dy / divisor, x_shape, kernel_size, stride, padding)
    return dx if activation is None else activation_backward(dx, y, activation, negative_slope)


# ----------------------------------------------------------------------------------------------- Lp
@implements("numpy")
def lp_pool2d_forward(x: np.ndarray, p: float, kernel_size: Pair, stride: Pair, padding: Pair,
                      ceil_mode: bool) -> np.ndarray:
    """y = (window sum of |x| ** p) ** (1 / p), padding cells counting as 0."""
    out = _out_size(x.shape, kernel_size, stride, padding, (1, 1), ceil_mode)
    return _window_sum(np.abs(x) ** p, kernel_size, stride, padding, out) ** (1 / p)


@implements("numpy")
def lp_pool2d_backward(dy: np.ndarray, x: np.ndarray, y: np.ndarray, p: float, kernel_size: Pair, stride: Pair,
                       padding: Pair, ceil_mode: bool) -> np.ndarray:
    """dx = sign(x) |x|^(p-1) * sum over windows of dy / y^(p-1); a window with y == 0 contributes 0.

    Non-finite values as PyTorch's autograd of the same formula: a NaN window (y NaN) passes dy / NaN^(p-1) on,
    which is NaN except for p = 1 (NaN^0 = 1); a NaN cell has sign 0 (torch.sign(nan) is 0), so its gradient is
    0 * NaN^(p-1), again NaN except for p = 1."""
    nonzero = y != 0   # NaN windows included
    g = np.divide(dy, np.power(y, p - 1, out=np.ones_like(y), where=nonzero), out=np.zeros_like(dy), where=nonzero)
    ax = np.abs(x)
    sign = np.sign(np.where(np.isnan(x), 0, x))
    local = sign * np.power(ax, p - 1, out=np.zeros_like(ax), where=ax != 0)   # 0 at x == 0, even for p < 1
    return _window_scatter(g, x.shape, kernel_size, stride, padding) * local


@implements("numpy")
def conv2d_pool_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[int, int],
                        padding: tuple[int, int, int, int], dilation: tuple[int, int], groups: int,
                        activation: str | None = None, keep: bool = True):
    """(y or None, avg_pool2d(y)): the two ops in turn."""
    y = conv2d_forward(x, w, b, stride, padding, dilation, groups, activation)
    return (y if keep else None), avg_pool2d_forward(y, *CONV_POOL)
