"""Batch normalisation, Numba.

Every kernel is parallel over the (n, c) planes. Per-channel statistics are float64 sums per plane (vector
partial sums), combined over the batch afterwards. The variance is centred twice over: each plane's own sum of
squares about its own mean (a second pass over a plane still in cache), then the planes combined exactly (Chan
et al.), so x is read from memory once for both statistics. The backward reads dy and x once for both dbeta and
dgamma. A ReLU after the normalisation runs in the same passes (``activation="relu"``): the forward writes max(y, 0),
the backward's sums read that output for the ReLU's mask and its input gradient recomputes the mask from x, so no
pass of its own runs in either direction.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from cnnkit.backends import implements

from .reduce import row_sum


@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def _plane_sums(x, y, n, c, shift, mode):
    """Over the plane (n, c) of x (N, C, P), in float64: mode 0 (row_sum(x), 0); 1 (0, sum((x - shift)^2));
    2 (sum(y), sum(y * (x - shift))), y being the same plane of the second array. Reassociation lets LLVM
    keep vector partial sums (the order is fixed by the compiled code, so results do not depend on threads)."""
    a = b = 0.0
    xs, ys = x[n, c], y[n, c]
    if mode == 0:
        a = row_sum(xs)
    elif mode == 1:
        for j in range(np.uint64(x.shape[2])):
            v = float(xs[j]) - shift
            b += v * v
    else:
        for j in range(np.uint64(x.shape[2])):
            u = float(ys[j])
            a += u
            b += u * (float(xs[j]) - shift)
    return a, b


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _batch_moments_kernel(x, mean, var):
    """Per plane (n, c): its mean, then its centred sum of squares (the plane is still in cache: one read of x
    from memory, and no cancellation); then per channel, on this thread, the planes' moments combined exactly
    (Chan et al.: equal counts, so the total centred sum of squares is the planes' own plus P times the squared
    deviations of their means), each sum over the planes in batch order."""
    n_, c_, p_ = x.shape
    means, m2s = np.empty((n_, c_)), np.empty((n_, c_))
    for task in prange(n_ * c_):
        n, c = task // c_, task % c_
        plane_mean = _plane_sums(x, x, n, c, 0.0, 0)[0] / p_
        means[n, c], m2s[n, c] = plane_mean, _plane_sums(x, x, n, c, plane_mean, 1)[1]
    own, spread = np.zeros(c_), np.zeros(c_)
    mean[:] = 0.0
    for n in range(n_):  # rows in batch order, channels along each row (contiguous: the loops vectorise)
        for c in range(c_):
            mean[c] += means[n, c]
    for c in range(c_):
        mean[c] /= n_
    for n in range(n_):
        for c in range(c_):
            d = means[n, c] - mean[c]
            own[c] += m2s[n, c]
            spread[c] += d * d
    for c in range(c_):
        var[c] = (own[c] + p_ * spread[c]) / (n_ * p_)


@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def _relu_plane_sums(dy, y, x, n, c, shift):
    """:func:`_plane_sums` mode 2 of dy through a ReLU: dy where the ReLU's output y > 0 (or NaN), else 0."""
    a = b = 0.0
    ds, ys, xs = dy[n, c], y[n, c], x[n, c]
    for j in range(np.uint64(x.shape[2])):
        u = 0.0 if ys[j] <= 0.0 else float(ds[j])
        a += u
        b += u * (float(xs[j]) - shift)
    return a, b


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _grad_sums(dy, x, mean, inv_std, dbeta, dgamma, y, relu):
    """Per plane (n, c): sum(dy) and sum(dy * (x - mean[c])), in one pass over both (with ``relu``, dy is that
    of the ReLU whose output is y); then per channel, on this thread, dbeta = the first sums and dgamma = the
    second times inv_std, each sum over the planes in batch order."""
    n_, c_ = x.shape[0], x.shape[1]
    planes = np.empty((2, n_, c_))
    for task in prange(n_ * c_):
        n, c = task // c_, task % c_
        if relu:
            planes[0, n, c], planes[1, n, c] = _relu_plane_sums(dy, y, x, n, c, mean[c])
        else:
            planes[0, n, c], planes[1, n, c] = _plane_sums(x, dy, n, c, mean[c], 2)
    dbeta[:] = 0.0
    dgamma[:] = 0.0
    for n in range(n_):  # rows in batch order, channels along each row (contiguous: the loops vectorise)
        for c in range(c_):
            dbeta[c] += planes[0, n, c]
            dgamma[c] += planes[1, n, c]
    for c in range(c_):
        dgamma[c] *= inv_std[c]


def _batch_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float64 mean and biased variance of x (N, C, P), by :func:`_batch_moments_kernel`."""
    mean, var = np.empty(x.shape[1]), np.empty(x.shape[1])
    _batch_moments_kernel(x, mean, var)
    return mean, var


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _normalised(xv, mu, s, g, b, single):
    """(x - mean) * inv_std * gamma + beta, rounded to float32 when ``single`` (the value y holds)."""
    v = (xv - mu) * s * g + b
    return float(np.float32(v)) if single else v


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _normalise(x, mean, inv_std, gamma, beta, y, relu):
    """y = (x - mean) * inv_std * gamma + beta per channel; with ``relu``, then max(y, 0) (NaN stays NaN)."""
    n_, c_, p_ = x.shape
    single = y.itemsize == 4
    for t in prange(n_ * c_):
        n, c = t // c_, t % c_
        mu, s, g, b = mean[c], inv_std[c], float(gamma[c]), float(beta[c])
        if relu:
            for p in range(p_):
                v = _normalised(x[n, c, p], mu, s, g, b, single)
                y[n, c, p] = 0.0 if v < 0.0 else v
        else:
            for p in range(p_):
                y[n, c, p] = (x[n, c, p] - mu) * s * g + b


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _input_grad(dy, x, mean, inv_std, gamma, dgamma, dbeta, training, dx, relu, gamma_fwd, beta_fwd):
    """dx = gamma * inv_std * (dy - dbeta / M - x_hat * dgamma / M) in training, gamma * inv_std * dy in eval.
    With ``relu``, dy is that of a ReLU after the normalisation: 0 where the forward's output was <= 0, which
    is recomputed from x with the forward's gamma and beta (the same arithmetic as :func:`_normalise`)."""
    n_, c_, p_ = x.shape
    count = n_ * p_
    single = dx.itemsize == 4
    for t in prange(n_ * c_):
        n, c = t // c_, t % c_
        scale = gamma[c] * inv_std[c]
        mu, s, g, b = mean[c], inv_std[c], gamma_fwd[c], beta_fwd[c]
        if training:
            mb, mg = dbeta[c] / count, dgamma[c] / count
            for p in range(p_):
                d = 0.0 if relu and _normalised(x[n, c, p], mu, s, g, b, single) <= 0.0 else float(dy[n, c, p])
                dx[n, c, p] = scale * (d - mb - (x[n, c, p] - mu) * s * mg)
        else:
            for p in range(p_):
                d = 0.0 if relu and _normalised(x[n, c, p], mu, s, g, b, single) <= 0.0 else float(dy[n, c, p])
                dx[n, c, p] = scale * d


def _flat(a: np.ndarray, dtype) -> np.ndarray:
    """NCHW as a contiguous (N, C, H*W) array of ``dtype``."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(a.shape[0], a.shape[1], -1)


@implements("numba")
def batch_norm_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, running_mean: np.ndarray,
                       running_var: np.ndarray, training: bool, momentum: float, eps: float,
                       activation: str | None = None):
    """(y, saved) with y = weight * (x - mean) / sqrt(var + eps) + bias per channel, then ``activation`` ("relu")
    in the same pass; the running statistics move (in place) towards the batch mean and unbiased variance in
    training. ``saved = (x, mean, inv_std, training, relu)``, the statistics in float64; relu is None, or the
    output and the float64 gamma and beta the backward recomputes the ReLU's mask with."""
    xf = _flat(x, x.dtype)
    if training:
        m = xf.shape[0] * xf.shape[2]
        mean, var = _batch_moments(xf)
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / (m - 1))
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    inv_std = 1 / np.sqrt(var + eps)
    y = np.empty_like(xf)
    weight, bias = np.ascontiguousarray(weight), np.ascontiguousarray(bias)
    _normalise(xf, mean, inv_std, weight, bias, y, activation is not None)
    relu = None if activation is None else (y, weight.astype(np.float64), bias.astype(np.float64))
    return y.reshape(x.shape), (xf, mean, inv_std, bool(training), relu)


@implements("numba")
def batch_norm_backward(dy: np.ndarray, saved, weight: np.ndarray):
    """(dx, dgamma, dbeta); in eval the statistics are constants and dx is dy * weight * inv_std."""
    xf, mean, inv_std, training, relu = saved
    dyf = _flat(dy, xf.dtype)
    y, gamma_fwd, beta_fwd = (xf, mean, mean) if relu is None else relu  # (unread without the ReLU)
    dbeta, dgamma = np.empty(xf.shape[1]), np.empty(xf.shape[1])
    _grad_sums(dyf, xf, mean, inv_std, dbeta, dgamma, y, relu is not None)
    dx = np.empty_like(xf)
    _input_grad(dyf, xf, mean, inv_std, np.ascontiguousarray(weight, dtype=np.float64), dgamma, dbeta,
                training, dx, relu is not None, gamma_fwd, beta_fwd)
    return dx.reshape(dy.shape), dgamma.astype(xf.dtype), dbeta.astype(xf.dtype)
