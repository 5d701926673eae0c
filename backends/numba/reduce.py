"""Float64 sums of float32 or float64 runs, Numba, shared by batch norm (plane means) and the conv bias gradient.

Numba's cache keys a kernel on its own file only: after editing this file delete the cache files
(``__pycache__/*.nbi``, ``*.nbc``) of the modules that call it (norm.py, the conv package).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def row_sum(row):
    """sum(row) in float64; reassociation lets LLVM keep vector partial sums (the order is fixed by the compiled
    code, so results do not depend on the thread count)."""
    total = 0.0
    for p in range(np.uint64(row.shape[0])):
        total += float(row[p])
    return total


SERIAL_SUM_ELEMENTS = 1 << 18
"""channel_sums of up to this many elements runs on the calling thread: a sum streams about 10 elements per ns
there, so waking the worker threads would cost about as much as the second core saves (LeNet-5's bias gradients at
batch 32 then need no parallel kernel)."""


@njit(cache=True, fastmath=False, error_model="numpy")
def _channel_range_sums(x3, out, k0, k1):
    """out[k] for k0 <= k < k1: the sum of x3 (N, K, P) over (n, p), accumulated in float64: vector partial sums
    per plane, then the planes in order (the conv bias gradient)."""
    for k in range(k0, k1):
        total = 0.0
        for n in range(x3.shape[0]):
            total += row_sum(x3[n, k])
        out[k] = total


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _channel_sums(x3, out):
    for k in prange(x3.shape[1]):
        _channel_range_sums(x3, out, k, k + 1)


def channel_sums(x3: np.ndarray, out: np.ndarray) -> None:
    """out[k] = sum of x3 (N, K, P) over (n, p) in float64 (:func:`_channel_range_sums`), in parallel over the
    channels above SERIAL_SUM_ELEMENTS (the same bits either way)."""
    if x3.size <= SERIAL_SUM_ELEMENTS:
        _channel_range_sums(x3, out, 0, x3.shape[1])
    else:
        _channel_sums(x3, out)
