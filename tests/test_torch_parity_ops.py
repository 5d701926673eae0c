"""NumPy reference backend vs PyTorch (CPU, float64 autograd as the oracle): forward and backward of every op, on
the case grids of tests/op_cases.py.

float64 results must agree to RTOL_F64; float32 results are held to assert_close_f32 against the float64 torch
result (activations: assert_close_act). Inputs are float32 draws that both precisions see exactly (so max pooling
picks the same argmax). NaN and +-inf must come out exactly where PyTorch puts them; this is what makes the NumPy
backend the reference test_ops.py holds every other backend to. Backward passes use a random projection r (the
case's dy): torch differentiates sum(y * r).

Where the contract departs from PyTorch on purpose, the comparison says so: a max-pool window that holds only
padding has argmax -1 and passes no gradient (PyTorch returns an index past the plane, and its backward writes
out of bounds, so it is not run); Lp pooling pads with zeros and sums clipped windows (torch's lp_pool2d does
neither: _torch_lp_pool builds the contract's op from avg_pool2d), and gives 0 gradient for windows with y == 0
and cells with x == 0 (PyTorch: NaN or inf), so the cases with zeros compare the forward only.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from op_cases import (
    ACTIVATION_CASES,
    AVG_POOL_CASES,
    BATCH_NORM_CASES,
    CONV_CASES,
    CROSS_ENTROPY_CASES,
    LP_POOL_CASES,
    MAX_POOL_CASES,
    SOFTMAX_CASES,
    data,
    ids,
)
from tolerances import assert_close_act, assert_close_f32, assert_close_f64

import cnnkit.functional as F
from cnnkit.backend import backend
from cnnkit.backends import SCALED_TANH_A, SCALED_TANH_S

BE = backend("numpy")
DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]
torch.backends.cuda.matmul.allow_tf32 = False  # irrelevant on CPU; TF32 is off whenever PyTorch is the reference
torch.backends.cudnn.allow_tf32 = False


def _t(a: np.ndarray, grad: bool = True) -> torch.Tensor:
    return torch.tensor(np.ascontiguousarray(a), dtype=torch.float64, requires_grad=grad)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _close(actual, reference, dtype, what: str) -> None:
    assert np.asarray(actual).dtype == dtype, f"{what}: dtype {np.asarray(actual).dtype} != {np.dtype(dtype)}"
    reference = _np(reference) if isinstance(reference, torch.Tensor) else reference
    (assert_close_f64 if dtype == np.float64 else assert_close_f32)(actual, reference, what)


def _quiet(case) -> contextlib.AbstractContextManager:
    return np.errstate(all="ignore") if getattr(case, "special", None) else contextlib.nullcontext()


def _torch_activation(t: torch.Tensor, kind: str | None, slope: float = 0.01) -> torch.Tensor:
    return {
        None: lambda: t,
        "relu": lambda: torch.relu(t),
        "leaky_relu": lambda: TF.leaky_relu(t, slope),
        "sigmoid": lambda: torch.sigmoid(t),
        "tanh": lambda: torch.tanh(t),
        "scaled_tanh": lambda: SCALED_TANH_A * torch.tanh(SCALED_TANH_S * t),
    }[kind]()


# ----------------------------------------------------------------------------------------------- conv2d
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")  # torch's perf note
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=ids(CONV_CASES))
def test_conv2d_matches_torch(case, dtype):
    x, w, b, r = case.inputs()
    stride, pads, dilation, groups = case.geometry
    tx, tw = _t(x.ref), _t(w.ref)
    tb = _t(b.ref) if b else None
    if isinstance(case.padding, str):  # torch's own "same" / "valid"
        pre = TF.conv2d(tx, tw, tb, stride, case.padding, dilation, groups)
    else:
        pre = TF.conv2d(TF.pad(tx, (pads[2], pads[3], pads[0], pads[1])), tw, tb, stride, 0, dilation, groups)
    ty = _torch_activation(pre, case.activation)
    (pre * _t(r.ref, grad=False)).sum().backward()  # conv2d_backward takes the pre-activation gradient
    with _quiet(case):
        y = F.conv2d(x.on(BE, dtype), w.on(BE, dtype), b and b.on(BE, dtype), activation=case.activation,
                     backend=BE, **case.kwargs)
        dx, dw, db = F.conv2d_backward(r.on(BE, dtype), x.on(BE, dtype), w.on(BE, dtype), need_db=case.bias,
                                       backend=BE, **case.kwargs)
    _close(y, ty, dtype, "y")
    _close(dx, tx.grad, dtype, "dx")
    _close(dw, tw.grad, dtype, "dw")
    if case.bias:
        _close(db, tb.grad, dtype, "db")
    else:
        assert db is None


# ----------------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=ids(MAX_POOL_CASES))
def test_max_pool2d_matches_torch(case, dtype):
    x, r = case.inputs()
    with _quiet(case):
        y, idx = F.max_pool2d(x.on(BE, dtype), *case.args, backend=BE)
    assert idx.dtype == np.int64
    kernel, stride, padding, dilation, ceil_mode = case.args
    padding_only = (idx < 0).any()  # see the module docstring: forward values only
    tx = _t(x.ref, grad=not padding_only)
    ty, tidx = TF.max_pool2d(tx, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    _close(y, ty, dtype, "y")
    if padding_only:
        assert (idx == -1).all() and np.isneginf(y).all()
        return
    np.testing.assert_array_equal(idx, tidx.numpy())
    (ty * _t(r.ref, grad=False)).sum().backward()
    _close(F.max_pool2d_backward(r.on(BE, dtype), idx, case.x, backend=BE), tx.grad, dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=ids(AVG_POOL_CASES))
def test_avg_pool2d_matches_torch(case, dtype):
    x, r = case.inputs()
    tx = _t(x.ref)
    ty = TF.avg_pool2d(tx, *case.args)
    (ty * _t(r.ref, grad=False)).sum().backward()
    with _quiet(case):
        _close(F.avg_pool2d(x.on(BE, dtype), *case.args, backend=BE), ty, dtype, "y")
    _close(F.avg_pool2d_backward(r.on(BE, dtype), case.x, *case.args, backend=BE), tx.grad, dtype, "dx")


def _torch_lp_pool(tx: torch.Tensor, p: float, kernel, stride, padding, ceil_mode) -> torch.Tensor:
    """(window sum of |x|^p)^(1/p) with zero padding. torch's lp_pool2d has no padding and, with ceil_mode,
    scales a clipped window's mean by the full kernel area instead of summing it; avg_pool2d with
    divisor_override = 1 is the exact window sum."""
    s = TF.avg_pool2d(tx.abs() ** p, kernel, stride, padding, ceil_mode, True, divisor_override=1)
    return s ** (1 / p)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LP_POOL_CASES, ids=ids(LP_POOL_CASES))
def test_lp_pool2d_matches_torch(case, dtype):
    x, r = case.inputs()
    tx = _t(x.ref)
    ty = _torch_lp_pool(tx, case.p, *case.args)
    with _quiet(case):
        xd = x.on(BE, dtype)
        y = F.lp_pool2d(xd, case.p, *case.args, backend=BE)
        dx = F.lp_pool2d_backward(r.on(BE, dtype), xd, y, case.p, *case.args, backend=BE)
    _close(y, ty, dtype, "y")
    if not case.zeros:  # see the module docstring
        (ty * _t(r.ref, grad=False)).sum().backward()
        _close(dx, tx.grad, dtype, "dx")


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_lp_pool2d_matches_torch_lp_pool2d(p):
    """Where torch's own lp_pool2d is defined the same way (no padding, no ceil_mode, x >= 0), they agree."""
    x = np.abs(data((2, 3, 8, 9), p, "lp-torch")).astype(np.float64)
    ty = TF.lp_pool2d(torch.tensor(x), p, (3, 2), (2, 2))
    assert_close_f64(F.lp_pool2d(x, p, (3, 2), (2, 2), backend=BE), ty.numpy(), "y")


# ----------------------------------------------------------------------------------------------- activations
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=ids(ACTIVATION_CASES))
def test_activation_matches_torch(case, dtype):
    x, r = case.inputs()
    tx = _t(x.ref)
    ty = _torch_activation(tx, case.kind, case.slope)
    (ty * _t(r.ref, grad=False)).sum().backward()
    with _quiet(case):
        y = F.activation(x.on(BE, dtype), case.kind, case.slope, backend=BE)
        dx = F.activation_backward(r.on(BE, dtype), y, case.kind, case.slope, backend=BE)
    assert y.dtype == dtype
    assert_close_act(y, _np(ty), dtype, "y")
    _close(dx, tx.grad, dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=ids(SOFTMAX_CASES))
def test_softmax_matches_torch(case, dtype):
    x, r = case.inputs()
    tx = _t(x.ref)
    ty = TF.log_softmax(tx, dim=1) if case.log else TF.softmax(tx, dim=1)
    (ty * _t(r.ref, grad=False)).sum().backward()
    forward, backward = (F.log_softmax, F.log_softmax_backward) if case.log else (F.softmax, F.softmax_backward)
    with _quiet(case):
        y = forward(x.on(BE, dtype), backend=BE)
        dx = backward(r.on(BE, dtype), y, backend=BE)
    _close(y, ty, dtype, "y")
    _close(dx, tx.grad, dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CROSS_ENTROPY_CASES, ids=ids(CROSS_ENTROPY_CASES))
def test_softmax_cross_entropy_matches_torch(case, dtype):
    logits, labels = case.inputs()
    tl = _t(logits.ref)
    tloss = TF.cross_entropy(tl, torch.tensor(labels.astype(np.int64)))
    tloss.backward()
    with _quiet(case):
        loss, dlogits = F.softmax_cross_entropy(logits.on(BE, dtype), labels, backend=BE)
    assert isinstance(loss, np.ndarray) and loss.shape == ()
    _close(loss, tloss, dtype, "loss")
    _close(dlogits, tl.grad, dtype, "dlogits")


# ----------------------------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BATCH_NORM_CASES, ids=ids(BATCH_NORM_CASES))
def test_batch_norm_matches_torch(case, dtype):
    x, gamma, beta, mean0, var0, r = case.inputs()
    tx, tg, tb = _t(x.ref), _t(gamma.ref), _t(beta.ref)
    trm, trv = torch.tensor(mean0.astype(np.float64)), torch.tensor(var0.astype(np.float64))
    ty = TF.batch_norm(tx, trm, trv, tg, tb, case.training, case.momentum, case.eps)
    ty = TF.relu(ty) if case.activation == "relu" else ty
    (ty * _t(r.ref, grad=False)).sum().backward()
    rm, rv = mean0.astype(dtype), var0.astype(dtype)
    with _quiet(case):
        y, saved = F.batch_norm(x.on(BE, dtype), gamma.on(BE, dtype), beta.on(BE, dtype), rm, rv, case.training,
                                case.momentum, case.eps, case.activation, backend=BE)
        dx, dgamma, dbeta = F.batch_norm_backward(r.on(BE, dtype), saved, gamma.on(BE, dtype), backend=BE)
    _close(y, ty, dtype, "y")
    _close(rm, trm.numpy(), dtype, "running_mean")
    _close(rv, trv.numpy(), dtype, "running_var")
    _close(dx, tx.grad, dtype, "dx")
    _close(dgamma, tg.grad, dtype, "dgamma")
    _close(dbeta, tb.grad, dtype, "dbeta")
