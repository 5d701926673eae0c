"""TrainStep on the CPU: the eager step is the hand-written loop to the bit, and the recording bookkeeping (when a
step is recorded, replayed, run eagerly, recorded again) follows the documented rules, checked with a stand-in
for a backend's graph capture that counts recordings and replays. The replays' numbers are checked on a real GPU
(tests/test_cuda_graphs.py), the one place CUDA graphs exist.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cnnkit import losses, models, nn, optim
from cnnkit.step import MAX_GRAPHS, InferStep, TrainStep


def _batch(n: int, seed: int, shape=(1, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 10, n)


def _lenet() -> nn.Layer:
    nn.init.manual_seed(0)
    return models.lenet5().to("numpy")


def test_eager_step_is_the_training_loop():
    ours, theirs = _lenet(), _lenet()
    step = TrainStep(ours, optim.SGD(ours, lr=0.05, momentum=0.9, weight_decay=1e-4), graph=False)
    opt = optim.SGD(theirs, lr=0.05, momentum=0.9, weight_decay=1e-4)
    for seed in range(3):
        x, y = _batch(4, seed)
        loss = step(x, y)
        opt.zero_grad()
        logits = theirs(x)
        want, dlogits = losses.softmax_cross_entropy(logits, y)
        with theirs.input_grad_skipped():
            theirs.backward(dlogits)
        opt.step()
        assert float(loss) == float(want)
        np.testing.assert_array_equal(step.logits, logits)
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
        np.testing.assert_array_equal(a.grad, b.grad, err_msg=name)


class FakeGraphs:
    """Stands in for a backend's ``capture``: a recording runs the step once (so its arrays exist, as after a
    real recording) and counts; a replay only counts."""

    def __init__(self, fail: Exception | None = None):
        self.recorded = self.replayed = 0
        self.fail = fail

    def capture(self, fn):
        if self.fail is not None:
            raise self.fail
        fn()
        self.recorded += 1

        def replay():
            self.replayed += 1
        return replay


def _with_graphs(model: nn.Layer, graphs: FakeGraphs) -> nn.Layer:
    be = dataclasses.replace(model.backend, capture=graphs.capture)
    for _, layer in model.modules():
        layer._backend = be
    return model


def _graphed(model: nn.Layer, graphs: FakeGraphs, lr: float = 0.05) -> TrainStep:
    return TrainStep(_with_graphs(model, graphs), optim.SGD(model, lr=lr, momentum=0.9))


def test_a_step_is_recorded_on_its_second_call_then_replayed():
    graphs = FakeGraphs()
    model = _lenet()
    step = _graphed(model, graphs)
    x, y = _batch(4, 0)
    step(x, y)
    assert (graphs.recorded, graphs.replayed) == (0, 0)  # the first call runs eagerly (compiles, makes buffers)
    step(x, y)
    assert (graphs.recorded, graphs.replayed) == (1, 1)
    grads = [p.grad for p in model.parameters()]
    step.optimizer.zero_grad()
    step(*_batch(4, 1))
    assert (graphs.recorded, graphs.replayed) == (1, 2)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))  # the recording's gradients


@pytest.mark.parametrize("change", ["lr", "batch", "eval", "frozen", "new weights array"])
def test_a_changed_set_up_runs_eagerly_once_then_records_again(change):
    graphs = FakeGraphs()
    model = _lenet()
    step = _graphed(model, graphs)
    x, y = _batch(4, 0)
    for _ in range(3):
        step(x, y)
    assert (graphs.recorded, graphs.replayed) == (1, 2)
    if change == "lr":
        step.optimizer.lr = 0.01
    elif change == "batch":
        x, y = _batch(3, 1)
    elif change == "eval":
        model.eval()
    elif change == "frozen":
        dict(model.children())["0"].trainable = False  # the first conv
    else:
        model.parameters()[0].data = model.parameters()[0].data.copy()
    step(x, y)
    assert (graphs.recorded, graphs.replayed) == (1, 2)
    step(x, y)
    step(x, y)
    assert (graphs.recorded, graphs.replayed) == (2, 4)
    assert step.recordings == 2


def test_a_replaced_buffer_array_records_again():
    graphs = FakeGraphs()
    nn.init.manual_seed(0)
    norm = nn.BatchNorm2d(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), norm, nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 10)).to("numpy")
    step = _graphed(model, graphs)
    x, y = _batch(4, 0, shape=(1, 8, 8))
    for _ in range(3):
        step(x, y)
    assert (graphs.recorded, graphs.replayed) == (1, 2)
    norm.running_mean = norm.running_mean.copy()
    step(x, y)
    step(x, y)
    assert (graphs.recorded, graphs.replayed) == (2, 3)


def test_recordings_of_earlier_set_ups_are_kept_up_to_a_limit():
    graphs = FakeGraphs()
    step = _graphed(_lenet(), graphs)
    sizes = list(range(2, 3 + MAX_GRAPHS))
    for n in sizes:
        step(*_batch(n, n))
        step(*_batch(n, n))
    assert graphs.recorded == len(sizes)
    step(*_batch(sizes[-1], 0))
    assert graphs.recorded == len(sizes)
    step(*_batch(sizes[0], 0))  # dropped as the oldest: eager, recorded on the next call
    step(*_batch(sizes[0], 0))
    assert graphs.recorded == len(sizes) + 1


def test_a_model_that_draws_random_numbers_is_never_recorded():
    graphs = FakeGraphs()
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 10)).to("numpy")
    step = _graphed(model, graphs)
    x, y = _batch(4, 0, shape=(16,))
    for _ in range(3):
        step(x, y)
    assert graphs.recorded == 0
    model.eval()  # dropout is the identity in eval mode: nothing random left
    for _ in range(2):
        step(x, y)
    assert graphs.recorded == 1


def test_a_step_that_cannot_be_recorded_warns_once_and_runs_eagerly():
    graphs = FakeGraphs(fail=RuntimeError("operation not permitted when stream is capturing"))
    step = _graphed(_lenet(), graphs)
    x, y = _batch(4, 0)
    step(x, y)
    with pytest.warns(RuntimeWarning, match="could not be recorded.*not permitted when stream is capturing"):
        step(x, y)
    assert not step.graphed
    step(x, y)
    assert np.isfinite(float(step(x, y)))


def test_bad_arguments_are_refused_early():
    model = _lenet()
    with pytest.raises(ValueError, match="graph=True, but the 'numpy' backend has no graphs"):
        TrainStep(model, optim.SGD(model, lr=0.1), graph=True)
    with pytest.raises(ValueError, match="graph must be None"):
        TrainStep(model, optim.SGD(model, lr=0.1), graph="yes")
    with pytest.raises(TypeError, match="model must be a cnnkit Layer"):
        TrainStep(object(), optim.SGD(model, lr=0.1))


def test_an_inference_runs_in_eval_mode_and_is_recorded_on_its_second_call():
    graphs = FakeGraphs()
    nn.init.manual_seed(0)
    model = _with_graphs(models.resnet20(num_classes=10).to("numpy"), graphs)
    step = InferStep(model)
    x, _ = _batch(2, 0, shape=(3, 16, 16))
    y = step(x)
    assert model.training  # restored
    np.testing.assert_array_equal(y, model.eval()(x))
    model.train()
    step(x)
    assert (graphs.recorded, graphs.replayed) == (1, 1)
    assert model.training
