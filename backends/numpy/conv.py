"""Convolution, NumPy reference: im2col + one matmul per group (BLAS), col2im for the input gradient.

Layout of the columns: ``cols[g, (c, r, s), (n, oh, ow)] = xpad[n, g*Cg + c, oh*sh + r*dh, ow*sw + s*dw]``, so the
forward pass is ``w[g] (Kg, Cg*R*S) @ cols[g]`` for every group g at once (a batched matmul).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnkit.backends import implements

from .activation import activation_forward

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]


def pad_nchw(x: np.ndarray, top: int, bottom: int, left: int, right: int, value: float = 0.0) -> np.ndarray:
    """``x`` with constant padding on the two spatial axes (a copy, even when all pads are 0)."""
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def window_slice(offset: int, dilation: int, stride: int, count: int) -> slice:
    """The padded-input positions that kernel tap ``offset`` touches for ``count`` output positions."""
    start = offset * dilation
    return slice(start, start + (count - 1) * stride + 1, stride)


def _im2col(x: np.ndarray, r: int, s: int, stride: Pair, padding: Pads, dilation: Pair, groups: int):
    """Columns (G, Cg*R*S, N*OH*OW) of the padded input, and the output size (OH, OW)."""
    n, c = x.shape[:2]
    xpad = pad_nchw(x, *padding)
    span = ((r - 1) * dilation[0] + 1, (s - 1) * dilation[1] + 1)
    # windows[n, c, oh, ow, r, s]: a strided view, no copy yet
    windows = sliding_window_view(xpad, span, axis=(2, 3))[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]
    oh, ow = windows.shape[2:4]
    cols = windows.transpose(1, 4, 5, 0, 2, 3).reshape(groups, (c // groups) * r * s, n * oh * ow)  # the copy
    return cols, (oh, ow)


@implements("numpy")
def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair, padding: Pads,
                   dilation: Pair, groups: int, activation: str | None = None,
                   residual: np.ndarray | None = None) -> np.ndarray:
    """y = act(cross_correlate(x, w) + b + residual), shape (N, K, OH, OW)."""
    n = x.shape[0]
    k, _, r, s = w.shape
    cols, (oh, ow) = _im2col(x, r, s, stride, padding, dilation, groups)
    y = w.reshape(groups, k // groups, -1) @ cols                      # (G, Kg, N*OH*OW)
    y = np.ascontiguousarray(y.reshape(k, n, oh, ow).transpose(1, 0, 2, 3))
    if b is not None:
        y += b[:, None, None]
    if residual is not None:
        y += residual
    return y if activation is None else activation_forward(y, activation)


@implements("numpy")
def conv2d_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pads, dilation: Pair,
                    groups: int, need_dx: bool = True, need_db: bool = True, need_dw: bool = True):
    """(dx, dw, db) of the pre-activation conv output's gradient ``dy``; each is None when not needed."""
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    oh, ow = dy.shape[2:]
    dyg = dy.transpose(1, 0, 2, 3).reshape(groups, k // groups, n * oh * ow)   # (G, Kg, N*OH*OW)
    dw = None
    if need_dw:
        cols, _ = _im2col(x, r, s, stride, padding, dilation, groups)
        dw = (dyg @ cols.transpose(0, 2, 1)).reshape(w.shape)
    db = dy.sum(axis=(0, 2, 3)) if need_db else None
    if not need_dx:
        return None, dw, db
    dcols = (w.reshape(groups, k // groups, -1).transpose(0, 2, 1) @ dyg).reshape(c, r, s, n, oh, ow)
    # col2im: every kernel tap (i, j) adds its columns back onto the strided input positions it read
    top, bottom, left, right = padding
    dxpad = np.zeros((n, c, h + top + bottom, wd + left + right), dtype=x.dtype)
    for i in range(r):
        rows = window_slice(i, dilation[0], stride[0], oh)
        for j in range(s):
            dxpad[:, :, rows, window_slice(j, dilation[1], stride[1], ow)] += dcols[:, i, j].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(dxpad[:, :, top:top + h, left:left + wd]), dw, db
