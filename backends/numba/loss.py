"""Softmax cross-entropy, Numba: one pass per row gives both the loss term and the gradient row."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from cnnkit.backends import implements

from .activation import exp_neg, row_max_logsumexp


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _xent(logits, labels, losses, dlogits):
    n = logits.shape[0]
    for i in prange(n):
        m, lse = row_max_logsumexp(logits[i])
        label = labels[i]
        for j in range(logits.shape[1]):
            prob = exp_neg(lse - (logits[i, j] - m))
            dlogits[i, j] = ((prob - 1.0) if j == label else prob) / n
        losses[i] = lse - (logits[i, label] - m)


@implements("numba")
def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loss, dlogits): loss = mean_i -log softmax(logits_i)[label_i] as a 0-d array in the logits' dtype;
    dlogits = (softmax - onehot) / N."""
    logits = np.ascontiguousarray(logits)
    losses = np.empty(logits.shape[0])
    dlogits = np.empty_like(logits)
    _xent(logits, np.ascontiguousarray(labels, dtype=np.int64), losses, dlogits)
    return np.asarray(losses.mean(), dtype=logits.dtype), dlogits
