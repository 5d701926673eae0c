"""The inverted-dropout mask launcher for kernels/dropout.cu."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnnkit.backends import implements

from ._module import THREADS, array_module, blocks, check_elements, f32, launch


@implements("cupy")
def dropout_mask(shape: tuple[int, ...], p: float, seed: int, dtype: Any, offset: int = 0) -> Any:
    """Inverted-dropout mask from a counter-based hash of (seed, offset + flat index): 0 with probability p,
    else 1 / (1 - p); the same seed gives the same mask on every device (kernels/dropout.cu gives the hash)."""
    xp = array_module()
    if np.dtype(dtype) != np.float32:
        raise TypeError(f"dtype must be float32 on the cupy backend, got {np.dtype(dtype)}")
    size = math.prod(shape)
    check_elements(size, "the dropout mask")
    out = xp.empty(shape, dtype=np.float32)
    threshold = math.ceil(p * 2 ** 24)
    launch("dropout", "dropout_mask", blocks(size), THREADS, out, np.int32(size), np.uint64(seed % 2 ** 64),
           np.uint64(offset % 2 ** 64), np.uint32(threshold), f32(1.0 / (1.0 - p)))
    return out
