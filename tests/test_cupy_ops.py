"""CuPy backend (raw CUDA kernels, float32) vs the NumPy float64 reference, op by op, forward and backward.

Every test needs a real CUDA device: the module is marked ``gpu`` (CI deselects it with ``-m "not gpu"``) and its
fixture fails, rather than skips, when cupy is missing or sees no device, so a GPU run (bench/gpu_check.sh) cannot
pass vacuously. Inputs are float32 draws; the reference sees the same numbers in float64.
"""
from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from tolerances import RTOL_ACT_F32, assert_close_f32

import cnnkit.functional as F
from cnnkit.backend import backend as get_backend_by_name
from cnnkit.backends import ACTIVATIONS
from cnnkit.backends.cupy import conv as cupy_conv
from cnnkit.backends.cupy import unavailable_reason

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def cp():
    """The cupy module, after checking that a device is visible; a failure, never a skip. With
    CNNKIT_CUPY_NO_POOL=1 (bench/gpu_check.sh's sanitizer runs) CuPy's memory pool is off, so every array is its
    own allocation and compute-sanitizer sees accesses past its end."""
    try:
        import cupy
    except ImportError as exc:
        pytest.fail(f"GPU tests need cupy, which cannot be imported: {exc}")
    reason = unavailable_reason()
    if reason is not None:
        pytest.fail(f"GPU tests need a CUDA device: {reason}")
    if os.environ.get("CNNKIT_CUPY_NO_POOL") == "1":
        cupy.cuda.set_allocator(None)
    return cupy


@pytest.fixture(scope="module")
def be(cp):
    return get_backend_by_name("cupy")


def _data(shape, *key, scale: float = 1.0) -> np.ndarray:
    """float32 normals seeded from ``key`` (the reference casts them to float64 exactly)."""
    rng = np.random.default_rng(zlib.crc32(repr((shape, key)).encode()))
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _both(cp, *arrays):
    """(device float32 copies, host float64 copies) of host float32 arrays."""
    return [cp.asarray(a) for a in arrays], [a.astype(np.float64) for a in arrays]


def _check(cp, actual, reference, what):
    assert isinstance(actual, cp.ndarray), f"{what}: {type(actual)} is not a device array"
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    assert_close_f32(cp.asnumpy(actual), reference, what)


# ----------------------------------------------------------------------------------------------- convolution
# (x shape, w shape, stride, padding, dilation, groups); the comment says which path and tile each one takes.
CONV_CASES = [
    ((2, 1, 12, 12), (6, 1, 5, 5), 1, 0, 1, 1),                    # direct: LeNet C1-like
    ((2, 3, 11, 10), (4, 3, 3, 3), (2, 3), (1, 2, 0, 3), 2, 1),     # direct: stride 2-3, asymmetric pad, dil 2
    ((2, 6, 9, 9), (6, 1, 3, 3), 2, 1, 1, 6),                      # direct: depthwise
    ((1, 4, 8, 7), (6, 2, 3, 3), 1, (2, 2, 1, 1), (2, 1), 2),      # direct: groups 2, batch 1
    ((1, 5, 7, 9), (8, 5, 1, 1), 2, 0, 1, 1),                      # direct: 1x1 stride 2, odd sizes
    ((2, 16, 8, 8), (16, 16, 3, 3), 1, 1, 1, 1),                   # tiled TM=1: ResNet 3x3
    ((2, 16, 9, 9), (32, 16, 3, 3), 2, 1, 1, 1),                   # tiled TM=1: stride 2 down-sampling
    ((1, 8, 6, 6), (64, 8, 3, 3), 1, (0, 1, 2, 0), 1, 1),          # tiled: forward TM=4, dgrad TM=1
    ((1, 64, 5, 5), (64, 64, 1, 1), 1, 0, 1, 1),                   # tiled: TM=4 everywhere, batch 1
    ((2, 8, 7, 7), (32, 4, 3, 3), (1, 2), (0, 2, 1, 3), 2, 2),     # tiled: groups, dil 2, asymmetric pad
    ((3, 16, 16, 16), (16, 16, 3, 3), 1, 1, 1, 1),                 # tiled: split-K weight gradient
    ((2, 6, 7, 5), (16, 6, 5, 5), 1, 2, 1, 1),                     # tiled: LeNet C3-like, odd sizes
]
CONV_IDS = [f"x{c[0]}-w{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}" for c in CONV_CASES]


def _conv_geometry(case):
    x_shape, w_shape, stride, padding, dilation, groups = case
    stride, dilation = F.pair(stride, "stride"), F.pair(dilation, "dilation")
    return stride, F.conv_padding(padding, w_shape[2:], dilation, stride), dilation, groups


def test_conv_grid_covers_both_paths_and_tiles():
    """The case grid exercises the direct path, both tile heights and a split weight gradient."""
    paths = {cupy_conv.conv_path(c[0], c[1], c[5]) for c in CONV_CASES}
    assert paths == {"direct", "tiled"}
    tiled = [c for c in CONV_CASES if cupy_conv.conv_path(c[0], c[1], c[5]) == "tiled"]
    assert {cupy_conv._tm(c[1][0] // c[5]) for c in tiled} == {1, 4}
    assert {cupy_conv._tm(c[0][1] // c[5]) for c in tiled} == {1, 4}
    splits = []
    for c in tiled:
        stride, pads, dilation, groups = _conv_geometry(c)
        n, _, oh, ow = F.conv2d_output_shape(c[0], c[1], stride, pads, dilation, groups)
        kg, crs = c[1][0] // groups, c[1][1] * c[1][2] * c[1][3]
        tm = cupy_conv._tm(kg)
        tiles = -(-crs // cupy_conv.TILE_N) * -(-kg // (16 * tm)) * groups
        splits.append(cupy_conv.weight_splits(n * oh * ow, tiles)[0])
    assert max(splits) > 1 and min(splits) == 1


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_forward_backward(cp, case):
    x_shape, w_shape, stride, padding, dilation, groups = case
    (x, w, b), (x64, w64, b64) = _both(cp, _data(x_shape, "x"), _data(w_shape, "w", scale=0.3),
                                       _data(w_shape[:1], "b"))
    y = F.conv2d(x, w, b, stride, padding, dilation, groups, backend="cupy")
    y64 = F.conv2d(x64, w64, b64, stride, padding, dilation, groups, backend="numpy")
    _check(cp, y, y64, "y")
    (dy,), (dy64,) = _both(cp, _data(y64.shape, "dy"))
    dx, dw, db = F.conv2d_backward(dy, x, w, stride, padding, dilation, groups, backend="cupy")
    dx64, dw64, db64 = F.conv2d_backward(dy64, x64, w64, stride, padding, dilation, groups, backend="numpy")
    _check(cp, dx, dx64, "dx")
    _check(cp, dw, dw64, "dw")
    _check(cp, db, db64, "db")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("case", [CONV_CASES[1], CONV_CASES[6], CONV_CASES[7]], ids=["direct", "tiled", "tm4"])
def test_conv2d_fused_activation(cp, case, activation):
    x_shape, w_shape, stride, padding, dilation, groups = case
    (x, w, b), (x64, w64, b64) = _both(cp, _data(x_shape, "x"), _data(w_shape, "w", scale=0.3),
                                       _data(w_shape[:1], "b"))
    y = F.conv2d(x, w, b, stride, padding, dilation, groups, activation=activation, backend="cupy")
    y64 = F.conv2d(x64, w64, b64, stride, padding, dilation, groups, activation=activation, backend="numpy")
    _check(cp, y, y64, activation)


def test_conv2d_no_bias_and_need_flags(cp):
    x_shape, w_shape, stride, padding, dilation, groups = CONV_CASES[5]
    (x, w), (x64, w64) = _both(cp, _data(x_shape, "x"), _data(w_shape, "w", scale=0.3))
    y = F.conv2d(x, w, None, stride, padding, backend="cupy")
    y64 = F.conv2d(x64, w64, None, stride, padding, backend="numpy")
    _check(cp, y, y64, "y without bias")
    dx, dw, db = F.conv2d_backward(cp.asarray(np.ones(y.shape, np.float32)), x, w, stride, padding,
                                   need_dx=False, need_bias=False, backend="cupy")
    assert dx is None and db is None and dw.shape == w.shape
    dx, dw, db = F.conv2d_backward(cp.asarray(np.ones(y.shape, np.float32)), x, w, stride, padding,
                                   need_weight=False, backend="cupy")
    assert dw is None and dx.shape == x.shape and db.shape == (w.shape[0],)


@pytest.mark.parametrize("case", [CONV_CASES[2], CONV_CASES[3], CONV_CASES[9], CONV_CASES[10]],
                         ids=["depthwise", "groups", "tiled-groups", "split"])
def test_conv_paths_agree(cp, monkeypatch, case):
    """Both paths run the same reduction in the same order, so forward and dx agree to the bit; dw sums in a
    different order (block tree vs split chunks) and agrees to float32 tolerance."""
    x_shape, w_shape, stride, padding, dilation, groups = case
    (x, w, b, dy), _ = _both(cp, _data(x_shape, "x"), _data(w_shape, "w", scale=0.3), _data(w_shape[:1], "b"),
                             _data(F.conv2d_output_shape(x_shape, w_shape, *_conv_geometry(case)), "dy"))
    results = {}
    for path in ("direct", "tiled"):
        monkeypatch.setattr(cupy_conv, "conv_path", lambda *_, p=path: p)
        y = F.conv2d(x, w, b, stride, padding, dilation, groups, activation="tanh", backend="cupy")
        results[path] = (y, *F.conv2d_backward(dy, x, w, stride, padding, dilation, groups, backend="cupy"))
    (y_d, dx_d, dw_d, db_d), (y_t, dx_t, dw_t, db_t) = results["direct"], results["tiled"]
    assert bool(cp.array_equal(y_d, y_t)), "forward differs between paths"
    assert bool(cp.array_equal(dx_d, dx_t)), "dx differs between paths"
    assert bool(cp.array_equal(db_d, db_t))
    assert_close_f32(cp.asnumpy(dw_t), cp.asnumpy(dw_d).astype(np.float64), "dw tiled vs direct")


def test_conv2d_non_contiguous_input(cp):
    x_shape, w_shape, stride, padding, dilation, groups = CONV_CASES[1]
    big = _data((x_shape[0], x_shape[1], x_shape[3], x_shape[2]), "x")
    (xt, w), (xt64, w64) = _both(cp, big, _data(w_shape, "w"))
    x, x64 = xt.transpose(0, 1, 3, 2), xt64.transpose(0, 1, 3, 2)
    assert not x.flags.c_contiguous
    _check(cp, F.conv2d(x, w, None, stride, padding, dilation, groups, backend="cupy"),
           F.conv2d(x64, w64, None, stride, padding, dilation, groups, backend="numpy"), "y")


def test_float64_is_refused_naming_the_argument(cp, be):
    x, w = cp.asarray(_data((1, 2, 5, 5), "x")), cp.asarray(_data((3, 2, 3, 3), "w"))
    with pytest.raises(TypeError, match=r"\bw\b.*float64"):
        be.conv2d_forward(x, w.astype(cp.float64), None, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    with pytest.raises(TypeError, match=r"\bx\b.*float64"):
        be.avg_pool2d_forward(x.astype(cp.float64), (2, 2), (2, 2), (0, 0), False, True)
    with pytest.raises(TypeError, match="dtype"):
        be.dropout_mask((3,), 0.5, 1, np.dtype(np.float64))


# ----------------------------------------------------------------------------------------------- pooling
POOL_SHAPES = [(2, 3, 9, 8), (1, 2, 7, 5)]
# (kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = [(3, 2, 1, 1, False), (3, 2, 1, 1, True), (2, 2, 0, 1, False), (3, 3, 1, 2, True),
             ((3, 2), (2, 1), (1, 0), (2, 1), True), (4, 3, 2, 1, True), (2, 1, 1, 1, False)]


@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("case", MAX_CASES, ids=[str(c) for c in MAX_CASES])
def test_max_pool(cp, shape, case):
    kernel, stride, padding, dilation, ceil_mode = case
    (x,), (x64,) = _both(cp, _data(shape, "x"))
    y, idx = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, backend="cupy")
    y64, idx64 = F.max_pool2d(x64, kernel, stride, padding, dilation, ceil_mode, backend="numpy")
    _check(cp, y, y64, "y")
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(cp.asnumpy(idx), idx64)
    (dy,), (dy64,) = _both(cp, _data(y64.shape, "dy"))
    _check(cp, F.max_pool2d_backward(dy, idx, x.shape, backend="cupy"),
           F.max_pool2d_backward(dy64, idx64, x64.shape, backend="numpy"), "dx")


def test_max_pool_ties_pick_the_first_maximum(cp):
    """Small integers make many ties: argmax must name the first maximum, exactly as the reference."""
    host = np.random.default_rng(3).integers(-2, 3, size=(2, 2, 8, 8)).astype(np.float32)
    y, idx = F.max_pool2d(cp.asarray(host), 3, 1, 1, backend="cupy")
    y64, idx64 = F.max_pool2d(host.astype(np.float64), 3, 1, 1, backend="numpy")
    np.testing.assert_array_equal(cp.asnumpy(idx), idx64)
    np.testing.assert_array_equal(cp.asnumpy(y), y64)


# (kernel, stride, padding, ceil_mode, count_include_pad)
AVG_CASES = [(3, 2, 1, False, True), (3, 2, 1, True, True), (3, 2, 1, True, False), (2, 2, 0, False, True),
             ((3, 2), (2, 3), (1, 1), True, False), (4, 3, 2, True, True), (5, 1, 2, False, False)]


@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("case", AVG_CASES, ids=[str(c) for c in AVG_CASES])
def test_avg_pool(cp, shape, case):
    kernel, stride, padding, ceil_mode, include = case
    (x,), (x64,) = _both(cp, _data(shape, "x"))
    y = F.avg_pool2d(x, kernel, stride, padding, ceil_mode, include, backend="cupy")
    y64 = F.avg_pool2d(x64, kernel, stride, padding, ceil_mode, include, backend="numpy")
    _check(cp, y, y64, "y")
    (dy,), (dy64,) = _both(cp, _data(y64.shape, "dy"))
    _check(cp, F.avg_pool2d_backward(dy, x.shape, kernel, stride, padding, ceil_mode, include, backend="cupy"),
           F.avg_pool2d_backward(dy64, x64.shape, kernel, stride, padding, ceil_mode, include, backend="numpy"),
           "dx")


# (p, kernel, stride, padding, ceil_mode)
LP_CASES = [(2.0, 2, 2, 0, False), (2.0, 3, 2, 1, True), (1.0, 3, 1, 1, False), (3.5, (3, 2), (2, 1), (1, 0), True),
            (0.7, 2, 2, 1, False)]


@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("case", LP_CASES, ids=[str(c) for c in LP_CASES])
def test_lp_pool(cp, shape, case):
    p, kernel, stride, padding, ceil_mode = case
    (x,), (x64,) = _both(cp, _data(shape, "x"))
    y = F.lp_pool2d(x, p, kernel, stride, padding, ceil_mode, backend="cupy")
    y64 = F.lp_pool2d(x64, p, kernel, stride, padding, ceil_mode, backend="numpy")
    _check(cp, y, y64, "y")
    (dy,), (dy64,) = _both(cp, _data(y64.shape, "dy"))
    _check(cp, F.lp_pool2d_backward(dy, x, y, p, kernel, stride, padding, ceil_mode, backend="cupy"),
           F.lp_pool2d_backward(dy64, x64, y64, p, kernel, stride, padding, ceil_mode, backend="numpy"), "dx")


# ----------------------------------------------------------------------------------------------- activations
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation(cp, kind):
    (x, dy), (x64, dy64) = _both(cp, _data((3, 4, 7, 5), "x", scale=3.0), _data((3, 4, 7, 5), "dy"))
    y = F.activation(x, kind, 0.02, backend="cupy")
    y64 = F.activation(x64, kind, 0.02, backend="numpy")
    assert isinstance(y, cp.ndarray) and y.dtype == np.float32
    np.testing.assert_allclose(cp.asnumpy(y), y64, rtol=RTOL_ACT_F32, atol=0, err_msg=kind)
    # the backward is checked at the float32 forward output, which is what a layer keeps
    y32_64 = cp.asnumpy(y).astype(np.float64)
    _check(cp, F.activation_backward(dy, y, kind, 0.02, backend="cupy"),
           F.activation_backward(dy64, y32_64, kind, 0.02, backend="numpy"), kind)


@pytest.mark.parametrize("shape", [(5, 10), (3, 1000), (1, 1), (300, 7)])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax(cp, shape, log):
    fwd, bwd = (F.log_softmax, F.log_softmax_backward) if log else (F.softmax, F.softmax_backward)
    (x, dy), (x64, dy64) = _both(cp, _data(shape, "x", scale=4.0), _data(shape, "dy"))
    y, y64 = fwd(x, backend="cupy"), fwd(x64, backend="numpy")
    _check(cp, y, y64, "y")
    _check(cp, bwd(dy, y, backend="cupy"), bwd(dy64, cp.asnumpy(y).astype(np.float64), backend="numpy"), "dx")


# ----------------------------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (2, 5, 3, 7), (8, 2, 40, 40)], ids=["small", "odd", "split"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm(cp, shape, training):
    c = shape[1]
    host = [_data(shape, "x", scale=2.0) + 0.5, 1 + 0.1 * _data((c,), "g"), _data((c,), "b"),
            _data((c,), "rm"), 1 + np.abs(_data((c,), "rv"))]
    (x, g, b, rm, rv), (x64, g64, b64, rm64, rv64) = _both(cp, *host)
    views, rm_before = (rm[:], rv[:]), host[3].copy()  # an in-place update shows through earlier views
    y, saved = F.batch_norm(x, g, b, rm, rv, training, 0.1, 1e-5, backend="cupy")
    y64, saved64 = F.batch_norm(x64, g64, b64, rm64, rv64, training, 0.1, 1e-5, backend="numpy")
    _check(cp, y, y64, "y")
    assert bool(cp.array_equal(views[0], rm)) and bool(cp.array_equal(views[1], rv))
    _check(cp, rm, rm64, "running_mean")
    _check(cp, rv, rv64, "running_var")
    if training:
        assert not np.allclose(cp.asnumpy(rm), rm_before), "running_mean did not move"
    else:
        np.testing.assert_array_equal(cp.asnumpy(rm), rm_before)
    (dy,), (dy64,) = _both(cp, _data(shape, "dy"))
    dx, dg, db = F.batch_norm_backward(dy, saved, g, backend="cupy")
    dx64, dg64, db64 = F.batch_norm_backward(dy64, saved64, g64, backend="numpy")
    _check(cp, dx, dx64, "dx")
    _check(cp, dg, dg64, "dgamma")
    _check(cp, db, db64, "dbeta")


# ----------------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("shape", [(7, 10), (300, 10), (4, 1000)])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
def test_softmax_cross_entropy(cp, shape, label_dtype):
    labels_host = np.random.default_rng(shape[0]).integers(0, shape[1], size=shape[0]).astype(label_dtype)
    (logits,), (logits64,) = _both(cp, _data(shape, "z", scale=3.0))
    loss, dlogits = F.softmax_cross_entropy(logits, cp.asarray(labels_host), backend="cupy")
    loss64, dlogits64 = F.softmax_cross_entropy(logits64, labels_host, backend="numpy")
    assert isinstance(loss, cp.ndarray) and loss.shape == () and loss.dtype == np.float32, "loss stays on device"
    _check(cp, loss, loss64, "loss")
    _check(cp, dlogits, dlogits64, "dlogits")


def test_cross_entropy_bad_label_gives_nan_not_a_sync(cp):
    loss, _ = F.softmax_cross_entropy(cp.asarray(_data((3, 4), "z")), cp.asarray(np.array([0, 4, 1])),
                                      backend="cupy")
    assert np.isnan(float(cp.asnumpy(loss)))


# ----------------------------------------------------------------------------------------------- dropout
def _hash_mask(shape, p, seed):
    """norm.cu's counter-based hash, re-done on the host with numpy uint64 arithmetic (wrapping)."""
    i = np.arange(1, int(np.prod(shape)) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed % 2 ** 64) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    keep = (z >> np.uint64(40)) >= np.uint64(int(np.ceil(p * 2 ** 24)))
    return np.where(keep, np.float32(1 / (1 - p)), np.float32(0)).reshape(shape)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.9])
def test_dropout_mask(cp, p):
    shape = (4, 8, 16, 16)
    mask = F.dropout_mask(shape, p, 1234, backend="cupy")
    assert isinstance(mask, cp.ndarray) and mask.shape == shape and mask.dtype == np.float32
    host = cp.asnumpy(mask)
    np.testing.assert_array_equal(host, _hash_mask(shape, p, 1234))
    np.testing.assert_array_equal(host, cp.asnumpy(F.dropout_mask(shape, p, 1234, backend="cupy")))
    kept = float((host > 0).mean())
    assert abs(kept - (1 - p)) < 0.02, f"kept fraction {kept} for p={p}"
    assert set(np.unique(host)) <= {np.float32(0), np.float32(1 / (1 - p))}
    if p > 0:
        other = cp.asnumpy(F.dropout_mask(shape, p, 1235, backend="cupy"))
        assert not np.array_equal(host, other), "a different seed must give a different mask"
