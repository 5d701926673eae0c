"""Whole models on the Numba backend against the same models on NumPy, in float64: LeNet-5 (modern and the 1998
classic) and ResNet-20 in train and eval mode. Logits, loss, the input gradient, every parameter gradient and
the batch-norm running statistics must agree to RTOL_F64; the losses of 20 SGD steps (momentum and weight
decay) to RTOL_TRAINING.
"""
from __future__ import annotations

import numpy as np
import pytest
from tolerances import MODEL_REL_F32, assert_close_f64

from cnnkit import functional as F
from cnnkit import models, nn, optim

# Looser than RTOL_F64 because each step's last-bit differences (another summation order) feed into the next
# step's weights and grow: ResNet-20's losses agree to 1e-16 at step 1 and drift to about 1.5e-10 by step 20
# (both backends are deterministic run to run); 1e-9 bounds that drift with some room to spare.
RTOL_TRAINING = 1e-9


def _pair(build, dtype: str = "float64"):
    """The same model twice (separate arrays: state dict copied): numpy float64, and numba in ``dtype``; the
    weights are those of seed 0, whatever ran before."""
    nn.init.manual_seed(0)
    reference = build()
    twin = build()
    twin.load_state_dict(reference.state_dict())
    twin.to("numba", dtype)
    assert all(layer.backend.name == "numba" for _, layer in twin.modules())
    return reference.to("numpy", "float64"), twin


def _batch(shape, n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)), rng.integers(0, 10, n)


def _forward_backward(model, x, labels):
    be = model.backend
    logits = model(be.asarray(x))
    loss, dlogits = F.softmax_cross_entropy(logits, be.asarray(labels), backend=be)
    model.zero_grad()
    dx = model.backward(dlogits)
    return logits, loss, dx


def _compare(reference, twin, x, labels):
    outs = [_forward_backward(m, x, labels) for m in (reference, twin)]
    for what, ref, got in zip(("logits", "loss", "dx"), *outs):
        assert isinstance(got, np.ndarray) and got.dtype == np.float64, what
        assert_close_f64(got, ref, what)
    grads = dict(twin.named_parameters())
    for name, p in reference.named_parameters():
        assert_close_f64(grads[name].grad, p.grad, f"grad {name}")
    buffers = dict(twin.named_buffers())
    for name, b in reference.named_buffers():
        assert_close_f64(buffers[name], b, f"buffer {name}")


BUILDERS = {"lenet5": models.lenet5, "lenet5-classic": lambda: models.lenet5(classic=True),
            "resnet20": models.resnet20}
SHAPES = {"lenet5": (1, 32, 32), "lenet5-classic": (1, 32, 32), "resnet20": (3, 32, 32)}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_one_step_matches_numpy(name):
    reference, twin = _pair(BUILDERS[name])
    reference.train(), twin.train()
    _compare(reference, twin, *_batch(SHAPES[name], 6, seed=1))


def test_resnet20_eval_mode_matches_numpy():
    reference, twin = _pair(models.resnet20)
    for model in (reference, twin):  # move the running statistics off their initial 0 and 1 first
        model.train()
        for seed in (2, 3):
            model(model.backend.asarray(_batch((3, 32, 32), 4, seed)[0]))
        model.eval()
    _compare(reference, twin, *_batch((3, 32, 32), 4, seed=4))


# ResNet-20 trains on 16x16 images here (its global pooling takes any size): every layer, stride and padding
# edge still runs, at a quarter of the float64 reference's cost (which dominates this test).
TRAIN_SHAPES = {**SHAPES, "resnet20": (3, 16, 16)}


@pytest.mark.parametrize("name", ["lenet5", "lenet5-classic", "resnet20"])
def test_twenty_sgd_steps_give_the_same_losses(name):
    reference, twin = _pair(BUILDERS[name])
    losses = []
    for model in (reference, twin):
        model.train()
        opt = optim.SGD(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
        run = []
        for step in range(20):
            x, labels = _batch(TRAIN_SHAPES[name], 4, seed=100 + step)
            _, loss, _ = _forward_backward(model, x, labels)
            opt.step()
            run.append(float(loss))
        losses.append(run)
    np.testing.assert_allclose(losses[1], losses[0], rtol=RTOL_TRAINING, atol=0)
    assert losses[0][-1] != losses[0][0]  # the models did train


def _share_relu_kinks(reference, twin) -> None:
    """Give the float64 reference's ReLUs the float32 twin's zero pattern where the two differ. A pre-activation
    within float32 rounding of 0 may land on either side of the kink in float32 (about one in a million does
    here), and its gradient then differs by the whole dy there: a legitimate float32 result that a max-error
    comparison of gradients would call wrong. Only such elements may differ (within 1e-5 of the layer's largest
    output); then both backward passes use one mask and must agree to MODEL_REL_F32."""
    pairs = [(r, t) for (_, r), (_, t) in zip(reference.modules(), twin.modules()) if isinstance(r, nn.ReLU)]
    for r, t in pairs:
        ours = np.asarray(t._y, dtype=np.float64)
        differ = (r._y > 0) != (ours > 0)
        assert np.all(np.abs(r._y[differ]) <= 1e-5 * np.abs(r._y).max()), "a ReLU output differs beyond rounding"
        r._y = np.where(differ, ours, r._y)


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_float32_step_matches_numpy_float64(name):
    """The default dtype: the numba float32 model against the numpy float64 one, within MODEL_REL_F32 as
    max|ours - reference| / max|reference| per tensor (the whole-model rule of the PyTorch parity tests), the
    backward passes through one ReLU mask (:func:`_share_relu_kinks`)."""
    reference, twin = _pair(BUILDERS[name], "float32")
    x, labels = _batch(SHAPES[name], 6, seed=5)
    got, ref = {}, {}
    for model, out, inputs in ((twin, got, x.astype(np.float32)), (reference, ref, x)):
        be = model.backend
        out["logits"] = model(be.asarray(inputs))
        out["loss"], dlogits = F.softmax_cross_entropy(out["logits"], be.asarray(labels), backend=be)
        if model is reference:
            _share_relu_kinks(reference, twin)
        model.zero_grad()
        out["dx"] = model.backward(dlogits)
    ref.update({name: p.grad for name, p in reference.named_parameters()})
    got.update({name: p.grad for name, p in twin.named_parameters()})
    for key, value in ref.items():
        assert got[key].dtype == np.float32, key
        err = float(np.abs(got[key] - value).max() / np.abs(value).max())
        assert err <= MODEL_REL_F32, f"{key}: max relative error {err:.3g} > {MODEL_REL_F32}"
