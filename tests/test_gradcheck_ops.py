"""Every backward of the NumPy reference backend against central finite differences in float64.

Each check projects the op's output on a fixed random array r (loss = sum(y * r), so dloss/dy = r), feeds r to
the backward through cnnkit.functional, and compares with the numerical gradient (tests/gradcheck.py).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from gradcheck import check_grad

import cnnkit.functional as F
from cnnkit.backends import ACTIVATIONS

BE = "numpy"


def _rng(*key) -> np.random.Generator:
    """A generator seeded from the test's parameters (crc32, not hash(), so runs are reproducible)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _projection(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(y.shape)


# ----------------------------------------------------------------------------------------------- conv2d
CONV_CASES = {
    # name: (x shape, weight shape, stride, padding, dilation, groups, bias)
    "plain": ((2, 3, 5, 5), (4, 3, 3, 3), 1, 0, 1, 1, True),
    "stride2_pad1": ((2, 2, 6, 7), (3, 2, 3, 3), 2, 1, 1, 1, True),
    "stride3_asym_pad_odd": ((1, 2, 7, 6), (2, 2, 3, 2), 3, (1, 2, 0, 1), 1, 1, True),
    "stride_2x3": ((2, 2, 7, 8), (2, 2, 2, 3), (2, 3), (0, 1), 1, 1, True),
    "same_even_kernel": ((2, 2, 5, 6), (3, 2, 2, 4), 1, "same", 1, 1, True),
    "same_dilation2": ((1, 2, 6, 5), (2, 2, 3, 2), 1, "same", 2, 1, True),
    "dilation2_pad2": ((2, 2, 7, 7), (3, 2, 3, 3), 1, 2, 2, 1, True),
    "dilation_1x2_stride2": ((1, 3, 6, 9), (2, 3, 2, 3), 2, (1, 1, 2, 0), (1, 2), 1, True),
    "groups2": ((2, 4, 5, 5), (6, 2, 3, 3), 1, 1, 1, 2, True),
    "groups2_stride2_dil2": ((1, 4, 8, 7), (4, 2, 2, 3), 2, (0, 1, 1, 1), 2, 2, True),
    "depthwise": ((2, 3, 6, 5), (3, 1, 3, 3), 1, 1, 1, 3, True),
    "depthwise_multiplier2": ((1, 2, 5, 6), (4, 1, 3, 2), (1, 2), 1, 1, 2, True),
    "batch1_no_bias": ((1, 3, 4, 6), (2, 3, 3, 3), 1, (0, 2, 1, 0), 1, 1, False),
    "kernel_1x1": ((2, 4, 3, 3), (3, 4, 1, 1), 1, 0, 1, 1, True),
    "kernel_fills_input": ((2, 2, 3, 4), (3, 2, 3, 4), 1, 0, 1, 1, True),
}


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv2d_gradients(name):
    xs, ws, stride, padding, dilation, groups, with_bias = CONV_CASES[name]
    rng = _rng("conv", name)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0]) if with_bias else None
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, backend=BE)
    r = _projection(F.conv2d(x, w, b, **geometry), rng)
    dx, dw, db = F.conv2d_backward(r, x, w, need_bias=with_bias, **geometry)
    params, grads = {"x": x, "w": w}, {"x": dx, "w": dw}
    if with_bias:
        params["b"], grads["b"] = b, db
    else:
        assert db is None
    check_grad(lambda: float((F.conv2d(x, w, b, **geometry) * r).sum()), params, grads, what=name)


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_conv2d_fused_activation_gradients(kind):
    """The fused epilogue's backward is activation_backward (from y) followed by conv2d_backward."""
    rng = _rng("fused", kind)
    x, w, b = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    geometry = dict(stride=2, padding=1, backend=BE)
    y = F.conv2d(x, w, b, activation=kind, **geometry)
    r = _projection(y, rng)
    dx, dw, db = F.conv2d_backward(F.activation_backward(r, y, kind, backend=BE), x, w, **geometry)
    check_grad(lambda: float((F.conv2d(x, w, b, activation=kind, **geometry) * r).sum()),
               {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db}, what=kind)


def test_conv2d_backward_skips_unneeded_gradients():
    rng = _rng("conv-need")
    x, w = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((2, 2, 3, 3))
    dy = rng.standard_normal((1, 2, 2, 2))
    dx, dw, db = F.conv2d_backward(dy, x, w, need_dx=False, need_bias=False, backend=BE)
    assert dx is None and db is None
    full = F.conv2d_backward(dy, x, w, backend=BE)
    np.testing.assert_array_equal(dw, full[1])
    dx, dw, db = F.conv2d_backward(dy, x, w, need_weight=False, backend=BE)  # a frozen conv
    assert dw is None
    np.testing.assert_array_equal(dx, full[0])
    np.testing.assert_array_equal(db, full[2])


# ----------------------------------------------------------------------------------------------- pooling
MAX_CASES = [  # kernel, stride, padding, dilation, ceil_mode
    (2, None, 0, 1, False), (3, 2, 1, 1, False), (3, 2, 1, 1, True), (2, 3, 1, 1, True),
    (3, 1, 1, 2, False), ((2, 3), (2, 1), (1, 1), (2, 1), True), (3, 2, 0, 2, True),
]


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode", MAX_CASES)
def test_max_pool2d_gradient(kernel, stride, padding, dilation, ceil_mode):
    rng = _rng("max", kernel, stride, padding, dilation, ceil_mode)
    x = rng.standard_normal((2, 2, 7, 6))
    args = (kernel, stride, padding, dilation, ceil_mode)
    y, idx = F.max_pool2d(x, *args, backend=BE)
    r = _projection(y, rng)
    dx = F.max_pool2d_backward(r, idx, x.shape, backend=BE)
    check_grad(lambda: float((F.max_pool2d(x, *args, backend=BE)[0] * r).sum()), {"x": x}, {"x": dx})


AVG_CASES = [  # kernel, stride, padding, ceil_mode, count_include_pad
    (2, None, 0, False, True), (3, 2, 1, False, True), (3, 2, 1, False, False), (3, 2, 1, True, True),
    (3, 2, 1, True, False), (2, 3, 1, True, False), ((3, 2), (2, 1), (1, 0), True, True), (4, 3, 2, True, False),
]


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode, count_include_pad", AVG_CASES)
def test_avg_pool2d_gradient(kernel, stride, padding, ceil_mode, count_include_pad):
    rng = _rng("avg", kernel, stride, padding, ceil_mode, count_include_pad)
    x = rng.standard_normal((2, 2, 7, 6))
    args = (kernel, stride, padding, ceil_mode, count_include_pad)
    r = _projection(F.avg_pool2d(x, *args, backend=BE), rng)
    dx = F.avg_pool2d_backward(r, x.shape, *args, backend=BE)
    check_grad(lambda: float((F.avg_pool2d(x, *args, backend=BE) * r).sum()), {"x": x}, {"x": dx})


LP_CASES = [  # p, kernel, stride, padding, ceil_mode
    (2.0, 2, None, 0, False), (2.0, 3, 2, 1, True), (3.0, 3, 2, 0, False), (1.5, 2, 1, 1, False),
    (1.0, 3, 2, 1, True), (4.0, (2, 3), (2, 1), (1, 1), True),
]


@pytest.mark.parametrize("p, kernel, stride, padding, ceil_mode", LP_CASES)
def test_lp_pool2d_gradient(p, kernel, stride, padding, ceil_mode):
    rng = _rng("lp", p, kernel, stride, padding, ceil_mode)
    x = rng.standard_normal((2, 2, 6, 7))
    args = (kernel, stride, padding, ceil_mode)
    y = F.lp_pool2d(x, p, *args, backend=BE)
    r = _projection(y, rng)
    dx = F.lp_pool2d_backward(r, x, y, p, *args, backend=BE)
    check_grad(lambda: float((F.lp_pool2d(x, p, *args, backend=BE) * r).sum()), {"x": x}, {"x": dx})


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
@pytest.mark.parametrize("kind, slope", [(k, 0.01) for k in ACTIVATIONS] + [("leaky_relu", 0.2),
                                                                              ("leaky_relu", 0.0)])
def test_activation_gradient(kind, slope):
    rng = _rng("act", kind, slope)
    x = 2 * rng.standard_normal((3, 4, 5))
    y = F.activation(x, kind, slope, backend=BE)
    r = _projection(y, rng)
    dx = F.activation_backward(r, y, kind, slope, backend=BE)
    check_grad(lambda: float((F.activation(x, kind, slope, backend=BE) * r).sum()), {"x": x}, {"x": dx})


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_gradient(log):
    rng = _rng("softmax", log)
    x = 3 * rng.standard_normal((4, 6))
    forward, backward = (F.log_softmax, F.log_softmax_backward) if log else (F.softmax, F.softmax_backward)
    y = forward(x, backend=BE)
    r = _projection(y, rng)
    dx = backward(r, y, backend=BE)
    check_grad(lambda: float((forward(x, backend=BE) * r).sum()), {"x": x}, {"x": dx})


# ----------------------------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_gradients(training):
    rng = _rng("bn", training)
    x = 2 * rng.standard_normal((3, 2, 3, 4)) + 1
    gamma, beta = rng.standard_normal(2), rng.standard_normal(2)
    mean0, var0 = rng.standard_normal(2), rng.uniform(0.5, 2, 2)

    def forward():  # fresh running statistics each call: the training update must not leak between calls
        return F.batch_norm(x, gamma, beta, mean0.copy(), var0.copy(), training, 0.1, 1e-5, backend=BE)

    y, saved = forward()
    r = _projection(y, rng)
    dx, dgamma, dbeta = F.batch_norm_backward(r, saved, gamma, backend=BE)
    check_grad(lambda: float((forward()[0] * r).sum()), {"x": x, "gamma": gamma, "beta": beta},
               {"x": dx, "gamma": dgamma, "beta": dbeta})


# ----------------------------------------------------------------------------------------------- loss
def test_softmax_cross_entropy_gradient():
    rng = _rng("xent")
    logits = 2 * rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    loss, dlogits = F.softmax_cross_entropy(logits, labels, backend=BE)
    assert loss.shape == ()
    check_grad(lambda: float(F.softmax_cross_entropy(logits, labels, backend=BE)[0]), {"logits": logits},
               {"logits": dlogits})
