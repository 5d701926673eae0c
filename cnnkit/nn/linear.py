"""Linear (fully connected), Flatten and Dropout: plain array algebra, the same on every backend."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnnkit import functional as F
from cnnkit.nn import init
from cnnkit.nn.base import Layer

Array = Any


class Linear(Layer):
    """y = x @ weight.T + bias with weight (out_features, in_features), as PyTorch's Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype: str = "float32"):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_features, self.out_features = in_features, out_features
        dtype = init.check_dtype(dtype)
        self.weight = init.parameter(self, init.kaiming_uniform((out_features, in_features), in_features), dtype)
        self.bias = init.parameter(self, init.bias_uniform((out_features,), in_features), dtype) if bias else None
        self._x: Array | None = None

    def forward(self, x: Array) -> Array:
        self._x = x
        return F.linear(x, self.weight.data, None if self.bias is None else self.bias.data, backend=self.backend)

    def backward(self, dy: Array) -> Array:
        x = init.saved(self, self._x)
        if tuple(dy.shape) != (x.shape[0], self.out_features):
            raise ValueError(f"Linear({self.in_features}, {self.out_features}).backward: the gradient has shape "
                             f"{tuple(dy.shape)}, the forward output had shape {(x.shape[0], self.out_features)}")
        trainable = self.trainable
        dx, dw, db = F.linear_backward(dy, x, self.weight.data, need_db=trainable and self.bias is not None,
                                       need_dx=self.requires_input_grad, need_dw=trainable, backend=self.backend)
        self.accumulate(self.weight, dw)
        if self.bias is not None:
            self.accumulate(self.bias, db)
        return dx

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)), as PyTorch's Flatten() with its default start_dim=1."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: Array) -> Array:
        self._shape = tuple(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: Array) -> Array:
        return dy.reshape(init.saved(self, self._shape))


class Dropout(Layer):
    """Inverted dropout: in training each element is zeroed with probability p and the rest scaled by 1/(1-p);
    identity in eval mode.

    Reproducible: the k-th training forward of a layer uses the mask of seed SeedSequence([seed, k]), so two
    layers built with the same ``seed`` drop the same elements, and a different ``seed`` per layer decorrelates
    them. ``reset_counter()`` replays the sequence from the start.

    Data-parallel: ``batch_offset`` is the row of the global batch at which this rank's batch starts; the mask
    is then this rank's rows of the mask one process draws for the whole global batch (``dropout_mask``'s
    ``offset``), so N ranks drop what one process drops, not the same pattern on every rank. ``fit`` sets it
    around each step (:func:`cnnkit.distributed.data_parallel_step`); it is 0 otherwise.
    """

    def __init__(self, p: float = 0.5, seed: int = 0):
        super().__init__()
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.p, self.seed = float(p), seed
        self.calls = 0
        self.batch_offset = 0
        self._saved: tuple[Array | None] | None = None

    def reset_counter(self) -> None:
        self.calls = 0

    def _next_seed(self) -> int | None:
        """The seed of this forward's mask (None when it draws none: eval mode or p = 0), counting the call."""
        if not self.training or self.p == 0:
            return None
        seed = int(np.random.SeedSequence([self.seed, self.calls]).generate_state(1)[0])
        self.calls += 1
        return seed

    @property
    def replayable(self) -> bool:
        return not self.training or self.p == 0

    def skip(self) -> None:
        """Count a training forward this rank does not run (its share of a data-parallel global batch is empty),
        so that its next masks stay those of the other ranks."""
        self._next_seed()

    def forward(self, x: Array) -> Array:
        seed = self._next_seed()
        if seed is None:
            self._saved = (None,)
            return x
        offset = self.batch_offset * math.prod(x.shape[1:])
        mask = F.dropout_mask(x.shape, self.p, seed, x.dtype, offset, backend=self.backend)
        self._saved = (mask,)
        return x * mask

    def backward(self, dy: Array) -> Array:
        (mask,) = init.saved(self, self._saved)
        return dy if mask is None else dy * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, seed={self.seed}"
