"""Pooling launchers for kernels/pool.cu: max (with argmax), average and Lp, forward and backward.

Max backward scatters with atomicAdd (the op receives no window geometry); average and Lp backward gather per
input pixel (pool.cu's header gives both summation orders)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnnkit.backends import CONV_POOL, LEAKY_SLOPE, implements, pool_output_size

from ._module import THREADS, array_module, as_f32, blocks, check_elements, f32, i32, launch
from .activation import activation_backward
from .conv import conv2d_forward

Pair = tuple[int, int]


def _out_hw(x_shape, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool) -> Pair:
    return tuple(pool_output_size(x_shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode)
                 for a in (0, 1))  # type: ignore[return-value]


def _params(x_shape, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair) -> tuple:
    """POOL_PARAMS of pool.cu: N C H W OH OW kh kw sh sw ph pw."""
    return i32(*x_shape, *out_hw, *kernel, *stride, *padding)


@implements("cupy")
def max_pool2d_forward(x: Any, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair,
                       ceil_mode: bool) -> tuple[Any, Any]:
    """(y, argmax) with argmax the int64 flat h * W + w index of each window's first maximum."""
    xp = array_module()
    x = as_f32(x, "x")
    out = _out_hw(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    y = xp.empty(x.shape[:2] + out, dtype=np.float32)
    argmax = xp.empty(y.shape, dtype=np.int64)
    launch("pool", "max_pool2d_fwd", blocks(y.size), THREADS, x, y, argmax,
           *_params(x.shape, out, kernel_size, stride, padding), *i32(*dilation))
    return y, argmax


@implements("cupy")
def max_pool2d_backward(dy: Any, argmax: Any, x_shape: tuple[int, ...]) -> Any:
    """dx: dy added (atomically) at each window's argmax cell."""
    xp = array_module()
    dy = as_f32(dy, "dy")
    argmax = xp.ascontiguousarray(argmax, dtype=np.int64)
    check_elements(math.prod(x_shape), "dx")
    dx = xp.zeros(x_shape, dtype=np.float32)
    launch("pool", "max_pool2d_bwd", blocks(dy.size), THREADS, dy, argmax, dx,
           *i32(dy.size, dy.shape[2] * dy.shape[3], x_shape[2] * x_shape[3]))
    return dx


@implements("cupy")
def avg_pool2d_forward(x: Any, kernel_size: Pair, stride: Pair, padding: Pair, ceil_mode: bool,
                       count_include_pad: bool) -> Any:
    """Window means with PyTorch's divisor."""
    xp = array_module()
    x = as_f32(x, "x")
    out = _out_hw(x.shape, kernel_size, stride, padding, (1, 1), ceil_mode)
    y = xp.empty(x.shape[:2] + out, dtype=np.float32)
    launch("pool", "avg_pool2d_fwd", blocks(y.size), THREADS, x, y,
           *_params(x.shape, out, kernel_size, stride, padding), *i32(count_include_pad))
    return y


@implements("cupy")
def avg_pool2d_backward(dy: Any, x_shape: tuple[int, ...], kernel_size: Pair, stride: Pair, padding: Pair,
                        ceil_mode: bool, count_include_pad: bool, activation: str | None = None, y: Any = None,
                        negative_slope: float = LEAKY_SLOPE) -> Any:
    """dx: each input cell gathers dy / divisor from the windows that hold it; then, with ``activation``, the
    activation's backward from its output y (a second kernel)."""
    xp = array_module()
    dy = as_f32(dy, "dy")
    check_elements(math.prod(x_shape), "dx")
    dx = xp.empty(x_shape, dtype=np.float32)
    launch("pool", "avg_pool2d_bwd", blocks(dx.size), THREADS, dy, dx,
           *_params(x_shape, dy.shape[2:], kernel_size, stride, padding), *i32(count_include_pad))
    return dx if activation is None else activation_backward(dx, y, activation, negative_slope)


@implements("cupy")
def lp_pool2d_forward(x: Any, p: float, kernel_size: Pair, stride: Pair, padding: Pair, ceil_mode: bool) -> Any:
    """y = (window sum of |x| ** p) ** (1 / p), padding as zeros."""
    xp = array_module()
    x = as_f32(x, "x")
    out = _out_hw(x.shape, kernel_size, stride, padding, (1, 1), ceil_mode)
    y = xp.empty(x.shape[:2] + out, dtype=np.float32)
    launch("pool", "lp_pool2d_fwd", blocks(y.size), THREADS, x, y, f32(p),
           *_params(x.shape, out, kernel_size, stride, padding))
    return y


@implements("cupy")
def lp_pool2d_backward(dy: Any, x: Any, y: Any, p: float, kernel_size: Pair, stride: Pair, padding: Pair,
                       ceil_mode: bool) -> Any:
    """dx = sign(x) |x| ** (p - 1) * sum over windows of dy / y ** (p - 1) (0 where y or x is 0)."""
    xp = array_module()
    dy, x, y = as_f32(dy, "dy"), as_f32(x, "x"), as_f32(y, "y")
    dx = xp.empty_like(x)
    launch("pool", "lp_pool2d_bwd", blocks(dx.size), THREADS, dy, x, y, dx, f32(p),
           *_params(x.shape, dy.shape[2:], kernel_size, stride, padding))
    return dx


@implements("cupy")
def conv2d_pool_forward(x: Any, w: Any, b: Any | None, stride: tuple[int, int],
                        padding: tuple[int, int, int, int], dilation: tuple[int, int], groups: int,
                        activation: str | None = None, keep: bool = True):
    """(y or None, avg_pool2d(y)): the two ops in turn."""
    y = conv2d_forward(x, w, b, stride, padding, dilation, groups, activation)
    return (y if keep else None), avg_pool2d_forward(y, *CONV_POOL)
