"""Layer and Parameter: the explicit forward/backward machinery every layer shares (Sequential: sequential.py).

A layer is bound to one backend (``layer.to("numba")`` moves it); ``forward(x)`` keeps what ``backward(dy)``
needs, and ``backward`` returns dx while accumulating parameter gradients into ``Parameter.grad``. A frozen layer
(``layer.trainable = False``) still passes gradients through but leaves its parameters' grads at None, so the
optimiser skips them (PyTorch's ``requires_grad=False``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from cnnkit.backend import backend as resolve_backend
from cnnkit.backend import get_backend
from cnnkit.backends import Backend

Array = Any


class Parameter:
    """A trainable array and its gradient (None until a backward pass writes one)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: Array):
        self.data = data
        self.grad: Array | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


class Layer:
    """Base class: parameters, buffers, child layers, train/eval mode, backend binding, forward/backward."""

    def __init__(self) -> None:
        self.training = True
        self.requires_input_grad = True
        self._trainable = True
        self._buffers: list[str] = []
        self._backend: Backend = get_backend()

    # -- structure ---------------------------------------------------------------------------------------
    def children(self) -> Iterator[tuple[str, Layer]]:
        """Direct sub-layers with their state-dict names, in definition order."""
        for name, value in vars(self).items():
            if isinstance(value, Layer):
                yield name, value

    def modules(self, prefix: str = "") -> Iterator[tuple[str, Layer]]:
        """This layer and every sub-layer, depth first, with dotted names."""
        yield prefix, self
        for name, child in self.children():
            yield from child.modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(name, Parameter) pairs with state-dict keys such as ``features.0.weight``."""
        for path, layer in self.modules(prefix):
            for name, value in vars(layer).items():
                if isinstance(value, Parameter):
                    yield (f"{path}.{name}" if path else name), value

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        """Non-trainable state saved with the model (e.g. batch norm's running statistics)."""
        for path, layer in self.modules(prefix):
            for name in layer._buffers:
                yield (f"{path}.{name}" if path else name), getattr(layer, name)

    def register_buffer(self, name: str, value: Array) -> None:
        setattr(self, name, value)
        if name not in self._buffers:
            self._buffers.append(name)

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.parameters())

    def own_parameter_count(self) -> int:
        """Parameters held by this layer itself (not its children) that can be nonzero."""
        return sum(int(np.prod(v.shape)) for v in vars(self).values() if isinstance(v, Parameter))

    def num_effective_parameters(self) -> int:
        """Like num_parameters, but a conv with a connection table counts only its connected weights
        (LeNet-5 classic: 60,850)."""
        return sum(layer.own_parameter_count() for _, layer in self.modules())

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        """Freeze (False) or unfreeze this layer and all its sub-layers."""
        for _, layer in self.modules():
            layer._trainable = bool(value)

    @property
    def replayable(self) -> bool:
        """Whether replaying a recording of this layer's step (a CUDA graph) repeats it exactly: False where the
        layer draws random numbers in its current mode (dropout in training)."""
        return True

    def first_layer(self) -> Layer:
        """The layer that receives the model's input (self for a leaf; containers override)."""
        return self

    @contextlib.contextmanager
    def input_grad_skipped(self) -> Iterator[Layer]:
        """Within the block, the layer that sees the model input skips computing dx, since nobody needs the
        gradient of the data (a conv then computes only dw and db, and backward returns None); restored
        after. Training loops and benchmarks use this; gradient checks of the input do not."""
        first = self.first_layer()
        before = first.requires_input_grad
        first.requires_input_grad = False
        try:
            yield self
        finally:
            first.requires_input_grad = before

    def train(self, mode: bool = True) -> Layer:
        for _, layer in self.modules():
            layer.training = bool(mode)
        return self

    def eval(self) -> Layer:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, backend: str | Backend, dtype: Any = None) -> Layer:
        """Move every parameter and buffer to ``backend`` (optionally casting floats to ``dtype``, float32 or
        float64: any other dtype is a TypeError here, before anything moves)."""
        be = resolve_backend(backend)
        if dtype is not None:
            dtype = check_float_dtype(dtype)
        for _, layer in self.modules():
            src = layer._backend
            layer._backend = be
            for value in list(vars(layer).values()):
                if isinstance(value, Parameter):
                    value.data = _move(value.data, src, be, dtype)
                    value.grad = None if value.grad is None else _move(value.grad, src, be, dtype)
            for name in layer._buffers:
                setattr(layer, name, _move(getattr(layer, name), src, be, dtype))
            layer._moved()
        return self

    def _moved(self) -> None:
        """Hook for layers holding derived arrays (e.g. a connection mask) to move them too."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host (NumPy) copies of every parameter and buffer, by state-dict key."""
        out = {name: np.array(self._backend.to_numpy(p.data)) for name, p in self.named_parameters()}
        out.update({name: np.array(self._backend.to_numpy(b)) for name, b in self.named_buffers()})
        return out

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy arrays into this model; missing/extra keys (when strict) and shape mismatches are errors."""
        own = dict(self.named_parameters())
        buffers = {name: name for name, _ in self.named_buffers()}
        expected = set(own) | set(buffers)
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if strict and (missing or extra):
            raise KeyError(f"state dict does not match the model: missing keys {missing}, unexpected keys {extra}")
        targets = {name: (layer, attr) for path, layer in self.modules()
                   for attr in list(vars(layer)) + layer._buffers
                   if (name := f"{path}.{attr}" if path else attr) in expected}
        for name in sorted(expected & set(state)):
            layer, attr = targets[name]
            current = getattr(layer, attr)
            current_data = current.data if isinstance(current, Parameter) else current
            value = np.array(state[name])  # a copy: never share memory with the caller's arrays
            if tuple(value.shape) != tuple(current_data.shape):
                raise ValueError(f"shape mismatch for {name!r}: the model has {tuple(current_data.shape)}, "
                                 f"the state dict has {tuple(value.shape)}")
            new = self._backend.asarray(value, dtype=current_data.dtype)
            if isinstance(current, Parameter):
                current.data = new
            else:
                setattr(layer, attr, new)

    # -- computation ---------------------------------------------------------------------------------------
    def forward(self, x: Array) -> Array:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def backward(self, dy: Array) -> Array:
        raise NotImplementedError(f"{type(self).__name__} must implement backward")

    def __call__(self, x: Array) -> Array:
        return self.forward(x)

    def accumulate(self, param: Parameter, grad: Array | None) -> None:
        """Add ``grad`` into ``param.grad`` unless this layer is frozen."""
        if grad is None or not self._trainable:
            return
        param.grad = grad if param.grad is None else param.grad + grad

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        kids = list(self.children())
        if not kids:
            return f"{type(self).__name__}({self.extra_repr()})"
        inner = "\n".join(f"  ({name}): " + repr(child).replace("\n", "\n  ") for name, child in kids)
        return f"{type(self).__name__}(\n{inner}\n)"


FLOAT_DTYPES = ("float32", "float64")
"""The float dtypes layers hold (every backend's kernels take these two)."""


def check_float_dtype(dtype: object) -> str:
    """``dtype`` as the name of a float dtype layers can hold; a TypeError otherwise."""
    try:
        name = None if dtype is None else str(np.dtype(dtype))
    except TypeError:
        name = None
    if name not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return name


def _move(array: Array, src: Backend, dst: Backend, dtype: Any) -> Array:
    if dtype is not None and array.dtype.kind == "f":
        return dst.asarray(src.to_numpy(array), dtype=dtype)
    if src.array_type is dst.array_type:
        return array
    return dst.asarray(src.to_numpy(array))
