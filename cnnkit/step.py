"""A training step, or an inference, as one call, recorded once and replayed where the backend has graphs (cupy:
CUDA graphs).

Issuing a GPU step from Python costs about as much as running it: dozens to hundreds of kernel launches, each
with its Python and CuPy overhead. :class:`TrainStep` and :class:`InferStep` run eagerly once per set-up (that
compiles the kernels and creates the optimizer's momentum buffers), record on the next call, and from then on
replay the recording: one launch per call, no Python in between and no host synchronisation.

A recording is valid for one set-up: the shapes and dtypes of the inputs; the very same parameter, buffer (and
momentum) arrays (``load_state_dict`` replaces them, so the step records again); the layers' train and frozen
flags; the optimizer's hyper-parameters (a new learning rate records again). A model that draws random numbers
(dropout in training) always runs eagerly, since a replay would repeat its draws; so does a step that cannot be
recorded (it warns once, saying why). ``graph=None`` (the default) replays where the backend has graphs,
``graph=False`` always runs eagerly, ``graph=True`` demands graphs and raises where there are none.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from cnnkit.losses import softmax_cross_entropy
from cnnkit.nn.base import Layer

Array = Any
LossFn = Callable[[Array, Array], tuple[Array, Array]]

MAX_GRAPHS = 4
"""Recordings kept per step (e.g. the full batches and an epoch's last, smaller batch), oldest dropped."""


class _Replayed:
    """The recording bookkeeping of a step over ``model``: ``_run(*inputs) -> outputs`` is the eager step."""

    def __init__(self, model: Layer, graph: bool | None, optimizer: Any = None):
        if not isinstance(model, Layer):
            raise TypeError(f"model must be a cnnkit Layer, got {type(model).__name__}")
        if graph not in (None, True, False):
            raise ValueError(f"graph must be None (automatic), True or False, got {graph!r}")
        capture = getattr(model.backend, "capture", None)
        if graph and capture is None:
            raise ValueError(f"graph=True, but the {model.backend.name!r} backend has no graphs (cupy has)")
        if graph and optimizer is not None and not hasattr(optimizer, "graph_state"):
            raise ValueError(f"graph=True, but {type(optimizer).__name__} cannot say when a recording of its "
                             f"step is valid (it has no graph_state())")
        recordable = optimizer is None or hasattr(optimizer, "graph_state")
        self.model, self.optimizer = model, optimizer
        self._capture = capture if graph is not False and recordable else None
        self._layers = [layer for _, layer in model.modules()]
        self._params = model.parameters()
        self._buffer_slots = [(layer, name) for layer in self._layers for name in layer._buffers]
        self._graphs: dict[tuple, _Recording] = {}
        self._warm: tuple | None = None
        self.recordings = 0
        """How many times a step was recorded (a growing count means the set-up keeps changing)."""

    @property
    def graphed(self) -> bool:
        """Whether this step can replay recordings (the backend has graphs and recording has not failed)."""
        return self._capture is not None

    def _run(self, *inputs: Array) -> tuple[Array, ...]:
        raise NotImplementedError

    def _call(self, *inputs: Array) -> tuple[Array, ...]:
        """The step's outputs: computed eagerly, or those of a replayed recording (overwritten by its next
        replay)."""
        key = self._setup(inputs) if self._capture is not None else None
        recording = self._graphs.get(key) if key is not None else None
        if recording is None and key is not None and key == self._warm:
            recording = self._record(key, inputs)
        if recording is None:
            outputs = self._run(*inputs)
            self._warm = self._setup(inputs) if self._capture is not None else None
            return outputs
        return recording.replay(inputs)

    def _setup(self, inputs: tuple[Array, ...]) -> tuple | None:
        """What a recording depends on, as a hashable key; None when the step must not be recorded (random
        layers). Arrays enter by identity: the key holds them, so no id is reused while it lives."""
        if any(not layer.replayable for layer in self._layers):
            return None
        hyper, arrays = self.optimizer.graph_state() if self.optimizer is not None else ((), [])
        buffers = (getattr(layer, name) for layer, name in self._buffer_slots)
        held = (*(p.data for p in self._params), *buffers, *arrays)
        return (tuple((tuple(a.shape), str(a.dtype)) for a in inputs), hyper,
                tuple((layer.training, layer.trainable) for layer in self._layers),
                tuple(map(id, held)), _Held(held))

    def _record(self, key: tuple, inputs: tuple[Array, ...]) -> _Recording | None:
        xp = self.model.backend.xp
        static = tuple(xp.zeros_like(a) for a in inputs)  # zeros: valid labels, should a recording check them
        outputs: list[Array] = []
        try:
            graph = self._capture(lambda: outputs.extend(self._run(*static)))
        except Exception as exc:  # noqa: BLE001  (any failure to record falls back to eager steps, said once)
            warnings.warn(f"{type(self).__name__}: the step could not be recorded as a graph ({type(exc).__name__}: "
                          f"{exc}); it runs eagerly from now on", RuntimeWarning, stacklevel=4)
            self._capture = None
            return None
        if len(self._graphs) >= MAX_GRAPHS:
            del self._graphs[next(iter(self._graphs))]
        recording = self._graphs[key] = _Recording(graph, static, tuple(outputs), self._params)
        self.recordings += 1
        return recording


class TrainStep(_Replayed):
    """``loss = step(x, labels)``: forward, loss, backward and ``optimizer.step()`` for one batch (see the module).

    ``loss`` is a fresh 0-d array on the model's backend (``float(loss)`` reads it on the host); ``step.logits`` is
    the batch's output, which the next call overwrites when the step is replayed. ``before_update`` (e.g. a
    gradient allreduce) runs between the backward and the update. After a replay ``p.grad`` holds the step's
    gradients, as after an eager step.
    """

    def __init__(self, model: Layer, optimizer: Any, loss: LossFn | None = None, *, graph: bool | None = None,
                 before_update: Callable[[], None] | None = None):
        super().__init__(model, graph, optimizer)
        self.loss = loss or (lambda logits, labels: softmax_cross_entropy(logits, labels, backend=model.backend))
        self.before_update = before_update
        self.logits: Array = None

    def __call__(self, x: Array, labels: Array) -> Array:
        loss, self.logits = self._call(x, labels)
        return loss.copy()

    def _run(self, x: Array, labels: Array) -> tuple[Array, Array]:
        self.optimizer.zero_grad()
        logits = self.model(x)
        loss, dlogits = self.loss(logits, labels)
        with self.model.input_grad_skipped():
            self.model.backward(dlogits)
        if self.before_update is not None:
            self.before_update()
        self.optimizer.step()
        return loss, logits


class InferStep(_Replayed):
    """``y = step(x)``: the model's output in eval mode (the model's own mode is restored after the call), as a
    fresh array (see the module for the recording)."""

    def __init__(self, model: Layer, *, graph: bool | None = None):
        super().__init__(model, graph)

    def __call__(self, x: Array) -> Array:
        modes = [layer.training for layer in self._layers]
        for layer in self._layers:
            layer.training = False
        try:
            (y,) = self._call(x)
        finally:
            for layer, mode in zip(self._layers, modes, strict=True):
                layer.training = mode
        return y.copy()

    def _run(self, x: Array) -> tuple[Array]:
        return (self.model(x),)


class _Held(tuple):
    """The arrays a key refers to, kept alive by the key but left out of its comparison and hash."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Held)

    def __hash__(self) -> int:
        return 0


class _Recording:
    """A recorded step: its graph, the static input buffers it reads, what it leaves behind (outputs, and each
    parameter's gradient array)."""

    def __init__(self, graph: Callable[[], None], inputs: tuple[Array, ...], outputs: tuple[Array, ...],
                 params: list[Any]):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs
        self.grads = [(p, p.grad) for p in params]

    def replay(self, inputs: tuple[Array, ...]) -> tuple[Array, ...]:
        for static, a in zip(self.inputs, inputs, strict=True):
            static[...] = a
        self.graph()
        for p, grad in self.grads:  # an eager step in between may have pointed p.grad elsewhere
            p.grad = grad
        return self.outputs
