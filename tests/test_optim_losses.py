"""SGD and LR schedules against torch.optim; losses and metrics."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from tolerances import RTOL_F64, assert_close_f64

from cnnkit import losses, optim
from cnnkit.nn.base import Parameter

SHAPES = [(3, 2, 3, 3), (7,), (4, 5)]
STEPS = 5
SGD_RTOL = 1e-12  # same float64 arithmetic as PyTorch's single-tensor SGD, in the same order


def _grads(rng, steps):
    return [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]


def _run_cnnkit(init, grads, **kwargs):
    params = [Parameter(a.copy()) for a in init]
    opt = optim.SGD(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.copy()
        opt.step()
    return [p.data for p in params]


def _run_torch(init, grads, **kwargs):
    params = [torch.tensor(a, requires_grad=True) for a in init]
    opt = torch.optim.SGD(params, foreach=False, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("momentum,nesterov,weight_decay,dampening", [
    (m, n, wd, d) for m, n, wd, d in itertools.product((0.0, 0.9), (False, True), (0.0, 5e-4), (0.0, 0.3))
    if not (n and (m == 0 or d != 0))
])
def test_sgd_matches_torch(momentum, nesterov, weight_decay, dampening):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = _grads(rng, STEPS)
    kwargs = dict(lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, dampening=dampening)
    ours = _run_cnnkit(init, grads, **kwargs)
    ref = _run_torch(init, grads, **kwargs)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=SGD_RTOL, atol=SGD_RTOL * np.abs(b).max())
    assert not np.allclose(ours[0], init[0])


def test_sgd_float32_stays_float32_and_in_place():
    p = Parameter(np.ones((2, 2), dtype=np.float32))
    data = p.data
    p.grad = np.full((2, 2), 0.5, dtype=np.float32)
    optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01).step()
    assert p.data is data and p.data.dtype == np.float32
    np.testing.assert_allclose(p.data, 1 - 0.1 * (0.5 + 0.01), rtol=1e-6)


def test_sgd_skips_params_without_grad_and_zero_grad():
    a, b = Parameter(np.ones(3)), Parameter(np.ones(3))
    a.grad = np.ones(3)
    opt = optim.SGD([a, b], lr=1.0, momentum=0.5, weight_decay=0.1)
    opt.step()
    np.testing.assert_array_equal(b.data, np.ones(3))
    np.testing.assert_allclose(a.data, 1 - 1.1)
    assert opt.state_dict()["momentum_buffers"][1] is None
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_sgd_bad_arguments():
    p = [Parameter(np.ones(2))]
    with pytest.raises(ValueError, match="lr"):
        optim.SGD(p, lr=-1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="params is empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="Parameter"):
        optim.SGD([np.ones(2)], lr=0.1)


def test_sgd_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = _grads(rng, 6)
    kwargs = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    straight = _run_cnnkit(init, grads, **kwargs)

    params = [Parameter(a.copy()) for a in init]
    opt = optim.SGD(params, **kwargs)
    for step_grads in grads[:3]:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.copy()
        opt.step()
    state = opt.state_dict()
    assert all(isinstance(b, np.ndarray) for b in state["momentum_buffers"])
    saved = [p.data.copy() for p in params]
    resumed = [Parameter(a) for a in saved]
    opt2 = optim.SGD(resumed, lr=99.0)
    opt2.load_state_dict(state)
    assert opt2.lr == 0.1 and opt2.nesterov
    state["momentum_buffers"][0][...] = 0  # the optimizer holds its own copy
    for step_grads in grads[3:]:
        for p, g in zip(resumed, step_grads, strict=True):
            p.grad = g.copy()
        opt2.step()
    for a, b in zip(resumed, straight, strict=True):
        np.testing.assert_array_equal(a.data, b)


def test_sgd_load_state_dict_rejects_mismatch():
    opt = optim.SGD([Parameter(np.ones(2))], lr=0.1, momentum=0.9)
    state = opt.state_dict()
    state["momentum_buffers"] = [np.zeros(3)]
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(state)
    state["momentum_buffers"] = [None, None]
    with pytest.raises(ValueError, match="2 momentum buffers"):
        opt.load_state_dict(state)


# ---------------------------------------------------------------------------------------------- schedules
EPOCHS = 25


def _torch_lrs(make_scheduler, epochs=EPOCHS, lr=0.1):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make_scheduler(opt)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(epochs):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return np.array(out)


def _our_lrs(make_schedule, epochs=EPOCHS, lr=0.1):
    opt = optim.SGD([Parameter(np.zeros(1))], lr=lr)
    sched = make_schedule(opt)
    out = [opt.lr]
    for _ in range(epochs):
        assert sched.step() == opt.lr == sched.get_lr()
        out.append(opt.lr)
    return np.array(out)


SCHEDULES = {
    "step": (lambda o: optim.StepLR(o, step_size=4, gamma=0.5),
             lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5)),
    "multistep": (lambda o: optim.MultiStepLR(o, milestones=[10, 3, 17], gamma=0.2),
                  lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 10, 17], gamma=0.2)),
    "cosine": (lambda o: optim.CosineLR(o, t_max=10, eta_min=1e-3),
               lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-3)),
    "warmup_cosine": (
        lambda o: optim.LinearWarmup(optim.CosineLR(o, t_max=12), warmup=5, start_factor=0.2),
        lambda o: torch.optim.lr_scheduler.SequentialLR(o, [
            torch.optim.lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=5),
            torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12)], milestones=[5])),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_match_torch(name):
    ours, theirs = SCHEDULES[name]
    a, b = _our_lrs(ours), _torch_lrs(theirs)
    np.testing.assert_allclose(a, b, rtol=SGD_RTOL, atol=1e-15)
    assert len(set(np.round(a, 12))) > 2


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_state_dict_resumes(name):
    make = SCHEDULES[name][0]
    straight = _our_lrs(make)
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
    sched = make(opt)
    for _ in range(7):
        sched.step()
    state = sched.state_dict()
    opt2 = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
    sched2 = make(opt2)
    sched2.load_state_dict(state)
    assert opt2.lr == straight[7]
    resumed = [sched2.step() for _ in range(EPOCHS - 7)]
    np.testing.assert_array_equal(resumed, straight[8:])


def test_schedule_bad_arguments():
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="step_size"):
        optim.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="t_max"):
        optim.CosineLR(opt, t_max=0)
    with pytest.raises(ValueError, match="milestones"):
        optim.MultiStepLR(opt, milestones=[-1])
    with pytest.raises(ValueError, match="warmup"):
        optim.LinearWarmup(optim.StepLR(opt, 2), warmup=0)


# ---------------------------------------------------------------------------------------------- losses
def test_softmax_cross_entropy_matches_torch():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 10)) * 3
    labels = rng.integers(0, 10, 6)
    loss, dlogits = losses.softmax_cross_entropy(logits, labels, backend="numpy")
    t = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.tensor(labels))
    ref.backward()
    assert_close_f64(loss, ref.detach().numpy(), "loss")
    assert_close_f64(dlogits, t.grad.numpy(), "dlogits")


def test_accuracy():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert losses.accuracy(logits, np.array([1, 0, 0, 0])) == 0.75
    with pytest.raises(ValueError, match="labels"):
        losses.accuracy(logits, np.array([1, 0]))
    with pytest.raises(ValueError, match="logits"):
        losses.accuracy(logits[0], np.array([1]))


def test_l2_penalty_gradient_is_sgd_weight_decay():
    rng = np.random.default_rng(3)
    p = Parameter(rng.standard_normal((3, 4)))
    wd, eps = 0.01, 1e-6
    # central difference of the penalty in one coordinate equals wd * p (the term SGD adds to the grad)
    plus, minus = p.data.copy(), p.data.copy()
    plus[1, 2] += eps
    minus[1, 2] -= eps
    fd = (losses.l2_penalty([Parameter(plus)], wd) - losses.l2_penalty([Parameter(minus)], wd)) / (2 * eps)
    np.testing.assert_allclose(fd, wd * p.data[1, 2], rtol=1e-6)
    assert losses.l2_penalty([p], wd) == pytest.approx(0.5 * wd * (p.data ** 2).sum(), rel=RTOL_F64)
