"""What ``cnnkit bench`` times on the cnnkit side: models, a random batch, and one synchronised step.

The asv model benchmarks (bench/benchmarks/bench_models.py) time the same steps through :func:`make_step`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

MODES = ("train", "infer")
LR, MOMENTUM = 0.01, 0.9
"""SGD settings every engine's training step uses (PyTorch's too), so all engines do the same work."""
Step = Callable[[], None]


def build_model(name: str, backend: str = "numpy", state: dict[str, np.ndarray] | None = None) -> Any:
    """cnnkit model ``name`` on ``backend``, loaded with ``state`` when given (float32).

    The model is built on NumPy first, so every backend starts from the same initial weights for a given name.
    """
    from cnnkit import models
    from cnnkit.backend import use_backend

    with use_backend("numpy"):
        model = models.create(name)
    if state is not None:
        model.load_state_dict(state)
    return model.to(backend)


def random_batch(input_shape: tuple[int, ...], batch: int, num_classes: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A float32 batch of shape (batch, *input_shape) and int64 labels in [0, num_classes), on the host."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
    return x, rng.integers(0, num_classes, size=batch).astype(np.int64)


def cnnkit_step(model: Any, x: np.ndarray, labels: np.ndarray, mode: str,
                before_update: Callable[[], None] | None = None, synchronize: bool = True,
                graph: bool | None = None) -> Step:
    """One synchronised step of ``model`` on its backend: inference (:class:`cnnkit.step.InferStep`), or forward +
    loss + backward + SGD (:class:`cnnkit.step.TrainStep`), both replayed as graphs where the backend has them
    unless ``graph=False``; ``before_update`` (e.g. a gradient allreduce) runs between the backward and the update.

    The step ends with the backend's synchronisation, so a GPU step's time is the real time, not the launch time;
    ``synchronize=False`` leaves it out (a GPU step then returns once issued: its host time).
    """
    from cnnkit.optim import SGD
    from cnnkit.step import InferStep, TrainStep

    be = model.backend
    sync = be.synchronize if synchronize else (lambda: None)
    xb, yb = be.asarray(x), be.asarray(labels)
    if mode == "infer":
        model.eval()
        replayed = graph if graph is not None else be.capture is not None
        forward = InferStep(model, graph=True) if replayed else model

        def infer() -> None:
            forward(xb)
            sync()
        return infer

    model.train()
    step = TrainStep(model, SGD(model, lr=LR, momentum=MOMENTUM), graph=graph, before_update=before_update)

    def train() -> None:
        step(xb, yb)
        sync()
    return train


def make_step(model_name: str, backend: str, batch: int, mode: str, seed: int = 0) -> Step:
    """A ready-to-time step for ``model_name`` on ``backend`` (the asv benchmarks use this)."""
    model = build_model(model_name, backend)
    x, labels = random_batch(tuple(model.input_shape), batch, num_classes(model), seed)
    return cnnkit_step(model, x, labels, mode)


def num_classes(model: Any) -> int:
    """Width of the model's output (one forward of a single zero image on the model's backend)."""
    was_training = model.training
    out = model.eval()(model.backend.asarray(np.zeros((1, *model.input_shape), np.float32)))
    model.train(was_training)
    return int(out.shape[1])


def step_flops(model: Any, batch: int, mode: str) -> float:
    """GEMM FLOPs of one step (cnnkit.analysis.flops, counted for one image and scaled by the batch): forward
    for inference, forward + backward for training."""
    from cnnkit.analysis import flops

    total = flops(model, batch_size=1)[-1]
    return float(batch * (total["forward"] + (total["backward"] if mode == "train" else 0)))
