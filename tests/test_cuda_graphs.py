"""TrainStep's CUDA graphs on a real GPU (marked gpu; CI has none and deselects them).

A replay launches the very kernels, with the very arguments, that the recorded eager step launched, so a graphed
run and an eager run from the same weights agree to the bit, step by step, across a learning-rate change, a smaller
last batch and evaluations in between. The recording's memory is its own: arrays allocated after it are never
written by a replay. A step with a host synchronisation cannot be recorded and runs eagerly, with a warning.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from cnnkit import losses, models, nn, optim
from cnnkit.backend import unavailable_reason
from cnnkit.data import DataLoader, Dataset
from cnnkit.step import InferStep, TrainStep
from cnnkit.train import fit

pytestmark = pytest.mark.gpu
SHAPES = {"lenet5": (1, 32, 32), "resnet20": (3, 32, 32)}


def _model(name: str) -> nn.Layer:
    reason = unavailable_reason("cupy")
    if reason is not None:
        pytest.fail(f"the cupy backend cannot run here: {reason}")
    nn.init.manual_seed(0)
    return getattr(models, name)().to("cupy")


def _batch(name: str, n: int, seed: int):
    import cupy

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *SHAPES[name])).astype(np.float32)
    return cupy.asarray(x), cupy.asarray(rng.integers(0, 10, n))


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_replayed_steps_match_eager_steps_to_the_bit(name):
    import cupy

    graphed_model, eager_model = _model(name), _model(name)
    graphed, eager = (TrainStep(m, optim.SGD(m, lr=0.05, momentum=0.9, weight_decay=5e-4), graph=g)
                      for m, g in ((graphed_model, True), (eager_model, False)))
    plan = [(16, 0.05)] * 4 + [(16, 0.01)] * 3 + [(8, 0.01)] * 3 + [(16, 0.01)] * 2
    guard = None
    for i, (n, lr) in enumerate(plan):
        graphed.optimizer.lr = eager.optimizer.lr = lr
        x, y = _batch(name, n, i)
        got, want = graphed(x, y), eager(x, y)
        assert _host(got) == _host(want), f"step {i}: loss {float(got)} != {float(want)}"
        np.testing.assert_array_equal(_host(graphed.logits), _host(eager.logits), err_msg=f"step {i}: logits")
        if guard is None and graphed.recordings:  # memory allocated after a recording is not the graph's
            guard = cupy.full(1 << 20, 7.0, dtype=cupy.float32)
        if i == 8:  # an evaluation in between: eval-mode forwards outside the graph
            for m in (graphed_model, eager_model):
                m.eval()(x)
                m.train()
    assert graphed.recordings == 3  # lr 0.05, lr 0.01, batch 8 (batch 16 at lr 0.01 is replayed again)
    assert bool((guard == 7.0).all())
    for (key, a), (_, b) in zip(graphed_model.named_parameters(), eager_model.named_parameters(), strict=True):
        np.testing.assert_array_equal(_host(a.data), _host(b.data), err_msg=key)
        np.testing.assert_array_equal(_host(a.grad), _host(b.grad), err_msg=f"{key} grad")
    for (key, a), (_, b) in zip(graphed_model.named_buffers(), eager_model.named_buffers(), strict=True):
        np.testing.assert_array_equal(_host(a), _host(b), err_msg=key)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_replayed_inference_matches_the_eager_forward_to_the_bit(name):
    """Also after training steps have changed the weights in place (the recording reads them, not a copy)."""
    model = _model(name)
    infer, train = InferStep(model, graph=True), TrainStep(model, optim.SGD(model, lr=0.05, momentum=0.9))
    x, y = _batch(name, 16, 0)
    for i in range(4):
        got = infer(x)
        assert model.training
        want = model.eval()(x)
        model.train()
        np.testing.assert_array_equal(_host(got), _host(want), err_msg=f"call {i}")
        train(*_batch(name, 16, i + 1))
    assert infer.recordings == 1


def test_a_step_with_a_host_synchronisation_runs_eagerly_with_a_warning():
    model = _model("lenet5")

    def synchronising_loss(logits, labels):
        if float(logits.sum()) != float(logits.sum()):  # reads the device: impossible while recording
            raise AssertionError("NaN logits")
        return losses.softmax_cross_entropy(logits, labels, backend=model.backend)

    step = TrainStep(model, optim.SGD(model, lr=0.05), synchronising_loss)
    x, y = _batch("lenet5", 8, 0)
    step(x, y)
    with pytest.warns(RuntimeWarning, match="could not be recorded"):
        loss = step(x, y)
    assert not step.graphed and np.isfinite(float(loss))
    assert np.isfinite(float(step(x, y)))


def test_fit_with_graphs_trains_as_fit_without():
    """Two epochs of 5 batches, the last one smaller, a schedule changing the learning rate per epoch."""
    rng = np.random.default_rng(0)
    data = Dataset(rng.integers(0, 255, (72, 1, 32, 32)).astype(np.uint8), rng.integers(0, 10, 72),
                   [str(i) for i in range(10)])
    trained = []
    for graph in (True, False):
        model = _model("lenet5")
        opt = optim.SGD(model, lr=0.05, momentum=0.9)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a step that could not be recorded warns
            history = fit(model, DataLoader(data, 16, shuffle=True, seed=1, backend="cupy"), epochs=2,
                          optimizer=opt, schedule=optim.StepLR(opt, 1, 0.5), graph=graph, progress=False)
        trained.append((model, history))
    (graphed, h_graphed), (eager, h_eager) = trained
    for column in ("train_loss", "train_acc", "lr"):
        assert h_graphed.column(column) == h_eager.column(column), column
    for (key, a), (_, b) in zip(graphed.named_parameters(), eager.named_parameters(), strict=True):
        np.testing.assert_array_equal(_host(a.data), _host(b.data), err_msg=key)
