"""Numba backend vs the NumPy reference, op by op, forward and backward.

float64 results must match NumPy float64 to RTOL_F64 (same arithmetic, another order); float32 results are held
to DESIGN.md's float32-vs-float64 rule against NumPy float64 on the same numbers. Every conv case runs each of
the three Numba conv paths it admits (direct, shifted, packed) besides the automatic choice.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import zlib

import numba
import numpy as np
import pytest
from tolerances import RTOL_ACT_F32, assert_close_f32, assert_close_f64

import cnnkit.backends.numba as numba_backend
import cnnkit.functional as F
from cnnkit.backend import backend
from cnnkit.backends import ACTIVATIONS, OPS
from cnnkit.backends.numba import conv as nb_conv
from cnnkit.backends.numba import im2row as nb_im2row

NB, NP = backend("numba"), backend("numpy")
DTYPES = ("float64", "float32")


def _data(shape, *key, dtype="float64", scale: float = 1.0) -> np.ndarray:
    """Normals seeded from ``key``, rounded to float32 first so both dtypes see the same numbers."""
    rng = np.random.default_rng(zlib.crc32(repr((shape, key)).encode()))
    return (scale * rng.standard_normal(shape)).astype(np.float32).astype(dtype)


def _check(actual, reference, dtype, what):
    """``actual`` (numba, ``dtype``) against the NumPy float64 reference."""
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype} != {dtype}"
    (assert_close_f64 if dtype == "float64" else assert_close_f32)(actual, reference, what)


# ----------------------------------------------------------------------------------------------- backend
def test_backend_object_and_op_table():
    assert numba_backend.unavailable_reason() is None
    assert (NB.name, NB.xp, NB.array_type, NB.device) == ("numba", np, np.ndarray, "cpu")
    assert all(callable(getattr(NB.ops, op)) for op in OPS)


def test_importing_the_package_does_not_import_numba():
    code = "import sys, cnnkit.backends.numba as b; assert 'numba' not in sys.modules, 'numba imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("env, expected", [(None, 1), ("2", 2)])
def test_creating_the_backend_limits_blas_to_one_thread_unless_told(env, expected):
    """OpenBLAS's spinning threads would take the cores from numba's pool (see the package docstring)."""
    code = ("import threadpoolctl, numpy; from cnnkit.backend import backend; backend('numba'); "
            "print(min(p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas'))")
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if env is not None:
        environ["OPENBLAS_NUM_THREADS"] = env
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environ)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == expected


_MMAPPED_AFTER_ALLOC = (
    "import ctypes, numpy as np; from cnnkit.backend import backend; backend('numba')\n"
    "class Info(ctypes.Structure): _fields_ = [(f, ctypes.c_size_t) for f in 'arena ordblks smblks hblks hblkhd "
    "usmblks fsmblks uordblks fordblks keepcost'.split()]\n"
    "libc = ctypes.CDLL(None); libc.mallinfo2.restype = Info\n"
    "before = libc.mallinfo2().hblkhd; a = np.ones(1 << 20); print(libc.mallinfo2().hblkhd - before)")


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("env, mapped", [(None, False), ("131072", True)])
def test_creating_the_backend_keeps_freed_memory_unless_told(env, mapped):
    """An 8 MiB array comes from the reusable heap, not fresh mmap pages (see the package docstring), unless
    MALLOC_MMAP_THRESHOLD_ says otherwise."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if env is not None:
        environ["MALLOC_MMAP_THRESHOLD_"] = env
    out = subprocess.run([sys.executable, "-c", _MMAPPED_AFTER_ALLOC], capture_output=True, text=True,
                         timeout=120, env=environ)
    assert out.returncode == 0, out.stderr
    assert (int(out.stdout.strip()) >= 8 << 20) == mapped


def test_warmup_compiles_and_reports_seconds(capsys):
    seconds = numba_backend.warmup(verbose=True)
    assert isinstance(seconds, float) and seconds > 0
    assert "numba warmup" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- convolution
# (x shape, w shape, stride, padding, dilation, groups, activation); the comment names the automatic path.
CONV_CASES = [
    ((2, 1, 12, 12), (6, 1, 5, 5), 1, 0, 1, 1, "tanh"),                     # shifted: LeNet C1-like
    ((2, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1, 1, "scaled_tanh"),             # shifted: LeNet C3
    ((2, 16, 5, 5), (12, 16, 5, 5), 1, 0, 1, 1, None),                      # packed: 1x1 output (LeNet C5)
    ((2, 8, 8, 8), (8, 8, 3, 3), 1, 1, 1, 1, "relu"),                       # shifted: ResNet 3x3
    ((2, 4, 9, 9), (8, 4, 3, 3), 2, 1, 1, 1, None),                         # packed: stride 2 down-sampling
    ((1, 3, 11, 10), (4, 3, 3, 2), (3, 2), (0, 2, 1, 0), 1, 1, "sigmoid"),  # packed: stride 3, asymmetric pad
    ((2, 3, 11, 11), (4, 3, 3, 3), 1, 2, 2, 1, "leaky_relu"),               # shifted: dilation 2
    ((2, 4, 7, 8), (8, 2, 3, 3), 1, (1, 0, 2, 1), (2, 1), 2, None),         # shifted: groups 2, asymmetric
    ((2, 6, 7, 7), (6, 1, 3, 3), 1, 1, 1, 6, "relu"),                       # direct: depthwise
    ((1, 3, 6, 6), (6, 1, 3, 3), 2, 1, 1, 3, None),                         # direct: channel multiplier 2
    ((2, 8, 5, 5), (16, 8, 1, 1), 1, 0, 1, 1, None),                        # shifted: 1x1 conv
    ((1, 5, 7, 9), (4, 5, 2, 3), 1, (1, 0, 0, 2), 1, 1, "tanh"),            # shifted: batch 1, odd sizes
    ((1, 2, 5, 5), (4, 2, 2, 2), 1, 3, 1, 1, None),                         # shifted; dx packed: pad > kernel
    ((2, 32, 6, 5), (8, 32, 3, 3), 1, 1, 1, 1, "relu"),                     # im2row: 288 weights per output
    ((2, 64, 5, 7), (8, 32, 3, 3), 1, (1, 1, 2, 2), (1, 2), 2, "tanh"),     # im2row: groups, width dilated
    ((2, 8, 9, 9), (8, 8, 3, 3), 2, 1, 1, 1, None),                         # im2row: strided, 72 per output
    ((1, 4, 4, 4), (32, 4, 3, 3), 1, 1, 1, 1, None),                        # shifted; dx im2row (8x8-like)
]
CONV_IDS = [f"x{c[0]}-w{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}-{c[6]}" for c in CONV_CASES]


def _conv_args(case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups, act = case
    x, w = _data(x_shape, "x", dtype=dtype), _data(w_shape, "w", dtype=dtype, scale=0.3)
    b = _data((w_shape[0],), "b", dtype=dtype)
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups), act


def _conv_reference(case):
    """NumPy float64 (y, dy, dx, dw, db) of ``case``."""
    x, w, b, geo, act = _conv_args(case, "float64")
    y = F.conv2d(x, w, b, activation=act, backend=NP, **geo)
    dy = _data(y.shape, "dy")
    return (y, dy) + F.conv2d_backward(dy, x, w, backend=NP, **geo)


def _paths(case):
    return [p for p in nb_conv.PATHS if not (p == "shifted" and F.pair(case[2], "stride") != (1, 1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_every_path_matches_numpy(case, dtype):
    y_ref, dy, dx_ref, dw_ref, db_ref = _conv_reference(case)
    x, w, b, geo, act = _conv_args(case, dtype)
    dy = dy.astype(dtype)
    _check(F.conv2d(x, w, b, activation=act, backend=NB, **geo), y_ref, dtype, "y auto")
    for what, got in zip(("dx", "dw", "db"), F.conv2d_backward(dy, x, w, backend=NB, **geo)):
        _check(got, {"dx": dx_ref, "dw": dw_ref, "db": db_ref}[what], dtype, f"{what} auto")
    stride, dilation = F.pair(geo["stride"], "stride"), F.pair(geo["dilation"], "dilation")
    pads = F.conv_padding(geo["padding"], w.shape[2:], dilation, stride)
    normal = (stride, pads, dilation, geo["groups"])
    for path in _paths(case):
        _check(nb_conv.conv2d_forward(x, w, b, *normal, activation=act, path=path), y_ref, dtype, f"y {path}")
        dx, dw, db = nb_conv.conv2d_backward(dy, x, w, *normal, path=path)
        _check(dx, dx_ref, dtype, f"dx {path}")
        _check(dw, dw_ref, dtype, f"dw {path}")
        _check(db, db_ref, dtype, f"db {path}")


def test_conv_automatic_paths_are_the_documented_ones():
    """The rule of the conv.py docstring, on the shapes it names."""
    def route(case):
        x_shape, w_shape, stride, padding, dilation, groups, _ = case
        stride, dilation = F.pair(stride, "stride"), F.pair(dilation, "dilation")
        return nb_conv.plan(x_shape, w_shape, stride, F.conv_padding(padding, w_shape[2:], dilation, stride),
                            dilation, groups)
    expected = ["shifted", "shifted", "packed", "shifted", "packed", "packed", "shifted", "shifted", "direct",
                "direct", "shifted", "shifted", "shifted", "im2row", "im2row", "im2row", "shifted"]
    assert [route(case)[0] for case in CONV_CASES] == expected
    assert [route(case)[2] for case in CONV_CASES[-4:]] == ["shifted", "packed", "im2row", "im2row"]
    assert route(CONV_CASES[15])[1] == "im2row"  # strided: the weight gradient gathers rows too
    assert route(CONV_CASES[3])[2] == "shifted"  # 3x3 on 8x8 planes, but only 72 weights per input
    assert route(CONV_CASES[12])[2] == "packed" and route(CONV_CASES[2])[2] == "packed"
    assert route(CONV_CASES[0])[1] == "shifted" and route(CONV_CASES[1])[1] == "shifted"  # Kg = 6 and 16
    assert route(CONV_CASES[4])[1] == "packed"
    with pytest.raises(ValueError, match="stride 1"):
        nb_conv.plan((1, 1, 5, 5), (4, 1, 3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 1, path="shifted")
    with pytest.raises(ValueError, match="path"):
        nb_conv.plan((1, 1, 5, 5), (4, 1, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, path="blas")
    # im2row's dx: the flipped correlation where it fits (stride 1, pad within reach), else scattered rows
    assert nb_im2row.data_grad_fits((1, 1), (1, 1, 1, 1), (1, 1), (4, 2, 3, 3))
    assert not nb_im2row.data_grad_fits((1, 1), (3, 3, 3, 3), (1, 1), (4, 2, 2, 2))
    assert not nb_im2row.data_grad_fits((2, 1), (1, 1, 1, 1), (1, 1), (4, 2, 3, 3))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_conv_fused_activations(act):
    """Every activation fused into the epilogue of each path equals conv followed by the activation."""
    x, w, b = _data((2, 4, 6, 7), "fx"), _data((8, 4, 3, 3), "fw", scale=0.3), _data((8,), "fb")
    reference = NP.activation_forward(F.conv2d(x, w, b, padding=1, backend=NP), act)
    for path in nb_conv.PATHS:
        got = nb_conv.conv2d_forward(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1, activation=act, path=path)
        assert_close_f64(got, reference, f"{act} {path}")


def test_conv_non_contiguous_inputs_and_optional_outputs():
    base = _data((2, 6, 14, 9), "nc")
    x = base[:, ::2, ::2, :]                           # strided view
    w = np.transpose(_data((3, 3, 3, 8), "ncw"), (3, 2, 0, 1))  # (8, 3, 3, 3) view, not C-contiguous
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    y = F.conv2d(x, w, None, padding=1, backend=NB)
    assert_close_f64(y, F.conv2d(np.ascontiguousarray(x), np.ascontiguousarray(w), None, padding=1, backend=NP))
    dy = _data(y.shape, "ncdy")[..., ::-1]              # negative strides
    dx, dw, db = F.conv2d_backward(dy, x, w, padding=1, need_dx=False, need_bias=False, backend=NB)
    assert dx is None and db is None
    assert_close_f64(dw, F.conv2d_backward(np.ascontiguousarray(dy), np.ascontiguousarray(x),
                                           np.ascontiguousarray(w), padding=1, backend=NP)[1])
    assert x.base is not None and np.array_equal(x, base[:, ::2, ::2, :])  # input untouched


@pytest.mark.parametrize("path", nb_conv.PATHS)
def test_conv_backward_without_dw(path):
    """A frozen conv asks for no weight gradient: dw is None and dx, db are unchanged, on every path."""
    x, w, dy = _data((2, 4, 6, 6), "fzx"), _data((8, 4, 3, 3), "fzw", scale=0.3), _data((2, 8, 6, 6), "fzdy")
    geometry = ((1, 1), (1, 1, 1, 1), (1, 1), 1)
    dx, dw, db = nb_conv.conv2d_backward(dy, x, w, *geometry, need_dw=False, path=path)
    ref = F.conv2d_backward(dy, x, w, padding=1, backend=NP)
    assert dw is None
    assert_close_f64(dx, ref[0], f"dx {path}")
    assert_close_f64(db, ref[2], f"db {path}")
    xd, wd = _data((3, 4, 5, 5), "fzdx"), _data((6, 4, 5, 5), "fzdw")  # the dense (C5) shortcut
    dyd = _data((3, 6, 1, 1), "fzddy")
    dx, dw, _ = nb_conv.conv2d_backward(dyd, xd, wd, (1, 1), (0, 0, 0, 0), (1, 1), 1, need_dw=False)
    assert dw is None
    assert_close_f64(dx, F.conv2d_backward(dyd, xd, wd, backend=NP)[0])


def test_dense_conv_backward_without_dx():
    """A conv whose one output pixel sees the whole input (LeNet-5's C5) takes the matmul shortcut, dx or not."""
    x, w, dy = _data((3, 4, 5, 5), "dx"), _data((6, 4, 5, 5), "dw"), _data((3, 6, 1, 1), "dy")
    dx, dw, db = nb_conv.conv2d_backward(dy, x, w, (1, 1), (0, 0, 0, 0), (1, 1), 1, need_dx=False, need_db=False)
    assert dx is None and db is None
    assert_close_f64(dw, F.conv2d_backward(dy, x, w, backend=NP)[1])


@pytest.mark.parametrize("path, stride", [(p, s) for p in nb_conv.PATHS for s in (1, 2) if p != "shifted" or s == 1])
def test_results_do_not_depend_on_the_thread_count(path, stride):
    x, w = _data((4, 8, 10, 10), "th"), _data((16, 8, 3, 3), "thw")
    geometry = ((stride, stride), (1, 1, 1, 1), (1, 1), 1)
    dy = _data((4, 16, 10 // stride, 10 // stride), "thdy")
    before = numba.get_num_threads()
    outs = []
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            outs.append((nb_conv.conv2d_forward(x, w, None, *geometry, path=path),)
                        + nb_conv.conv2d_backward(dy, x, w, *geometry, path=path))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------- pooling
# (x shape, kernel, stride, padding, dilation, ceil_mode)
POOL_CASES = [
    ((2, 3, 8, 8), 2, 2, 0, 1, False),
    ((2, 2, 9, 7), 3, 2, 1, 1, True),
    ((1, 3, 7, 8), (3, 2), (1, 2), (1, 0), (2, 1), False),
    ((2, 2, 8, 7), 3, 3, 0, 1, True),
    ((1, 1, 5, 6), (2, 3), 1, (1, 1), 1, False),
    ((1, 2, 7, 9), 2, 2, 0, 1, False),     # tiled 2x2 windows (avg's fast path) with a row and a column left over
    ((2, 1, 9, 7), (3, 2), (3, 2), 0, 1, False),  # tiled, general kernel, a column left over
]
POOL_IDS = [f"x{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-ceil{c[5]}" for c in POOL_CASES]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_max_pool(case, dtype):
    shape, kernel, stride, padding, dilation, ceil = case
    x64 = np.round(_data(shape, "mp") * 2) / 2       # ties, so "first maximum" matters
    y_ref, idx_ref = F.max_pool2d(x64, kernel, stride, padding, dilation, ceil, backend=NP)
    y, idx = F.max_pool2d(x64.astype(dtype), kernel, stride, padding, dilation, ceil, backend=NB)
    _check(y, y_ref, dtype, "y")
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, idx_ref)
    dy = _data(y.shape, "mpdy")
    _check(F.max_pool2d_backward(dy.astype(dtype), idx, shape, backend=NB),
           F.max_pool2d_backward(dy, idx_ref, shape, backend=NP), dtype, "dx")


def test_max_pool_nan_wins_and_empty_window():
    x = np.array([[[[1.0, np.nan, 3.0, 2.0]]]])
    y, idx = F.max_pool2d(x, (1, 2), (1, 2), backend=NB)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0].tolist() == [1, 2]
    # a window whose dilated taps all fall in the padding: -inf, index -1, and no gradient anywhere
    y, idx = F.max_pool2d(np.ones((1, 1, 1, 3)), (2, 1), 1, (1, 0), (2, 1), backend=NB)
    y_ref, idx_ref = F.max_pool2d(np.ones((1, 1, 1, 3)), (2, 1), 1, (1, 0), (2, 1), backend=NP)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    assert (idx == -1).all()
    np.testing.assert_array_equal(F.max_pool2d_backward(np.ones_like(y), idx, (1, 1, 1, 3), backend=NB), 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_avg_pool(case, include_pad, dtype):
    shape, kernel, stride, padding, _, ceil = case
    x = _data(shape, "ap")
    args = (kernel, stride, padding, ceil, include_pad)
    y_ref = F.avg_pool2d(x, *args, backend=NP)
    _check(F.avg_pool2d(x.astype(dtype), *args, backend=NB), y_ref, dtype, "y")
    dy = _data(y_ref.shape, "apdy")
    _check(F.avg_pool2d_backward(dy.astype(dtype), shape, *args, backend=NB),
           F.avg_pool2d_backward(dy, shape, *args, backend=NP), dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_lp_pool(case, p, dtype):
    shape, kernel, stride, padding, _, ceil = case
    x = _data(shape, "lp")
    x[..., :2, :2] = 0                                  # zero cells and (for some windows) y == 0
    args = (kernel, stride, padding, ceil)
    y_ref = F.lp_pool2d(x, p, *args, backend=NP)
    y = F.lp_pool2d(x.astype(dtype), p, *args, backend=NB)
    _check(y, y_ref, dtype, "y")
    dy = _data(y_ref.shape, "lpdy")
    _check(F.lp_pool2d_backward(dy.astype(dtype), x.astype(dtype), y, p, *args, backend=NB),
           F.lp_pool2d_backward(dy, x, y_ref, p, *args, backend=NP), dtype, "dx")


# ----------------------------------------------------------------------------------------------- activations
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activations(kind, dtype):
    x, dy = _data((3, 4, 5, 6), "act", scale=3.0), _data((3, 4, 5, 6), "actdy")
    x[0, 0, 0, :3] = [0.0, 40.0, -40.0]
    y_ref = F.activation(x, kind, 0.2, backend=NP)
    dx_ref = F.activation_backward(dy, y_ref, kind, 0.2, backend=NP)
    y = F.activation(x.astype(dtype), kind, 0.2, backend=NB)
    dx = F.activation_backward(dy.astype(dtype), y, kind, 0.2, backend=NB)
    if dtype == "float64":
        assert_close_f64(y, y_ref, "y")
        assert_close_f64(dx, dx_ref, "dx")
    else:  # the gradient from the float32 y, against the float64 formula on that same y
        assert y.dtype == dx.dtype == np.float32
        np.testing.assert_allclose(y, y_ref, rtol=RTOL_ACT_F32, atol=0)
        np.testing.assert_allclose(dx, F.activation_backward(dy, y.astype(np.float64), kind, 0.2, backend=NP),
                                   rtol=RTOL_ACT_F32, atol=RTOL_ACT_F32 * float(np.abs(dx_ref).max()))


@pytest.mark.parametrize("kind", ["tanh", "scaled_tanh"])
def test_float32_tanh_dense_grid(kind):
    """The float32-arithmetic tanh against float64 tanh of the same float32 inputs: a dense grid over the
    reduction's every k, tiny |x| (down to where the result is still a float32 normal: a subnormal has no 1e-6
    relative precision), and |x| around the saturation cap (2|x| = 20)."""
    x = np.concatenate([np.linspace(-30, 30, 2_000_001), np.geomspace(1e-37, 1e-2, 200_001),
                        -np.geomspace(1e-37, 1e-2, 20_001), np.linspace(8.0, 16.0, 200_001), [0.0, np.inf, -np.inf]])
    x = x.astype(np.float32)
    y = F.activation(x, kind, backend=NB)
    y_ref = F.activation(x.astype(np.float64), kind, backend=NP)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, y_ref, rtol=RTOL_ACT_F32, atol=0)
    assert (np.signbit(y) == np.signbit(x)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_family_and_cross_entropy(dtype):
    x, dy = _data((7, 10), "sm", scale=4.0), _data((7, 10), "smdy")
    x[0] = [1000.0] * 5 + [-1000.0] * 5                 # needs the max subtracted
    labels = np.array([0, 9, 3, 3, 5, 1, 7])
    for name in ("softmax", "log_softmax"):
        y_ref = getattr(F, name)(x, backend=NP)
        y = getattr(F, name)(x.astype(dtype), backend=NB)
        _check(y, y_ref, dtype, name)
        _check(getattr(F, f"{name}_backward")(dy.astype(dtype), y_ref.astype(dtype), backend=NB),
               getattr(F, f"{name}_backward")(dy, y_ref, backend=NP), dtype, f"{name} backward")
    loss_ref, grad_ref = F.softmax_cross_entropy(x, labels, backend=NP)
    loss, grad = F.softmax_cross_entropy(x.astype(dtype), labels.astype(np.int32), backend=NB)
    assert loss.shape == () and loss.dtype == np.dtype(dtype)
    _check(loss, loss_ref, dtype, "loss")
    _check(grad, grad_ref, dtype, "dlogits")


# ----------------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(training, dtype):
    x = _data((4, 3, 5, 6), "bn", scale=2.0) + 1.5
    gamma, beta = _data((3,), "g") + 1, _data((3,), "b")
    stats = _data((3,), "rm"), np.abs(_data((3,), "rv")) + 0.5
    ref_stats = [s.copy() for s in stats]
    y_ref, saved_ref = F.batch_norm(x, gamma, beta, *ref_stats, training, 0.1, 1e-5, backend=NP)
    nb_stats = [s.astype(dtype) for s in stats]
    cast = [a.astype(dtype) for a in (x, gamma, beta)]
    y, saved = F.batch_norm(*cast, *nb_stats, training, 0.1, 1e-5, backend=NB)
    _check(y, y_ref, dtype, "y")
    for got, ref in zip(nb_stats, ref_stats):
        _check(got, ref, dtype, "running statistics")
    if not training:
        np.testing.assert_array_equal(nb_stats[0], stats[0].astype(dtype))
    dy = _data(x.shape, "bndy")
    refs = F.batch_norm_backward(dy, saved_ref, gamma, backend=NP)
    for what, got, ref in zip(("dx", "dgamma", "dbeta"), F.batch_norm_backward(dy.astype(dtype), saved, cast[1],
                                                                              backend=NB), refs):
        _check(got, ref, dtype, what)


def test_dropout_mask_is_the_numpy_one():
    for dtype in DTYPES:
        np.testing.assert_array_equal(F.dropout_mask((3, 4, 5), 0.3, 7, dtype, backend=NB),
                                      F.dropout_mask((3, 4, 5), 0.3, 7, dtype, backend=NP))
