"""Softmax cross-entropy launcher for kernels/loss.cu: the loss stays a 0-d device array (no host sync)."""
from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit.backends import implements

from ._module import array_module, as_f32, i32, launch, reduction_threads


@implements("cupy")
def softmax_cross_entropy(logits: Any, labels: Any) -> tuple[Any, Any]:
    """(loss, dlogits): loss a 0-d float32 device array, the batch mean of -log softmax(logits)[label];
    dlogits = (softmax - onehot) / N. A label outside [0, C) makes the loss NaN (checking it on the host
    would need a synchronisation)."""
    xp = array_module()
    logits = as_f32(logits, "logits")
    n, c = logits.shape
    if n == 0:
        raise ValueError("logits must hold at least one row (batch size >= 1)")
    labels = xp.ascontiguousarray(labels, dtype=np.int64)
    row_loss = xp.empty(n, dtype=np.float32)
    dlogits = xp.empty_like(logits)
    loss = xp.empty((), dtype=np.float32)
    launch("loss", "xent_rows", n, reduction_threads(c), logits, labels, *i32(n, c), row_loss, dlogits)
    launch("loss", "mean_rows", 1, reduction_threads(n), row_loss, *i32(n), loss)
    return loss, dlogits
