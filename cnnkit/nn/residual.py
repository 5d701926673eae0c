"""Residual: y = body(x) + shortcut(x), the building block of ResNets (He et al. 2016)."""
from __future__ import annotations

from typing import Any

from cnnkit.nn.base import Layer

Array = Any


class Residual(Layer):
    """y = body(x) + projection(x), or body(x) + x when ``projection`` is None (identity shortcut).

    The backward sends dy through both branches and sums their input gradients. Children are named ``body``
    and ``projection``, so state-dict keys read ``body.0.weight``, ``projection.0.weight``.
    """

    def __init__(self, body: Layer, projection: Layer | None = None):
        super().__init__()
        for name, value in (("body", body), ("projection", projection)):
            if value is not None and not isinstance(value, Layer):
                raise TypeError(f"{name} must be a cnnkit Layer, got {type(value).__name__}")
        if body is None:
            raise TypeError("body must be a cnnkit Layer, got None")
        self.body = body
        self.projection = projection

    def forward(self, x: Array) -> Array:
        shortcut = x if self.projection is None else self.projection(x)
        y = self.body(x)
        if y.shape != shortcut.shape:
            raise ValueError(f"residual branches disagree: body gives {tuple(y.shape)}, the shortcut gives "
                             f"{tuple(shortcut.shape)}; add a projection that maps x to the body's output shape")
        return y + shortcut

    def backward(self, dy: Array) -> Array:
        dx = self.body.backward(dy)
        return dx + (dy if self.projection is None else self.projection.backward(dy))
