"""Softmax cross-entropy, Numba: one pass per row gives both the loss term and the gradient row."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from cnnkit.backends import implements

from .activation import SERIAL_ELEMENTS, exp_neg, row_max_logsumexp


@njit(cache=True, fastmath=False, error_model="numpy")
def _xent_rows(logits, labels, losses, dlogits, start, stop):
    """Rows start .. stop-1: losses[i] = -log softmax(logits[i])[labels[i]], dlogits[i] = (softmax - onehot) / N."""
    n = logits.shape[0]
    for i in range(start, stop):
        m, lse = row_max_logsumexp(logits[i])
        label = labels[i]
        for j in range(logits.shape[1]):
            prob = exp_neg(lse - (logits[i, j] - m))
            dlogits[i, j] = ((prob - 1.0) if j == label else prob) / n
        losses[i] = lse - (logits[i, label] - m)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _xent(logits, labels, losses, dlogits):
    for i in prange(logits.shape[0]):
        _xent_rows(logits, labels, losses, dlogits, i, i + 1)


@implements("numba")
def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loss, dlogits): loss = mean_i -log softmax(logits_i)[label_i] as a 0-d array in the logits' dtype;
    dlogits = (softmax - onehot) / N. Row by row on this thread up to SERIAL_ELEMENTS logits, else in parallel."""
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    losses = np.empty(logits.shape[0])
    dlogits = np.empty_like(logits)
    if logits.size <= SERIAL_ELEMENTS:
        _xent_rows(logits, labels, losses, dlogits, 0, logits.shape[0])
    else:
        _xent(logits, labels, losses, dlogits)
    return np.asarray(losses.mean(), dtype=logits.dtype), dlogits
