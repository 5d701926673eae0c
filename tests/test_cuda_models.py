"""Whole models on the CUDA kernels, on the CPU simulator (cudasim, every CI run) and on a real GPU (cupy), against
the NumPy float64 reference: LeNet-5 (modern and 1998 classic) and ResNet-20 logits, loss, input gradient, every
parameter gradient and the batch-norm running statistics after one forward/backward and one SGD step; then
training steps whose losses must track float64.

Both models are built from the same seed, one moved to the CUDA backend (float32), the other with
``.to("numpy", dtype=float64)``. One step must agree within MODEL_REL_F32 (max|ours - ref| / max|ref| per
tensor), on small inputs (ONE_STEP): at full size a float32 run correctly parts from float64 at a ReLU's kink
(see ONE_STEP), so the full-size step is checked op by op instead, each op call against NumPy float64 on the
same inputs. Training drifts from float64 by rounding that the steps amplify (a ResNet's batch-norm biases sit near
zero, where their relative error grows fastest), so the training test measures that drift with the NumPy backend
in float32 too, and requires the CUDA run's to be no larger than TRAIN_DRIFT_FACTOR times it (and never more than
MODEL_REL_F32 where the NumPy float32 drift is smaller than that).

The simulator runs one OS thread per CUDA thread (about 2 us per thread and barrier on 2 cores), so its cases are
small: batch 2, ResNet-20 on 16x16 images (its global pooling takes any size; every layer, stride and padding
edge still runs), 10 training steps of the LeNets.
"""
from __future__ import annotations

import numpy as np
import pytest
from tolerances import MODEL_REL_F32, assert_close_f32, max_rel_err, norm_rel_err

from cnnkit import losses, models, nn, optim
from cnnkit.backend import backend, unavailable_reason
from cnnkit.bench.opprofile import wrapped_ops

TRAIN_DRIFT_FACTOR = 10.0
"""How much further than the NumPy float32 run a CUDA float32 run may drift from float64: rounding differs in
order, not in size, so its drift is of the same order; a wrong kernel is off by orders more."""

BUILDERS = {"lenet5": models.lenet5, "lenet5-classic": lambda: models.lenet5(classic=True),
            "resnet20": models.resnet20}
# backend -> (batch, input shape per model, training steps, models trained)
SETTINGS = {
    "cudasim": (2, {"lenet5": (1, 32, 32), "lenet5-classic": (1, 32, 32), "resnet20": (3, 16, 16)}, 10,
                ("lenet5", "lenet5-classic")),
    "cupy": (32, {"lenet5": (1, 32, 32), "lenet5-classic": (1, 32, 32), "resnet20": (3, 32, 32)}, 20,
             ("lenet5", "lenet5-classic", "resnet20")),
}
ONE_STEP = (2, SETTINGS["cudasim"][1])
"""Batch and input shapes of the one-step test on every backend. Not the GPU's batch 32 of 32x32 images: there
ResNet-20 (seed 0, batch seed 1) has a unit of block 3.1's first batch norm at 3e-7 in float64, within float32
rounding of its ReLU's kink; float32 puts it on the other side of zero, so its ReLU gradient flips and that
block's gradients and dx differ from float64 by 1-3%, on cudasim and cupy alike, while every op agrees with
float64 on its own inputs (test_every_op_of_a_step_matches_float64_on_its_inputs, the full-size check)."""
CUDA_BACKENDS = [pytest.param("cudasim", marks=pytest.mark.cudasim), pytest.param("cupy", marks=pytest.mark.gpu)]


def _cases(trained_only: bool) -> list:
    return [pytest.param(p.values[0], name, marks=p.marks, id=f"{p.values[0]}-{name}") for p in CUDA_BACKENDS
            for name in BUILDERS if not trained_only or name in SETTINGS[p.values[0]][3]]


def _backend(name: str):
    """The backend, or a failure (never a skip) saying why it cannot run here."""
    reason = unavailable_reason(name)
    if reason is not None:
        pytest.fail(f"backend {name} cannot run here: {reason}")
    return backend(name)


def _build(name: str, backend_name: str, dtype=None):
    nn.init.manual_seed(0)
    return BUILDERS[name]().to(backend_name, dtype=dtype)


def _batch(be_name: str, name: str, seed: int = 1, one_step: bool = False) -> tuple[np.ndarray, np.ndarray]:
    n, shapes = ONE_STEP if one_step else SETTINGS[be_name][:2]
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shapes[name])).astype(np.float32), rng.integers(0, 10, n)


def _host(be, a) -> np.ndarray:
    return np.asarray(be.to_numpy(a), dtype=np.float64)


@pytest.mark.parametrize("be_name, name", _cases(trained_only=False))
def test_one_step_matches_float64(be_name, name):
    be = _backend(be_name)
    ours, ref = _build(name, be_name), _build(name, "numpy", np.float64)
    x, labels = _batch(be_name, name, one_step=True)
    results = []
    for model, bname, inputs in ((ours, be_name, x), (ref, "numpy", x.astype(np.float64))):
        model_be = model.backend
        logits = model(model_be.asarray(inputs))
        loss, dlogits = losses.softmax_cross_entropy(logits, model_be.asarray(labels), backend=bname)
        model.zero_grad()
        dx = model.backward(dlogits)
        optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4).step()
        results.append((logits, loss, dx))
    (logits, loss, dx), (logits64, loss64, dx64) = results
    assert loss.shape == () and loss.dtype == np.float32, "the loss is a 0-d float32 array of the backend"
    errors = {"logits": max_rel_err(_host(be, logits), logits64), "loss": max_rel_err(_host(be, loss), loss64),
              "dx": max_rel_err(_host(be, dx), dx64)}
    ref_params = dict(ref.named_parameters())
    for key, p in ours.named_parameters():
        errors[f"grad {key}"] = max_rel_err(_host(be, p.grad), ref_params[key].grad)
        errors[f"after SGD {key}"] = max_rel_err(_host(be, p.data), ref_params[key].data)
    ref_buffers = dict(ref.named_buffers())
    for key, value in ours.named_buffers():  # batch-norm running statistics, moved in training mode
        if value.dtype.kind == "f":
            errors[key] = max_rel_err(_host(be, value), ref_buffers[key])
    assert not any(np.isnan(v) for v in errors.values()), errors
    worst = max(errors, key=errors.get)
    assert errors[worst] <= MODEL_REL_F32, f"{name} on {be_name}, {worst}: max relative error {errors[worst]:.3g}"


def _arrays(out) -> list:
    return [a for a in (out if isinstance(out, tuple) else (out,)) if a is not None]


def _op_checker(be, failures: list[str], called: set[str]):
    """wrap(name, op) for :func:`cnnkit.bench.opprofile.wrapped_ops`: each call of the op runs again in NumPy
    float64 on the same inputs (a forward's saved state is swapped for the reference forward's own), and each
    output array that differs beyond float32 tolerance is added to ``failures``."""
    ref, saved64 = backend("numpy"), {}

    def to64(a):
        if isinstance(a, be.array_type):
            return _host(be, a) if a.dtype.kind == "f" else be.to_numpy(a)
        return saved64[id(a)][1] if id(a) in saved64 else a

    def checked(name, op):
        def call(*args, **kwargs):
            args64, kwargs64 = [to64(a) for a in args], {k: to64(v) for k, v in kwargs.items()}
            out = op(*args, **kwargs)
            out64 = getattr(ref.ops, name)(*args64, **kwargs64)
            compared, compared64 = out, out64
            if name.endswith("_forward") and isinstance(out, tuple):  # (y, saved): y is compared
                saved64[id(out[1])] = (out[1], out64[1])  # holding out[1] keeps its id unique
                compared, compared64 = out[0], out64[0]
            for i, (o, r) in enumerate(zip(_arrays(compared), _arrays(compared64))):
                try:
                    assert_close_f32(_host(be, o), r, f"{name} output {i}")
                except AssertionError as exc:
                    failures.append(f"{name}{[tuple(a.shape) for a in args if hasattr(a, 'shape')]}: {exc}")
            called.add(name)
            return out
        return call
    return checked


@pytest.mark.parametrize("be_name, name", _cases(trained_only=True))
def test_every_op_of_a_step_matches_float64_on_its_inputs(be_name, name):
    """Forward, loss and backward at the backend's full size (the GPU's batch 32 of 32x32 images: large grids,
    split reductions), each op call against NumPy float64 on the very inputs it got, so no kink amplifies
    float32 rounding between them."""
    be = _backend(be_name)
    model = _build(name, be_name)
    x, labels = _batch(be_name, name)
    failures, called = [], set()
    with wrapped_ops(be, _op_checker(be, failures, called)):
        logits = model(be.asarray(x))
        _, dlogits = losses.softmax_cross_entropy(logits, be.asarray(labels), backend=be_name)
        model.backward(dlogits)
    assert {"conv2d_forward", "conv2d_backward", "softmax_cross_entropy"} <= called, called
    assert not failures, "\n".join(failures[:10])


def _train(name: str, be_name: str, backend_name: str, dtype, steps: int):
    """(losses as a host float64 array, final host state) after ``steps`` SGD steps on one fixed batch."""
    model = _build(name, backend_name, dtype)
    be = model.backend
    x, labels = _batch(be_name, name)
    x, labels = be.asarray(x.astype(dtype or np.float32)), be.asarray(labels)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    for _ in range(steps):  # no host synchronisation inside the loop: losses stay backend arrays
        loss, dlogits = losses.softmax_cross_entropy(model(x), labels, backend=backend_name)
        opt.zero_grad()
        model.backward(dlogits)
        opt.step()
        history.append(loss)
    state = {k: _host(be, v) for k, v in model.state_dict().items() if v.dtype.kind == "f"}
    return np.array([float(_host(be, h)) for h in history]), state


def _drift(result, reference) -> tuple[float, float]:
    (loss, state), (loss64, state64) = result, reference
    keys = sorted(state64)
    params = norm_rel_err(np.concatenate([state[k].ravel() for k in keys]),
                          np.concatenate([state64[k].ravel() for k in keys]))
    return float(np.max(np.abs(loss - loss64) / np.abs(loss64))), params


@pytest.mark.parametrize("be_name, name", _cases(trained_only=True))
def test_training_steps_track_float64(be_name, name):
    _backend(be_name)
    steps = SETTINGS[be_name][2]
    reference = _train(name, be_name, "numpy", np.float64, steps)
    cpu_loss, cpu_params = _drift(_train(name, be_name, "numpy", np.float32, steps), reference)
    result = _train(name, be_name, be_name, None, steps)
    loss, params = _drift(result, reference)
    drop, drop64 = result[0][0] - result[0][-1], reference[0][0] - reference[0][-1]
    assert drop64 > 0.05 * reference[0][0], f"the float64 reference of {name} did not learn: {reference[0]}"
    assert drop > 0.5 * drop64, f"{name} did not learn on {be_name} as float64 did: {result[0]} vs {reference[0]}"
    for what, err, cpu_err in (("loss", loss, cpu_loss), ("parameters", params, cpu_params)):
        allowed = max(TRAIN_DRIFT_FACTOR * cpu_err, MODEL_REL_F32)
        assert err <= allowed, (f"{name} {what}: {be_name} float32 drifts {err:.3g} from float64 in {steps} steps, "
                                f"NumPy float32 {cpu_err:.3g} (allowed {allowed:.3g})")
