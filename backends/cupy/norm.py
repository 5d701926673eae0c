"""Batch-norm launchers for kernels/norm.cu, and the per-channel sum that conv's bias gradient
shares with batch norm. Everything stays on the device: no host synchronisation, no branching on values."""
from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit.backends import LEAKY_SLOPE, implements

from ._module import (
    ACT_CODES,
    THREADS,
    array_module,
    as_f32,
    blocks,
    ceil_div,
    f32,
    i32,
    launch,
    reduction_threads,
    splits_for,
)

SPLIT_ITEMS = 8192
"""A channel's (n, h, w) reduction is split into chunks of about this many values, one block each ..."""
MAX_SPLITS = 64
"""... and at most this many chunks per channel."""


def _partials(a: Any) -> tuple[Any, int]:
    """(partial, splits): per-channel partial sums of an NCHW array, shape (C, splits)."""
    xp = array_module()
    n, c, h, w = a.shape
    splits, chunk = _splits(n * h * w)
    partial = xp.empty((c, splits), dtype=np.float32)
    launch("norm", "channel_partials", (c, splits), reduction_threads(chunk), a, *i32(n, c, h * w, chunk), partial)
    return partial, splits


def _splits(count: int) -> tuple[int, int]:
    """(splits, chunk) of a channel's ``count`` values."""
    return splits_for(count, min(MAX_SPLITS, ceil_div(count, SPLIT_ITEMS)))


def _finalize(partial: Any, splits: int, divisor: float) -> Any:
    xp = array_module()
    c = partial.shape[0]
    out = xp.empty(c, dtype=np.float32)
    launch("norm", "channel_finalize", blocks(c), THREADS, partial, *i32(c, splits), f32(divisor), out)
    return out


def channel_sums(a: Any) -> Any:
    """Sum over N, H and W of each channel of a float32 NCHW array (conv's db, batch norm's dbeta)."""
    partial, splits = _partials(a)
    return _finalize(partial, splits, 1.0)


def _running(a: Any, name: str) -> Any:
    """A running statistic, updated in place by bn_stats: it must be a C-contiguous float32 array."""
    if a.dtype != np.float32:
        raise TypeError(f"{name} has dtype {a.dtype}, but the cupy backend updates running statistics in float32 "
                        f"only: keep them as float32 arrays")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous: it is updated in place")
    return a


@implements("cupy")
def batch_norm_forward(x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any, training: bool,
                       momentum: float, eps: float, activation: str | None = None) -> tuple[Any, tuple]:
    """(y, saved) per channel of NCHW; in training the running statistics move in place, on the device.
    ``activation`` runs in the normalisation kernel, on each value before it is stored."""
    xp = array_module()
    x, weight, bias = as_f32(x, "x"), as_f32(weight, "weight"), as_f32(bias, "bias")
    running_mean, running_var = _running(running_mean, "running_mean"), _running(running_var, "running_var")
    n, c, h, w = x.shape
    count = n * h * w
    mean = xp.empty(c, dtype=np.float32)
    invstd = xp.empty(c, dtype=np.float32)
    splits, chunk = _splits(count)
    if training:
        partial = xp.empty((2 * c, splits), dtype=np.float32)
        launch("norm", "bn_partials", (c, splits), reduction_threads(chunk), x, *i32(n, c, h * w, chunk), partial)
    else:
        partial = running_var  # not read in eval
    launch("norm", "bn_stats", blocks(c), THREADS, partial, *i32(c, splits, chunk, count), f32(eps),
           f32(momentum), np.int32(training), mean, invstd, running_mean, running_var)
    y = xp.empty_like(x)
    launch("norm", "bn_normalize", blocks(x.size), THREADS, x, mean, invstd, weight, bias, y,
           *i32(x.size, c, h * w, ACT_CODES[activation]), f32(LEAKY_SLOPE))
    return y, (x, mean, invstd, bool(training), None if activation is None else y)


@implements("cupy")
def batch_norm_backward(dy: Any, saved: tuple, weight: Any) -> tuple[Any, Any, Any]:
    """(dx, dgamma, dbeta); in eval the statistics are constants and dx = dy * weight * invstd."""
    xp = array_module()
    x, mean, invstd, training, y = saved
    dy, weight = as_f32(dy, "dy"), as_f32(weight, "weight")
    if dy.shape != x.shape:
        raise ValueError(f"dy must have the batch-norm input's shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    act = ACT_CODES[None if y is None else "relu"]  # dy of the activation the forward applied, if it did
    y = dy if y is None else y  # not read without an activation
    n, c, h, w = x.shape
    count = n * h * w
    splits, chunk = _splits(count)
    partial = xp.empty((2 * c, splits), dtype=np.float32)
    launch("norm", "bn_backward_partials", (c, splits), reduction_threads(chunk), dy, y, x, mean, invstd,
           np.int32(act), f32(LEAKY_SLOPE), *i32(n, c, h * w, chunk), partial)
    sums = _finalize(partial, splits, 1.0)
    dbeta, dgamma = sums[:c], sums[c:]
    dx = xp.empty_like(dy)
    launch("norm", "bn_backward_dx", blocks(dx.size), THREADS, dy, y, x, mean, invstd, weight, dgamma, dbeta, dx,
           *i32(dx.size, c, h * w, count, training, act), f32(LEAKY_SLOPE))
    return dx, dgamma, dbeta
