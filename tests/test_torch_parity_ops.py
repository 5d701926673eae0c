"""NumPy reference backend vs PyTorch (CPU, float64 autograd as the oracle): forward and backward of every op.

float64 results must agree to RTOL_F64; float32 results are held to assert_close_f32 against the float64 torch
result. Inputs are drawn in float64 and rounded to float32 once, so both precisions see the same numbers (and max
pooling picks the same argmax). Backward passes use a random projection r: torch differentiates sum(y * r).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from tolerances import RTOL_ACT_F32, assert_close_f32, assert_close_f64

import cnnkit.functional as F
from cnnkit.backends import SCALED_TANH_A, SCALED_TANH_S

BE = "numpy"
DTYPES = [np.float64, np.float32]
torch.backends.cuda.matmul.allow_tf32 = False  # irrelevant on CPU, stated for the record (DESIGN.md)
torch.backends.cudnn.allow_tf32 = False


def _data(shape, *key, scale: float = 1.0) -> np.ndarray:
    """float64 normals that are exactly representable in float32, seeded from ``key``."""
    rng = np.random.default_rng(zlib.crc32(repr((shape, key)).encode()))
    return (scale * rng.standard_normal(shape)).astype(np.float32).astype(np.float64)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def _close(actual, reference, dtype, what: str) -> None:
    assert np.asarray(actual).dtype == dtype, f"{what}: dtype {np.asarray(actual).dtype} != {np.dtype(dtype)}"
    reference = reference.detach().numpy() if isinstance(reference, torch.Tensor) else reference
    if dtype == np.float64:
        assert_close_f64(actual, reference, what)
    else:
        assert_close_f32(actual, reference, what)


# ----------------------------------------------------------------------------------------------- conv2d
CONV_GRID = [  # x shape, w shape, stride, padding (top, bottom, left, right), dilation, groups, bias
    ((2, 3, 9, 9), (4, 3, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    ((2, 3, 9, 8), (4, 3, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, True),
    ((1, 4, 10, 11), (6, 4, 5, 5), (3, 2), (2, 0, 1, 3), (1, 1), 1, True),
    ((2, 4, 12, 10), (4, 2, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 2, True),
    ((3, 6, 8, 8), (6, 1, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 6, False),
    ((2, 6, 9, 7), (9, 2, 2, 3), (1, 2), (0, 1, 1, 0), (2, 1), 3, True),
    ((4, 1, 32, 32), (6, 1, 5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),   # LeNet C1
    ((2, 16, 8, 8), (32, 16, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, False),  # ResNet downsampling conv
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", range(len(CONV_GRID)))
def test_conv2d_matches_torch(case, dtype):
    xs, ws, stride, pads, dilation, groups, with_bias = CONV_GRID[case]
    x, w = _data(xs, case, "x"), _data(ws, case, "w")
    b = _data((ws[0],), case, "b") if with_bias else None
    tx, tw = _t(x), _t(w)
    tb = _t(b) if with_bias else None
    ty = TF.conv2d(TF.pad(tx, (pads[2], pads[3], pads[0], pads[1])), tw, tb, stride, 0, dilation, groups)
    r = _data(tuple(ty.shape), case, "r")
    (ty * torch.tensor(r)).sum().backward()

    def cast(a):
        return None if a is None else a.astype(dtype)

    geometry = dict(stride=stride, padding=pads, dilation=dilation, groups=groups, backend=BE)
    _close(F.conv2d(cast(x), cast(w), cast(b), **geometry), ty, dtype, "y")
    dx, dw, db = F.conv2d_backward(cast(r), cast(x), cast(w), need_bias=with_bias, **geometry)
    _close(dx, tx.grad, dtype, "dx")
    _close(dw, tw.grad, dtype, "dw")
    if with_bias:
        _close(db, tb.grad, dtype, "db")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")  # torch's perf note
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_padding_strings_match_torch(padding, dtype):
    x, w, b = _data((2, 2, 7, 6), padding, "x"), _data((3, 2, 4, 3), padding, "w"), _data((3,), padding, "b")
    ty = TF.conv2d(_t(x), _t(w), _t(b), padding=padding, dilation=(1, 2))
    y = F.conv2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), padding=padding, dilation=(1, 2), backend=BE)
    _close(y, ty, dtype, "y")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "sigmoid", "tanh", "scaled_tanh"])
def test_conv2d_fused_activation_matches_torch(kind, dtype):
    x, w, b = _data((2, 3, 6, 6), kind, "x"), _data((4, 3, 3, 3), kind, "w"), _data((4,), kind, "b")
    ty = _torch_activation(TF.conv2d(_t(x), _t(w), _t(b), padding=1), kind)
    y = F.conv2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), padding=1, activation=kind, backend=BE)
    _close(y, ty, dtype, "y")


# ----------------------------------------------------------------------------------------------- pooling
POOL_GRID = [  # kernel, stride, padding, dilation, ceil_mode
    ((2, 2), (2, 2), (0, 0), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), (1, 1), True),
    ((2, 2), (3, 3), (1, 1), (1, 1), True),
    ((3, 2), (1, 2), (1, 0), (1, 1), True),
    ((3, 3), (1, 1), (1, 1), (2, 2), False),
    ((3, 2), (2, 3), (1, 1), (2, 3), True),
    ((4, 4), (3, 3), (2, 2), (1, 1), True),
]
POOL_SHAPES = [(2, 3, 9, 9), (1, 2, 10, 7)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("case", range(len(POOL_GRID)))
def test_max_pool2d_matches_torch(case, shape, dtype):
    kernel, stride, padding, dilation, ceil_mode = POOL_GRID[case]
    x = _data(shape, case, "max")
    tx = _t(x)
    ty, tidx = TF.max_pool2d(tx, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    r = _data(tuple(ty.shape), case, "r")
    (ty * torch.tensor(r)).sum().backward()
    y, idx = F.max_pool2d(x.astype(dtype), kernel, stride, padding, dilation, ceil_mode, backend=BE)
    _close(y, ty, dtype, "y")
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, tidx.numpy())
    _close(F.max_pool2d_backward(r.astype(dtype), idx, x.shape, backend=BE), tx.grad, dtype, "dx")


def test_max_pool2d_ties_and_nan_match_torch():
    """First maximum wins on ties; a NaN wins over numbers (both as PyTorch's CPU kernel)."""
    x = np.zeros((1, 2, 4, 4))
    x[0, 1, 1, 2] = np.nan
    _, tidx = TF.max_pool2d(torch.tensor(x), 3, 1, 1, return_indices=True)
    y, idx = F.max_pool2d(x, 3, 1, 1, backend=BE)
    np.testing.assert_array_equal(idx, tidx.numpy())
    assert np.isnan(y[0, 1, :3, 1:]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("case", [i for i, c in enumerate(POOL_GRID) if c[3] == (1, 1)])
def test_avg_pool2d_matches_torch(case, shape, count_include_pad, dtype):
    kernel, stride, padding, _, ceil_mode = POOL_GRID[case]
    args = (kernel, stride, padding, ceil_mode, count_include_pad)
    x = _data(shape, case, "avg")
    tx = _t(x)
    ty = TF.avg_pool2d(tx, *args)
    r = _data(tuple(ty.shape), case, "r")
    (ty * torch.tensor(r)).sum().backward()
    _close(F.avg_pool2d(x.astype(dtype), *args, backend=BE), ty, dtype, "y")
    _close(F.avg_pool2d_backward(r.astype(dtype), x.shape, *args, backend=BE), tx.grad, dtype, "dx")


def _torch_lp_pool(tx: torch.Tensor, p: float, kernel, stride, padding, ceil_mode) -> torch.Tensor:
    """(window sum of |x|^p)^(1/p) with zero padding. torch's lp_pool2d has no padding and, with ceil_mode,
    scales a clipped window's mean by the full kernel area instead of summing it; avg_pool2d with
    divisor_override = 1 is the exact window sum."""
    s = TF.avg_pool2d(tx.abs() ** p, kernel, stride, padding, ceil_mode, True, divisor_override=1)
    return s ** (1 / p)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("p", [2.0, 3.0, 1.5])
@pytest.mark.parametrize("case", [i for i, c in enumerate(POOL_GRID) if c[3] == (1, 1)])
def test_lp_pool2d_matches_torch(case, p, dtype):
    kernel, stride, padding, _, ceil_mode = POOL_GRID[case]
    args = (kernel, stride, padding, ceil_mode)
    x = _data(POOL_SHAPES[0], case, p, "lp")
    tx = _t(x)
    ty = _torch_lp_pool(tx, p, *args)
    r = _data(tuple(ty.shape), case, "r")
    (ty * torch.tensor(r)).sum().backward()
    xd = x.astype(dtype)
    y = F.lp_pool2d(xd, p, *args, backend=BE)
    _close(y, ty, dtype, "y")
    _close(F.lp_pool2d_backward(r.astype(dtype), xd, y, p, *args, backend=BE), tx.grad, dtype, "dx")


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_lp_pool2d_matches_torch_lp_pool2d(p):
    """Where torch's own lp_pool2d is defined the same way (no padding, no ceil_mode, x >= 0), they agree."""
    x = np.abs(_data((2, 3, 8, 9), p, "lp-torch"))
    ty = TF.lp_pool2d(torch.tensor(x), p, (3, 2), (2, 2))
    assert_close_f64(F.lp_pool2d(x, p, (3, 2), (2, 2), backend=BE), ty.numpy(), "y")


# ----------------------------------------------------------------------------------------------- activations
def _torch_activation(t: torch.Tensor, kind: str, slope: float = 0.01) -> torch.Tensor:
    return {
        "relu": lambda: torch.relu(t),
        "leaky_relu": lambda: TF.leaky_relu(t, slope),
        "sigmoid": lambda: torch.sigmoid(t),
        "tanh": lambda: torch.tanh(t),
        "scaled_tanh": lambda: SCALED_TANH_A * torch.tanh(SCALED_TANH_S * t),
    }[kind]()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kind, slope", [("relu", 0.01), ("leaky_relu", 0.01), ("leaky_relu", 0.3),
                                         ("sigmoid", 0.01), ("tanh", 0.01), ("scaled_tanh", 0.01)])
def test_activation_matches_torch(kind, slope, dtype):
    x = _data((3, 4, 5, 6), kind, slope, scale=4.0)
    x.flat[:3] = (-40.0, 40.0, 0.0)  # saturation and the kink
    tx = _t(x)
    ty = _torch_activation(tx, kind, slope)
    r = _data(tuple(ty.shape), kind, "r")
    (ty * torch.tensor(r)).sum().backward()
    y = F.activation(x.astype(dtype), kind, slope, backend=BE)
    assert y.dtype == dtype
    rtol = 1e-12 if dtype == np.float64 else RTOL_ACT_F32
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=0)
    _close(F.activation_backward(r.astype(dtype), y, kind, slope, backend=BE), tx.grad, dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_matches_torch(log, dtype):
    x = _data((6, 10), log, scale=5.0)
    x[0] += 500.0  # large logits must not overflow
    tx = _t(x)
    ty = TF.log_softmax(tx, dim=1) if log else TF.softmax(tx, dim=1)
    r = _data((6, 10), log, "r")
    (ty * torch.tensor(r)).sum().backward()
    forward, backward = (F.log_softmax, F.log_softmax_backward) if log else (F.softmax, F.softmax_backward)
    y = forward(x.astype(dtype), backend=BE)
    _close(y, ty, dtype, "y")
    _close(backward(r.astype(dtype), y, backend=BE), tx.grad, dtype, "dx")


# ----------------------------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape, momentum, eps", [((4, 3, 5, 6), 0.1, 1e-5), ((2, 5, 3, 3), 0.5, 1e-3),
                                                  ((8, 2, 1, 1), 1.0, 1e-5)])
def test_batch_norm_matches_torch(shape, momentum, eps, training, dtype):
    c = shape[1]
    x = _data(shape, shape, "x", scale=3.0) + 2.0
    gamma, beta = _data((c,), shape, "g"), _data((c,), shape, "b")
    mean0, var0 = _data((c,), shape, "m"), np.abs(_data((c,), shape, "v")) + 0.5
    tx, tg, tb = _t(x), _t(gamma), _t(beta)
    trm, trv = torch.tensor(mean0), torch.tensor(var0)
    ty = TF.batch_norm(tx, trm, trv, tg, tb, training, momentum, eps)
    r = _data(shape, shape, "r")
    (ty * torch.tensor(r)).sum().backward()

    rm, rv = mean0.astype(dtype), var0.astype(dtype)
    y, saved = F.batch_norm(x.astype(dtype), gamma.astype(dtype), beta.astype(dtype), rm, rv, training, momentum,
                            eps, backend=BE)
    _close(y, ty, dtype, "y")
    _close(rm, trm.numpy(), dtype, "running_mean")
    _close(rv, trv.numpy(), dtype, "running_var")
    dx, dgamma, dbeta = F.batch_norm_backward(r.astype(dtype), saved, gamma.astype(dtype), backend=BE)
    _close(dx, tx.grad, dtype, "dx")
    _close(dgamma, tg.grad, dtype, "dgamma")
    _close(dbeta, tb.grad, dtype, "dbeta")


# ----------------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("n, classes", [(1, 2), (7, 10), (32, 100)])
def test_softmax_cross_entropy_matches_torch(n, classes, dtype):
    logits = _data((n, classes), n, classes, scale=3.0)
    labels = np.random.default_rng(n).integers(0, classes, n)
    tl = _t(logits)
    tloss = TF.cross_entropy(tl, torch.tensor(labels))
    tloss.backward()
    loss, dlogits = F.softmax_cross_entropy(logits.astype(dtype), labels, backend=BE)
    assert isinstance(loss, np.ndarray) and loss.shape == ()
    _close(loss, tloss, dtype, "loss")
    _close(dlogits, tl.grad, dtype, "dlogits")
