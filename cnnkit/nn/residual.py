"""Residual: y = body(x) + shortcut(x), the building block of ResNets (He et al. 2016)."""
from __future__ import annotations

from typing import Any

from cnnkit import functional as F
from cnnkit.nn.base import Layer

Array = Any


class Residual(Layer):
    """y = body(x) + projection(x), or body(x) + x when ``projection`` is None (identity shortcut).

    The backward sends dy through both branches and sums their input gradients. In eval mode a body that ends in
    a conv and a batch norm adds the shortcut, and the activation after the block, in that conv's epilogue
    (Sequential.fold_residual). Children are named ``body`` and ``projection``, so state-dict keys read
    ``body.0.weight``, ``projection.0.weight``.
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
        return self._sum(x, None)

    def fuse_activation(self, x: Array, kind: str) -> Array:
        """activation(body(x) + shortcut) in one pass (Sequential hands over the activation that follows)."""
        return self._sum(x, kind)

    def _sum(self, x: Array, kind: str | None) -> Array:
        shortcut = x if self.projection is None else self.projection(x)
        fold = getattr(self.body, "fold_residual", None)
        if not self.training and fold is not None:  # eval: the sum and activation in the body's last conv
            y, added = fold(x, shortcut, kind)
            if added:
                return y
        else:
            y = self.body(x)
        if y.shape != shortcut.shape:
            raise ValueError(f"residual branches disagree: body gives {tuple(y.shape)}, the shortcut gives "
                             f"{tuple(shortcut.shape)}; add a projection that maps x to the body's output shape")
        return F.add(y, shortcut, kind, backend=self.backend)

    def backward(self, dy: Array) -> Array:
        """dy is the gradient of the sum (a fused activation's backward has already run)."""
        dx = self.body.backward(dy)
        return F.add(dx, dy if self.projection is None else self.projection.backward(dy), backend=self.backend)


class ZeroPadShortcut(Layer):
    """He et al.'s option-A shortcut: the identity subsampled by ``stride`` (x[:, :, ::s, ::s]) with the extra
    output maps filled with zeros, split evenly before and after the input maps (as the widely used CIFAR
    reference implementations do; the paper leaves the placement open). No parameters.

    (N, in_channels, H, W) -> (N, out_channels, ceil(H / s), ceil(W / s)); ``out_channels - in_channels`` must be
    a non-negative even number.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("stride", stride)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if out_channels < in_channels or (out_channels - in_channels) % 2:
            raise ValueError(f"out_channels - in_channels must be a non-negative even number, got {out_channels} "
                             f"- {in_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.pad = (out_channels - in_channels) // 2
        self._x_shape: tuple[int, ...] | None = None

    def forward(self, x: Array) -> Array:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ZeroPadShortcut needs (N, {self.in_channels}, H, W) input, got shape {tuple(x.shape)}")
        self._x_shape = tuple(x.shape)
        s, p = self.stride, self.pad
        sub = x[:, :, ::s, ::s]
        y = self.backend.xp.zeros((x.shape[0], self.out_channels, *sub.shape[2:]), dtype=x.dtype)
        y[:, p:p + self.in_channels] = sub
        return y

    def backward(self, dy: Array) -> Array:
        if self._x_shape is None:
            raise RuntimeError("ZeroPadShortcut.backward was called before its forward")
        s, p = self.stride, self.pad
        dx = self.backend.xp.zeros(self._x_shape, dtype=dy.dtype)
        dx[:, :, ::s, ::s] = dy[:, p:p + self.in_channels]
        return dx

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"
