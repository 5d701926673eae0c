"""One op suite for every backend: each case of tests/op_cases.py, forward and backward, on every backend against
the NumPy float64 reference, with the tolerances of tests/tolerances.py.

Backends (the ``target`` fixture): numpy float32, numba float32 and float64, cudasim float32 (marker ``cudasim``:
``pytest -m cudasim`` runs exactly that part) and cupy float32 (marker ``gpu``: CI deselects it with
``-m "not gpu"``). An unavailable backend fails, it never skips. Inputs are converted with ``be.asarray`` and
results brought back with ``be.to_numpy``; every result must be the backend's own array, of the input's dtype.
float32 results are held to assert_close_f32 (activations: assert_close_act), float64 ones to assert_close_f64;
NaN and +-inf must sit exactly where the reference puts them (the reference follows PyTorch:
test_torch_parity_ops.py). The activation and softmax backward passes take the reference's forward output rounded
to the backend's dtype (so a wrong forward cannot hide a wrong backward); Lp pooling and batch norm take the
backend's own forward output, as a layer would give them.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from op_cases import (
    ACTIVATION_CASES,
    ADD_CASES,
    ALL_CASES,
    AVG_POOL_CASES,
    BATCH_NORM_CASES,
    CONV_CASES,
    CROSS_ENTROPY_CASES,
    DROPOUT_CASES,
    LARGE_CASES,
    LINEAR_CASES,
    LP_POOL_CASES,
    MAX_CASE_ELEMENTS,
    MAX_POOL_CASES,
    SOFTMAX_CASES,
    backend_under_test,
    by_id,
    elements,
    ids,
)
from tolerances import assert_close_act, assert_close_f32, assert_close_f64

import cnnkit.functional as F
from cnnkit.backends import Backend

REF = "numpy"
BACKENDS = [
    pytest.param(("numpy", "float32"), id="numpy-f32"),
    pytest.param(("numba", "float32"), id="numba-f32"),
    pytest.param(("numba", "float64"), id="numba-f64"),
    pytest.param(("cudasim", "float32"), id="cudasim-f32", marks=pytest.mark.cudasim),
    pytest.param(("cupy", "float32"), id="cupy-f32", marks=pytest.mark.gpu),
]


@dataclass(frozen=True)
class Target:
    """A backend under test and the float dtype it computes in."""

    be: Backend
    dtype: np.dtype

    def put(self, arg) -> Any:
        """A case input (op_cases.Arg) as this backend's array of this dtype, in the case's layout."""
        return None if arg is None else arg.on(self.be, self.dtype)

    def host(self, a: Any, what: str) -> np.ndarray:
        """``a`` back on the host, after checking it is this backend's array of this dtype."""
        assert self.be.is_native(a), f"{what}: {type(a).__module__}.{type(a).__name__} is not a {self.be.name} array"
        assert a.dtype == self.dtype, f"{what}: dtype {a.dtype} != {self.dtype}"
        return np.asarray(self.be.to_numpy(a))

    def check(self, actual: Any, reference: np.ndarray, what: str) -> None:
        """A result against the float64 reference, by the tolerance of this dtype."""
        host = self.host(actual, what)
        (assert_close_f64 if self.dtype == np.float64 else assert_close_f32)(host, reference, what)

    def unchanged(self, a: Any, arg, what: str) -> None:
        """Ops never modify their inputs."""
        np.testing.assert_array_equal(self.be.to_numpy(a), arg.ref.astype(self.dtype), err_msg=f"{what} modified")


@pytest.fixture(params=BACKENDS)
def target(request) -> Target:
    name, dtype = request.param
    return Target(backend_under_test(name), np.dtype(dtype))


def _quiet(case) -> contextlib.AbstractContextManager:
    """NumPy's invalid/overflow warnings off for cases with planted NaN and inf (they are the point there)."""
    return np.errstate(all="ignore") if getattr(case, "special", None) else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------- the grids
def test_case_grids_are_small_and_named():
    """Every case of every grid keeps its arrays under MAX_CASE_ELEMENTS (the cudasim backend runs one thread per
    CUDA thread) except the named large ones; ids are unique within a grid."""
    large = set()
    for op, cases in ALL_CASES.items():
        assert len(set(ids(cases))) == len(cases), op
        large |= {c.id for c in cases if elements(c) > MAX_CASE_ELEMENTS}
    assert large == set(LARGE_CASES)


# ----------------------------------------------------------------------------------------------- convolution
@pytest.mark.parametrize("case", CONV_CASES, ids=ids(CONV_CASES))
def test_conv2d(target, case):
    x, w, b, dy = case.inputs()
    with _quiet(case):
        y_ref = F.conv2d(x.ref, w.ref, b and b.ref, activation=case.activation, backend=REF, **case.kwargs)
        refs = F.conv2d_backward(dy.ref, x.ref, w.ref, need_db=case.bias, backend=REF, **case.kwargs)
        xb, wb = target.put(x), target.put(w)
        y = F.conv2d(xb, wb, target.put(b), activation=case.activation, backend=target.be, **case.kwargs)
        grads = F.conv2d_backward(target.put(dy), xb, wb, need_db=case.bias, backend=target.be, **case.kwargs)
    target.check(y, y_ref, "y")
    for what, got, ref in zip(("dx", "dw", "db"), grads, refs):
        if ref is None:
            assert got is None, f"{what} was not asked for"
        else:
            target.check(got, ref, what)
    target.unchanged(xb, x, "x")
    target.unchanged(wb, w, "w")


@pytest.mark.parametrize("case_id", ["resnet-3x3-relu", "batch1-odd-sizes-tanh", "dilation2-leaky-relu",
                                     "stride2-downsample", "lenet-c1-like-tanh", "channels-s2-wide-rows-relu",
                                     "channels-groups2-dil1x2-tanh"])
def test_conv2d_with_a_residual(target, case_id):
    """act(conv + b + residual), the residual added before the activation (numba: in the shifted path's epilogue
    for the first three cases, the channels path's for the last two, add_forward after the conv on the others);
    the residual is not modified."""
    case = by_id(CONV_CASES, case_id)
    x, w, b, residual = case.inputs()  # dy has the output's shape
    pre = F.conv2d(x.ref, w.ref, b and b.ref, backend=REF, **case.kwargs) + residual.ref
    y_ref = pre if case.activation is None else F.activation(pre, case.activation, backend=REF)
    rb = target.put(residual)
    y = F.conv2d(target.put(x), target.put(w), target.put(b), activation=case.activation, residual=rb,
                 backend=target.be, **case.kwargs)
    target.check(y, y_ref, "y")
    target.unchanged(rb, residual, "residual")


@pytest.mark.parametrize("case_id", ["lenet-c1-like-tanh", "lenet-c3-scaled-tanh", "batch1-odd-sizes-tanh",
                                     "planar-odd-bands-tanh", "dx-im2row-32-filters", "stride2-downsample",
                                     "groups2-asym-pad-dil2x1"])
def test_conv2d_pool(target, case_id):
    """conv2d_pool_forward: the conv (and its activation) and a 2x2 stride-2 average pool of its output in one
    call (numba: in the shifted path's epilogue for the first three cases, the planar path's for the next two,
    the two ops in turn on the others), y only when kept."""
    case = by_id(CONV_CASES, case_id)
    x, w, b, _ = case.inputs()
    y_ref = F.conv2d(x.ref, w.ref, b and b.ref, activation=case.activation, backend=REF, **case.kwargs)
    pooled_ref = F.avg_pool2d(y_ref, 2, backend=REF)
    xb, wb, bb = target.put(x), target.put(w), target.put(b)
    for keep in (True, False):
        y, pooled = F.conv2d_pool(xb, wb, bb, activation=case.activation, keep=keep, backend=target.be, **case.kwargs)
        target.check(pooled, pooled_ref, f"pooled, keep={keep}")
        if keep:
            target.check(y, y_ref, "y")
        else:
            assert y is None
    target.unchanged(xb, x, "x")


def test_conv2d_pool_needs_a_2x2_output():
    x, w = np.zeros((1, 1, 5, 3)), np.zeros((2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"conv output \(1, 2, 3, 1\) is smaller than the 2x2 pool window"):
        F.conv2d_pool(x, w, backend=REF)


@pytest.mark.parametrize("case_id", ["plain", "direct-depthwise-s2", "tiled-tm1-resnet-3x3"])
def test_conv2d_backward_computes_only_what_is_needed(target, case_id):
    """A frozen conv asks for no weight gradient, an input layer for no dx: what is not needed is None, and what
    is computed equals the full backward's result."""
    case = by_id(CONV_CASES, case_id)
    x, w, _, dy = case.inputs()
    xb, wb, dyb = target.put(x), target.put(w), target.put(dy)
    full = [target.host(g, "full") for g in F.conv2d_backward(dyb, xb, wb, backend=target.be, **case.kwargs)]
    for flags in (dict(need_dx=False, need_db=False), dict(need_dw=False), dict(need_dx=False)):
        got = F.conv2d_backward(dyb, xb, wb, backend=target.be, **case.kwargs, **flags)
        for what, g, f, need in zip(("dx", "dw", "db"), got, full, ("need_dx", "need_dw", "need_db")):
            if flags.get(need, True):
                np.testing.assert_array_equal(target.host(g, what), f, err_msg=f"{what} with {flags}")
            else:
                assert g is None, f"{what} computed with {flags}"


# ----------------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=ids(MAX_POOL_CASES))
def test_max_pool2d(target, case):
    x, dy = case.inputs()
    with _quiet(case):
        y_ref, idx_ref = F.max_pool2d(x.ref, *case.args, backend=REF)
        dx_ref = F.max_pool2d_backward(dy.ref, idx_ref, case.x, backend=REF)
        xb = target.put(x)
        y, idx = F.max_pool2d(xb, *case.args, backend=target.be)
        dx = F.max_pool2d_backward(target.put(dy), idx, case.x, backend=target.be)
    target.check(y, y_ref, "y")
    assert target.be.is_native(idx) and idx.dtype == np.int64, f"argmax: {type(idx)} {idx.dtype}"
    np.testing.assert_array_equal(target.be.to_numpy(idx), idx_ref, err_msg="argmax")
    target.check(dx, dx_ref, "dx")
    target.unchanged(xb, x, "x")


@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=ids(AVG_POOL_CASES))
def test_avg_pool2d(target, case):
    x, dy = case.inputs()
    with _quiet(case):
        y_ref = F.avg_pool2d(x.ref, *case.args, backend=REF)
        dx_ref = F.avg_pool2d_backward(dy.ref, case.x, *case.args, backend=REF)
        xb = target.put(x)
        y = F.avg_pool2d(xb, *case.args, backend=target.be)
        dx = F.avg_pool2d_backward(target.put(dy), case.x, *case.args, backend=target.be)
    target.check(y, y_ref, "y")
    target.check(dx, dx_ref, "dx")
    target.unchanged(xb, x, "x")


# The activation-then-average-pool pairs (LeNet's): tiled windows (Numba fuses the 2x2 ones), a general window and
# the NaN/inf cases
THROUGH_CASES = [c for c in AVG_POOL_CASES if c.special or (c.padding == 0 and c.stride == c.kernel)
                 or c.id == "x2x3x9x8-k3-s2-p1-ceil"]


@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "sigmoid", "tanh", "scaled_tanh"])
@pytest.mark.parametrize("case", THROUGH_CASES, ids=ids(THROUGH_CASES))
def test_avg_pool2d_backward_through_activation(target, case, kind):
    """The pool's backward and the preceding activation's in one call equal the two calls: against the float64
    reference, and exactly the backend's own two calls. y is the reference activation of x rounded to the
    backend's dtype (as in test_activation_backward)."""
    x, dy = case.inputs()
    with _quiet(case):
        y = F.activation(x.ref, kind, backend=REF).astype(target.dtype)
        dx_ref = F.activation_backward(F.avg_pool2d_backward(dy.ref, case.x, *case.args, backend=REF),
                                       y.astype(np.float64), kind, backend=REF)
        dyb, yb = target.put(dy), target.be.asarray(y)
        dx = F.avg_pool2d_backward(dyb, case.x, *case.args, activation=kind, y=yb, backend=target.be)
        two_calls = F.activation_backward(F.avg_pool2d_backward(dyb, case.x, *case.args, backend=target.be), yb,
                                          kind, backend=target.be)
    assert_close_act(target.host(dx, "dx"), dx_ref, target.dtype, "dx", gradient=True)
    np.testing.assert_array_equal(target.host(dx, "dx"), target.host(two_calls, "two calls"))


@pytest.mark.parametrize("case", LP_POOL_CASES, ids=ids(LP_POOL_CASES))
def test_lp_pool2d(target, case):
    x, dy = case.inputs()
    with _quiet(case):
        y_ref = F.lp_pool2d(x.ref, case.p, *case.args, backend=REF)
        dx_ref = F.lp_pool2d_backward(dy.ref, x.ref, y_ref, case.p, *case.args, backend=REF)
        xb = target.put(x)
        y = F.lp_pool2d(xb, case.p, *case.args, backend=target.be)
        dx = F.lp_pool2d_backward(target.put(dy), xb, y, case.p, *case.args, backend=target.be)
    target.check(y, y_ref, "y")
    target.check(dx, dx_ref, "dx")
    target.unchanged(xb, x, "x")


# ----------------------------------------------------------------------------------------------- activations
@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=ids(ACTIVATION_CASES))
def test_activation(target, case):
    x, _ = case.inputs()
    with _quiet(case):
        y_ref = F.activation(x.ref, case.kind, case.slope, backend=REF)
        xb = target.put(x)
        y = F.activation(xb, case.kind, case.slope, backend=target.be)
    assert_close_act(target.host(y, "y"), y_ref, target.dtype, "y")
    target.unchanged(xb, x, "x")


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=ids(ACTIVATION_CASES))
def test_activation_backward(target, case):
    """From the reference's output rounded to the backend's dtype (so a wrong forward cannot hide this)."""
    x, dy = case.inputs()
    with _quiet(case):
        y = F.activation(x.ref, case.kind, case.slope, backend=REF).astype(target.dtype)
        dx_ref = F.activation_backward(dy.ref, y.astype(np.float64), case.kind, case.slope, backend=REF)
        dx = F.activation_backward(target.put(dy), target.be.asarray(y), case.kind, case.slope, backend=target.be)
    assert_close_act(target.host(dx, "dx"), dx_ref, target.dtype, "dx", gradient=True)


@pytest.mark.parametrize("case", ADD_CASES, ids=ids(ADD_CASES))
def test_add(target, case):
    """The residual sum with the activation after it, in one pass."""
    a, b = case.inputs()
    with _quiet(case):
        y_ref = F.add(a.ref, b.ref, case.activation, backend=REF)
        ab, bb = target.put(a), target.put(b)
        y = F.add(ab, bb, case.activation, backend=target.be)
    assert_close_act(target.host(y, "y"), y_ref, target.dtype, "y")
    target.unchanged(ab, a, "a")
    target.unchanged(bb, b, "b")


@pytest.mark.parametrize("case", LINEAR_CASES, ids=ids(LINEAR_CASES))
def test_linear(target, case):
    x, w, b, dy = case.inputs()
    with _quiet(case):
        y_ref = F.linear(x.ref, w.ref, None if b is None else b.ref, backend=REF)
        dx_ref, dw_ref, db_ref = F.linear_backward(dy.ref, x.ref, w.ref, need_db=b is not None, backend=REF)
        xb, wb = target.put(x), target.put(w)
        y = F.linear(xb, wb, target.put(b), backend=target.be)
        dx, dw, db = F.linear_backward(target.put(dy), xb, wb, need_db=b is not None, backend=target.be)
        only_dw = F.linear_backward(target.put(dy), xb, wb, need_db=False, need_dx=False, backend=target.be)
    target.check(y, y_ref, "y")
    target.check(dx, dx_ref, "dx")
    target.check(dw, dw_ref, "dw")
    if b is None:
        assert db is None
    else:
        target.check(db, db_ref, "db")
    assert only_dw[0] is None and only_dw[2] is None
    target.check(only_dw[1], dw_ref, "dw alone")
    target.unchanged(xb, x, "x")
    target.unchanged(wb, w, "w")


@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=ids(SOFTMAX_CASES))
def test_softmax(target, case):
    forward, backward = (F.log_softmax, F.log_softmax_backward) if case.log else (F.softmax, F.softmax_backward)
    x, dy = case.inputs()
    with _quiet(case):
        y_ref = forward(x.ref, backend=REF)
        xb = target.put(x)
        y = forward(xb, backend=target.be)
        y_in = y_ref.astype(target.dtype)  # the same y for both backward passes, whatever the forward gave
        dx = backward(target.put(dy), target.be.asarray(y_in), backend=target.be)
        dx_ref = backward(dy.ref, y_in.astype(np.float64), backend=REF)
    target.check(y, y_ref, "y")
    target.check(dx, dx_ref, "dx")
    target.unchanged(xb, x, "x")


@pytest.mark.parametrize("case", CROSS_ENTROPY_CASES, ids=ids(CROSS_ENTROPY_CASES))
def test_softmax_cross_entropy(target, case):
    logits, labels = case.inputs()
    with _quiet(case):
        loss_ref, grad_ref = F.softmax_cross_entropy(logits.ref, labels.astype(np.int64), backend=REF)
        lb = target.put(logits)
        loss, grad = F.softmax_cross_entropy(lb, target.be.asarray(labels), backend=target.be)
    assert loss.shape == (), f"loss has shape {loss.shape}, not a 0-d array"
    target.check(loss, loss_ref, "loss")
    target.check(grad, grad_ref, "dlogits")
    target.unchanged(lb, logits, "logits")


# ----------------------------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("case", BATCH_NORM_CASES, ids=ids(BATCH_NORM_CASES))
def test_batch_norm(target, case):
    x, gamma, beta, mean0, var0, dy = case.inputs()
    stats_ref = [mean0.astype(np.float64), var0.astype(np.float64)]
    stats = [target.be.asarray(mean0, dtype=target.dtype), target.be.asarray(var0, dtype=target.dtype)]
    args = (case.training, case.momentum, case.eps, case.activation)
    with _quiet(case):
        y_ref, saved_ref = F.batch_norm(x.ref, gamma.ref, beta.ref, *stats_ref, *args, backend=REF)
        grads_ref = F.batch_norm_backward(dy.ref, saved_ref, gamma.ref, backend=REF)
        xb, gb = target.put(x), target.put(gamma)
        y, saved = F.batch_norm(xb, gb, target.put(beta), *stats, *args, backend=target.be)
        grads = F.batch_norm_backward(target.put(dy), saved, gb, backend=target.be)
    target.check(y, y_ref, "y")
    for what, got, ref, before in zip(("running_mean", "running_var"), stats, stats_ref, (mean0, var0)):
        target.check(got, ref, what)  # updated in place: the arrays passed in hold the new statistics
        if not case.training:
            np.testing.assert_array_equal(target.host(got, what), before.astype(target.dtype), err_msg=what)
    for what, got, ref in zip(("dx", "dgamma", "dbeta"), grads, grads_ref):
        target.check(got, ref, what)
    target.unchanged(xb, x, "x")


# ----------------------------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("case", DROPOUT_CASES, ids=ids(DROPOUT_CASES))
def test_dropout_mask(target, case):
    """Inverted dropout: values 0 or 1 / (1 - p), the kept fraction within five binomial standard deviations of
    1 - p, the same mask for the same seed and another for another seed."""
    mask = F.dropout_mask(case.shape, case.p, case.seed, target.dtype, case.offset, backend=target.be)
    host = target.host(mask, "mask")
    assert host.shape == case.shape
    keep = np.asarray(1 / (1 - case.p), dtype=target.dtype)
    assert set(np.unique(host).tolist()) <= {0.0, float(keep)}
    n = host.size
    dropped = np.count_nonzero(host == 0) / n
    assert abs(dropped - case.p) <= 5 * math.sqrt(case.p * (1 - case.p) / n), f"dropped {dropped}, p {case.p}"
    again = F.dropout_mask(case.shape, case.p, case.seed, target.dtype, case.offset, backend=target.be)
    np.testing.assert_array_equal(target.host(again, "mask"), host)
    if case.p > 0:
        other = F.dropout_mask(case.shape, case.p, case.seed + 1, target.dtype, case.offset, backend=target.be)
        assert not np.array_equal(target.host(other, "mask"), host), "another seed must give another mask"


@pytest.mark.parametrize("case", DROPOUT_CASES, ids=ids(DROPOUT_CASES))
def test_dropout_mask_at_an_offset_is_a_slice_of_a_bigger_mask(target, case):
    """The mask at ``offset`` is elements offset.. of the seed's mask from 0 (so a data-parallel rank's mask is
    its rows of the mask of the global batch); ``offset`` moves the mask, not only its start."""
    n = math.prod(case.shape)
    big = target.host(F.dropout_mask((case.offset + n,), case.p, case.seed, target.dtype, backend=target.be), "big")
    part = F.dropout_mask(case.shape, case.p, case.seed, target.dtype, case.offset, backend=target.be)
    np.testing.assert_array_equal(target.host(part, "mask"), big[case.offset:].reshape(case.shape))
    if case.p > 0:
        moved = F.dropout_mask(case.shape, case.p, case.seed, target.dtype, case.offset + 1, backend=target.be)
        assert not np.array_equal(target.host(moved, "mask"), target.host(part, "mask"))
