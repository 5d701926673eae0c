"""Elementwise activations and softmax, NumPy reference. Every backward needs only the forward's output y."""
from __future__ import annotations

import numpy as np

from cnnkit.backends import LEAKY_SLOPE, SCALED_TANH_A, SCALED_TANH_S, implements


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow: exp is only ever taken of -|x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@implements("numpy")
def activation_forward(x: np.ndarray, kind: str, negative_slope: float = LEAKY_SLOPE) -> np.ndarray:
    """y = kind(x) for relu, leaky_relu, sigmoid, tanh or scaled_tanh (A * tanh(S * x))."""
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "leaky_relu":
        return np.where(x > 0, x, x * negative_slope)
    if kind == "sigmoid":
        return _sigmoid(x)
    if kind == "tanh":
        return np.tanh(x)
    if kind == "scaled_tanh":
        return SCALED_TANH_A * np.tanh(SCALED_TANH_S * x)
    raise ValueError(f"unknown activation {kind!r}")


@implements("numpy")
def add_forward(a: np.ndarray, b: np.ndarray, activation: str | None = None,
                negative_slope: float = LEAKY_SLOPE) -> np.ndarray:
    """activation(a + b) elementwise; the plain sum when ``activation`` is None."""
    total = a + b
    return total if activation is None else activation_forward(total, activation, negative_slope)


@implements("numpy")
def activation_backward(dy: np.ndarray, y: np.ndarray, kind: str, negative_slope: float = LEAKY_SLOPE) -> np.ndarray:
    """dx from dy and the output y: the derivative of each activation written in terms of y."""
    if kind == "relu":         # y <= 0, not "not y > 0": a NaN passes dy on, as PyTorch's threshold_backward
        return np.where(y <= 0, 0, dy)
    if kind == "leaky_relu":   # y > 0 exactly where x > 0, since negative_slope >= 0 (a NaN gets the slope, as PyTorch)
        return np.where(y > 0, dy, dy * negative_slope)
    if kind == "sigmoid":
        return dy * y * (1 - y)
    if kind == "tanh":
        return dy * (1 - y * y)
    if kind == "scaled_tanh":  # d/dx A tanh(Sx) = A S (1 - tanh^2) = (S / A) (A^2 - y^2)
        return dy * ((SCALED_TANH_S / SCALED_TANH_A) * (SCALED_TANH_A ** 2 - y * y))
    raise ValueError(f"unknown activation {kind!r}")


@implements("numpy")
def softmax_forward(x: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of (N, C), max subtracted so exp never overflows."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@implements("numpy")
def log_softmax_forward(x: np.ndarray) -> np.ndarray:
    """log(softmax(x)) over axis 1 of (N, C), as z - log(sum(exp(z))) with z = x - max(x)."""
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@implements("numpy")
def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = y * (dy - sum(dy * y)) per row (the softmax Jacobian applied to dy)."""
    return y * (dy - (dy * y).sum(axis=1, keepdims=True))


@implements("numpy")
def log_softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = dy - softmax * sum(dy) per row, with softmax = exp(y)."""
    return dy - np.exp(y) * dy.sum(axis=1, keepdims=True)
