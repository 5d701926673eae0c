"""Elementwise activations and softmax, Numba.

Each activation has an integer code so one compiled kernel serves them all; :func:`act_value` and
:func:`act_grad` are also the fused epilogue of the conv kernels. Values are computed in float64 and rounded
once to the array's dtype. Softmax rows are one pass each (max, exp-sum, write) with no temporaries.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from cnnkit.backends import SCALED_TANH_A, SCALED_TANH_S

NONE, RELU, LEAKY_RELU, SIGMOID, TANH, SCALED_TANH = 0, 1, 2, 3, 4, 5
CODES: dict[str | None, int] = {None: NONE, "relu": RELU, "leaky_relu": LEAKY_RELU, "sigmoid": SIGMOID,
                                "tanh": TANH, "scaled_tanh": SCALED_TANH}
_A = SCALED_TANH_A
_S = SCALED_TANH_S
_S_OVER_A = SCALED_TANH_S / SCALED_TANH_A
_A2 = SCALED_TANH_A ** 2


def code(kind: str | None) -> int:
    """The kernel code of activation ``kind`` (None: identity)."""
    try:
        return CODES[kind]
    except KeyError:
        raise ValueError(f"unknown activation {kind!r}") from None


@njit(cache=True, fastmath=False)
def act_value(v, kind, slope):
    """kind(v) in float64 (identity for NONE); the same formulas as the NumPy reference."""
    x = float(v)
    if kind == RELU:
        return 0.0 if x < 0.0 else x
    if kind == LEAKY_RELU:
        return x if x > 0.0 else x * slope
    if kind == SIGMOID:  # exp only of -|x|: no overflow
        e = math.exp(-abs(x))
        return 1.0 / (1.0 + e) if x >= 0.0 else e / (1.0 + e)
    if kind == TANH:
        return math.tanh(x)
    if kind == SCALED_TANH:
        return _A * math.tanh(_S * x)
    return x


@njit(cache=True, fastmath=False)
def act_grad(g, v, kind, slope):
    """dx for dy = g at output y = v, from the output alone (the derivative written in terms of y)."""
    dy, y = float(g), float(v)
    if kind == RELU:
        return dy if y > 0.0 else 0.0
    if kind == LEAKY_RELU:  # y > 0 exactly where x > 0, since slope >= 0
        return dy if y > 0.0 else dy * slope
    if kind == SIGMOID:
        return dy * y * (1.0 - y)
    if kind == TANH:
        return dy * (1.0 - y * y)
    if kind == SCALED_TANH:
        return dy * (_S_OVER_A * (_A2 - y * y))
    return dy


@njit(parallel=True, cache=True, fastmath=False)
def _forward(x, y, kind, slope):
    for i in prange(x.size):
        y[i] = act_value(x[i], kind, slope)


@njit(parallel=True, cache=True, fastmath=False)
def _backward(dy, y, dx, kind, slope):
    for i in prange(y.size):
        dx[i] = act_grad(dy[i], y[i], kind, slope)


def activation_forward(x: np.ndarray, kind: str, negative_slope: float = 0.01) -> np.ndarray:
    """y = kind(x) for relu, leaky_relu, sigmoid, tanh or scaled_tanh (A * tanh(S * x))."""
    flat = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(flat)
    _forward(flat, y, code(kind), float(negative_slope))
    return y.reshape(x.shape)


def activation_backward(dy: np.ndarray, y: np.ndarray, kind: str, negative_slope: float = 0.01) -> np.ndarray:
    """dx from dy and the output y."""
    yf = np.ascontiguousarray(y).reshape(-1)
    dx = np.empty_like(yf)
    _backward(np.ascontiguousarray(dy, dtype=y.dtype).reshape(-1), yf, dx, code(kind), float(negative_slope))
    return dx.reshape(y.shape)


# ----------------------------------------------------------------------------------------------- softmax
@njit(cache=True, fastmath=False)
def row_max_logsumexp(x, i):
    """(max, log(sum(exp(x[i] - max)))) of row i: the stable pieces of every softmax."""
    m = -np.inf
    for j in range(x.shape[1]):
        if x[i, j] > m:
            m = float(x[i, j])
    s = 0.0
    for j in range(x.shape[1]):
        s += math.exp(x[i, j] - m)
    return m, math.log(s)


@njit(parallel=True, cache=True, fastmath=False)
def _softmax(x, y, log):
    for i in prange(x.shape[0]):
        m, lse = row_max_logsumexp(x, i)
        for j in range(x.shape[1]):
            z = (x[i, j] - m) - lse
            y[i, j] = z if log else math.exp(z)


@njit(parallel=True, cache=True, fastmath=False)
def _softmax_backward(dy, y, dx, log):
    for i in prange(y.shape[0]):
        s = 0.0
        for j in range(y.shape[1]):
            s += dy[i, j] if log else dy[i, j] * y[i, j]
        for j in range(y.shape[1]):
            dx[i, j] = dy[i, j] - math.exp(y[i, j]) * s if log else y[i, j] * (dy[i, j] - s)


def _rows(x: np.ndarray, log: bool) -> np.ndarray:
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _softmax(x, y, log)
    return y


def _rows_backward(dy: np.ndarray, y: np.ndarray, log: bool) -> np.ndarray:
    y = np.ascontiguousarray(y)
    dx = np.empty_like(y)
    _softmax_backward(np.ascontiguousarray(dy, dtype=y.dtype), y, dx, log)
    return dx


def softmax_forward(x: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of (N, C), max subtracted so exp never overflows."""
    return _rows(x, False)


def log_softmax_forward(x: np.ndarray) -> np.ndarray:
    """log(softmax(x)) over axis 1 of (N, C), as (x - max) - log(sum(exp(x - max)))."""
    return _rows(x, True)


def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = y * (dy - sum(dy * y)) per row."""
    return _rows_backward(dy, y, False)


def log_softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = dy - softmax * sum(dy) per row, with softmax = exp(y)."""
    return _rows_backward(dy, y, True)
