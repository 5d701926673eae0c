"""Losses and metrics on the backend's own arrays: softmax cross-entropy, accuracy and an L2 penalty."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cnnkit import functional as F
from cnnkit.backends import Backend
from cnnkit.nn.base import Parameter

Array = Any


def softmax_cross_entropy(logits: Array, labels: Array, *,
                          backend: str | Backend | None = None) -> tuple[Array, Array]:
    """Mean cross-entropy of softmax(logits) against int labels, and its gradient w.r.t. the logits.

    Returns ``(loss, dlogits)``: loss is a 0-d array of the backend (``float(loss)`` reads it on the host),
    dlogits is ``(softmax - onehot) / N``, ready for ``model.backward``. ``backend`` defaults to the current one.
    """
    return F.softmax_cross_entropy(logits, labels, backend=backend)


def accuracy(logits: Array, labels: Array) -> float:
    """Fraction of rows whose highest logit is the label (ties: the first index, as argmax)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be a 2-D (N, C) array, got shape {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be a 1-D array of {logits.shape[0]} entries, got shape "
                         f"{tuple(labels.shape)}")
    if labels.shape[0] == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return float((logits.argmax(axis=1) == labels).mean())


def l2_penalty(params: Iterable[Parameter], weight_decay: float) -> float:
    """``weight_decay / 2 * sum ||p||^2``: the loss term whose gradient SGD's ``weight_decay`` adds.

    Useful to report the full regularised objective; training itself uses ``SGD(weight_decay=...)``.
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return 0.5 * float(weight_decay) * sum(float((p.data * p.data).sum()) for p in params)
