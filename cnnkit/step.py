"""One training step as one call, recorded once and replayed where the backend has graphs (cupy: CUDA graphs).

Issuing a GPU training step from Python costs about as much as running it: hundreds of kernel launches, each
with its Python and CuPy overhead. A :class:`TrainStep` runs the step eagerly once per set-up (that compiles its
kernels and creates the optimizer's momentum buffers), records it on the next call, and from then on replays the
recording: one launch per step, with no Python in between and no host synchronisation.
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
"""Recordings kept per TrainStep (e.g. the full batches and an epoch's last, smaller batch), oldest dropped."""


class TrainStep:
    """``loss = step(x, labels)``: forward, loss, backward and ``optimizer.step()`` for one batch.

    ``loss`` is a 0-d array on the model's backend (``float(loss)`` reads it on the host), and ``step.logits`` the
    batch's output; ``before_update`` (e.g. a gradient allreduce) runs between the backward and the update. With ``graph=None`` (the default) the step is replayed from a recording where the backend has
    graphs; ``graph=False`` always runs eagerly; ``graph=True`` demands graphs and raises where there are none.

    A recording is valid for one set-up: the shapes and dtypes of ``x`` and ``labels``; the very same parameter,
    buffer and momentum arrays (``load_state_dict`` replaces them, so the step records again); the layers' train
    and frozen flags; the optimizer's hyper-parameters (a new learning rate records again). The first call of a new set-up
    runs eagerly and the second records. A model that draws random numbers in training (dropout) always runs
    eagerly, since a replay would repeat its draws; so does a step that cannot be recorded (it warns once, why).
    After a replay ``p.grad`` holds the step's gradients as after an eager step; ``loss`` is a fresh array, but
    ``step.logits`` belongs to the recording and the next call overwrites it.
    """

    def __init__(self, model: Layer, optimizer: Any, loss: LossFn | None = None, *, graph: bool | None = None,
                 before_update: Callable[[], None] | None = None):
        if not isinstance(model, Layer):
            raise TypeError(f"model must be a cnnkit Layer, got {type(model).__name__}")
        if graph not in (None, True, False):
            raise ValueError(f"graph must be None (automatic), True or False, got {graph!r}")
        capture = getattr(model.backend, "capture", None)
        if graph and capture is None:
            raise ValueError(f"graph=True, but the {model.backend.name!r} backend has no graphs (cupy has)")
        if graph and not hasattr(optimizer, "graph_state"):
            raise ValueError(f"graph=True, but {type(optimizer).__name__} cannot say when a recording of its "
                             f"step is valid (it has no graph_state())")
        self.model, self.optimizer, self.before_update = model, optimizer, before_update
        self.loss = loss or (lambda logits, labels: softmax_cross_entropy(logits, labels, backend=model.backend))
        self._capture = capture if graph is not False and hasattr(optimizer, "graph_state") else None
        self._layers = [layer for _, layer in model.modules()]
        self._params = model.parameters()
        self._graphs: dict[tuple, _Recording] = {}
        self._warm: tuple | None = None
        self.logits: Array = None
        self.recordings = 0
        """How many times a step was recorded (a growing count means the set-up keeps changing)."""

    @property
    def graphed(self) -> bool:
        """Whether this step can replay recordings (the backend has graphs and recording has not failed)."""
        return self._capture is not None

    def __call__(self, x: Array, labels: Array) -> Array:
        key = self._setup(x, labels) if self._capture is not None else None
        recording = self._graphs.get(key) if key is not None else None
        if recording is None and key is not None and key == self._warm:
            recording = self._record(key, x, labels)
        if recording is None:
            loss, self.logits = self._eager(x, labels)
            self._warm = self._setup(x, labels) if self._capture is not None else None
            return loss
        loss, self.logits = recording.replay(x, labels)
        return loss

    def _eager(self, x: Array, labels: Array) -> tuple[Array, Array]:
        self.optimizer.zero_grad()
        logits = self.model(x)
        loss, dlogits = self.loss(logits, labels)
        with self.model.input_grad_skipped():
            self.model.backward(dlogits)
        if self.before_update is not None:
            self.before_update()
        self.optimizer.step()
        return loss, logits

    def _setup(self, x: Array, labels: Array) -> tuple | None:
        """What a recording depends on, as a hashable key; None when the step must not be recorded (random
        layers). Arrays enter by identity: the key holds them, so no id is reused while it lives."""
        if any(not layer.replayable for layer in self._layers):
            return None
        hyper, arrays = self.optimizer.graph_state()
        buffers = tuple(value for _, value in self.model.named_buffers())
        held = (*(p.data for p in self._params), *buffers, *arrays)
        return (tuple(x.shape), str(x.dtype), tuple(labels.shape), str(labels.dtype), hyper,
                tuple((layer.training, layer.trainable) for layer in self._layers),
                tuple(map(id, held)), _Held(held))

    def _record(self, key: tuple, x: Array, labels: Array) -> _Recording | None:
        xp = self.model.backend.xp
        inputs = (xp.zeros_like(x), xp.zeros_like(labels))  # valid labels: a recording may check them
        outputs: list[Array] = []
        try:
            graph = self._capture(lambda: outputs.extend(self._eager(*inputs)))
        except Exception as exc:  # noqa: BLE001  (any failure to record falls back to eager steps, said once)
            warnings.warn(f"TrainStep: the step could not be recorded as a graph ({type(exc).__name__}: {exc}); "
                          f"it runs eagerly from now on", RuntimeWarning, stacklevel=3)
            self._capture = None
            return None
        if len(self._graphs) >= MAX_GRAPHS:
            del self._graphs[next(iter(self._graphs))]
        recording = self._graphs[key] = _Recording(graph, inputs, outputs, self._params)
        self.recordings += 1
        return recording


class _Held(tuple):
    """The arrays a key refers to, kept alive by the key but left out of its comparison and hash."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Held)

    def __hash__(self) -> int:
        return 0


class _Recording:
    """A recorded step: its graph, the static input buffers it reads, and what it leaves behind."""

    def __init__(self, graph: Callable[[], None], inputs: tuple[Array, Array], outputs: list[Array],
                 params: list[Any]):
        self.graph, self.inputs, (self.loss, self.logits) = graph, inputs, outputs
        self.grads = [(p, p.grad) for p in params]

    def replay(self, x: Array, labels: Array) -> tuple[Array, Array]:
        self.inputs[0][...] = x
        self.inputs[1][...] = labels
        self.graph()
        for p, grad in self.grads:  # an eager step in between may have pointed p.grad elsewhere
            p.grad = grad
        return self.loss.copy(), self.logits
