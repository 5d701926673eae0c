"""Activation layers. The elementwise ones share :class:`Activation`, whose backward needs only the output y, so
a preceding Conv2d can compute y in its fused epilogue and hand it over with ``set_output``."""
from __future__ import annotations

from typing import Any

from cnnkit import functional as F
from cnnkit.nn import init
from cnnkit.nn.base import Layer

Array = Any

DEFAULT_NEGATIVE_SLOPE = 0.01
"""The leaky-ReLU slope the backends' fused conv epilogue uses (the contract's default)."""


class Activation(Layer):
    """Elementwise activation ``kind`` (one of cnnkit.backends.ACTIVATIONS), forward and backward by kernel."""

    kind: str = ""

    def __init__(self) -> None:
        super().__init__()
        self._y: Array | None = None

    @property
    def negative_slope(self) -> float:
        return DEFAULT_NEGATIVE_SLOPE

    @property
    def fusable_kind(self) -> str | None:
        """The activation name a conv epilogue can apply in this layer's place, or None when it cannot."""
        return self.kind

    def set_output(self, y: Array) -> None:
        """Record the output a fused conv computed for this activation, for the backward."""
        self._y = y

    def forward(self, x: Array) -> Array:
        self._y = F.activation(x, self.kind, self.negative_slope, backend=self.backend)
        return self._y

    def backward(self, dy: Array) -> Array:
        return F.activation_backward(dy, *self.derivative(), backend=self.backend)

    def derivative(self) -> tuple[Array, str, float]:
        """(output, kind, negative_slope): what this layer's backward reads, for a following layer that runs it
        inside its own backward (AvgPool2d.backward_through)."""
        return init.saved(self, self._y), self.kind, self.negative_slope


class ReLU(Activation):
    """max(x, 0)."""

    kind = "relu"


class LeakyReLU(Activation):
    """x for x > 0, else negative_slope * x. Fusable into a conv only with the default slope 0.01."""

    kind = "leaky_relu"

    def __init__(self, negative_slope: float = DEFAULT_NEGATIVE_SLOPE):
        super().__init__()
        if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool) or negative_slope < 0:
            raise ValueError(f"negative_slope must be a number >= 0, got {negative_slope!r}")
        self._slope = float(negative_slope)

    @property
    def negative_slope(self) -> float:
        return self._slope

    @property
    def fusable_kind(self) -> str | None:
        return self.kind if self._slope == DEFAULT_NEGATIVE_SLOPE else None

    def extra_repr(self) -> str:
        return f"negative_slope={self._slope}"


class Sigmoid(Activation):
    """1 / (1 + exp(-x))."""

    kind = "sigmoid"


class Tanh(Activation):
    """tanh(x)."""

    kind = "tanh"


class ScaledTanh(Activation):
    """LeCun's 1.7159 * tanh(2x / 3): f(+-1) = +-1 and maximal second derivative at +-1 (LeCun et al. 1998)."""

    kind = "scaled_tanh"


class _OverClasses(Layer):
    """A normalisation over the classes (axis 1) of (N, C) scores whose backward needs only its output."""

    _forward = staticmethod(F.softmax)
    _backward = staticmethod(F.softmax_backward)

    def __init__(self) -> None:
        super().__init__()
        self._y: Array | None = None

    def forward(self, x: Array) -> Array:
        self._y = self._forward(x, backend=self.backend)
        return self._y

    def backward(self, dy: Array) -> Array:
        return self._backward(dy, init.saved(self, self._y), backend=self.backend)


class Softmax(_OverClasses):
    """Softmax over the classes (axis 1) of (N, C) scores."""


class LogSoftmax(_OverClasses):
    """log(softmax(x)) over the classes (axis 1) of (N, C) scores, computed stably."""

    _forward = staticmethod(F.log_softmax)
    _backward = staticmethod(F.log_softmax_backward)
