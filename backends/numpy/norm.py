"""Batch normalisation, NumPy reference."""
from __future__ import annotations

import numpy as np

from cnnkit.backends import implements

from .activation import activation_backward, activation_forward

_AXES = (0, 2, 3)  # everything but the channel axis of NCHW


def _per_channel(v: np.ndarray) -> np.ndarray:
    """A (C,) vector shaped to broadcast over NCHW."""
    return v[None, :, None, None]


@implements("numpy")
def batch_norm_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, running_mean: np.ndarray,
                       running_var: np.ndarray, training: bool, momentum: float, eps: float,
                       activation: str | None = None):
    """(y, saved) with y = weight * (x - mean) / sqrt(var + eps) + bias per channel.

    Training normalises with the batch mean and biased variance and moves the running statistics (in place)
    towards the batch mean and unbiased variance; eval normalises with the running statistics.
    ``activation`` ("relu") is the activation op applied to that output. ``saved = (x_hat, inv_std, training,
    y)`` is what the backward needs (y: the activation's output, or None without one).
    """
    if training:
        mean, var = x.mean(axis=_AXES), x.var(axis=_AXES)
        m = x.size // x.shape[1]
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / (m - 1))
    else:
        mean, var = running_mean, running_var
    inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype, copy=False)
    x_hat = (x - _per_channel(mean.astype(x.dtype, copy=False))) * _per_channel(inv_std)
    y = x_hat * _per_channel(weight) + _per_channel(bias)
    if activation is None:
        return y, (x_hat, inv_std, training, None)
    y = activation_forward(y, activation)
    return y, (x_hat, inv_std, training, y)


@implements("numpy")
def batch_norm_backward(dy: np.ndarray, saved, weight: np.ndarray):
    """(dx, dgamma, dbeta). In training the batch statistics depend on x, which gives the two mean terms;
    in eval they are constants and dx is just dy * weight * inv_std."""
    x_hat, inv_std, training, y = saved
    if y is not None:  # dy of the fused activation's output
        dy = activation_backward(dy, y, "relu")
    dgamma = (dy * x_hat).sum(axis=_AXES)
    dbeta = dy.sum(axis=_AXES)
    scale = _per_channel(weight * inv_std)
    if not training:
        return dy * scale, dgamma, dbeta
    m = dy.size // dy.shape[1]
    dx = scale * (dy - _per_channel(dbeta / m) - x_hat * _per_channel(dgamma / m))
    return dx, dgamma, dbeta
