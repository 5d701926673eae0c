"""What a training run prints while it runs: a tqdm bar or periodic lines per epoch, and one line per epoch.

Kept apart from the loop in :mod:`cnnkit.train` so that the loop decides *when* the host sees the numbers (once per
log interval) and this module only decides *how* they are shown.
"""
from __future__ import annotations

import sys
from typing import Any


class Reporter:
    """Progress: with ``progress``, a tqdm bar per epoch on an interactive stderr, else a printed line per log
    interval (no tqdm, or output to a file); always one printed line per epoch. ``quiet`` (the ranks but 0 of
    a data-parallel run): nothing at all."""

    def __init__(self, progress: bool, epochs: int, quiet: bool = False):
        self.epochs, self.quiet = epochs, quiet
        self.tqdm: Any = None
        progress = progress and not quiet
        if progress and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.tqdm = tqdm
            except ImportError:
                pass
        self.lines = progress and self.tqdm is None
        self.bar: Any = None

    def start(self, epoch: int, batches: int, done: int = 0) -> None:
        """An epoch of ``batches`` steps begins, or continues after ``done`` steps (opens the bar)."""
        if self.tqdm is not None:
            self.bar = self.tqdm(total=batches, initial=done, desc=f"epoch {epoch}/{self.epochs}", unit="batch",
                                 leave=False)

    def step(self, done: int, batches: int, epoch: int, stats: dict[str, float] | None) -> None:
        """Step ``done`` of the epoch finished; ``stats`` (loss, acc, images_per_s) only at a log interval."""
        if self.bar is not None:
            self.bar.update(1)
            if stats is not None:
                self.bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['acc']:.3f}",
                                     img_s=f"{stats['images_per_s']:.0f}", refresh=False)
        elif self.lines and stats is not None:
            print(f"epoch {epoch}/{self.epochs} step {done}/{batches}: loss {stats['loss']:.4f} "
                  f"acc {stats['acc']:.3f} {stats['images_per_s']:.0f} img/s", flush=True)

    def close(self) -> None:
        """The epoch's steps are over (or failed): remove the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end(self, record: dict[str, Any]) -> None:
        """Print the epoch's line from its history record."""
        if self.quiet:
            return
        partial = f" (stopped at step {record['partial']})" if record.get("partial") else ""
        line = (f"epoch {record['epoch']}/{self.epochs}{partial}: train loss {record['train_loss']:.4f} "
                f"acc {record['train_acc']:.4f}")
        if record["val_loss"] is not None:
            line += f" | val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
        line += f" | lr {record['lr']:.4g} | {record['seconds']:.1f} s, {record['images_per_s']:.0f} img/s"
        print(line, flush=True)
