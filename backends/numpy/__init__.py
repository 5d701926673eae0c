"""NumPy reference backend: readable, vectorised (im2col + BLAS), float32 and float64, always available."""
from __future__ import annotations

import numpy as np

from cnnkit.backends import Backend, collect_ops

NAME = "numpy"


def unavailable_reason() -> str | None:
    """NumPy is a hard dependency, so this backend always runs."""
    return None


def create() -> Backend:
    from . import activation, conv, dropout, linear, loss, norm, optim, pool  # noqa: F401  (@implements registers the ops)

    return Backend(
        name=NAME, xp=np, ops=collect_ops(NAME),
        array_type=np.ndarray, device="cpu", to_numpy=np.asarray,
    )
