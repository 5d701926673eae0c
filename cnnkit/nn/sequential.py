"""Sequential (layers in order, with the fused patterns it runs as one kernel call) and ShapeError (a layer of a
model rejected its input)."""
from __future__ import annotations

from typing import Any, Iterator

from cnnkit.backends import ACTIVATIONS
from cnnkit.nn.base import Layer

Array = Any


class Sequential(Layer):
    """Layers applied in order; children are named "0", "1", ... as in PyTorch.

    When a layer can take a following activation into its own kernel (``fuse_activation``, for the kinds in its
    ``fusable_activations`` if it lists them), Sequential runs the pair as one fused call (conv + bias + activation
    in one pass) and hands the output to the activation layer for its backward, so results and gradients are the
    same as unfused; a layer with ``fuses_activation_backward`` (batch norm + ReLU) also applies the activation's
    derivative in its own backward, and the activation layer's is skipped. In eval mode a conv followed by batch
    norm (``fold_batchnorm``), and the activation after it, run as one conv with the normalisation folded into its
    weights; a backward after such a forward first re-runs the group unfused from its saved input, so gradients in
    eval mode (e.g. saliency maps) are those of the unfused layers. A conv, an activation it fuses and LeNet's 2x2
    subsampling (``AvgPool2d.subsamples``) run as one call (``fuse_activation_pool``), the conv's output written
    only in training (in eval mode a backward re-runs the three unfused first). A pool after an activation runs the
    activation's backward in its own (``backward_through``).
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
                    shapes += [tuple(y.shape)] * 2
                else:
                    y, out_shapes = self._fused(i, x)
                    if y is None:
                        y, out_shapes = self.layers[i].forward(x), [None]
                    shapes += [tuple(y.shape) if shape is None else shape for shape in out_shapes]
                    taken = len(out_shapes)
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

    def _fused(self, i: int, x: Array) -> tuple[Array | None, list]:
        """Layers i, i+1 (, i+2) as one fused call when they form a fusable pattern: (output, the output shape of
        each layer taken, None for the call's output), or (None, []) when they do not."""
        layer, after = self.layers[i], self.layers[i + 1:i + 3]
        fold = getattr(layer, "fold_batchnorm", None)
        if not after or (fold is None and getattr(layer, "fuse_activation", None) is None):
            return None, []  # the common case of a layer that fuses nothing (conv-pool fusers also fuse alone)
        kind = getattr(after[0], "fusable_kind", None)
        if fold is not None and not after[0].training and hasattr(after[0], "eval_affine"):
            act = after[1] if len(after) > 1 and getattr(after[1], "fusable_kind", None) is not None else None
            y = fold(x, after[0], None if act is None else act.fusable_kind)
            shapes = [None] * (2 if act is None else 3)
            self._folded[i + len(shapes) - 1] = (i, x)
        elif (full := self._pools_after(i, x, kind)) is not None:
            return self._fused_pool(i, x, kind, full)
        elif getattr(layer, "fuse_activation", None) is not None and \
                kind in getattr(layer, "fusable_activations", ACTIVATIONS):
            y, act, shapes = layer.fuse_activation(x, kind), after[0], [None, None]
            if getattr(layer, "fuses_activation_backward", False):
                self._absorbed.add(i + 1)
        else:
            return None, []
        if act is not None:
            act.set_output(y)
        return y, shapes

    def _pools_after(self, i: int, x: Array, kind: str | None) -> tuple[int, ...] | None:
        """The conv's output shape when layers i, i+1, i+2 are a conv, an activation it can fuse and LeNet's 2x2
        subsampling, on an output of at least 2x2; else None."""
        layer, after = self.layers[i], self.layers[i + 1:i + 3]
        if not (getattr(layer, "fuse_activation_pool", None) is not None and len(after) == 2 and len(x.shape) == 4
                and kind in getattr(layer, "fusable_activations", ACTIVATIONS)
                and getattr(after[1], "subsamples", False)):
            return None
        full = layer.output_shape(x.shape)
        return full if min(full[2:]) >= 2 else None

    def _fused_pool(self, i: int, x: Array, kind: str, full: tuple[int, ...]) -> tuple[Array, list]:
        """Conv, activation and pool (the conv's output of shape ``full``) in one call. In training the conv's
        output is kept for the activation's backward; in eval mode it is not written, and a backward first re-runs
        the three unfused."""
        conv, act, pool = self.layers[i:i + 3]
        y, pooled = conv.fuse_activation_pool(x, kind, keep=conv.training)
        if y is None:
            self._folded[i + 2] = (i, x)
        else:
            act.set_output(y)
            pool.set_input_shape(full)
        return pooled, [full, full, tuple(pooled.shape)]

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
