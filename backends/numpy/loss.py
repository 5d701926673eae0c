"""Softmax cross-entropy, NumPy reference."""
from __future__ import annotations

import numpy as np

from cnnkit.backends import implements

from .activation import log_softmax_forward


@implements("numpy")
def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loss, dlogits): loss = mean_i -log softmax(logits_i)[label_i] as a 0-d array in the logits' dtype;
    dlogits = (softmax - onehot) / N."""
    n = logits.shape[0]
    rows = np.arange(n)
    log_p = log_softmax_forward(logits)
    loss = np.asarray(-log_p[rows, labels].mean(), dtype=logits.dtype)
    dlogits = np.exp(log_p)
    dlogits[rows, labels] -= 1
    dlogits /= n
    return loss, dlogits
