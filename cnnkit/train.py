"""Training loop: fit, evaluate, predict, exact resume, and transfer-learning helpers.

One step is forward, loss, backward and ``optimizer.step()``: one :class:`cnnkit.step.TrainStep` call (on cupy, a
replayed CUDA graph). Running sums of the loss and of the correct predictions stay backend arrays; they reach the
host once per log interval and once per epoch, so the CuPy backend is never forced to synchronise on every step.

:func:`fit` takes its options as a :class:`TrainConfig` (or the same names as keywords) and runs four steps per
epoch: train, evaluate, update the early-stopping state, save. Checkpoints hold everything a run depends on (model,
optimiser, schedule, epoch, history, the data loader's shuffling state, early-stopping state), so
``fit(..., resume=path)`` continues exactly where the run stopped: two epochs straight and one epoch + resume + one
epoch give the same weights bit for bit. The files themselves are :func:`cnnkit.io.save_checkpoint`'s (written
atomically), the records :class:`cnnkit.history.History`, the printed progress :mod:`cnnkit.progress`'s.

A non-finite loss, or one that grows past ``diverge_factor`` (default 100) x max(its first value, 1), stops training
with :class:`TrainingDiverged`; checkpoints and history files keep the last good epoch. ``max_steps`` may end a run
mid-epoch: ``last.npz`` then holds the epoch's progress, and a resume continues at its next step, bit for bit.

``comm`` (a :class:`cnnkit.distributed.Communicator`) trains data-parallel: see :class:`TrainConfig`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from cnnkit import distributed
from cnnkit import resume as resume_module
from cnnkit.history import COLUMNS, History, TrainingDiverged
from cnnkit.history import DivergenceGuard as _Guard
from cnnkit.io import CHECKPOINT_FORMAT, load_checkpoint, prepare_output_dir, save_checkpoint
from cnnkit.losses import softmax_cross_entropy
from cnnkit.nn.base import Layer
from cnnkit.progress import Reporter
from cnnkit.step import TrainStep
from cnnkit.transfer import replace_head
from cnnkit.validate import positive_int

__all__ = [
    "TrainConfig", "TrainingDiverged", "History", "COLUMNS", "MONITORS", "CHECKPOINT_FORMAT", "fit", "evaluate",
    "predict", "eval_mode", "replace_head", "save_checkpoint", "load_checkpoint",
]

Array = Any
LossFn = Callable[[Array, Array], tuple[Array, Array]]

MONITORS = ("val_loss", "val_acc")


@dataclass
class TrainConfig:
    """The options of :func:`fit` (everything but the model, the data, the optimiser and the schedule).

    ``epochs``: the total, counting resumed ones. ``loss``: ``loss(logits, labels) -> (loss, dlogits)``.
    ``checkpoint_dir`` receives ``last.npz`` every epoch, ``best.npz`` on improvement of ``monitor`` ("val_loss" or
    "val_acc", needs a validation loader), ``epoch-NNN.npz`` every ``checkpoint_every`` epochs, and
    ``history.csv``/``history.json``; ``history_path`` writes the history elsewhere too. ``early_stopping``: a
    patience in epochs without improvement. ``resume``: a checkpoint to continue from exactly. ``max_steps`` caps
    the optimiser steps of the whole run (the last epoch may then be partial). ``metadata`` (JSON-able) is stored
    in every checkpoint, e.g. how to rebuild the model. ``progress``: a tqdm bar on an interactive terminal, else
    a printed line every ``log_every`` steps; with False, only the line per epoch. Losses reach the host only
    every ``log_every`` steps and at the end of each epoch, which is also where divergence is detected.
    ``keep_hyperparameters``: on resume, the optimiser's lr, momentum, nesterov and weight decay stay as given
    (a schedule restarts from the given lr at its restored epoch) instead of the checkpoint's.
    ``diverge_factor``: the run diverged when the running training loss exceeds ``diverge_factor`` x max(the
    run's first loss, 1) (kept across resumes); None checks only for NaN and infinity.
    ``comm``: a :class:`cnnkit.distributed.Communicator` of several ranks trains data-parallel (give loaders with
    ``shard=comm``): the model is broadcast from rank 0 after the start and after a resume, gradients averaged
    (weighted by batch) before every step, losses, accuracies and validation summed over the ranks, so every stop
    decision is the same on all; only rank 0 prints and writes files. ``lr`` is that of the global batch. A rank
    whose share of a global batch is empty runs no forward but joins the step, and Dropout layers draw each
    rank's rows of the global batch's mask (:func:`cnnkit.distributed.data_parallel_step`).
    ``graph``: a one-process run's steps are :class:`cnnkit.step.TrainStep` calls, replayed as graphs where the
    backend has them (cupy: CUDA graphs) unless False; True demands them.
    """

    epochs: int = 1
    loss: LossFn = softmax_cross_entropy
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int | None = None
    early_stopping: int | None = None
    monitor: str = "val_loss"
    resume: str | Path | None = None
    progress: bool = True
    history_path: str | Path | None = None
    max_steps: int | None = None
    metadata: dict[str, Any] | None = None
    log_every: int = 50
    keep_hyperparameters: bool = False
    diverge_factor: float | None = 100.0
    comm: Any = None
    graph: bool | None = None

    def __post_init__(self) -> None:
        positive_int(self.epochs, "epochs")
        for name in ("checkpoint_every", "early_stopping", "max_steps"):
            if getattr(self, name) is not None:
                positive_int(getattr(self, name), name)
        positive_int(self.log_every, "log_every")
        if self.diverge_factor is not None and not (isinstance(self.diverge_factor, (int, float))
                                                    and math.isfinite(self.diverge_factor) and self.diverge_factor > 1):
            raise ValueError(f"diverge_factor must be a finite number > 1 or None, got {self.diverge_factor!r}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")


# ------------------------------------------------------------------------------------------------ evaluation
def _batch_stats(model: Layer, loss_fn: LossFn, x: Array, y: Array) -> tuple[Array, Array, Array]:
    logits = model.forward(x)
    if loss_fn is softmax_cross_entropy:  # the default runs on the model's backend, whichever is current
        loss, dlogits = softmax_cross_entropy(logits, y, backend=model.backend)
    else:
        loss, dlogits = loss_fn(logits, y)
    correct = (model.backend.xp.argmax(logits, axis=1) == y).sum()
    return loss, dlogits, correct


@contextlib.contextmanager
def eval_mode(model: Layer) -> Iterator[Layer]:
    """``with eval_mode(model): ...`` runs the block in eval mode (no dropout, batch norm's running statistics)
    and restores the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def evaluate(model: Layer, loader: Iterable, loss: LossFn = softmax_cross_entropy,
             comm: Any = None) -> dict[str, float]:
    """Mean loss, accuracy and sample count of ``model`` (in eval mode) over ``loader``; with ``comm``, over
    every rank's ``loader`` (e.g. sharded) together."""
    total_loss: Array = 0.0
    total_correct: Array = 0
    n = 0
    with eval_mode(model):
        for x, y in loader:
            if not y.shape[0]:  # a rank's empty share of a sharded global batch
                continue
            batch_loss, _, correct = _batch_stats(model, loss, x, y)
            total_loss = total_loss + batch_loss * y.shape[0]
            total_correct = total_correct + correct
            n += int(y.shape[0])
    total_loss, total_correct, n = (comm or distributed.Communicator()).totals(total_loss, total_correct, n)
    if n == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": total_loss / n, "accuracy": total_correct / n, "n": int(n)}


def predict(model: Layer, loader: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, true labels) over ``loader`` as host int64 arrays, e.g. for a confusion matrix."""
    be = model.backend
    preds, labels = [], []
    with eval_mode(model):
        for x, y in loader:
            preds.append(be.xp.argmax(model.forward(x), axis=1))
            labels.append(y)
    if not preds:
        raise ValueError("predict: the loader yielded no samples")
    return (np.concatenate([be.to_numpy(p) for p in preds]).astype(np.int64),
            np.concatenate([be.to_numpy(y) for y in labels]).astype(np.int64))


# ------------------------------------------------------------------------------------------------ one epoch
def _train_epoch(run: _Run, reporter: Reporter, epoch: int, max_steps: int | None) -> tuple[dict[str, float], int]:
    """Continue epoch ``epoch`` from ``run.sums`` (a fresh epoch, or one a checkpoint stopped in) for at most
    ``max_steps`` steps; the epoch's train metrics so far and the steps taken now."""
    model, loader, optimizer, sums, log_every = run.model, run.train, run.optimizer, run.sums, run.config.log_every
    model.train()
    batches, skip = len(loader), sums.step
    if skip == 0:
        sums.loader_epoch = getattr(loader, "epoch", None)
    reporter.start(epoch, batches, done=skip)
    started, taken = time.perf_counter() - sums.seconds, 0
    for index, (x, y) in enumerate(loader):
        if index < skip:  # drawn and dropped, so the shuffle and augmentation draws stay those of a straight run
            continue
        n, loss_n, batch_correct = int(y.shape[0]), 0.0, 0  # an empty share of a global batch: no forward
        if run.step is not None:
            if n:
                loss_n = run.step(x, y) * n
                batch_correct = (model.backend.xp.argmax(run.step.logits, axis=1) == y).sum()
        else:
            with distributed.data_parallel_step(model, run.comm, distributed.global_batch(loader, run.comm, n)):
                if n:
                    batch_loss, dlogits, batch_correct = _batch_stats(model, run.config.loss, x, y)
                    loss_n = batch_loss * n
                    with model.input_grad_skipped():
                        model.backward(dlogits)
            optimizer.step()
            optimizer.zero_grad()
        if run.guard.start is None:  # the run's one extra host synchronisation
            total_loss, total_n = run.comm.totals(loss_n, n)
            run.guard.start = total_loss / total_n
        sums.add(loss_n, batch_correct, n)
        taken += 1
        stats = None
        if sums.step % log_every == 0:
            stats = sums.host_stats(run.comm, started)
            run.guard.check(stats["loss"], epoch, sums.step)
        reporter.step(sums.step, batches, epoch, stats)
        if max_steps is not None and taken >= max_steps:
            break
    if sums.step == 0:
        raise ValueError("fit: the training loader yielded no batches (is batch_size larger than the dataset "
                         "with drop_last=True?)")
    stats = sums.host_stats(run.comm, started)
    sums.seconds = stats["seconds"]
    run.guard.check(stats["loss"], epoch, sums.step)
    return stats, taken


def _improved(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if monitor == "val_loss" else value > best


# ------------------------------------------------------------------------------------------------ fit
@dataclass
class _Run:
    """One call of :func:`fit`: what it trains with, and the state its checkpoints capture."""

    model: Layer
    train: Iterable
    val: Iterable | None
    optimizer: Any
    schedule: Any
    config: TrainConfig
    history: History = field(default_factory=History)
    epoch: int = 0  # the last finished epoch
    steps: int = 0  # optimiser steps, all epochs
    best: float | None = None
    bad_epochs: int = 0
    sums: resume_module.EpochSums = field(default_factory=resume_module.EpochSums)  # the epoch in progress
    guard: _Guard = field(default_factory=lambda: _Guard(None))
    comm: Any = field(default_factory=distributed.Communicator)
    step: TrainStep | None = None  # one process: the whole step as one call (data-parallel steps are eager)

    def __post_init__(self) -> None:
        if self.comm.size == 1:
            loss = None if self.config.loss is softmax_cross_entropy else self.config.loss
            self.step = TrainStep(self.model, self.optimizer, loss, graph=self.config.graph)
        elif self.config.graph:
            raise ValueError("graph=True: a data-parallel run (comm of several ranks) cannot replay its steps as "
                             "graphs, since its gradients are averaged through MPI on the host")

    def resume(self, path: str | Path) -> None:
        """Load the model, optimiser, schedule, randomness and early-stopping state of checkpoint ``path``."""
        state = load_checkpoint(path)
        given = resume_module.hyperparameters(self.optimizer)
        if state["best"] is not None and state["monitor"] != self.config.monitor:
            raise ValueError(f"{path} was written with monitor={state['monitor']!r}; resume with the same")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:
            if state["schedule"] is None:
                raise ValueError(f"{path}: the checkpoint has no schedule state but a schedule was given")
            self.schedule.load_state_dict(state["schedule"])
        if self.config.keep_hyperparameters:
            resume_module.apply_hyperparameters(self.optimizer, self.schedule, given)
        resume_module.restore_random_state(self.model, self.train, state["random"])
        self.history = History.from_dict(state["history"])
        self.history.stopped = None
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.steps, self.epoch = state["steps"], state["epoch"]
        self.sums = resume_module.EpochSums.from_state(state.get("partial"), self.model.backend)
        self.guard.start = state.get("start_loss")
        distributed.after_resume(self.model, self.comm, self.sums, state.get("world_size", 1), self.train, path)

    def train_epoch(self, reporter: Reporter) -> dict[str, Any]:
        """Train the next epoch; its history record, without the validation metrics yet."""
        epoch, config = self.epoch + 1, self.config
        steps_left = None if config.max_steps is None else config.max_steps - self.steps
        lr = float(self.optimizer.lr)
        try:
            stats, steps = _train_epoch(self, reporter, epoch, steps_left)
        except TrainingDiverged as exc:
            self.history.stopped = "diverged"
            exc.history = self.history
            raise
        finally:
            reporter.close()
        self.steps += steps
        record = {"epoch": epoch, "train_loss": stats["loss"], "train_acc": stats["acc"], "val_loss": None,
                  "val_acc": None, "lr": lr, "seconds": stats["seconds"], "images_per_s": stats["images_per_s"]}
        if self.sums.step < len(self.train):
            record["partial"] = f"{self.sums.step}/{len(self.train)}"
        return record

    def evaluate(self, record: dict[str, Any]) -> None:
        """Fill ``record``'s validation metrics (when there is a validation loader)."""
        distributed.average_buffers(self.model, self.comm)
        if self.val is not None:
            result = evaluate(self.model, self.val, self.config.loss, self.comm)
            record["val_loss"], record["val_acc"] = result["loss"], result["accuracy"]

    def finish_epoch(self, record: dict[str, Any]) -> bool:
        """Record the epoch, step the schedule, update the early-stopping state and decide whether to stop;
        True when the monitored metric improved."""
        config, epoch = self.config, record["epoch"]
        self.history.epochs.append(record)
        self.epoch, self.sums = epoch, resume_module.EpochSums()
        if self.schedule is not None:
            self.schedule.step()
        improved = self.val is not None and _improved(record[config.monitor], self.best, config.monitor)
        if improved:
            self.best, self.bad_epochs = record[config.monitor], 0
        elif self.val is not None:
            self.bad_epochs += 1
        if config.max_steps is not None and self.steps >= config.max_steps and epoch < config.epochs:
            self.history.stopped = "max_steps"
        elif config.early_stopping is not None and self.bad_epochs >= config.early_stopping and epoch < config.epochs:
            self.history.stopped = "early_stopping"
        return improved

    def save(self, improved: bool, partial: bool = False) -> None:
        """Write the checkpoints and history files the config asks for (after a partial epoch, only last.npz:
        it holds the epoch's progress). Only rank 0 writes; then every rank waits for it."""
        config = self.config
        state = None if config.checkpoint_dir is None else self.checkpoint_state()  # collective (partial sums)
        if self.comm.rank != 0:
            return self.comm.barrier()
        if config.checkpoint_dir is not None:
            directory = Path(config.checkpoint_dir)
            save_checkpoint(directory / "last.npz", state)
            if improved:
                save_checkpoint(directory / "best.npz", state)
            if not partial and config.checkpoint_every is not None and self.epoch % config.checkpoint_every == 0:
                save_checkpoint(directory / f"epoch-{self.epoch:03d}.npz", state)
            self.history.save(directory / "history")
        if config.history_path is not None:
            self.history.save(config.history_path)
        self.comm.barrier()

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything :meth:`resume` needs to continue this run exactly."""
        random = resume_module.random_state(self.model, self.train)
        if self.sums.step:  # mid-epoch: the loader repeats this epoch's draws, skipping the steps done
            random["loader_epoch"] = self.sums.loader_epoch
        return {"epoch": self.epoch, "steps": self.steps, "best": self.best, "bad_epochs": self.bad_epochs,
                "monitor": self.config.monitor, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": None if self.schedule is None else self.schedule.state_dict(),
                "random": random, "history": self.history.to_dict(), "metadata": self.config.metadata,
                "partial": distributed.global_partial(self.sums.to_state(self.model.backend) if self.sums.step
                                                      else None, self.comm),
                "start_loss": self.guard.start, "world_size": self.comm.size}


def fit(model: Layer, train: Iterable, val: Iterable | None = None, epochs: int | None = None,
        optimizer: Any = None, schedule: Any = None, *, config: TrainConfig | None = None,
        **options: Any) -> History:
    """Train ``model`` on the batches of ``train``; returns the :class:`History`.

    The options are a :class:`TrainConfig`, given as ``config=`` or as its field names (``epochs=3,
    checkpoint_dir=...``); keywords given with ``config`` override its fields. ``val``: a loader evaluated after
    every epoch. ``optimizer`` defaults to SGD(lr=0.01, momentum=0.9); ``schedule`` (StepLR, MultiStepLR,
    CosineLR) steps once per epoch.

    Raises :class:`TrainingDiverged` (its ``history`` holds the good epochs) when the loss becomes NaN or
    infinite; nothing is written for the diverged epoch.
    """
    config = _config(config, epochs, options)
    if config.early_stopping is not None and val is None:
        raise ValueError("early_stopping needs a validation loader (val=...)")
    if optimizer is None:
        from cnnkit.optim import SGD
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    comm = config.comm or distributed.Communicator()
    if config.checkpoint_dir is not None and comm.rank == 0:
        prepare_output_dir(config.checkpoint_dir, "checkpoint_dir")
    if config.history_path is not None and comm.rank == 0:
        prepare_output_dir(Path(config.history_path).parent, "the folder of history_path")
    distributed.broadcast_parameters(model, comm)
    run = _Run(model, train, val, optimizer, schedule, config, guard=_Guard(config.diverge_factor), comm=comm)
    if config.resume is not None:
        run.resume(config.resume)
        if run.epoch >= config.epochs and comm.rank == 0:
            warnings.warn(f"nothing to do: {config.resume} already holds {run.epoch} finished epoch(s) and "
                          f"epochs={config.epochs} is the total; ask for more epochs to train on", stacklevel=2)
    reporter = Reporter(config.progress, config.epochs, quiet=comm.rank != 0)
    while run.epoch < config.epochs and run.history.stopped is None:
        if config.max_steps is not None and run.steps >= config.max_steps:
            run.history.stopped = "max_steps"
            break
        record = run.train_epoch(reporter)
        run.evaluate(record)
        if "partial" in record:  # max_steps ended the run mid-epoch: keep its progress, not a finished epoch
            run.history.stopped, run.history.partial = "max_steps", record
            run.save(False, partial=True)
            reporter.end(record)
            break
        improved = run.finish_epoch(record)
        run.save(improved)
        reporter.end(record)
    return run.history


_OPTIONS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def _config(config: TrainConfig | None, epochs: int | None, options: dict[str, Any]) -> TrainConfig:
    """``config`` (default: TrainConfig()) with ``epochs`` and the keyword ``options`` of :func:`fit` applied."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TypeError(f"fit() got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"the options are the fields of TrainConfig: {', '.join(sorted(_OPTIONS))}")
    if epochs is not None:
        options["epochs"] = epochs
    return dataclasses.replace(config or TrainConfig(), **options)
