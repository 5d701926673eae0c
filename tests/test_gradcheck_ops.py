"""Every backward of the NumPy reference backend against central finite differences in float64, on the small
finite cases of tests/op_cases.py.

Each check projects the op's output on the case's dy (loss = sum(y * dy), so dloss/dy = dy), feeds it to the
backward through cnnkit.functional, and compares with the numerical gradient (tests/gradcheck.py). Finite
differences cost two forward passes per input element, so only cases with at most FD_ELEMENTS input elements run
(and no max-pool case with ties, where the maximum is not differentiable).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from gradcheck import check_grad
from op_cases import (
    ACTIVATION_CASES,
    AVG_POOL_CASES,
    BATCH_NORM_CASES,
    CONV_CASES,
    CROSS_ENTROPY_CASES,
    LINEAR_CASES,
    LP_POOL_CASES,
    MAX_POOL_CASES,
    SOFTMAX_CASES,
    finite,
    ids,
)

import cnnkit.functional as F

BE = "numpy"
FD_ELEMENTS = 500
"""Input elements (all inputs of a case together) up to which a case is finite-differenced."""


def _rng(*key) -> np.random.Generator:
    """A generator seeded from the test's parameters (crc32, not hash(), so runs are reproducible)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _projection(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(y.shape)


def _small(cases, size) -> list:
    return [c for c in finite(cases) if size(c) <= FD_ELEMENTS]


def _f64(arg) -> np.ndarray:
    """A case input as a C-contiguous float64 array (finite differences perturb it in place)."""
    return np.ascontiguousarray(arg.ref)


# ----------------------------------------------------------------------------------------------- conv2d
CONV = _small(CONV_CASES, lambda c: np.prod(c.x) + np.prod(c.w) + c.w[0])


@pytest.mark.parametrize("case", CONV, ids=ids(CONV))
def test_conv2d_gradients(case):
    """Through the fused activation too: its backward is activation_backward (from y) then conv2d_backward."""
    x_, w_, b_, r_ = case.inputs()
    x, w, r = _f64(x_), _f64(w_), _f64(r_)
    b = _f64(b_) if case.bias else None
    geometry = dict(case.kwargs, backend=BE)

    def forward():
        return F.conv2d(x, w, b, activation=case.activation, **geometry)

    y = forward()
    dy = r if case.activation is None else F.activation_backward(r, y, case.activation, backend=BE)
    dx, dw, db = F.conv2d_backward(dy, x, w, need_db=case.bias, **geometry)
    params, grads = {"x": x, "w": w}, {"x": dx, "w": dw}
    if case.bias:
        params["b"], grads["b"] = b, db
    else:
        assert db is None
    check_grad(lambda: float((forward() * r).sum()), params, grads, what=case.id)


def test_conv2d_backward_skips_unneeded_gradients():
    rng = _rng("conv-need")
    x, w = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((2, 2, 3, 3))
    dy = rng.standard_normal((1, 2, 2, 2))
    dx, dw, db = F.conv2d_backward(dy, x, w, need_dx=False, need_db=False, backend=BE)
    assert dx is None and db is None
    full = F.conv2d_backward(dy, x, w, backend=BE)
    np.testing.assert_array_equal(dw, full[1])
    dx, dw, db = F.conv2d_backward(dy, x, w, need_dw=False, backend=BE)  # a frozen conv
    assert dw is None
    np.testing.assert_array_equal(dx, full[0])
    np.testing.assert_array_equal(db, full[2])


# ----------------------------------------------------------------------------------------------- pooling
def _differentiable(case) -> bool:
    """No ties, and no window of padding only (its -inf output has no finite difference)."""
    return not case.ties and bool(np.isfinite(F.max_pool2d(case.inputs()[0].ref, *case.args, backend=BE)[0]).all())


MAX = [c for c in _small(MAX_POOL_CASES, lambda c: np.prod(c.x)) if _differentiable(c)]
AVG = _small(AVG_POOL_CASES, lambda c: np.prod(c.x))
LP = _small(LP_POOL_CASES, lambda c: np.prod(c.x))


@pytest.mark.parametrize("case", MAX, ids=ids(MAX))
def test_max_pool2d_gradient(case):
    x, r = (_f64(a) for a in case.inputs())
    y, idx = F.max_pool2d(x, *case.args, backend=BE)
    dx = F.max_pool2d_backward(r, idx, x.shape, backend=BE)
    check_grad(lambda: float((F.max_pool2d(x, *case.args, backend=BE)[0] * r).sum()), {"x": x}, {"x": dx})


@pytest.mark.parametrize("case", AVG, ids=ids(AVG))
def test_avg_pool2d_gradient(case):
    x, r = (_f64(a) for a in case.inputs())
    dx = F.avg_pool2d_backward(r, x.shape, *case.args, backend=BE)
    check_grad(lambda: float((F.avg_pool2d(x, *case.args, backend=BE) * r).sum()), {"x": x}, {"x": dx})


@pytest.mark.parametrize("case", LP, ids=ids(LP))
def test_lp_pool2d_gradient(case):
    """Cells with x == 0 and windows with y == 0 included: the contract's gradient there is 0, which is what
    central differences give (|x|^p is even in x)."""
    x, r = (_f64(a) for a in case.inputs())
    y = F.lp_pool2d(x, case.p, *case.args, backend=BE)
    dx = F.lp_pool2d_backward(r, x, y, case.p, *case.args, backend=BE)
    check_grad(lambda: float((F.lp_pool2d(x, case.p, *case.args, backend=BE) * r).sum()), {"x": x}, {"x": dx})


def test_feature_pool_gradient():
    rng = _rng("feature_pool")
    x = rng.standard_normal((2, 6, 3, 4))
    y = F.feature_pool(x, 3, backend=BE)
    r = _projection(y, rng)
    dx = F.feature_pool_backward(r, x, y, 3)
    check_grad(lambda: float((F.feature_pool(x, 3, backend=BE) * r).sum()), {"x": x}, {"x": dx})


def test_global_avg_pool2d_gradient():
    rng = _rng("gap")
    x = rng.standard_normal((2, 3, 4, 5))
    r = _projection(F.global_avg_pool2d(x, backend=BE), rng)
    dx = F.global_avg_pool2d_backward(r, x.shape, backend=BE)
    check_grad(lambda: float((F.global_avg_pool2d(x, backend=BE) * r).sum()), {"x": x}, {"x": dx})


# ----------------------------------------------------------------------------------------------- activations
ACT = [c for c in _small(ACTIVATION_CASES, lambda c: np.prod(c.x)) if not c.extremes]


@pytest.mark.parametrize("case", ACT, ids=ids(ACT))
def test_activation_gradient(case):
    x, r = (_f64(a) for a in case.inputs())
    y = F.activation(x, case.kind, case.slope, backend=BE)
    dx = F.activation_backward(r, y, case.kind, case.slope, backend=BE)
    check_grad(lambda: float((F.activation(x, case.kind, case.slope, backend=BE) * r).sum()), {"x": x}, {"x": dx})


SOFTMAX = _small(SOFTMAX_CASES, lambda c: np.prod(c.shape))


@pytest.mark.parametrize("case", SOFTMAX, ids=ids(SOFTMAX))
def test_softmax_gradient(case):
    x, r = (_f64(a) for a in case.inputs())
    forward, backward = (F.log_softmax, F.log_softmax_backward) if case.log else (F.softmax, F.softmax_backward)
    dx = backward(r, forward(x, backend=BE), backend=BE)
    check_grad(lambda: float((forward(x, backend=BE) * r).sum()), {"x": x}, {"x": dx})


# ----------------------------------------------------------------------------------------------- linear
LINEAR = _small(LINEAR_CASES, lambda c: (c.n + c.k + 1) * c.c)


@pytest.mark.parametrize("case", LINEAR, ids=ids(LINEAR))
def test_linear_gradients(case):
    x_, w_, b_, r_ = case.inputs()
    x, w, r = _f64(x_), _f64(w_), _f64(r_)
    b = _f64(b_) if case.bias else None
    dx, dw, db = F.linear_backward(r, x, w, need_db=case.bias, backend=BE)
    params, grads = {"x": x, "w": w}, {"x": dx, "w": dw}
    if case.bias:
        params["b"], grads["b"] = b, db
    check_grad(lambda: float((F.linear(x, w, b, backend=BE) * r).sum()), params, grads, what=case.id)


# ----------------------------------------------------------------------------------------------- batch norm
BN = _small(BATCH_NORM_CASES, lambda c: np.prod(c.x))


@pytest.mark.parametrize("case", BN, ids=ids(BN))
def test_batch_norm_gradients(case):
    x_, gamma_, beta_, mean0, var0, r_ = case.inputs()
    x, gamma, beta, r = _f64(x_), _f64(gamma_), _f64(beta_), _f64(r_)

    def forward():  # fresh running statistics each call: the training update must not leak between calls
        return F.batch_norm(x, gamma, beta, mean0.astype(np.float64), var0.astype(np.float64), case.training,
                            case.momentum, case.eps, case.activation, backend=BE)

    _, saved = forward()
    dx, dgamma, dbeta = F.batch_norm_backward(r, saved, gamma, backend=BE)
    check_grad(lambda: float((forward()[0] * r).sum()), {"x": x, "gamma": gamma, "beta": beta},
               {"x": dx, "gamma": dgamma, "beta": dbeta})


# ----------------------------------------------------------------------------------------------- loss
XENT = _small(CROSS_ENTROPY_CASES, lambda c: np.prod(c.shape))


@pytest.mark.parametrize("case", XENT, ids=ids(XENT))
def test_softmax_cross_entropy_gradient(case):
    logits_, labels = case.inputs()
    logits = _f64(logits_)
    loss, dlogits = F.softmax_cross_entropy(logits, labels, backend=BE)
    assert loss.shape == ()
    check_grad(lambda: float(F.softmax_cross_entropy(logits, labels, backend=BE)[0]), {"logits": logits},
               {"logits": dlogits})
