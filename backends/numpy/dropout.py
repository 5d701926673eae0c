"""The inverted-dropout mask, NumPy reference (the numba backend shares it)."""
from __future__ import annotations

import numpy as np

from cnnkit.backends import implements


@implements("numpy")
def dropout_mask(shape: tuple[int, ...], p: float, seed: int, dtype, offset: int = 0) -> np.ndarray:
    """Inverted-dropout mask: 0 with probability p, else 1 / (1 - p), so E[mask] = 1. The uniforms are drawn in
    float64 from ``default_rng(seed)`` whatever the dtype, so one seed gives one pattern of zeros. Each float64
    uniform takes exactly one 64-bit output of PCG64, so advancing the generator by ``offset`` outputs starts
    the mask at element ``offset`` of the seed's sequence, exactly."""
    rng = np.random.default_rng(seed)
    rng.bit_generator.advance(offset)
    keep = rng.random(shape) >= p
    return keep.astype(dtype) * np.asarray(1 / (1 - p), dtype=dtype)
