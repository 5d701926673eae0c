"""The fully connected layer's ops as array algebra (NumPy's BLAS matmul)."""
from __future__ import annotations

import numpy as np

from cnnkit.backends import implements


@implements("numpy")
def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = x @ w.T
    return y if b is None else y + b


@implements("numpy")
def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, need_dx: bool = True, need_dw: bool = True,
                    need_db: bool = True) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    return (dy @ w if need_dx else None, dy.T @ x if need_dw else None, dy.sum(axis=0) if need_db else None)
