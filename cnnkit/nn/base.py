"""Layer, Parameter and Sequential: the explicit forward/backward machinery every layer shares.

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
from cnnkit.backends import ACTIVATIONS, Backend

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


class Sequential(Layer):
    """Layers applied in order; children are named "0", "1", ... as in PyTorch.

    When a layer can take a following activation into its own kernel (``fuse_activation``, for the kinds in
    its ``fusable_activations`` if it lists them), Sequential runs the pair as one fused call (conv + bias +
    activation in one pass) and hands the output to the activation layer for its backward, so results and
    gradients are the same as unfused; a layer with ``fuses_activation_backward`` (batch norm + ReLU) also
    applies the activation's derivative in its own backward, and the activation layer's is skipped. In eval mode a conv
    followed by batch norm (``fold_batchnorm``), and the activation after it, run as one conv with the
    normalisation folded into its weights; a backward after such a forward first re-runs the group unfused
    from its saved input, so gradients in eval mode (e.g. saliency maps) are those of the unfused layers. A pool
    after an activation runs the activation's backward in its own (``backward_through``).
    """

    def __init__(self, *layers: Layer):
        super().__init__()
        self.layers = list(layers)
        self._folded: dict[int, tuple[int, Array]] = {}  # eval-mode folded groups: last index -> (first, input)
        self._absorbed: set[int] = set()  # activations whose backward the fused layer before them runs

    def children(self) -> Iterator[tuple[str, Layer]]:
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def first_layer(self) -> Layer:
        return self.layers[0].first_layer() if self.layers else self

    def forward(self, x: Array) -> Array:
        """Run the layers in order; an error inside one is a ShapeError naming that layer (by its dotted
        index), the shape it got and, for a model with ``input_shape``, the input shape the model expects."""
        return self._run(x, None, None)[0]

    def fold_residual(self, x: Array, residual: Array, activation: str | None) -> tuple[Array, bool]:
        """The forward, with ``residual`` added to the output and ``activation`` applied after it in the last
        conv's epilogue when the layers end in a conv and an eval-mode batch norm folded into it (a Residual's
        sum): (output, True); else the plain forward's output and False (the caller adds and activates)."""
        return self._run(x, residual, activation)

    def _run(self, x: Array, residual: Array | None, activation: str | None) -> tuple[Array, bool]:
        shapes: list[tuple[int, ...]] = []
        i, added = 0, False
        try:
            self._folded, self._absorbed = {}, set()
            while i < len(self.layers):
                if residual is not None and i == len(self.layers) - 2 and self._folds_residual(x, residual):
                    y, taken, added = self._fold_last(x, residual, activation), 2, True
                else:
                    y, taken = self._fused(i, x)
                if taken == 0:
                    y, taken = self.layers[i].forward(x), 1
                shapes += [tuple(y.shape)] * taken
                x, i = y, i + taken
        except ValueError as exc:
            raise self._shape_error(exc, i, shapes[-1] if shapes else tuple(x.shape)) from exc
        self._out_shapes = shapes
        return x, added

    def _folds_residual(self, x: Array, residual: Array) -> bool:
        conv, norm = self.layers[-2:]
        return (getattr(conv, "fold_batchnorm", None) is not None and not norm.training
                and hasattr(norm, "eval_affine") and conv.output_shape(x.shape) == tuple(residual.shape))

    def _fold_last(self, x: Array, residual: Array, activation: str | None) -> Array:
        start = len(self.layers) - 2
        self._folded[start + 1] = (start, x)
        return self.layers[start].fold_batchnorm(x, self.layers[start + 1], activation, residual)

    def _fused(self, i: int, x: Array) -> tuple[Array | None, int]:
        """Layers i, i+1 (, i+2) as one fused call when they form a fusable pattern: (output, layers taken),
        or (None, 0) when they do not."""
        layer, after = self.layers[i], self.layers[i + 1:i + 3]
        fold = getattr(layer, "fold_batchnorm", None)
        if fold is not None and after and not after[0].training and hasattr(after[0], "eval_affine"):
            act = after[1] if len(after) > 1 and getattr(after[1], "fusable_kind", None) is not None else None
            y = fold(x, after[0], None if act is None else act.fusable_kind)
            taken = 2 if act is None else 3
            self._folded[i + taken - 1] = (i, x)
        elif getattr(layer, "fuse_activation", None) is not None and after and \
                getattr(after[0], "fusable_kind", None) in getattr(layer, "fusable_activations", ACTIVATIONS):
            y, act, taken = layer.fuse_activation(x, after[0].fusable_kind), after[0], 2
            if getattr(layer, "fuses_activation_backward", False):
                self._absorbed.add(i + 1)
        else:
            return None, 0
        if act is not None:
            act.set_output(y)
        return y, taken

    def _shape_error(self, exc: ValueError, index: int, got: tuple[int, ...]) -> ShapeError:
        error = exc if isinstance(exc, ShapeError) else ShapeError(self.layers[index], got, str(exc))
        error.path.insert(0, str(index))
        expected = getattr(self, "input_shape", None)
        if expected is not None and error.expected is None:
            error.expected = tuple(expected)
        return error

    def backward(self, dy: Array) -> Array | None:
        """Backward through the layers in reverse; ``dy`` must have the shape each layer's forward gave (a
        ValueError naming the layer and both shapes otherwise, e.g. for a gradient of another batch size)."""
        shapes = getattr(self, "_out_shapes", None)
        through = -1  # an activation whose backward the pool after it ran
        for i in reversed(range(len(self.layers))):
            expected = None if shapes is None or len(shapes) != len(self.layers) else shapes[i]
            if dy is not None and expected is not None and tuple(dy.shape) != expected:
                layer = self.layers[i]
                raise ValueError(f"backward of layer {i} ({type(layer).__name__}({layer.extra_repr()})): the "
                                 f"gradient has shape {tuple(dy.shape)} but the layer's forward output had shape "
                                 f"{expected} (same batch size and shape as the last forward needed)")
            if i in self._absorbed or i == through:  # its backward ran in the layer before (absorbed) or after it
                continue
            if i in self._folded:  # a folded eval-mode group: run it unfused, so every layer saves its state
                start, x = self._folded.pop(i)
                for layer in self.layers[start:i + 1]:
                    x = layer.forward(x)
            fused = (i > 0 and hasattr(self.layers[i], "backward_through") and hasattr(self.layers[i - 1], "derivative")
                     and i - 1 not in self._absorbed and i - 1 not in self._folded)  # the activation's own backward
            dy = self.layers[i].backward_through(dy, self.layers[i - 1]) if fused else self.layers[i].backward(dy)
            through = i - 1 if fused else through
        return dy


class ShapeError(ValueError):
    """A layer of a Sequential rejected its input: ``path`` is the layer's dotted index in the model (e.g.
    ``["4", "0"]``), ``got`` the shape it received, ``expected`` the model's ``input_shape`` when it has one.
    ``layer`` is the layer itself (None after unpickling; ``layer_text`` describes it either way)."""

    def __init__(self, layer: Layer | None, got: tuple[int, ...], detail: str, layer_text: str | None = None):
        super().__init__(detail)
        self.layer, self.got, self.detail = layer, got, detail
        self.layer_text = layer_text or f"{type(layer).__name__}({layer.extra_repr()})"
        self.path: list[str] = []
        self.expected: tuple[int, ...] | None = None

    def __reduce__(self):  # picklable (e.g. across worker processes), keeping the path and expected shape
        return _rebuild_shape_error, (self.layer_text, self.got, self.detail, self.path, self.expected)

    def __str__(self) -> str:
        text = (f"layer {'.'.join(self.path)} ({self.layer_text}) failed on input of "
                f"shape {self.got}: {self.detail}")
        if self.expected is not None:
            text += f"; this model expects input of shape (N, {', '.join(map(str, self.expected))})"
        return text


def _rebuild_shape_error(layer_text: str, got: tuple[int, ...], detail: str, path: list[str],
                         expected: tuple[int, ...] | None) -> ShapeError:
    error = ShapeError(None, got, detail, layer_text)
    error.path, error.expected = list(path), expected
    return error
