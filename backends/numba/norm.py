"""Batch normalisation, Numba, and the dropout mask (the NumPy backend's own).

Per-channel statistics are parallel over channels and accumulated in float64 (two passes: mean, then the
centred sum of squares); the elementwise passes are parallel over (n, c) planes.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# The mask is one vectorised RNG draw; a Numba loop would not be faster, and sharing it means a seed gives the
# same mask on both CPU backends (so models with dropout train identically on numpy and numba).
from cnnkit.backends.numpy.norm import dropout_mask  # noqa: F401  (re-exported as this backend's op)


@njit(parallel=True, cache=True, fastmath=False)
def _batch_stats(x, mean, var):
    """mean[c] and biased var[c] over (n, p) of x (N, C, P)."""
    n_, c_, p_ = x.shape
    count = n_ * p_
    for c in prange(c_):
        s = 0.0
        for n in range(n_):
            for p in range(p_):
                s += x[n, c, p]
        mu = s / count
        q = 0.0
        for n in range(n_):
            for p in range(p_):
                d = x[n, c, p] - mu
                q += d * d
        mean[c] = mu
        var[c] = q / count


@njit(parallel=True, cache=True, fastmath=False)
def _normalise(x, mean, inv_std, gamma, beta, y):
    """y = (x - mean) * inv_std * gamma + beta per channel."""
    n_, c_, p_ = x.shape
    for t in prange(n_ * c_):
        n, c = t // c_, t % c_
        mu, s, g, b = mean[c], inv_std[c], float(gamma[c]), float(beta[c])
        for p in range(p_):
            y[n, c, p] = (x[n, c, p] - mu) * s * g + b


@njit(parallel=True, cache=True, fastmath=False)
def _grad_sums(dy, x, mean, inv_std, dgamma, dbeta):
    """dbeta[c] = sum dy, dgamma[c] = sum dy * x_hat, in float64."""
    n_, c_, p_ = x.shape
    for c in prange(c_):
        sb = 0.0
        sg = 0.0
        for n in range(n_):
            for p in range(p_):
                g = float(dy[n, c, p])
                sb += g
                sg += g * ((x[n, c, p] - mean[c]) * inv_std[c])
        dbeta[c] = sb
        dgamma[c] = sg


@njit(parallel=True, cache=True, fastmath=False)
def _input_grad(dy, x, mean, inv_std, gamma, dgamma, dbeta, training, dx):
    """dx = gamma * inv_std * (dy - dbeta / M - x_hat * dgamma / M) in training, gamma * inv_std * dy in eval."""
    n_, c_, p_ = x.shape
    count = n_ * p_
    for t in prange(n_ * c_):
        n, c = t // c_, t % c_
        scale = gamma[c] * inv_std[c]
        if training:
            mb, mg = dbeta[c] / count, dgamma[c] / count
            for p in range(p_):
                x_hat = (x[n, c, p] - mean[c]) * inv_std[c]
                dx[n, c, p] = scale * (dy[n, c, p] - mb - x_hat * mg)
        else:
            for p in range(p_):
                dx[n, c, p] = scale * dy[n, c, p]


def _flat(a: np.ndarray, dtype) -> np.ndarray:
    """NCHW as a contiguous (N, C, H*W) array of ``dtype``."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(a.shape[0], a.shape[1], -1)


def batch_norm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                       running_var: np.ndarray, training: bool, momentum: float, eps: float):
    """(y, saved) with y = gamma * (x - mean) / sqrt(var + eps) + beta per channel; the running statistics
    move (in place) towards the batch mean and unbiased variance in training.
    ``saved = (x, mean, inv_std, training)``, the statistics in float64."""
    xf = _flat(x, x.dtype)
    c = x.shape[1]
    if training:
        mean, var = np.empty(c), np.empty(c)
        _batch_stats(xf, mean, var)
        m = xf.shape[0] * xf.shape[2]
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / (m - 1))
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    inv_std = 1 / np.sqrt(var + eps)
    y = np.empty_like(xf)
    _normalise(xf, mean, inv_std, np.ascontiguousarray(gamma), np.ascontiguousarray(beta), y)
    return y.reshape(x.shape), (xf, mean, inv_std, bool(training))


def batch_norm_backward(dy: np.ndarray, saved, gamma: np.ndarray):
    """(dx, dgamma, dbeta); in eval the statistics are constants and dx is dy * gamma * inv_std."""
    xf, mean, inv_std, training = saved
    dyf = _flat(dy, xf.dtype)
    c = xf.shape[1]
    dgamma, dbeta = np.empty(c), np.empty(c)
    _grad_sums(dyf, xf, mean, inv_std, dgamma, dbeta)
    dx = np.empty_like(xf)
    _input_grad(dyf, xf, mean, inv_std, np.ascontiguousarray(gamma, dtype=np.float64), dgamma, dbeta,
                training, dx)
    return dx.reshape(dy.shape), dgamma.astype(xf.dtype), dbeta.astype(xf.dtype)
