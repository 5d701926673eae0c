"""What is Numba-specific: the backend object, its process settings (BLAS threads, malloc), warmup, and the conv
paths (each forced on the cases of tests/op_cases.py, the documented automatic choice, thread-count
independence), the float32 tanh and the shared dropout mask.

tests/test_ops.py runs every op case on numba float32 and float64 against the NumPy float64 reference; the same
tolerances hold here: float64 to RTOL_F64, float32 by the float32-vs-float64 rule of tests/tolerances.py
(assert_close_f32).
"""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys

import numba
import numpy as np
import pytest
from op_cases import CONV_CASES, DROPOUT_CASES, by_id, data, ids
from tolerances import RTOL_ACT_F32, assert_close_f32, assert_close_f64

import cnnkit.backends.numba as numba_backend
import cnnkit.functional as F
from cnnkit.backend import backend
from cnnkit.backends import ACTIVATIONS, OPS, SCALED_TANH_A
from cnnkit.backends.numba import activation as nb_activation
from cnnkit.backends.numba import conv as nb_conv
from cnnkit.backends.numba import loss as nb_loss
from cnnkit.backends.numba import reduce as nb_reduce
from cnnkit.backends.numba.activation import CODES, act_run, act_run_inline
from cnnkit.backends.numba.conv import _loops as nb_loops

NB, NP = backend("numba"), backend("numpy")
DTYPES = ("float64", "float32")


def _data(shape, *key, scale: float = 1.0) -> np.ndarray:
    """op_cases.data in float64 (the same numbers as its float32 draw)."""
    return data(shape, *key, scale=scale).astype(np.float64)


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
# The automatic (forward, weight-gradient, data-gradient) paths of the Numba-specific cases of tests/op_cases.py,
# as conv/plan.py's docstring states the rule.
AUTOMATIC_PATHS = {
    "lenet-c1-like-tanh": ("lanes", "lanes", "shifted"),               # Kg = 6; 12x12 planes, 8x8 outputs
    "lenet-c3-scaled-tanh": ("planar", "planar", "shifted"),           # Kg = 16; 14x14 planes, 10x10 outputs
    "lenet-c5-1x1-output": ("packed", "packed", "packed"),             # the plain matmul (one output pixel)
    "resnet-3x3-relu": ("shifted", "shifted", "shifted"),              # 3x3 on 8x8: 9x9 grid planes (1.27x)
    "stride2-downsample": ("packed", "packed", "packed"),
    "stride3x2-asym-pad-sigmoid": ("packed", "direct", "packed"),      # strided, Kg < 8
    "dilation2-leaky-relu": ("shifted", "shifted", "shifted"),         # 13x13 grid planes, 11x11 outputs
    "groups2-asym-pad-dil2x1": ("lanes", "lanes", "shifted"),
    "depthwise-relu": ("direct", "direct", "direct"),                  # Kg = 1
    "depthwise-multiplier2-s2": ("direct", "direct", "direct"),
    "kernel-1x1": ("shifted", "shifted", "shifted"),
    "batch1-odd-sizes-tanh": ("shifted", "shifted", "shifted"),
    "pad-beyond-kernel": ("shifted", "shifted", "packed"),             # dx: padding past the kernel's reach
    "im2row-288-per-output-relu": ("im2row", "channels", "winograd"),  # 288 weights per output; dx: 16 in, 32 out
    "im2row-groups-dil1x2-tanh": ("im2row", "im2row", "shifted"),      # 6x9 grid planes, 5x7 outputs
    "im2row-strided": ("im2row", "im2row", "im2row"),                  # strided: the weight gradient gathers too
    "dx-im2row-32-filters": ("planar", "planar", "im2row"),            # 8x8-like planes: dx gathers rows
    "planar-odd-bands-tanh": ("planar", "planar", "shifted"),          # 300 outputs: two bands of 15 rows
    "channels-s2-wide-rows-relu": ("channels", "planar", "im2row"),    # Cg >= 16, Kg = 32: any stride; dw: Cg 17
    "channels-groups2-dil1x2-tanh": ("channels", "planar", "im2row"),  # dw: Cg = 16
    "winograd-odd-sizes-relu": ("winograd", "planar", "im2row"),       # 3x3, stride 1: where channels would run
}
# Every conv path (forced) runs these: the cases above and those with non-finite values (whose NaN and inf must
# land where PyTorch puts them on every path).
PATH_CASES = [c for c in CONV_CASES if c.id in AUTOMATIC_PATHS or c.special is not None]


def _paths(case):
    return [p for p in nb_conv.PATHS if p not in nb_conv.STRIDE_ONE_PATHS or case.geometry[0] == (1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PATH_CASES, ids=ids(PATH_CASES))
def test_conv_every_path_matches_numpy(case, dtype):
    """tests/test_ops.py runs the automatic path; here each path is forced."""
    x, w, b, dy = case.inputs()

    def quiet():  # NumPy's invalid-value warnings off where NaN and inf are planted
        return np.errstate(all="ignore") if case.special else contextlib.nullcontext()

    with quiet():
        y_ref = F.conv2d(x.ref, w.ref, b and b.ref, activation=case.activation, backend=NP, **case.kwargs)
        refs = F.conv2d_backward(dy.ref, x.ref, w.ref, backend=NP, **case.kwargs)
    xd, wd, dyd = x.on(NB, dtype), w.on(NB, dtype), dy.on(NB, dtype)
    bd = b.on(NB, dtype) if b else None
    for path in _paths(case):
        with quiet():
            y = nb_conv.conv2d_forward(xd, wd, bd, *case.geometry, activation=case.activation, path=path)
            grads = nb_conv.conv2d_backward(dyd, xd, wd, *case.geometry, path=path)
        _check(y, y_ref, dtype, f"y {path}")
        for what, got, ref in zip(("dx", "dw", "db"), grads, refs):
            _check(got, ref, dtype, f"{what} {path}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", [
    ((2, 16, 40, 36), (32, 16, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((1, 32, 50, 45), (64, 16, 3, 2), (2, 1), (2, 0, 1, 2), (2, 2), 2),
])
def test_channels_path_in_bands_of_output_rows(x_shape, w_shape, stride, padding, dilation, groups, dtype):
    """Planes with more outputs than one channels task (POSITIONS) or weight-gradient window (WEIGHT_POSITIONS)
    holds run in bands of output rows, the last band shorter."""
    from cnnkit.backends.numba.conv import channels

    x, w, b = _data(x_shape, "bands-x"), _data(w_shape, "bands-w", scale=0.2), _data(w_shape[:1], "bands-b")
    geometry = (stride, padding, dilation, groups)
    y_ref = F.conv2d(x, w, b, *geometry, activation="relu", backend=NP)
    assert y_ref.shape[2] * y_ref.shape[3] > max(channels.POSITIONS, channels.WEIGHT_POSITIONS)
    dy = _data(y_ref.shape, "bands-dy")
    refs = F.conv2d_backward(dy, x, w, *geometry, backend=NP)
    xd, wd = x.astype(dtype), w.astype(dtype)
    _check(nb_conv.conv2d_forward(xd, wd, b.astype(dtype), *geometry, activation="relu", path="channels"), y_ref,
           dtype, "y")
    assert nb_conv.plan(x_shape, w_shape, *geometry, path="channels")[1] == "channels"
    for what, got, ref in zip(("dx", "dw", "db"), nb_conv.conv2d_backward(dy.astype(dtype), xd, wd, *geometry,
                                                                          path="channels"), refs):
        _check(got, ref, dtype, what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, padding, groups", [
    ((2, 16, 34, 33), (32, 16, 3, 3), (2, 1, 0, 2), 1),  # 35 x 33 outputs: bands of 6 rows, the last of 5
    ((1, 8, 9, 4), (12, 4, 3, 3), (0, 2, 1, 1), 2),      # odd output rows and columns: partial tiles
])
def test_winograd_path_in_bands_and_partial_tiles(x_shape, w_shape, padding, groups, dtype):
    """The winograd passes over planes of more tiles than one task holds (TILES), in bands, and with an output
    row or column left over in the last tiles."""
    from cnnkit.backends.numba.conv import winograd

    x, w, b = _data(x_shape, "wg-x"), _data(w_shape, "wg-w", scale=0.2), _data(w_shape[:1], "wg-b")
    geometry = ((1, 1), padding, (1, 1), groups)
    y_ref = F.conv2d(x, w, b, *geometry, activation="relu", backend=NP)
    dy = _data(y_ref.shape, "wg-dy")
    dx_ref, dw_ref, _ = F.conv2d_backward(dy, x, w, *geometry, backend=NP)
    assert nb_conv.plan(x_shape, w_shape, *geometry, path="winograd") == ("winograd",) * 3
    xd, wd = x.astype(dtype), w.astype(dtype)
    _check(nb_conv.conv2d_forward(xd, wd, b.astype(dtype), *geometry, activation="relu", path="winograd"), y_ref,
           dtype, "y")
    dx, dw, _ = nb_conv.conv2d_backward(dy.astype(dtype), xd, wd, *geometry, path="winograd")
    _check(dx, dx_ref, dtype, "dx")
    _check(dw, dw_ref, dtype, "dw")
    assert winograd.band_rows(y_ref.shape[2:]) < y_ref.shape[2] or x_shape[2] < 30


@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_recomputes_what_its_transforms_cannot_take(dtype):
    """Inputs whose transforms would overflow (x * 4 past the dtype's range), and non-finite weights, are computed
    on the channels path instead: the same bits as that path, finite where the direct conv is; the weight
    gradient likewise for such an input or output gradient."""
    big = np.finfo(dtype).max / 3
    x = _data((2, 32, 6, 6), "wo-x").astype(dtype)
    x[1, 3, 2, 2] = big
    w = (_data((32, 32, 3, 3), "wo-w", scale=0.01) / 32).astype(dtype)
    geometry = ((1, 1), (1, 1, 1, 1), (1, 1), 1)
    y = nb_conv.conv2d_forward(x, w, None, *geometry, path="winograd")
    np.testing.assert_array_equal(y, nb_conv.conv2d_forward(x, w, None, *geometry, path="channels"))
    assert np.isfinite(y).all()
    dy = (_data(y.shape, "wo-dy") * 1e-30).astype(dtype)
    dw = nb_conv.conv2d_backward(dy, x, w, *geometry, path="winograd")[1]
    np.testing.assert_array_equal(dw, nb_conv.conv2d_backward(dy, x, w, *geometry, path="channels")[1])
    assert np.isfinite(dw).all()
    w[3, 5, 1, 1] = np.inf
    np.testing.assert_array_equal(nb_conv.conv2d_forward(x, w, None, *geometry, path="winograd"),
                                  nb_conv.conv2d_forward(x, w, None, *geometry, path="channels"))


def test_conv_automatic_paths_are_the_documented_ones():
    """The rule of the conv/plan.py docstring, on the shapes it names."""
    assert {c.id: nb_conv.plan(c.x, c.w, *c.geometry) for c in CONV_CASES if c.id in AUTOMATIC_PATHS} == \
        AUTOMATIC_PATHS
    resnet20 = {(16, 32, 1): ("shifted", "planar", "shifted"),  # (K, OH, s)
                (32, 16, 1): ("winograd", "channels", "winograd"), (64, 8, 1): ("winograd",) * 3,
                (32, 16, 2): ("channels", "planar", "im2row"),
                (64, 8, 2): ("channels", "channels", "im2row")}
    for (k, size, s), paths in resnet20.items():
        c, h = (k // s, size * s)
        assert nb_conv.plan((128, c, h, h), (k, c, 3, 3), (s, s), (1, 1, 1, 1), (1, 1), 1) == paths, (k, size, s)
    with pytest.raises(ValueError, match="stride 1"):
        nb_conv.plan((1, 1, 5, 5), (4, 1, 3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 1, path="shifted")
    with pytest.raises(ValueError, match="path"):
        nb_conv.plan((1, 1, 5, 5), (4, 1, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, path="blas")
    # im2row's and channels' dx: the flipped correlation where it fits (stride 1, pad within reach)
    assert nb_loops.flip_fits((1, 1), (1, 1, 1, 1), (1, 1), (4, 2, 3, 3))
    assert not nb_loops.flip_fits((1, 1), (3, 3, 3, 3), (1, 1), (4, 2, 2, 2))
    assert not nb_loops.flip_fits((2, 1), (1, 1, 1, 1), (1, 1), (4, 2, 3, 3))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_conv_fused_activations_on_every_path(act):
    """Every activation fused into the epilogue of each path equals conv followed by the activation."""
    case = by_id(CONV_CASES, f"fused-{act}-every-numba-path")
    x, w, b, _ = case.inputs()
    reference = NP.activation_forward(F.conv2d(x.ref, w.ref, b.ref, backend=NP, **case.kwargs), act)
    for path in nb_conv.PATHS:
        got = nb_conv.conv2d_forward(x.ref, w.ref, b.ref, *case.geometry, activation=act, path=path)
        assert_close_f64(got, reference, f"{act} {path}")


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


@pytest.mark.parametrize("path, stride", [(p, s) for p in nb_conv.PATHS for s in (1, 2)
                                          if p not in nb_conv.STRIDE_ONE_PATHS or s == 1])
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



@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_block(dtype):
    """vectors.transpose_block (the channels path's layout changes): an L x L block between rows of different
    strides and offsets, nothing else written."""
    from numba import njit

    from cnnkit.backends.numba.vectors import VECTOR_BYTES, transpose_block

    lane = VECTOR_BYTES // np.dtype(dtype).itemsize

    @njit
    def run(dst, src):
        transpose_block(dst, 3, lane + 5, src, 2, lane + 1)

    src = np.arange(2 + lane * (lane + 1), dtype=dtype)
    dst = np.zeros(3 + lane * (lane + 5), dtype=dtype)
    run(dst, src)
    rows = dst[3:].reshape(lane, lane + 5)
    np.testing.assert_array_equal(rows[:, :lane], src[2:].reshape(lane, lane + 1)[:, :lane].T)
    assert not dst[:3].any() and not rows[:, lane:].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count, total", [(0, 0), (0, 5), (3, 3), (7, 16), (28, 32), (33, 40), (40, 40)])
def test_copy_padded(dtype, count, total):
    """vectors.copy_padded (the shifted path's grid rows): count elements then zeros up to total, masked at both
    ends: nothing read past count, nothing written past total."""
    from numba import njit

    from cnnkit.backends.numba.vectors import copy_padded

    @njit
    def run(dst, src):
        copy_padded(dst, 2, src, 1, count, total)

    src = np.arange(1.0, 2 + count, dtype=dtype)  # src[1:1 + count] is all there is after the offset
    dst = np.full(total + 9, -1.0, dtype=dtype)
    run(dst, src)
    np.testing.assert_array_equal(dst[2:2 + count], src[1:1 + count])
    assert not dst[2 + count:2 + total].any() and (dst[:2] == -1).all() and (dst[2 + total:] == -1).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [0, 1, 5, 14, 16, 17, 40])
def test_pool_pairs(dtype, count):
    """vectors.pool_pairs (the pooled conv epilogues): the 2x2 means of two rows of a given width, as
    ((a0 + a1) + b0) + b1 over 4, nothing written past count."""
    from numba import njit

    from cnnkit.backends.numba.vectors import pool_pairs

    width = 2 * count + 3  # an odd row: its last element is in no window
    rng = np.random.default_rng(count)
    src = rng.standard_normal(4 + 2 * width).astype(dtype)

    @njit
    def run(dst, src):
        pool_pairs(dst, 1, src, 4, width, count)

    dst = np.full(count + 4, 7.0, dtype=dtype)
    run(dst, src)
    a, b = src[4:4 + width], src[4 + width:4 + 2 * width]
    ref = (((a[0:2 * count:2] + a[1:2 * count:2]) + b[0:2 * count:2]) + b[1:2 * count:2]) / 4
    np.testing.assert_array_equal(dst[1:1 + count], ref)
    assert dst[0] == 7 and (dst[1 + count:] == 7).all()


@pytest.mark.parametrize("count", [0, 1, 5, 14, 16, 17, 40])
def test_tanh32_pool_pairs(count):
    """vectors.tanh32_pool_pairs (the shifted path's pooled inference epilogue): bitwise tanh32_vectors then
    pool_pairs, a * tanh(s * (x + bias)) pooled, nothing written past count; float64 arrays are left to the
    caller (0 returned, nothing written)."""
    from numba import njit

    from cnnkit.backends.numba.vectors import pool_pairs, tanh32_pool_pairs, tanh32_vectors

    width = 2 * count + 3
    src = (3 * np.random.default_rng(count).standard_normal(4 + 2 * width)).astype(np.float32)
    bias, a, s = np.float32(0.25), np.float32(1.7159), np.float32(2 / 3)

    @njit
    def fused(dst, src):
        return tanh32_pool_pairs(dst, 1, src, 4, width, count, bias, a, s)

    @njit
    def in_turn(dst, src):
        done = np.empty_like(src)
        tanh32_vectors(done, 0, src, 0, src.size, bias, a, s)
        pool_pairs(dst, 1, done, 4, width, count)

    dst, ref = np.full(count + 4, 7, np.float32), np.full(count + 4, 7, np.float32)
    assert fused(dst, src) == count
    in_turn(ref, src)
    np.testing.assert_array_equal(dst, ref)
    assert dst[0] == 7 and (dst[1 + count:] == 7).all()
    dst64 = np.full(count + 4, 7.0)
    assert fused(dst64, src.astype(np.float64)) == 0 and (dst64 == 7).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [0, 5, 16, 37, 100])
def test_dot_tile(dtype, count):
    """simd.dot_tile (the weight gradients' blocks): rows x cols long dot products added to c, the last vector
    masked."""
    from cnnkit.backends.numba.conv import simd

    rows, cols = simd.DOT_TILE
    rng = np.random.default_rng(count + 1)
    a, b = rng.standard_normal((rows + 1, count + 7)), rng.standard_normal((cols + 2, count + 9))
    astart = np.array([(i + 1) * a.shape[1] + i % 3 for i in range(rows)], dtype=np.int64)
    bstart = np.array([(j % (cols + 2)) * b.shape[1] + j for j in range(cols)], dtype=np.int64)
    c = rng.standard_normal((rows + 2, cols + 3))
    ref = c.copy()
    for i in range(rows):
        for j in range(cols):
            ref[1 + i, 2 + j] += a.reshape(-1)[astart[i]:astart[i] + count] @ b.reshape(-1)[bstart[j]:bstart[j] + count]
    got = c.astype(dtype)
    numba.njit(lambda c, a, astart, b, bstart: simd.dot_tile(c, 1, 2, a, astart, b, bstart, count))(
        got, a.astype(dtype), astart, b.astype(dtype), bstart)
    _check(got, ref, dtype, "dot_tile")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, kd, t", [(8, 1, 48), (16, 37, 64), (13, 20, 70), (7, 9, 40), (24, 5, 31), (9, 3, 100),
                                     (6, 25, 131), (4, 2, 16), (12, 300, 97),
                                     (14, 11, 50)])
def test_gemm_register_tiles_and_edges(m, kd, t, dtype):
    """The matmul every path shares: the register tiles of simd.py (full, short, narrow) plus the block loops on
    the rows and columns left over, with shifted operand rows and a nonzero c, against the formula in float64."""
    from cnnkit.backends.numba.conv import _loops, simd

    rng = np.random.default_rng(m * 1000 + kd * 10 + t)
    a, b = rng.standard_normal((m + 3, kd + 5)), rng.standard_normal((kd + 2, t + 9))
    arow, aoff = rng.permutation(m + 3)[:m].astype(np.int64), rng.integers(0, 6, m).astype(np.int64)
    brow, boff = rng.integers(0, kd + 2, kd).astype(np.int64), rng.integers(0, 10, kd).astype(np.int64)
    c = rng.standard_normal((m, t))
    ref = c + np.array([[sum(a[arow[i], aoff[i] + q] * b[brow[q], boff[q] + j] for q in range(kd))
                         for j in range(t)] for i in range(m)])
    got = c.astype(dtype)
    _loops.gemm(a.astype(dtype), arow, aoff, b.astype(dtype), brow, boff, got, m, kd, t)
    _check(got, ref, dtype, "gemm")
    assert numba.njit(lambda a, b, c: simd.tile_fits(a, b, c))(a.astype(dtype), b.astype(dtype), got)
    if m >= simd.SHORT and t >= simd.VECTOR_BYTES // np.dtype(dtype).itemsize:  # tiles ran: same as the blocks
        blocks = c.astype(dtype)
        _loops.gemm_blocks(a.astype(dtype), arow, aoff, b.astype(dtype), brow, boff, blocks, 0, m, kd, 0, t)
        _check(got, blocks.astype(np.float64), dtype, "gemm vs blocks")

# ----------------------------------------------------------------------------------------------- activations
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
    bound = SCALED_TANH_A if kind == "scaled_tanh" else 1.0
    assert np.abs(y).max() <= np.float32(bound), "tanh past its bound"  # (a rational can overshoot near its cap)


@pytest.mark.parametrize("kind", ["tanh", "scaled_tanh"])
def test_float32_tanh_runs_of_every_length(kind):
    """Runs of 0 to 40 elements (whole vectors, then one masked vector; the conv epilogues' rows are such runs):
    every element as in a long run, bit for bit, and nothing written past the run."""
    x = np.random.default_rng(5).uniform(-4, 4, 4096).astype(np.float32)
    long = F.activation(x, kind, backend=NB)
    for n in range(41):
        np.testing.assert_array_equal(F.activation(x[:n], kind, backend=NB), long[:n], err_msg=f"n={n}")
    src, dst = np.zeros(64, np.float32), np.full(64, 7.0, np.float32)
    src[5:22] = x[:17]
    numba.njit(lambda d, s_, code: act_run(d, 3, s_, 5, 17, np.float32(0), code, 0.0))(dst, src, CODES[kind])
    np.testing.assert_array_equal(dst[3:20], long[:17])
    assert (dst[:3] == 7).all() and (dst[20:] == 7).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_inlined_epilogue_runs_are_exact(dtype):
    """act_run_inline (one select loop for ReLU and no activation, inlined in the shifted conv's epilogue) writes
    the exact sum for no activation and ReLU and act_run's bits for the others, for every run length, NaN and
    infinities included, and nothing outside the run."""
    rng = np.random.default_rng(13)
    src = (rng.standard_normal(64) * 4).astype(dtype)
    src[5:11] = (np.nan, np.inf, -np.inf, 0.0, -0.0, -1e-30)
    dtype = np.dtype(dtype).type
    bias = dtype(0.25)

    @numba.njit
    def both(inline, plain, code, n):
        act_run_inline(inline, 3, src, 5, n, bias, code, 0.1)
        act_run(plain, 3, src, 5, n, bias, code, 0.1)

    summed = src + bias
    exact = {None: summed, "relu": np.where(summed < 0, dtype(0), summed)}  # NaN passes the ReLU, as PyTorch's
    for kind in (None, *ACTIVATIONS):
        for n in range(41):
            inline, plain = np.full(64, 7.0, dtype), np.full(64, 7.0, dtype)
            both(inline, plain, CODES[kind], n)
            want = exact[kind][5:5 + n] if kind in exact else plain[3:3 + n]
            np.testing.assert_array_equal(inline[3:3 + n].view(f"u{inline.itemsize}"), want.view(f"u{want.itemsize}"),
                                          err_msg=f"{kind}, n={n}")
            assert (inline[:3] == 7).all() and (inline[3 + n:] == 7).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_add_is_the_sum_then_the_activation_bit_for_bit(dtype):
    """add_forward (ReLU in one loop over both inputs, other kinds through a block buffer) gives the bits of the
    sum followed by activation_forward: signed zeros (relu(-0 + -0) is +0, as the NumPy reference), NaN and
    infinities included, over several parallel blocks and a partial one."""
    ops = backend("numba").ops
    rng = np.random.default_rng(17)
    a, b = (rng.standard_normal((2, 3 * 4096 + 77)) * 3).astype(dtype)
    a[:8] = (np.nan, np.inf, -np.inf, -0.0, -0.0, 0.0, 1.0, np.inf)
    b[:8] = (1.0, -1.0, np.inf, -0.0, 0.0, -0.0, -1.0, -np.inf)
    with np.errstate(invalid="ignore"):  # inf + -inf
        total = a + b
    for kind in (None, *ACTIVATIONS):
        want = ops.activation_forward(total, kind) if kind else total
        got = ops.add_forward(a, b, kind)
        np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"), err_msg=kind)


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_arrays_on_this_thread_give_the_parallel_kernels_bits(dtype, monkeypatch):
    """Activations, their backward and the softmax cross-entropy run on the calling thread up to SERIAL_ELEMENTS
    and as parallel kernels above it, the conv bias gradient's channel sums up to SERIAL_SUM_ELEMENTS: the same
    bits either way (NaN, infinities and saturation included)."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(5003) * 4).astype(dtype)
    x[:6] = (np.nan, np.inf, -np.inf, 0.0, 30.0, -30.0)
    dy = rng.standard_normal(x.size).astype(dtype)
    logits, labels = (rng.standard_normal((97, 13)) * 3).astype(dtype), rng.integers(0, 13, 97)
    logits[5, 2] = 1e4  # a saturated row
    planes = rng.standard_normal((5, 7, 301)).astype(dtype)

    def results():
        sums = np.empty(planes.shape[1])
        nb_reduce.channel_sums(planes, sums)
        out = [sums, *NB.ops.softmax_cross_entropy(logits, labels)]
        for kind in ACTIVATIONS:
            y = NB.ops.activation_forward(x, kind, 0.1)
            out += [y, NB.ops.activation_backward(dy, y, kind, 0.1)]
        return out

    assert x.size <= nb_activation.SERIAL_ELEMENTS and logits.size <= nb_activation.SERIAL_ELEMENTS
    assert planes.size <= nb_reduce.SERIAL_SUM_ELEMENTS
    serial = results()
    monkeypatch.setattr(nb_activation, "SERIAL_ELEMENTS", 0)
    monkeypatch.setattr(nb_loss, "SERIAL_ELEMENTS", 0)
    monkeypatch.setattr(nb_reduce, "SERIAL_SUM_ELEMENTS", 0)
    for got, want in zip(results(), serial, strict=True):
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("case", DROPOUT_CASES, ids=ids(DROPOUT_CASES))
def test_dropout_mask_is_the_numpy_one(case):
    """Both CPU backends draw the same mask for a seed and offset (so models with dropout train identically on
    them)."""
    for dtype in DTYPES:
        np.testing.assert_array_equal(F.dropout_mask(case.shape, case.p, case.seed, dtype, case.offset, backend=NB),
                                      F.dropout_mask(case.shape, case.p, case.seed, dtype, case.offset, backend=NP))
