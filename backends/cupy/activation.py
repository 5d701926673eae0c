"""Activation and softmax launchers for kernels/activation.cu (backward passes need only the output y)."""
from __future__ import annotations

from typing import Any

from cnnkit.backends import LEAKY_SLOPE, implements

from ._module import ACT_CODES, THREADS, array_module, as_f32, blocks, f32, i32, launch, reduction_threads


@implements("cupy")
def activation_forward(x: Any, kind: str, negative_slope: float = LEAKY_SLOPE) -> Any:
    """y = kind(x), elementwise."""
    xp = array_module()
    x = as_f32(x, "x")
    y = xp.empty_like(x)
    launch("activation", "activation_fwd", blocks(x.size), THREADS, x, y, *i32(x.size, ACT_CODES[kind]),
           f32(negative_slope))
    return y


@implements("cupy")
def add_forward(a: Any, b: Any, activation: str | None = None, negative_slope: float = LEAKY_SLOPE) -> Any:
    """activation(a + b) elementwise; the plain sum when ``activation`` is None."""
    xp = array_module()
    a, b = as_f32(a, "a"), as_f32(b, "b")
    y = xp.empty_like(a)
    launch("activation", "add_activation_fwd", blocks(a.size), THREADS, a, b, y, *i32(a.size, ACT_CODES[activation]),
           f32(negative_slope))
    return y


@implements("cupy")
def activation_backward(dy: Any, y: Any, kind: str | None, negative_slope: float = LEAKY_SLOPE) -> Any:
    """dx from dy and the forward's output y."""
    xp = array_module()
    dy, y = as_f32(dy, "dy"), as_f32(y, "y")
    dx = xp.empty_like(dy)
    launch("activation", "activation_bwd", blocks(dy.size), THREADS, dy, y, dx, *i32(dy.size, ACT_CODES[kind]),
           f32(negative_slope))
    return dx


def _softmax(x: Any, take_log: bool) -> Any:
    xp = array_module()
    x = as_f32(x, "x")
    y = xp.empty_like(x)
    n, c = x.shape
    if n and c:
        launch("activation", "softmax_fwd", n, reduction_threads(c), x, y, *i32(c, take_log))
    return y


def _softmax_backward(dy: Any, y: Any, take_log: bool) -> Any:
    xp = array_module()
    dy, y = as_f32(dy, "dy"), as_f32(y, "y")
    dx = xp.empty_like(dy)
    n, c = dy.shape
    if n and c:
        launch("activation", "softmax_bwd", n, reduction_threads(c), dy, y, dx, *i32(c, take_log))
    return dx


@implements("cupy")
def softmax_forward(x: Any) -> Any:
    """Row softmax of (N, C), max subtracted."""
    return _softmax(x, False)


@implements("cupy")
def log_softmax_forward(x: Any) -> Any:
    """Row log-softmax of (N, C): (x - max) - log(sum(exp(x - max)))."""
    return _softmax(x, True)


@implements("cupy")
def softmax_backward(dy: Any, y: Any) -> Any:
    """dx = y * (dy - sum(dy * y)) per row."""
    return _softmax_backward(dy, y, False)


@implements("cupy")
def log_softmax_backward(dy: Any, y: Any) -> Any:
    """dx = dy - exp(y) * sum(dy) per row."""
    return _softmax_backward(dy, y, True)
