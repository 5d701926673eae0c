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


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def channel_sums(x3, out):
    """out[k] = sum of x3 (N, K, P) over (n, p), accumulated in float64: vector partial sums per plane, then the
    planes in order (the conv bias gradient)."""
    for k in prange(x3.shape[1]):
        total = 0.0
        for n in range(x3.shape[0]):
            total += row_sum(x3[n, k])
        out[k] = total
