"""What is specific to the CUDA launchers and kernels (backends/cupy), on both runtimes that run them: the cudasim
simulator (marker ``cudasim``, every CI run) and a real GPU through cupy (marker ``gpu``). The op grids
themselves run in tests/test_ops.py.

Only ``be.asarray``, ``be.to_numpy`` and ``be.xp`` touch arrays here, so each test runs unchanged on both; an
unavailable runtime fails, it never skips. The conv path is forced by monkeypatching
``cnnkit.backends.cupy.conv.conv_path``, which both runtimes' launchers call.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from op_cases import CONV_CASES, DROPOUT_CASES, backend_under_test, by_id, data, ids
from tolerances import assert_close_f32

import cnnkit.functional as F
from cnnkit.backends.cupy import conv as cuda_conv

RUNTIMES = [pytest.param("cudasim", marks=pytest.mark.cudasim),
            pytest.param("cupy", marks=pytest.mark.gpu)]


@pytest.fixture(params=RUNTIMES)
def be(request):
    return backend_under_test(request.param)


# ----------------------------------------------------------------------------------------------- convolution
def _tiled(case) -> bool:
    return cuda_conv.conv_path(case.w, case.groups) == "tiled"


def test_conv_grid_covers_both_paths_and_tiles():
    """The conv grid exercises the direct path, every tile (forward rows Kg, data-gradient rows Cg) and,
    on both paths, a split weight gradient as well as an unsplit one (pure launch arithmetic: no runtime needed)."""
    assert {_tiled(c) for c in CONV_CASES} == {False, True}
    tiled = [c for c in CONV_CASES if _tiled(c)]
    assert {cuda_conv._tile(c.w[0] // c.groups)[0] for c in tiled} == {"wide", "tm2", "tm4"}  # forward
    assert {cuda_conv._tile(c.x[1] // c.groups)[0] for c in tiled} == {"wide", "tm2", "tm4"}  # data gradient
    strided = {c.geometry[2] == (1, 1) for c in tiled if c.geometry[0] != (1, 1)}
    assert strided == {True, False}  # the data gradient's phase kernels, and the masked ones of dilated strides
    weight_tiled = [c for c in CONV_CASES if cuda_conv.conv_path(c.w, c.groups, True) == "tiled"]
    weight_ids = {c.id for c in weight_tiled}
    assert {c.id for c in tiled} < weight_ids  # and the narrow layers of 16 or more outputs
    weight_tiles = {cuda_conv._weight_tile(c.w[0] // c.groups, c.w[1] * c.w[2] * c.w[3])[0] for c in weight_tiled}
    assert weight_tiles == {"tm1", "tm2", "tm4", "wide"}
    splits = {True: [], False: []}
    for c in CONV_CASES:
        n, _, oh, ow = c.y_shape
        kg, crs = c.w[0] // c.groups, c.w[1] * c.w[2] * c.w[3]
        _, bm, bn = cuda_conv._weight_tile(kg, crs)
        on_tiles = c.id in weight_ids
        blocks = -(-crs // bn) * -(-kg // bm) * c.groups if on_tiles else kg * c.groups * crs
        splits[on_tiles].append(cuda_conv.weight_splits(n * oh * ow, blocks, on_tiles)[0])
    for on_path in splits.values():
        assert max(on_path) > 1 and min(on_path) == 1
    gemm_splits = {"forward": [], "data": []}
    for c in tiled:
        n, _, oh, ow = c.y_shape
        kg, cg, rs = c.w[0] // c.groups, c.x[1] // c.groups, c.w[2] * c.w[3]
        for name, rows, cols, reduction in (("forward", kg, n * oh * ow, cg * rs),
                                            ("data", cg, n * c.x[2] * c.x[3], kg * rs)):
            _, bm, bn = cuda_conv._tile(rows)
            tiles = -(-cols // bn) * -(-rows // bm) * c.groups
            gemm_splits[name].append(cuda_conv.gemm_splits(reduction, tiles)[0])
    for on_pass in gemm_splits.values():  # every case splits: test_conv_paths_agree runs them unsplit too
        assert max(on_pass) > 1


@pytest.mark.parametrize("case_id", ["direct-depthwise-s2", "direct-groups2-batch1", "tiled-groups2-dil2-asym-pad",
                                     "tiled-fwd-tm4-dgrad-tm1", "tiled-tm4-1x1-batch1", "im2row-288-per-output-relu",
                                     "nan-in-w-tiled-s2"])
def test_conv_paths_agree(be, monkeypatch, case_id):
    """Both paths run the same reduction in the same order, so forward and dx agree to the bit where the tiled
    GEMM runs its reduction unsplit, and to float32 tolerance where it splits it (a small grid); dw sums in a
    different order (block tree vs split chunks) and agrees to float32 tolerance."""
    case = by_id(CONV_CASES, case_id)
    x, w, b, dy = (None if a is None else a.on(be) for a in case.inputs())
    results = {}
    for path, split_below in (("direct", 1), ("tiled", 1), ("tiled-split", 1 << 20)):
        monkeypatch.setattr(cuda_conv, "conv_path", lambda *_, p=path: p.split("-")[0])
        monkeypatch.setattr(cuda_conv, "SMALL_GEMM_BLOCKS", split_below)
        y = F.conv2d(x, w, b, activation="tanh", backend=be, **case.kwargs)
        results[path] = [be.to_numpy(a) for a in (y, *F.conv2d_backward(dy, x, w, backend=be, **case.kwargs))]
    (y_d, dx_d, dw_d, db_d), (y_t, dx_t, dw_t, db_t) = results["direct"], results["tiled"]
    np.testing.assert_array_equal(y_t, y_d, err_msg="forward differs between paths")
    np.testing.assert_array_equal(dx_t, dx_d, err_msg="dx differs between paths")
    np.testing.assert_array_equal(db_t, db_d)
    assert_close_f32(dw_t, dw_d.astype(np.float64), "dw tiled vs direct")
    for name, split, whole in zip(("y", "dx", "dw", "db"), results["tiled-split"], results["tiled"]):
        assert_close_f32(split, whole.astype(np.float64), f"{name}: split-K tiled vs unsplit")


def test_float64_is_refused_naming_the_argument(be):
    x, w = be.asarray(data((1, 2, 5, 5), "x")), be.asarray(data((3, 2, 3, 3), "w"))
    with pytest.raises(TypeError, match=r"\bw\b.*float64"):
        be.conv2d_forward(x, be.asarray(w, dtype=np.float64), None, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    with pytest.raises(TypeError, match=r"\bx\b.*float64"):
        be.avg_pool2d_forward(be.asarray(x, dtype=np.float64), (2, 2), (2, 2), (0, 0), False, True)
    with pytest.raises(TypeError, match="dtype"):
        be.dropout_mask((3,), 0.5, 1, np.dtype(np.float64))


# ----------------------------------------------------------------------------------------------- optimizer
SGD_SETTINGS = [(m, n, wd, d, first) for m, n, wd, d in itertools.product((0.0, 0.9), (False, True), (0.0, 5e-4),
                                                                          (0.0, 0.3))
                for first in ((False, True) if m else (False,)) if not (n and (m == 0 or d != 0))]


def test_sgd_step_gives_the_numpy_backends_bits(be):
    """sgd_step's kernel updates the parameter and the momentum buffer in place to the same bits as the numpy
    backend's array arithmetic (which the numba backend shares), in every setting of cnnkit.optim.SGD."""
    ref = backend_under_test("numpy")
    rng = np.random.default_rng(3)
    for momentum, nesterov, weight_decay, dampening, first in SGD_SETTINGS:
        p, g, buf = (rng.standard_normal((5, 3, 7)).astype(np.float32) for _ in range(3))
        buf = buf if momentum else None
        args = (0.05, momentum, dampening, weight_decay, nesterov, first)
        want = ref.sgd_step(p.copy(), g, None if buf is None else buf.copy(), *args)
        got = be.sgd_step(be.asarray(p.copy()), be.asarray(g), None if buf is None else be.asarray(buf.copy()), *args)
        setting = f"momentum {momentum} nesterov {nesterov} weight_decay {weight_decay} dampening {dampening}"
        np.testing.assert_array_equal(be.to_numpy(got[0]), want[0], err_msg=f"param, {setting}, first {first}")
        if buf is not None:
            np.testing.assert_array_equal(be.to_numpy(got[1]), want[1], err_msg=f"buffer, {setting}, first {first}")
        assert not np.array_equal(want[0], p)


def test_sgd_step_refuses_what_it_cannot_update_in_place(be):
    """The kernel writes param and the momentum buffer in place: a strided view or a float64 array is refused
    by name before the launch, never updated partly or wrongly."""
    p, g = be.asarray(data((4, 6), "p")), be.asarray(data((4, 6), "g"))
    with pytest.raises(ValueError, match="param must be a C-contiguous"):
        be.sgd_step(p[:, ::2], g[:, ::2], None, 0.1, 0.0, 0.0, 0.0, False, False)
    with pytest.raises(ValueError, match="momentum_buffer must be a C-contiguous"):
        be.sgd_step(p, g, be.asarray(data((6, 4), "b")).T, 0.1, 0.9, 0.0, 0.0, False, False)
    with pytest.raises(TypeError, match=r"\bparam\b.*float64"):
        be.sgd_step(be.asarray(p, dtype=np.float64), g, None, 0.1, 0.0, 0.0, 0.0, False, False)
    with pytest.raises(ValueError, match="grad has shape"):
        be.sgd_step(p, g[:2], None, 0.1, 0.0, 0.0, 0.0, False, False)


# ----------------------------------------------------------------------------------------------- loss
def test_cross_entropy_bad_label_gives_nan_not_a_sync(be):
    """The kernel does not check labels on the host (that would need a synchronisation): a label outside
    [0, C) makes the mean loss NaN. (cnnkit.functional checks them only on CPU backends; the op is called
    directly here.)"""
    loss, _ = be.softmax_cross_entropy(be.asarray(data((3, 4), "z")), be.asarray(np.array([0, 4, 1])))
    assert np.isnan(float(be.to_numpy(loss)))


# ----------------------------------------------------------------------------------------------- dropout
def _hash_mask(shape, p, seed, offset=0):
    """dropout.cu's counter-based hash, re-done on the host with numpy uint64 arithmetic (wrapping)."""
    i = np.arange(1, int(np.prod(shape)) + 1, dtype=np.uint64) + np.uint64(offset)
    with np.errstate(over="ignore"):
        z = np.uint64(seed % 2 ** 64) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    keep = (z >> np.uint64(40)) >= np.uint64(int(np.ceil(p * 2 ** 24)))
    return np.where(keep, np.float32(1 / (1 - p)), np.float32(0)).reshape(shape)


@pytest.mark.parametrize("case", DROPOUT_CASES, ids=ids(DROPOUT_CASES))
def test_dropout_mask_is_the_counter_hash(be, case):
    """The mask is a pure function of (seed, flat index): the same on any device and launch shape."""
    mask = F.dropout_mask(case.shape, case.p, case.seed, offset=case.offset, backend=be)
    np.testing.assert_array_equal(be.to_numpy(mask), _hash_mask(case.shape, case.p, case.seed, case.offset))


def test_dropout_mask_offset_beyond_32_bits(be):
    """The element offset is 64-bit in the kernel (a data-parallel rank's rows may start past 2^32 elements)."""
    offset = 2 ** 33 + 5
    mask = F.dropout_mask((4, 33), 0.5, 99, offset=offset, backend=be)
    np.testing.assert_array_equal(be.to_numpy(mask), _hash_mask((4, 33), 0.5, 99, offset))
