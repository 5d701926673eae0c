"""The record of a training run: one dict per epoch, why it stopped early, and its CSV/JSON files.

:func:`cnnkit.train.fit` returns a :class:`History`; checkpoints store it (``to_dict``) so a resumed run carries its
earlier epochs on, and :func:`cnnkit.plots.learning_curves` draws it. A run that diverged ends with
:class:`TrainingDiverged` (``cnnkit.train`` re-exports it), which carries its history.
"""
from __future__ import annotations

import csv
import io as _stdio
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnkit.io import atomic_write

COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s")
"""The keys of every epoch record, in the CSV's column order (``val_*`` are None without a validation loader)."""


@dataclass
class History:
    """Per-epoch records (dicts with :data:`COLUMNS`), and why training stopped early, if it did
    (``"early_stopping"``, ``"max_steps"`` or ``"diverged"``). ``partial``: the record of an epoch that
    ``max_steps`` stopped part-way (its metrics so far, ``"partial": "step/steps"``); it is not one of ``epochs``,
    and a resumed run finishes it."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    stopped: str | None = None
    partial: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, index: int) -> dict[str, float]:
        return self.epochs[index]

    def __iter__(self) -> Iterator[dict[str, float]]:
        return iter(self.epochs)

    def column(self, name: str) -> list[float]:
        """One metric across epochs, e.g. ``history.column("val_acc")``."""
        if name not in COLUMNS:
            raise KeyError(f"unknown history column {name!r}; columns are {', '.join(COLUMNS)}")
        return [record[name] for record in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (what checkpoints and history.json hold)."""
        return {"epochs": [dict(r) for r in self.epochs], "stopped": self.stopped}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """The inverse of :meth:`to_dict`."""
        return cls([dict(r) for r in data["epochs"]], data.get("stopped"))

    def to_csv(self) -> str:
        """The records as CSV text with a header row; a missing value (None) is an empty cell."""
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
            with atomic_write(target, "w") as f:
                f.write(text)
        return csv_path, json_path


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite. ``history`` holds the good epochs; on disk, the checkpoints
    and history files are those of the last good epoch."""

    def __init__(self, message: str, history: History | None = None):
        super().__init__(message)
        self.history = history if history is not None else History(stopped="diverged")


@dataclass
class DivergenceGuard:
    """What :func:`cnnkit.train.fit` calls divergence: a non-finite loss, or one above ``factor`` x max(the
    run's first loss, 1)."""

    factor: float | None
    start: float | None = None

    def check(self, loss: float, epoch: int, step: int) -> None:
        where = f"in epoch {epoch} (by step {step}); lower the learning rate or check the input data"
        if not math.isfinite(loss):
            raise TrainingDiverged(f"training diverged: the loss is {loss} {where}")
        if self.factor is not None and self.start is not None and loss > self.factor * max(self.start, 1.0):
            raise TrainingDiverged(f"training diverged: the loss {loss:.4g} is over diverge_factor={self.factor:g} "
                                   f"times max(its start {self.start:.4g}, 1) {where}")
