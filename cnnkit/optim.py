"""SGD (PyTorch's exact update rule) and learning-rate schedules.

The update is the backend op ``sgd_step`` on each parameter's own arrays, in place: NumPy's array algebra for host
arrays (every CPU backend), one kernel per parameter for CuPy arrays, with the same roundings. Schedules are closed
forms of the epoch (or step) counter, so resuming from a saved counter reproduces the same learning rates exactly.
"""
from __future__ import annotations

import bisect
import math
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

from cnnkit.nn.base import Layer, Parameter

Array = Any


_SGD_STEPS: dict[type, Any] = {}


def _sgd_step_for(a: Array) -> Any:
    """The ``sgd_step`` op that updates arrays of ``a``'s type: cupy's for a CuPy array, numpy's for a host array
    (looked up once per type: a step calls it for every parameter)."""
    kind = type(a)
    if kind not in _SGD_STEPS:
        from cnnkit.backend import backend

        _SGD_STEPS[kind] = backend("cupy" if kind.__module__.startswith("cupy") else "numpy").ops.sgd_step
    return _SGD_STEPS[kind]


def _to_host(a: Array) -> np.ndarray:
    """A NumPy copy of a backend array (CuPy arrays have ``.get()``)."""
    return a.get() if hasattr(a, "get") else np.array(a)


def _like(host: np.ndarray, ref: Array) -> Array:
    """``host`` as an array of the same library and dtype as ``ref`` (numpy.asarray or cupy.asarray)."""
    xp = sys.modules[type(ref).__module__.split(".")[0]]
    return xp.array(host, dtype=ref.dtype)


def _number(value: Any, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}")
    return float(value)


class SGD:
    """Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay, as torch.optim.SGD.

    For each parameter with a gradient ``g`` (parameters whose grad is None are skipped, e.g. frozen layers):
    ``g += weight_decay * p``; with momentum, ``buf = g`` on the first step, else
    ``buf = momentum * buf + (1 - dampening) * g``, and ``g = g + momentum * buf`` (Nesterov) or ``g = buf``;
    finally ``p -= lr * g``.
    """

    def __init__(self, params: Iterable[Parameter] | Layer, lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, dampening: float = 0.0):
        if isinstance(params, Layer):
            params = params.parameters()
        self.params: list[Parameter] = list(params)
        if not self.params:
            raise ValueError("params is empty: pass model.parameters() (or the model itself)")
        bad = [type(p).__name__ for p in self.params if not isinstance(p, Parameter)]
        if bad:
            raise TypeError(f"params must be cnnkit Parameters, got {bad[0]}")
        self.lr = _number(lr, "lr")
        self.momentum = _number(momentum, "momentum")
        self.weight_decay = _number(weight_decay, "weight_decay")
        self.dampening = _number(dampening, "dampening")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0 (as in PyTorch)")
        self._buffers: list[Array | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (set it to None, as PyTorch's default)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient: the backend op ``sgd_step`` per parameter (on
        a GPU one kernel, not one per array operation)."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            buf = self._buffers[i]
            first = bool(self.momentum) and buf is None
            if first:
                buf = self._buffers[i] = p.data.copy()  # sgd_step sets it to the first gradient
            _sgd_step_for(p.data)(p.data, p.grad, buf, self.lr, self.momentum, self.dampening, self.weight_decay,
                                  self.nesterov, first)

    def graph_state(self) -> tuple[tuple, list[Array | None]]:
        """What a recorded step (:class:`cnnkit.step.TrainStep`) bakes in: the hyper-parameters, and the momentum
        buffers it updates in place (None where a parameter has none yet)."""
        return ((self.lr, self.momentum, self.weight_decay, self.dampening, self.nesterov), list(self._buffers))

    def state_dict(self) -> dict[str, Any]:
        """Learning rate, hyper-parameters and momentum buffers (host NumPy arrays, None where unset)."""
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "dampening": self.dampening,
                "momentum_buffers": [None if b is None else _to_host(b) for b in self._buffers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; buffers move to each parameter's backend and dtype."""
        buffers = state["momentum_buffers"]
        if len(buffers) != len(self.params):
            raise ValueError(f"the state has {len(buffers)} momentum buffers but the optimizer has "
                             f"{len(self.params)} parameters")
        for i, (b, p) in enumerate(zip(buffers, self.params, strict=True)):
            if b is not None and tuple(np.shape(b)) != p.shape:
                raise ValueError(f"momentum buffer {i} has shape {tuple(np.shape(b))}, parameter has {p.shape}")
        for key in ("lr", "momentum", "weight_decay", "dampening"):
            setattr(self, key, _number(state[key], key))
        self.nesterov = bool(state["nesterov"])
        self._buffers = [None if b is None else _like(np.asarray(b), p.data)
                         for b, p in zip(buffers, self.params, strict=True)]


class LRSchedule:
    """Base of the schedules: ``step()`` advances the counter and sets ``optimizer.lr`` to ``lr_at(counter)``.

    As in PyTorch, creating a schedule sets the counter to 0 and the optimizer's lr to ``lr_at(0)``; call
    ``step()`` once per epoch (or per iteration, if the schedule is counted in iterations).
    """

    def __init__(self, optimizer: SGD):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"optimizer must have an lr attribute, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self.optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        """Advance one epoch; returns the new learning rate."""
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)
        return self.optimizer.lr

    def get_lr(self) -> float:
        """The learning rate of the current epoch."""
        return self.lr_at(self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved epoch (and set the optimizer's lr to match)."""
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        self.optimizer.lr = self.lr_at(self.last_epoch)


class StepLR(LRSchedule):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer: SGD, step_size: int, gamma: float = 0.1):
        if not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be a positive int, got {step_size!r}")
        self.step_size, self.gamma = step_size, _number(gamma, "gamma")
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRSchedule):
    """lr = base_lr * gamma ** (number of milestones <= epoch)."""

    def __init__(self, optimizer: SGD, milestones: Iterable[int], gamma: float = 0.1):
        self.milestones = sorted(milestones)
        if not all(isinstance(m, int) and m >= 0 for m in self.milestones):
            raise ValueError(f"milestones must be non-negative ints, got {self.milestones!r}")
        self.gamma = _number(gamma, "gamma")
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class CosineLR(LRSchedule):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / t_max)) / 2 (PyTorch CosineAnnealingLR)."""

    def __init__(self, optimizer: SGD, t_max: int, eta_min: float = 0.0):
        if not isinstance(t_max, int) or t_max < 1:
            raise ValueError(f"t_max must be a positive int, got {t_max!r}")
        self.t_max, self.eta_min = t_max, _number(eta_min, "eta_min")
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.t_max)) / 2


class LinearWarmup(LRSchedule):
    """Linear warmup, then another schedule: for the first ``warmup`` epochs lr ramps from
    ``start_factor * lr`` to ``lr``; after that, ``after`` runs from its own epoch 0 (``lr_at(epoch - warmup)``).

    Equivalent to PyTorch's SequentialLR([LinearLR(start_factor, total_iters=warmup), after], [warmup]).
    """

    def __init__(self, after: LRSchedule, warmup: int, start_factor: float = 0.1):
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive int, got {warmup!r}")
        if not 0 < start_factor <= 1:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor!r}")
        self.after, self.warmup, self.start_factor = after, warmup, float(start_factor)
        super().__init__(after.optimizer)

    def lr_at(self, epoch: int) -> float:
        if epoch >= self.warmup:
            return self.after.lr_at(epoch - self.warmup)
        factor = self.start_factor + (1.0 - self.start_factor) * epoch / self.warmup
        return self.after.lr_at(0) * factor
