"""Whole-model timings: inference and one training step (forward + loss + backward + SGD with momentum) of
LeNet-5, LeNet-1 and ResNet-20, over backend x batch size, plus the training step's peak memory.

ResNet-20 on a CPU backend runs at batch 1 and 64 only: at 256 one NumPy training step takes many seconds and
asv repeats it, which would make a quick run take most of an hour. Those combinations are skipped in setup
(NotImplementedError, reported "n/a"); ``cnnkit bench --models resnet20 --batch 256`` measures them once.
The step itself is :func:`cnnkit.bench.make_step`, the same code ``cnnkit bench`` times.
"""
from __future__ import annotations

from cnnkit.bench import Step, make_step

from . import BACKENDS, backend_or_skip

MODELS = ("lenet5", "lenet1", "resnet20")
BATCHES = (1, 64, 256)
CPU_MAX_BATCH = {"resnet20": 64}
"""Largest batch run on a CPU backend, per model (no entry: every batch)."""


class _Model:
    """Shared setup: skip what cannot or should not run here, build the step, run it once untimed."""

    params = (list(MODELS), list(BACKENDS), list(BATCHES))
    param_names = ("model", "backend", "batch")
    timeout = 600
    mode = ""

    def setup(self, model: str, backend: str, batch: int) -> None:
        be = backend_or_skip(backend)
        limit = CPU_MAX_BATCH.get(model)
        if be.device == "cpu" and limit is not None and batch > limit:
            raise NotImplementedError(f"{model} at batch {batch} on the {backend} backend is too slow for asv; "
                                      f"use `cnnkit bench --models {model} --batch {batch}`")
        self.step: Step = make_step(model, backend, batch, self.mode)
        self.step()  # warm-up: JIT compilation, kernel loading, momentum buffers, first-touch allocations


class Inference(_Model):
    mode = "infer"

    def time_inference(self, model: str, backend: str, batch: int) -> None:
        self.step()


class TrainingStep(_Model):
    mode = "train"

    def time_training_step(self, model: str, backend: str, batch: int) -> None:
        self.step()


class TrainingMemory(_Model):
    """Peak resident memory of the process over a training step (host memory; GPU memory is not counted)."""

    mode = "train"

    def peakmem_training_step(self, model: str, backend: str, batch: int) -> None:
        self.step()
