"""Whole models on the CuPy backend (GPU only) against the NumPy float64 reference: LeNet-5 and ResNet-20 logits,
loss, input gradient and every parameter gradient after one forward/backward, then 20 SGD steps of training.

Both models are built from the same seed, one moved with ``.to("cupy")`` (float32), the other with
``.to("numpy", dtype=float64)``. One step must agree within MODEL_REL_F32 (max|ours - ref| / max|ref| per
tensor). Twenty steps of float32 training drift from float64 by rounding that the steps amplify (a ResNet's
batch-norm biases sit near zero, where their relative error grows fastest), so the training test measures
that drift on the CPU too, with the NumPy backend in float32, and requires the GPU run's to be no larger than
TRAIN_DRIFT_FACTOR times it (and never more than MODEL_REL_F32 where the CPU drift is smaller than that).
"""
from __future__ import annotations

import numpy as np
import pytest
from test_cupy_ops import cp  # noqa: F401  (the module fixture that fails, never skips, without a device)
from tolerances import MODEL_REL_F32, max_rel_err, norm_rel_err

from cnnkit import losses, models, nn, optim

pytestmark = pytest.mark.gpu

TRAIN_DRIFT_FACTOR = 10.0
"""How much further than the NumPy float32 run the GPU float32 run may drift from float64 in 20 steps: rounding
differs in order, not in size, so its drift is of the same order; a wrong kernel is off by orders more."""

# (builder, input shape, batch, lr, momentum)
MODELS = {"lenet5": (models.lenet5, (1, 32, 32), 32, 0.1, 0.9),
          "resnet20": (models.resnet20, (3, 32, 32), 16, 0.01, 0.9)}


def _build(name: str, backend: str, dtype=None):
    nn.init.manual_seed(0)
    return MODELS[name][0]().to(backend, dtype=dtype)


def _batch(name: str) -> tuple[np.ndarray, np.ndarray]:
    _, shape, n, _, _ = MODELS[name]
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 10, n)


def _host_state(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in model.state_dict().items() if v.dtype.kind == "f"}


@pytest.mark.parametrize("name", list(MODELS))
def test_one_step_matches_float64(cp, name):  # noqa: F811
    gpu, ref = _build(name, "cupy"), _build(name, "numpy", np.float64)
    x, labels = _batch(name)
    logits = gpu(cp.asarray(x))
    loss, dlogits = losses.softmax_cross_entropy(logits, cp.asarray(labels), backend="cupy")
    assert isinstance(loss, cp.ndarray) and loss.shape == (), "the loss must stay a 0-d device array"
    gpu.zero_grad()
    dx = gpu.backward(dlogits)

    logits64 = ref(x.astype(np.float64))
    loss64, dlogits64 = losses.softmax_cross_entropy(logits64, labels, backend="numpy")
    ref.zero_grad()
    dx64 = ref.backward(dlogits64)

    errors = {"logits": max_rel_err(cp.asnumpy(logits), logits64),
              "loss": max_rel_err(cp.asnumpy(loss).reshape(1), np.reshape(loss64, 1)),
              "dx": max_rel_err(cp.asnumpy(dx), dx64)}
    ref_params = dict(ref.named_parameters())
    for key, p in gpu.named_parameters():
        errors[key] = max_rel_err(cp.asnumpy(p.grad), ref_params[key].grad)
    ref_buffers = dict(ref.named_buffers())
    for key, value in gpu.named_buffers():  # batch-norm running statistics, moved in training mode
        if value.dtype.kind == "f":
            errors[key] = max_rel_err(cp.asnumpy(value), ref_buffers[key])
    assert not any(np.isnan(v) for v in errors.values()), errors
    worst = max(errors, key=errors.get)
    assert errors[worst] <= MODEL_REL_F32, f"{name} {worst}: max relative error {errors[worst]:.3g}"


def _train(name: str, backend: str, dtype, xp, steps: int = 20):
    """(losses as a host float64 array, final host state) after ``steps`` SGD steps on one fixed batch."""
    _, _, _, lr, momentum = MODELS[name]
    model = _build(name, backend, dtype)
    x, labels = _batch(name)
    x, labels = xp.asarray(x.astype(dtype or np.float32)), xp.asarray(labels)
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    history = []
    for _ in range(steps):  # no host synchronisation inside the loop: losses stay device arrays
        loss, dlogits = losses.softmax_cross_entropy(model(x), labels, backend=backend)
        opt.zero_grad()
        model.backward(dlogits)
        opt.step()
        history.append(loss)
    return np.asarray(xp.stack(history).tolist(), dtype=np.float64), _host_state(model)


def _drift(result, reference) -> tuple[float, float]:
    (loss, state), (loss64, state64) = result, reference
    keys = sorted(state64)
    params = norm_rel_err(np.concatenate([state[k].ravel() for k in keys]),
                          np.concatenate([state64[k].ravel() for k in keys]))
    return float(np.max(np.abs(loss - loss64) / np.abs(loss64))), params


@pytest.mark.parametrize("name", list(MODELS))
def test_twenty_sgd_steps_track_float64(cp, name):  # noqa: F811
    reference = _train(name, "numpy", np.float64, np)
    cpu_loss, cpu_params = _drift(_train(name, "numpy", np.float32, np), reference)
    gpu_result = _train(name, "cupy", None, cp)
    gpu_loss, gpu_params = _drift(gpu_result, reference)
    assert gpu_result[0][-1] < 0.8 * gpu_result[0][0], f"{name} did not learn: losses {gpu_result[0]}"
    for what, gpu_err, cpu_err in (("loss", gpu_loss, cpu_loss), ("parameters", gpu_params, cpu_params)):
        allowed = max(TRAIN_DRIFT_FACTOR * cpu_err, MODEL_REL_F32)
        assert gpu_err <= allowed, (f"{name} {what}: GPU float32 drifts {gpu_err:.3g} from float64 in 20 steps, "
                                    f"NumPy float32 {cpu_err:.3g} (allowed {allowed:.3g})")
