"""What may change when a run is resumed, and what may not.

``cnnkit train`` stores its settings in every checkpoint (``metadata["settings"]``). On ``--resume`` the settings
that define the run (:data:`FIXED`: the model, the data and how it is batched, split and augmented, the dtype, the
schedule's kind) must equal the checkpoint's, else :func:`check_settings` raises an error naming the setting and
both values. The others (:data:`CHANGEABLE`: the optimiser's hyper-parameters, the epoch and step budget, early
stopping, the backend, where the data and the outputs live) may change; :func:`check_settings` returns one line per
change for the CLI to print, and :func:`apply_hyperparameters` puts the new optimiser settings in force after the
checkpoint's state was loaded (``TrainConfig(keep_hyperparameters=True)``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.nn.base import Layer
from cnnkit.nn.linear import Dropout

FIXED = ("model", "dataset", "batch_size", "dtype", "seed", "val_fraction", "augment", "schedule")
"""Settings a resumed run must share with its checkpoint."""

CHANGEABLE = ("lr", "momentum", "nesterov", "weight_decay", "epochs", "max_steps", "early_stopping",
              "eval_batch_size", "backend", "data_root", "out")
"""Settings a resumed run may change; each change is printed and applied."""

HYPERPARAMETERS = ("lr", "momentum", "nesterov", "weight_decay")
"""The optimiser settings that :func:`apply_hyperparameters` carries over a resume."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_settings(path: str | Path, saved: dict[str, Any] | None, given: dict[str, Any]) -> list[str]:
    """Compare the ``given`` settings with those ``saved`` in checkpoint ``path``; raise ValueError for the first
    :data:`FIXED` one that differs, return a line per :data:`CHANGEABLE` one that differs."""
    saved = saved or {}
    for name in FIXED:
        if name in saved and name in given and saved[name] != given[name]:
            raise ValueError(f"--resume {path}: {_flag(name)} cannot change on resume: the checkpoint was trained "
                             f"with {saved[name]!r}, this run asks for {given[name]!r}; resume with "
                             f"{_flag(name)} {saved[name]} or start a new run")
    return [f"resume: {_flag(name)} changed from {saved[name]!r} to {given[name]!r}"
            for name in CHANGEABLE if name in saved and name in given and saved[name] != given[name]]


def hyperparameters(optimizer: Any) -> dict[str, Any]:
    """The optimiser's :data:`HYPERPARAMETERS` as given (read before a checkpoint overwrites them)."""
    return {name: getattr(optimizer, name) for name in HYPERPARAMETERS if hasattr(optimizer, name)}


def apply_hyperparameters(optimizer: Any, schedule: Any, given: dict[str, Any]) -> None:
    """Put the ``given`` hyper-parameters in force after a resume; with a schedule, ``lr`` becomes its base and
    the current rate is the schedule's at its restored epoch."""
    for name, value in given.items():
        setattr(optimizer, name, value)
    if schedule is not None and "lr" in given:
        schedule.base_lr = float(given["lr"])
        optimizer.lr = schedule.lr_at(schedule.last_epoch)


def random_state(model: Layer, loader: Any) -> dict[str, Any]:
    """What the next epoch's randomness depends on: the loader's epoch counter (it seeds the shuffle and the
    augmentation) and each Dropout layer's call counter (it seeds the masks)."""
    return {"loader_epoch": getattr(loader, "epoch", None),
            "dropout_calls": {name: layer.calls for name, layer in model.modules() if isinstance(layer, Dropout)}}


def restore_random_state(model: Layer, loader: Any, state: dict[str, Any]) -> None:
    """The inverse of :func:`random_state`."""
    if state["loader_epoch"] is not None:
        if not hasattr(loader, "set_epoch"):
            raise TypeError(f"the checkpoint holds a loader epoch but the train loader ({type(loader).__name__}) "
                            "has no set_epoch()")
        loader.set_epoch(state["loader_epoch"])
    layers = dict(model.modules())
    for name, calls in state["dropout_calls"].items():
        layers[name].calls = calls


@dataclass
class EpochSums:
    """The running sums of an epoch in progress. A checkpoint written mid-epoch (``max_steps``) holds them, and
    the loader epoch the epoch draws from, so a resume continues at the next step with the same totals."""

    step: int = 0
    loss_sum: Any = 0
    correct: Any = 0
    n: int = 0
    seconds: float = 0.0
    loader_epoch: int | None = None

    def add(self, loss_sum: Any, correct: Any, n: int) -> None:
        """One step's summed loss, correct predictions and sample count (kept as backend arrays)."""
        self.loss_sum, self.correct = self.loss_sum + loss_sum, self.correct + correct
        self.n, self.step = self.n + n, self.step + 1

    def host_stats(self, comm: Any, started: float) -> dict[str, float]:
        """The one host synchronisation of a log interval: running loss, accuracy and throughput (of all the
        ranks of ``comm``) since ``started`` (a ``time.perf_counter()``)."""
        seconds = time.perf_counter() - started
        loss_sum, correct, n = comm.totals(self.loss_sum, self.correct, self.n)
        return {"loss": loss_sum / n, "acc": correct / n, "seconds": seconds,
                "images_per_s": n / max(seconds, 1e-12)}

    def to_state(self, backend: Any) -> dict[str, Any]:
        """As stored in a checkpoint (the sums as host arrays, so a resume adds on exactly)."""
        return {"step": self.step, "n": self.n, "seconds": self.seconds, "loader_epoch": self.loader_epoch,
                "loss_sum": np.asarray(backend.to_numpy(self.loss_sum)),
                "correct": np.asarray(backend.to_numpy(self.correct))}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, backend: Any) -> EpochSums:
        """The inverse of :meth:`to_state`; a fresh epoch for None (no epoch in progress)."""
        if not state:
            return cls()
        return cls(int(state["step"]), backend.xp.asarray(state["loss_sum"]), backend.xp.asarray(state["correct"]),
                   int(state["n"]), float(state["seconds"]), state["loader_epoch"])
