"""Seed checks of the NumPy reference backend: small worked examples with known answers, and the contract's
promises (dtype kept, inputs untouched, non-contiguous inputs, running statistics, dropout masks)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import cnnkit.functional as F
from cnnkit.backend import backend
from cnnkit.backends import OPS

BE = "numpy"
OP = backend(BE).ops


def _4d(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)[None, None]


# ----------------------------------------------------------------------------------------------- convolution
def test_textbook_cross_correlation():
    """The classic 5x5 image / 3x3 filter example: a valid cross-correlation gives a 3x3 feature map."""
    image = _4d([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
    kernel = _4d([[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(F.conv2d(image, kernel, backend=BE)[0, 0], [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


def _true_convolution(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Valid part of the mathematical 2-D convolution, straight from the definition
    (x * k)[i, j] = sum_{m, n} x[m, n] k[i - m, j - n], output index shifted so it starts at the first full overlap."""
    (h, w), (r, s) = x.shape, k.shape
    out = np.zeros((h - r + 1, w - s + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for m in range(i, i + r):
                for n in range(j, j + s):
                    out[i, j] += x[m, n] * k[i + r - 1 - m, j + s - 1 - n]
    return out


def test_true_convolution_is_cross_correlation_with_flipped_kernel():
    rng = np.random.default_rng(0)
    x, k = rng.standard_normal((6, 7)), rng.standard_normal((3, 2))
    flipped = np.ascontiguousarray(k[::-1, ::-1])
    np.testing.assert_allclose(F.conv2d(_4d(x), _4d(flipped), backend=BE)[0, 0], _true_convolution(x, k),
                               rtol=1e-12, atol=1e-12)
    # and in 1-D against NumPy's own convolution
    x1, k1 = rng.standard_normal(9), rng.standard_normal(4)
    y1 = F.conv2d(_4d([x1]), _4d([k1[::-1]]), backend=BE)[0, 0, 0]
    np.testing.assert_allclose(y1, np.convolve(x1, k1, mode="valid"), rtol=1e-12, atol=1e-12)
    # cross-correlation itself is not convolution for an asymmetric kernel
    assert not np.allclose(F.conv2d(_4d(x), _4d(k), backend=BE)[0, 0], _true_convolution(x, k))


@pytest.mark.parametrize("kernel, dilation", [((3, 3), 1), ((5, 1), 1), ((2, 4), 1), ((3, 2), 2)])
def test_valid_and_same_output_sizes(kernel, dilation):
    x = np.ones((1, 1, 9, 8))
    w = np.ones((1, 1) + kernel)
    span = [dilation * (k - 1) + 1 for k in kernel]
    assert F.conv2d(x, w, padding="valid", dilation=dilation, backend=BE).shape == (1, 1, 10 - span[0], 9 - span[1])
    assert F.conv2d(x, w, padding="same", dilation=dilation, backend=BE).shape == x.shape


def test_same_padding_keeps_the_image_aligned():
    """A centred delta kernel with 'same' padding is the identity (wide convolution pads symmetrically)."""
    x = np.random.default_rng(1).standard_normal((2, 1, 5, 6))
    delta = np.zeros((1, 1, 3, 3))
    delta[0, 0, 1, 1] = 1
    np.testing.assert_array_equal(F.conv2d(x, delta, padding="same", backend=BE), x)


def test_multichannel_filter_and_bias():
    """Each output channel sums its filter over all input channels, then adds its bias."""
    x = np.stack([np.full((3, 3), 1.0), np.full((3, 3), 2.0)])[None]
    w = np.stack([np.ones((2, 2, 2)), -np.ones((2, 2, 2))])   # (K=2, C=2, 2, 2)
    y = F.conv2d(x, w, np.array([0.5, 0.0]), backend=BE)
    np.testing.assert_array_equal(y[0, 0], np.full((2, 2), 4 * 1 + 4 * 2 + 0.5))
    np.testing.assert_array_equal(y[0, 1], np.full((2, 2), -12.0))


def test_stride_subsamples_the_stride1_output():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 2, 9, 9)), rng.standard_normal((3, 2, 3, 3))
    full = F.conv2d(x, w, padding=1, backend=BE)
    np.testing.assert_allclose(F.conv2d(x, w, stride=(2, 3), padding=1, backend=BE), full[:, :, ::2, ::3],
                               rtol=1e-12, atol=1e-12)


def test_groups_are_independent_convolutions():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 4, 6, 6)), rng.standard_normal((6, 2, 3, 3))
    y = F.conv2d(x, w, groups=2, backend=BE)
    halves = [F.conv2d(np.ascontiguousarray(x[:, 2 * g:2 * g + 2]), w[3 * g:3 * g + 3], backend=BE) for g in (0, 1)]
    np.testing.assert_allclose(y, np.concatenate(halves, axis=1), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------- pooling
def test_max_pool_first_maximum_wins_and_index_is_flat():
    x = _4d([[1, 5, 5, 0], [5, 2, 3, 3], [0, 0, 7, 1], [0, 9, 1, 7]])
    y, idx = F.max_pool2d(x, 2, backend=BE)
    np.testing.assert_array_equal(y[0, 0], [[5, 5], [9, 7]])
    np.testing.assert_array_equal(idx[0, 0], [[1, 2], [13, 10]])   # h * W + w, first of the tied maxima
    dx = F.max_pool2d_backward(np.ones_like(y), idx, x.shape, backend=BE)
    np.testing.assert_array_equal(dx[0, 0], [[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]])


def test_max_pool_padding_is_minus_infinity():
    x = _4d(-np.ones((2, 2)))
    y, idx = F.max_pool2d(x, 3, stride=1, padding=1, backend=BE)
    np.testing.assert_array_equal(y, -np.ones_like(y))    # zero padding would give 0 here
    assert idx.min() >= 0 and idx.max() < 4


@pytest.mark.parametrize("count_include_pad, corner", [(True, 4 / 9), (False, 1.0)])
def test_avg_pool_count_include_pad(count_include_pad, corner):
    y = F.avg_pool2d(np.ones((1, 1, 3, 3)), 3, stride=1, padding=1, count_include_pad=count_include_pad,
                     backend=BE)
    assert y[0, 0, 0, 0] == pytest.approx(corner)
    assert y[0, 0, 1, 1] == 1.0


def test_avg_pool_ceil_mode_never_counts_cells_past_the_padding():
    """5 wide, kernel 2, stride 2, ceil_mode: the last window holds one real cell, so its mean is that cell."""
    x = _4d([[1.0, 2, 3, 4, 5]])
    y = F.avg_pool2d(x, (1, 2), ceil_mode=True, backend=BE)
    np.testing.assert_allclose(y[0, 0, 0], [1.5, 3.5, 5.0])


def test_l2_pooling():
    x = _4d([[3.0, -4.0], [0.0, 0.0]])
    assert F.lp_pool2d(x, 2, 2, backend=BE)[0, 0, 0, 0] == pytest.approx(5.0)
    dx = F.lp_pool2d_backward(np.ones((1, 1, 1, 1)), x, F.lp_pool2d(x, 2, 2, backend=BE), 2, 2, backend=BE)
    np.testing.assert_allclose(dx[0, 0], [[0.6, -0.8], [0.0, 0.0]])
    zero = np.zeros((1, 1, 2, 2))   # y == 0: the gradient is defined as 0, not NaN
    np.testing.assert_array_equal(F.lp_pool2d_backward(np.ones((1, 1, 1, 1)), zero, np.zeros((1, 1, 1, 1)), 2, 2,
                                                       backend=BE), zero)


# ----------------------------------------------------------------------------------------------- activations
def test_lecun_scaled_tanh_maps_plus_minus_one_to_about_plus_minus_one():
    y = F.scaled_tanh(np.array([-1.0, 0.0, 1.0]), backend=BE)
    np.testing.assert_allclose(y, [-1.0, 0.0, 1.0], atol=1e-4)


def test_sigmoid_and_softmax_are_stable_for_huge_inputs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no overflow warnings
        np.testing.assert_array_equal(F.sigmoid(np.array([-1000.0, 1000.0]), backend=BE), [0.0, 1.0])
        y = F.softmax(np.array([[1000.0, 1000.0], [-1000.0, 0.0]]), backend=BE)
        np.testing.assert_allclose(y, [[0.5, 0.5], [0.0, 1.0]])
        loss, _ = F.softmax_cross_entropy(np.array([[1000.0, 0.0]]), np.array([1]), backend=BE)
        assert float(loss) == pytest.approx(1000.0)


def test_cross_entropy_of_uniform_logits_is_log_classes():
    loss, dlogits = F.softmax_cross_entropy(np.zeros((3, 4)), np.array([0, 3, 1]), backend=BE)
    assert float(loss) == pytest.approx(math.log(4))
    np.testing.assert_allclose(dlogits.sum(axis=1), 0, atol=1e-15)
    assert dlogits[0, 0] == pytest.approx((0.25 - 1) / 3)


# ----------------------------------------------------------------------------------------------- batch norm
def test_batch_norm_running_statistics_update():
    x = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0]).reshape(2, 2, 2, 1)
    # channel 0 holds 1, 2, 10, 10: mean 5.75, squared deviations 72.75 -> biased var 18.1875, unbiased 24.25
    # channel 1 holds 3, 4, 10, 10: mean 6.75, squared deviations 42.75 -> biased var 10.6875, unbiased 14.25
    rm, rv = np.array([0.0, 1.0]), np.array([1.0, 2.0])
    y, _ = F.batch_norm(x, np.ones(2), np.zeros(2), rm, rv, training=True, momentum=0.1, backend=BE)
    np.testing.assert_allclose(rm, [0.9 * 0.0 + 0.1 * 5.75, 0.9 * 1.0 + 0.1 * 6.75])
    np.testing.assert_allclose(rv, [0.9 * 1.0 + 0.1 * 24.25, 0.9 * 2.0 + 0.1 * 14.25])
    # the batch itself is normalised with the biased variance
    np.testing.assert_allclose(y[0, 0, :, 0], (np.array([1.0, 2.0]) - 5.75) / np.sqrt(18.1875 + 1e-5))
    np.testing.assert_allclose(y[1, 1, :, 0], (10.0 - 6.75) / np.sqrt(10.6875 + 1e-5))


def test_batch_norm_eval_uses_and_keeps_running_statistics():
    x = np.random.default_rng(4).standard_normal((3, 2, 2, 2))
    rm, rv = np.array([1.0, -1.0]), np.array([4.0, 0.25])
    y, _ = F.batch_norm(x, np.array([2.0, 1.0]), np.array([0.0, 3.0]), rm, rv, training=False, eps=1e-12,
                        backend=BE)
    np.testing.assert_array_equal(rm, [1.0, -1.0])
    np.testing.assert_array_equal(rv, [4.0, 0.25])
    np.testing.assert_allclose(y[:, 0], 2 * (x[:, 0] - 1) / 2, rtol=1e-10)
    np.testing.assert_allclose(y[:, 1], (x[:, 1] + 1) / 0.5 + 3, rtol=1e-10)


# ----------------------------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9])
def test_dropout_mask_statistics(p):
    shape = (50, 40, 10)
    mask = F.dropout_mask(shape, p, seed=7, dtype="float64", backend=BE)
    assert mask.shape == shape and mask.dtype == np.float64
    assert set(np.unique(mask)) <= {0.0, 1 / (1 - p)}
    n = mask.size
    dropped = np.count_nonzero(mask == 0) / n
    assert abs(dropped - p) <= 5 * math.sqrt(p * (1 - p) / n)   # five binomial standard deviations
    assert abs(mask.mean() - 1) <= 5 * math.sqrt(p / ((1 - p) * n)) + 1e-12  # inverted dropout keeps E[x]


def test_dropout_mask_is_deterministic_per_seed():
    a = F.dropout_mask((4, 5, 6), 0.5, seed=3, backend=BE)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, F.dropout_mask((4, 5, 6), 0.5, seed=3, backend=BE))
    assert not np.array_equal(a, F.dropout_mask((4, 5, 6), 0.5, seed=4, backend=BE))
    # the zero pattern does not depend on the dtype
    np.testing.assert_array_equal(a == 0, F.dropout_mask((4, 5, 6), 0.5, seed=3, dtype="float64", backend=BE) == 0)


# ----------------------------------------------------------------------------------------------- contract
def _every_op(x: np.ndarray):
    """(name, result arrays) for one call of each op on inputs derived from ``x`` (N, C, H, W)."""
    dt = x.dtype
    rng = np.random.default_rng(5)
    w, b = rng.standard_normal((4, x.shape[1], 3, 3)).astype(dt), rng.standard_normal(4).astype(dt)
    geometry = ((1, 2), (1, 0, 2, 1), (1, 1), 1)
    y = OP.conv2d_forward(x, w, b, *geometry, activation="tanh")
    yield "conv2d_forward", [y]
    yield "conv2d_backward", OP.conv2d_backward(np.ones_like(y), x, w, *geometry)
    yield "conv2d_pool_forward", OP.conv2d_pool_forward(x, w, b, *geometry, activation="tanh")
    pool = ((3, 3), (2, 2), (1, 1))
    ym, idx = OP.max_pool2d_forward(x, *pool, (1, 1), True)
    yield "max_pool2d_forward", [ym]
    yield "max_pool2d_backward", [OP.max_pool2d_backward(ym, idx, x.shape)]
    ya = OP.avg_pool2d_forward(x, *pool, True, False)
    yield "avg_pool2d_forward", [ya]
    yield "avg_pool2d_backward", [OP.avg_pool2d_backward(ya, x.shape, *pool, True, False)]
    yl = OP.lp_pool2d_forward(x, 2.0, *pool, False)
    yield "lp_pool2d_forward", [yl]
    yield "lp_pool2d_backward", [OP.lp_pool2d_backward(yl, x, yl, 2.0, *pool, False)]
    yact = OP.activation_forward(x, "sigmoid")
    yield "activation_forward", [yact]
    yield "activation_backward", [OP.activation_backward(x, yact, "sigmoid")]
    yield "add_forward", [OP.add_forward(x, yact, "relu")]
    z = x.reshape(x.shape[0], -1)
    ys, yls = OP.softmax_forward(z), OP.log_softmax_forward(z)
    yield "softmax_forward", [ys]
    yield "softmax_backward", [OP.softmax_backward(z, ys)]
    yield "log_softmax_forward", [yls]
    yield "log_softmax_backward", [OP.log_softmax_backward(z, yls)]
    w2 = np.ones((4, z.shape[1]), dt)
    yl2 = OP.linear_forward(z, w2, np.ones(4, dt))
    yield "linear_forward", [yl2]
    yield "linear_backward", OP.linear_backward(yl2, z, w2)
    yield "dropout_mask", [OP.dropout_mask(x.shape, 0.5, 0, dt)]
    c = x.shape[1]
    ybn, saved = OP.batch_norm_forward(x, np.ones(c, dt), np.zeros(c, dt), np.zeros(c, dt), np.ones(c, dt),
                                       True, 0.1, 1e-5)
    yield "batch_norm_forward", [ybn]
    yield "batch_norm_backward", OP.batch_norm_backward(x, saved, np.ones(c, dt))
    yield "softmax_cross_entropy", OP.softmax_cross_entropy(z, np.arange(z.shape[0]) % z.shape[1])
    yield "sgd_step", OP.sgd_step(z.copy(), z, z.copy(), 0.1, 0.9, 0.0, 0.01, True, False)  # in place, on copies


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_op_keeps_the_dtype(dtype):
    x = np.random.default_rng(6).standard_normal((2, 3, 6, 7)).astype(dtype)
    names = []
    for name, results in _every_op(x):
        names.append(name)
        for r in results:
            assert r.dtype == dtype, f"{name} returned {r.dtype} for {np.dtype(dtype)} input"
    assert sorted(names) == sorted(OPS)


def test_no_op_modifies_its_inputs():
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 7))
    before = x.copy()
    for _ in _every_op(x):
        np.testing.assert_array_equal(x, before)


def test_non_contiguous_inputs_give_the_same_results():
    base = np.random.default_rng(8).standard_normal((3, 2, 14, 7)).transpose(0, 1, 3, 2)[:, :, :, ::2]
    assert not base.flags.c_contiguous and not base.flags.f_contiguous
    for (name, strided), (_, contiguous) in zip(_every_op(base), _every_op(np.ascontiguousarray(base)), strict=True):
        for a, b in zip(strided, contiguous, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13, err_msg=name)


def test_max_pool_window_covering_only_padding_passes_no_gradient():
    """With dilation, a window can miss every input cell: its argmax is -1 and its dy goes nowhere."""
    x = np.arange(3.0).reshape(1, 1, 1, 3)
    y, idx = F.max_pool2d(x, (2, 1), padding=(1, 0), dilation=(2, 1), backend="numpy")
    assert np.all(idx == -1) and np.all(np.isneginf(y))
    dx = F.max_pool2d_backward(np.ones_like(y), idx, x.shape, backend="numpy")
    np.testing.assert_array_equal(dx, np.zeros_like(x))
