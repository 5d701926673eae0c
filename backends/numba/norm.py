"""Batch normalisation, Numba, and the dropout mask (the NumPy backend's own).

Every kernel is parallel over the (n, c) planes. Per-channel statistics are float64 sums per plane (four
interleaved partial sums, so the adds pipeline), added over the batch afterwards; two passes for the variance
(mean, then the centred sum of squares).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# The mask is one vectorised RNG draw; a Numba loop would not be faster, and sharing it means a seed gives the
# same mask on both CPU backends (so models with dropout train identically on numpy and numba).
from cnnkit.backends.numpy.norm import dropout_mask  # noqa: F401  (re-exported as this backend's op)


@njit(cache=True, fastmath=False, error_model="numpy")
def _plane_sums(x, y, n, c, shift, scale, mode):
    """Over the plane (n, c) of x (N, C, P), in float64 with four interleaved partial sums (independent chains,
    fixed order): mode 0 sum(x); 1 sum((x - shift)^2); 2 sum(y * (x - shift) * scale), y the second plane."""
    s0 = s1 = s2 = s3 = 0.0
    p_ = x.shape[2]
    nu, cu = np.uint64(n), np.uint64(c)
    for i in range(np.uint64(p_ // 4)):
        j = i * np.uint64(4)
        v0, v1 = float(x[nu, cu, j]) - shift, float(x[nu, cu, j + 1]) - shift
        v2, v3 = float(x[nu, cu, j + 2]) - shift, float(x[nu, cu, j + 3]) - shift
        if mode == 1:
            v0, v1, v2, v3 = v0 * v0, v1 * v1, v2 * v2, v3 * v3
        elif mode == 2:
            v0, v1 = y[nu, cu, j] * (v0 * scale), y[nu, cu, j + 1] * (v1 * scale)
            v2, v3 = y[nu, cu, j + 2] * (v2 * scale), y[nu, cu, j + 3] * (v3 * scale)
        s0, s1, s2, s3 = s0 + v0, s1 + v1, s2 + v2, s3 + v3
    for j in range(p_ - p_ % 4, p_):
        v = float(x[n, c, j]) - shift
        s0 += v * v if mode == 1 else (y[n, c, j] * (v * scale) if mode == 2 else v)
    return (s0 + s1) + (s2 + s3)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _partial_sums(x, y, shift, scale, mode, out):
    """out[n, c] = _plane_sums of every (n, c) plane, one task each (summed over n afterwards)."""
    n_, c_ = x.shape[0], x.shape[1]
    for task in prange(n_ * c_):
        n, c = task // c_, task % c_
        out[n, c] = _plane_sums(x, y, n, c, shift[c], scale[c], mode)


def _channel_sums(x: np.ndarray, y: np.ndarray, shift: np.ndarray, scale: np.ndarray, mode: int) -> np.ndarray:
    """Per-channel float64 sums of :func:`_plane_sums` (mode 0, 1 or 2) over the batch."""
    out = np.empty(x.shape[:2])
    _partial_sums(x, y, shift, scale, mode, out)
    return out.sum(axis=0)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _normalise(x, mean, inv_std, gamma, beta, y):
    """y = (x - mean) * inv_std * gamma + beta per channel."""
    n_, c_, p_ = x.shape
    for t in prange(n_ * c_):
        n, c = t // c_, t % c_
        mu, s, g, b = mean[c], inv_std[c], float(gamma[c]), float(beta[c])
        for p in range(p_):
            y[n, c, p] = (x[n, c, p] - mu) * s * g + b


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
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
        m = xf.shape[0] * xf.shape[2]
        zeros = np.zeros(c)
        mean = _channel_sums(xf, xf, zeros, zeros, 0) / m
        var = _channel_sums(xf, xf, mean, zeros, 1) / m  # two passes: no cancellation
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
    dbeta = _channel_sums(dyf, dyf, np.zeros(c), np.zeros(c), 0)
    dgamma = _channel_sums(xf, dyf, mean, inv_std, 2)
    dx = np.empty_like(xf)
    _input_grad(dyf, xf, mean, inv_std, np.ascontiguousarray(gamma, dtype=np.float64), dgamma, dbeta,
                training, dx)
    return dx.reshape(dy.shape), dgamma.astype(xf.dtype), dbeta.astype(xf.dtype)
