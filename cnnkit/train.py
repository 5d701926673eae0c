"""Training loop: fit, evaluate, predict, checkpoints that resume exactly, and transfer-learning helpers.

One step is forward, loss, backward, ``optimizer.step()``, ``optimizer.zero_grad()``. Running sums of the loss and
of the correct predictions stay backend arrays; they reach the host once per log interval and once per epoch, so
the CuPy backend is never forced to synchronise on every step.

Checkpoints hold everything a run depends on (model, optimiser, schedule, epoch, history, the data loader's
shuffling state, early-stopping state), so ``fit(..., resume=path)`` continues exactly where the run stopped: two
epochs straight and one epoch + resume + one epoch give the same weights bit for bit. Files are written
atomically (to a temporary file, then renamed), so an interrupted write never damages the previous checkpoint.

A non-finite loss stops training with :class:`TrainingDiverged`; checkpoints and history files keep the last
good epoch.
"""
from __future__ import annotations

import contextlib
import csv
import io as _stdio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from cnnkit import io as ckio
from cnnkit.losses import softmax_cross_entropy
from cnnkit.nn.base import Layer, Sequential
from cnnkit.nn.linear import Dropout, Linear

Array = Any
LossFn = Callable[[Array, Array], tuple[Array, Array]]

MONITORS = ("val_loss", "val_acc")
CHECKPOINT_FORMAT = "cnnkit-checkpoint-1"
COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite. ``history`` holds the good epochs; on disk, the checkpoints
    and history files are those of the last good epoch."""

    def __init__(self, message: str, history: History | None = None):
        super().__init__(message)
        self.history = history if history is not None else History(stopped="diverged")


@dataclass
class History:
    """Per-epoch records (dicts with :data:`COLUMNS`), and why training stopped early, if it did
    (``"early_stopping"`` or ``"max_steps"``)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    stopped: str | None = None

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, index: int) -> dict[str, float]:
        return self.epochs[index]

    def __iter__(self):
        return iter(self.epochs)

    def column(self, name: str) -> list[float]:
        """One metric across epochs, e.g. ``history.column("val_acc")``."""
        if name not in COLUMNS:
            raise KeyError(f"unknown history column {name!r}; columns are {', '.join(COLUMNS)}")
        return [record[name] for record in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [dict(r) for r in self.epochs], "stopped": self.stopped}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls([dict(r) for r in data["epochs"]], data.get("stopped"))

    def to_csv(self) -> str:
        buffer = _stdio.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in self.epochs:
            writer.writerow({k: "" if record[k] is None else record[k] for k in COLUMNS})
        return buffer.getvalue()

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``path`` with suffix .csv and .json (atomically); returns both paths."""
        path = Path(path)
        csv_path, json_path = path.with_suffix(".csv"), path.with_suffix(".json")
        for target, text in ((csv_path, self.to_csv()), (json_path, json.dumps(self.to_dict(), indent=1))):
            with ckio.atomic_write(target, "w") as f:
                f.write(text)
        return csv_path, json_path


# ------------------------------------------------------------------------------------------------ evaluation
def _batch_stats(model: Layer, loss_fn: LossFn, x: Array, y: Array) -> tuple[Array, Array, Array]:
    logits = model.forward(x)
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


def evaluate(model: Layer, loader: Iterable, loss: LossFn = softmax_cross_entropy) -> dict[str, float]:
    """Mean loss, accuracy and sample count of ``model`` (in eval mode) over ``loader``."""
    total_loss: Array = 0.0
    total_correct: Array = 0
    n = 0
    with eval_mode(model):
        for x, y in loader:
            batch_loss, _, correct = _batch_stats(model, loss, x, y)
            total_loss = total_loss + batch_loss * y.shape[0]
            total_correct = total_correct + correct
            n += int(y.shape[0])
    if n == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": float(total_loss) / n, "accuracy": int(total_correct) / n, "n": n}


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


# ------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a nested dict of NumPy arrays, numbers, strings, None and lists as one .npz (JSON for the structure,
    no pickle), atomically."""
    arrays: dict[str, np.ndarray] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if isinstance(value, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {"__array__": key}
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        raise TypeError(f"save_checkpoint: cannot store a {type(value).__name__} (host NumPy arrays, numbers, "
                        "strings, None, lists and dicts only)")

    meta = json.dumps({"format": CHECKPOINT_FORMAT, "state": encode(state)})
    path = Path(path)
    with ckio.atomic_write(path) as f:
        np.savez(f, __meta__=np.array(meta), **arrays)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    with np.load(path, allow_pickle=False) as npz:
        if "__meta__" not in npz.files:
            raise ValueError(f"{str(path)!r} is not a cnnkit checkpoint (no __meta__ entry)")
        meta = json.loads(str(npz["__meta__"]))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{str(path)!r} has checkpoint format {meta.get('format')!r}, "
                             f"expected {CHECKPOINT_FORMAT!r}")

        def decode(value: Any) -> Any:
            if isinstance(value, dict):
                if set(value) == {"__array__"}:
                    return npz[value["__array__"]]
                return {k: decode(v) for k, v in value.items()}
            if isinstance(value, list):
                return [decode(v) for v in value]
            return value

        return decode(meta["state"])


# ------------------------------------------------------------------------------------------------ progress
class _Reporter:
    """Progress: with ``progress``, a tqdm bar per epoch on an interactive stderr, else a printed line per log
    interval (no tqdm, or output to a file); always one printed line per epoch."""

    def __init__(self, progress: bool, epochs: int):
        self.epochs = epochs
        self.tqdm = None
        if progress and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.tqdm = tqdm
            except ImportError:
                pass
        self.lines = progress and self.tqdm is None
        self.bar = None

    def start(self, epoch: int, batches: int) -> None:
        if self.tqdm is not None:
            self.bar = self.tqdm(total=batches, desc=f"epoch {epoch}/{self.epochs}", unit="batch", leave=False)

    def step(self, done: int, batches: int, epoch: int, stats: dict[str, float] | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if stats is not None:
                self.bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['acc']:.3f}",
                                     img_s=f"{stats['images_per_s']:.0f}", refresh=False)
        elif self.lines and stats is not None:
            print(f"epoch {epoch}/{self.epochs} step {done}/{batches}: loss {stats['loss']:.4f} "
                  f"acc {stats['acc']:.3f} {stats['images_per_s']:.0f} img/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end(self, record: dict[str, float]) -> None:
        line = (f"epoch {record['epoch']}/{self.epochs}: train loss {record['train_loss']:.4f} "
                f"acc {record['train_acc']:.4f}")
        if record["val_loss"] is not None:
            line += f" | val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
        line += f" | lr {record['lr']:.4g} | {record['seconds']:.1f} s, {record['images_per_s']:.0f} img/s"
        print(line, flush=True)


# ------------------------------------------------------------------------------------------------ training
def _host_stats(loss_sum: Array, correct: Array, n: int, started: float) -> dict[str, float]:
    """The one host synchronisation of a log interval: running loss, accuracy and throughput."""
    seconds = time.perf_counter() - started
    return {"loss": float(loss_sum) / n, "acc": int(correct) / n, "seconds": seconds,
            "images_per_s": n / max(seconds, 1e-12)}


def _train_epoch(model: Layer, loader: Iterable, optimizer: Any, loss_fn: LossFn, reporter: _Reporter,
                 epoch: int, max_steps: int | None, log_every: int) -> tuple[dict[str, float], int]:
    """One pass over ``loader`` (at most ``max_steps`` steps): the epoch's train metrics and the steps taken."""
    model.train()
    batches = len(loader)
    reporter.start(epoch, batches)
    loss_sum: Array = 0
    correct: Array = 0
    n = steps = 0
    started = time.perf_counter()
    for x, y in loader:
        batch_loss, dlogits, batch_correct = _batch_stats(model, loss_fn, x, y)
        with model.input_grad_skipped():
            model.backward(dlogits)
        optimizer.step()
        optimizer.zero_grad()
        loss_sum = loss_sum + batch_loss * y.shape[0]
        correct = correct + batch_correct
        n += int(y.shape[0])
        steps += 1
        stats = None
        if steps % log_every == 0:
            stats = _host_stats(loss_sum, correct, n, started)
            _check_finite(stats["loss"], epoch, steps)
        reporter.step(steps, batches, epoch, stats)
        if max_steps is not None and steps >= max_steps:
            break
    if steps == 0:
        raise ValueError("fit: the training loader yielded no batches (is batch_size larger than the dataset "
                         "with drop_last=True?)")
    stats = _host_stats(loss_sum, correct, n, started)
    _check_finite(stats["loss"], epoch, steps)
    return stats, steps


def _check_finite(loss: float, epoch: int, step: int) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training diverged: the loss is {loss} in epoch {epoch} (by step {step}); "
                        "lower the learning rate or check the input data")


def _improved(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if monitor == "val_loss" else value > best


def fit(model: Layer, train: Iterable, val: Iterable | None = None, epochs: int = 1, optimizer: Any = None,
        schedule: Any = None, *, loss: LossFn = softmax_cross_entropy, checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None, early_stopping: int | None = None, monitor: str = "val_loss",
        resume: str | Path | None = None, progress: bool = True, history_path: str | Path | None = None,
        max_steps: int | None = None, metadata: dict[str, Any] | None = None, log_every: int = 50) -> History:
    """Train ``model`` on the batches of ``train`` for ``epochs`` epochs (the total, counting resumed ones).

    ``val``: a loader evaluated after every epoch; ``monitor`` ("val_loss" or "val_acc") then picks the best
    checkpoint, and ``early_stopping`` (a patience in epochs) stops after that many epochs without improvement.
    ``optimizer`` defaults to SGD(lr=0.01, momentum=0.9); ``schedule`` (StepLR, MultiStepLR, CosineLR) steps once
    per epoch. ``checkpoint_dir`` receives ``last.npz`` every epoch, ``best.npz`` on improvement, and
    ``epoch-NNN.npz`` every ``checkpoint_every`` epochs, plus ``history.csv``/``history.json``; ``history_path``
    writes the history elsewhere too. ``resume`` continues from a checkpoint exactly. ``max_steps`` caps the
    optimiser steps of the whole run (the last epoch may then be partial). ``metadata`` (JSON-able) is stored in
    every checkpoint, e.g. how to rebuild the model. ``progress``: a tqdm bar on an interactive terminal, else a
    printed line every ``log_every`` steps; with False, only the line per epoch. Losses reach the host only every
    ``log_every`` steps and at the end of each epoch.

    Raises :class:`TrainingDiverged` (its ``history`` holds the good epochs) when the loss becomes NaN or
    infinite; it is checked at those same points, and nothing is written for the diverged epoch.
    """
    epochs = _positive_int(epochs, "epochs")
    if checkpoint_every is not None:
        _positive_int(checkpoint_every, "checkpoint_every")
    if early_stopping is not None:
        _positive_int(early_stopping, "early_stopping")
        if val is None:
            raise ValueError("early_stopping needs a validation loader (val=...)")
    if max_steps is not None:
        _positive_int(max_steps, "max_steps")
    _positive_int(log_every, "log_every")
    if monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {MONITORS}, got {monitor!r}")
    if optimizer is None:
        from cnnkit.optim import SGD
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)

    history, best, bad_epochs, total_steps, first_epoch = History(), None, 0, 0, 1
    if resume is not None:
        state = load_checkpoint(resume)
        if state["best"] is not None and state["monitor"] != monitor:
            raise ValueError(f"{resume} was written with monitor={state['monitor']!r}; resume with the same")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            if state["schedule"] is None:
                raise ValueError(f"{resume}: the checkpoint has no schedule state but a schedule was given")
            schedule.load_state_dict(state["schedule"])
        _restore_random_state(model, train, state["random"])
        history = History.from_dict(state["history"])
        history.stopped = None
        best, bad_epochs, total_steps = state["best"], state["bad_epochs"], state["steps"]
        first_epoch = state["epoch"] + 1

    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
    reporter = _Reporter(progress, epochs)
    for epoch in range(first_epoch, epochs + 1):
        steps_left = None if max_steps is None else max_steps - total_steps
        if steps_left is not None and steps_left <= 0:
            history.stopped = "max_steps"
            break
        lr = float(optimizer.lr)
        try:
            stats, steps = _train_epoch(model, train, optimizer, loss, reporter, epoch, steps_left, log_every)
        except TrainingDiverged as exc:
            history.stopped = "diverged"
            exc.history = history
            raise
        finally:
            reporter.close()
        total_steps += steps
        record = {"epoch": epoch, "train_loss": stats["loss"], "train_acc": stats["acc"], "val_loss": None,
                  "val_acc": None, "lr": lr, "seconds": stats["seconds"], "images_per_s": stats["images_per_s"]}
        if val is not None:
            result = evaluate(model, val, loss)
            record["val_loss"], record["val_acc"] = result["loss"], result["accuracy"]
        history.epochs.append(record)
        if schedule is not None:
            schedule.step()
        improved = val is not None and _improved(record[monitor], best, monitor)
        if improved:
            best, bad_epochs = record[monitor], 0
        elif val is not None:
            bad_epochs += 1
        if max_steps is not None and total_steps >= max_steps and epoch < epochs:
            history.stopped = "max_steps"
        elif early_stopping is not None and bad_epochs >= early_stopping and epoch < epochs:
            history.stopped = "early_stopping"
        if ckdir is not None:
            state = {"epoch": epoch, "steps": total_steps, "best": best, "bad_epochs": bad_epochs,
                     "monitor": monitor, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "schedule": None if schedule is None else schedule.state_dict(),
                     "random": _random_state(model, train), "history": history.to_dict(), "metadata": metadata}
            save_checkpoint(ckdir / "last.npz", state)
            if improved:
                save_checkpoint(ckdir / "best.npz", state)
            if checkpoint_every is not None and epoch % checkpoint_every == 0:
                save_checkpoint(ckdir / f"epoch-{epoch:03d}.npz", state)
            history.save(ckdir / "history")
        if history_path is not None:
            history.save(history_path)
        reporter.end(record)
        if history.stopped is not None:
            break
    return history


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------------ transfer learning
def replace_head(model: Sequential, num_classes: int) -> Linear:
    """Swap the final Linear of a Sequential model for a freshly initialised one with ``num_classes`` outputs
    (same backend and dtype) and return it; freeze the rest with ``layer.trainable = False`` to fine-tune only
    the new head."""
    if not isinstance(model, Sequential) or not len(model) or not isinstance(model[-1], Linear):
        raise TypeError(f"replace_head needs a Sequential whose last layer is Linear, got {type(model).__name__}"
                        + (f" ending in {type(model[-1]).__name__}" if isinstance(model, Sequential) and len(model)
                           else ""))
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    old = model[-1]
    head = Linear(old.in_features, num_classes, bias=old.bias is not None, dtype=str(old.weight.data.dtype))
    head.to(model.backend)
    head.train(model.training)
    model.layers[-1] = head
    return head


# ------------------------------------------------------------------------------------------------ resumable state
def _random_state(model: Layer, loader: Any) -> dict[str, Any]:
    """What the next epoch's randomness depends on: the loader's epoch counter (it seeds the shuffle and the
    augmentation) and each Dropout layer's call counter (it seeds the masks)."""
    return {"loader_epoch": getattr(loader, "epoch", None),
            "dropout_calls": {name: layer.calls for name, layer in model.modules() if isinstance(layer, Dropout)}}


def _restore_random_state(model: Layer, loader: Any, state: dict[str, Any]) -> None:
    if state["loader_epoch"] is not None:
        if not hasattr(loader, "set_epoch"):
            raise TypeError(f"the checkpoint holds a loader epoch but the train loader ({type(loader).__name__}) "
                            "has no set_epoch()")
        loader.set_epoch(state["loader_epoch"])
    layers = dict(model.modules())
    for name, calls in state["dropout_calls"].items():
        layers[name].calls = calls
