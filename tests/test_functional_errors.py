"""Bad input to cnnkit.functional fails early, with ValueError / TypeError messages that name the argument."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnkit.functional as F

BE = "numpy"


@pytest.fixture
def xw():
    return np.zeros((2, 4, 6, 6)), np.zeros((3, 4, 3, 3))


# ----------------------------------------------------------------------------------------------- arrays
@pytest.mark.parametrize("x, match", [
    (np.zeros((4, 6, 6)), r"x must be a 4-D array, got shape \(4, 6, 6\)"),
    (np.zeros((1, 2, 4, 6, 6)), r"x must be a 4-D array"),
])
def test_conv_wrong_rank(xw, x, match):
    with pytest.raises(ValueError, match=match):
        F.conv2d(x, xw[1], backend=BE)


def test_conv_weight_wrong_rank(xw):
    with pytest.raises(ValueError, match=r"weight must be a 4-D array"):
        F.conv2d(xw[0], np.zeros((3, 4, 3)), backend=BE)


def test_conv_channel_mismatch(xw):
    with pytest.raises(ValueError, match=r"channel mismatch: x has 4 channels .* expects 3"):
        F.conv2d(xw[0], np.zeros((3, 3, 3, 3)), backend=BE)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float16, np.complex128])
def test_non_float_x(xw, dtype):
    with pytest.raises(TypeError, match=r"x must be float32 or float64"):
        F.conv2d(xw[0].astype(dtype), xw[1], backend=BE)


def test_non_float_weight(xw):
    with pytest.raises(TypeError, match=r"weight must be float32 or float64"):
        F.conv2d(xw[0], xw[1].astype(int), backend=BE)


def test_dtype_mismatch_between_x_and_weight(xw):
    with pytest.raises(TypeError, match=r"weight has dtype float32 but x has float64"):
        F.conv2d(xw[0], xw[1].astype(np.float32), backend=BE)


@pytest.mark.parametrize("x, kind", [
    (np.zeros((2, 4, 6, 6)).tolist(), "builtins.list"),
    (torch.zeros(2, 4, 6, 6, dtype=torch.float64), "torch.Tensor"),
])
def test_wrong_backend_array(xw, x, kind):
    with pytest.raises(TypeError, match=rf"x is a {kind}, but the backend is 'numpy'.*asarray\(x\)"):
        F.conv2d(x, xw[1], backend=BE)


def test_wrong_backend_weight(xw):
    with pytest.raises(TypeError, match=r"weight is a torch.Tensor"):
        F.conv2d(xw[0], torch.zeros(3, 4, 3, 3, dtype=torch.float64), backend=BE)


# ----------------------------------------------------------------------------------------------- conv geometry
@pytest.mark.parametrize("kwargs, match", [
    (dict(padding=0), r"kernel 3x3 .* larger than the padded input 2x2"),
    (dict(padding=(0, 0, 1, 1)), r"larger than the padded input 2x4"),
    (dict(padding=0, dilation=2), r"kernel 3x3 \(dilation \(2, 2\)\) is larger"),
])
def test_kernel_larger_than_padded_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.conv2d(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3)), backend=BE, **kwargs)


@pytest.mark.parametrize("stride", [0, -1, (1, 0), (-2, 1)])
def test_non_positive_stride(xw, stride):
    with pytest.raises(ValueError, match=r"stride must be >= 1"):
        F.conv2d(*xw, stride=stride, backend=BE)


@pytest.mark.parametrize("stride", [(1, 2, 3), "2", (1.0, 2)])
def test_stride_not_ints(xw, stride):
    with pytest.raises(TypeError, match=r"stride must be an int or a pair of ints"):
        F.conv2d(*xw, stride=stride, backend=BE)


def test_zero_dilation(xw):
    with pytest.raises(ValueError, match=r"dilation must be >= 1"):
        F.conv2d(*xw, dilation=0, backend=BE)


@pytest.mark.parametrize("groups, weight_shape", [(3, (3, 1, 3, 3)), (2, (3, 2, 3, 3))])
def test_groups_must_divide_channels(xw, groups, weight_shape):
    with pytest.raises(ValueError, match=rf"groups={groups} must divide both in_channels=4 and out_channels=3"):
        F.conv2d(xw[0], np.zeros(weight_shape), groups=groups, backend=BE)


@pytest.mark.parametrize("groups", [0, -2])
def test_groups_must_be_positive(xw, groups):
    with pytest.raises(ValueError, match=r"groups must be a positive int"):
        F.conv2d(*xw, groups=groups, backend=BE)


def test_grouped_weight_channel_mismatch(xw):
    with pytest.raises(ValueError, match=r"channel mismatch.*groups=2"):
        F.conv2d(xw[0], np.zeros((4, 4, 3, 3)), groups=2, backend=BE)


@pytest.mark.parametrize("bias, exc, match", [
    (np.zeros(4), ValueError, r"bias must have shape \(3,\), got \(4,\)"),
    (np.zeros((3, 1)), ValueError, r"bias must be a 1-D array"),
    (np.zeros(3, dtype=np.float32), TypeError, r"bias has dtype float32 but x has float64"),
    (np.zeros(3, dtype=np.int64), TypeError, r"bias must be float32 or float64"),
    ([0.0, 0.0, 0.0], TypeError, r"bias is a builtins.list"),
])
def test_bad_bias(xw, bias, exc, match):
    with pytest.raises(exc, match=match):
        F.conv2d(*xw, bias, backend=BE)


@pytest.mark.parametrize("padding, exc, match", [
    ("full", ValueError, r"padding must be an int, a pair, a 4-tuple, 'valid' or 'same'; got 'full'"),
    ("SAME", ValueError, r"padding must be .*got 'SAME'"),
    (-1, ValueError, r"padding must be >= 0"),
    ((0, -1), ValueError, r"padding must be >= 0"),
    ((0, 0, -1, 0), ValueError, r"padding must be non-negative"),
    ((1, 1, 1), TypeError, r"padding must be an int or a pair of ints"),
])
def test_bad_padding(xw, padding, exc, match):
    with pytest.raises(exc, match=match):
        F.conv2d(*xw, padding=padding, backend=BE)


def test_same_padding_needs_stride_one(xw):
    with pytest.raises(ValueError, match=r"padding='same' needs stride=1"):
        F.conv2d(*xw, padding="same", stride=2, backend=BE)


def test_unknown_fused_activation(xw):
    with pytest.raises(ValueError, match=r"activation must be None or one of .*got 'gelu'"):
        F.conv2d(*xw, activation="gelu", backend=BE)


def test_add_needs_one_shape_one_dtype_and_a_known_activation():
    a = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"b must have the shape of a, \(2, 3, 4, 4\); got \(2, 3, 4\)"):
        F.add(a, np.zeros((2, 3, 4)), backend=BE)
    with pytest.raises(TypeError, match=r"b has dtype float32 but a has float64"):
        F.add(a, a.astype(np.float32), backend=BE)
    with pytest.raises(ValueError, match=r"activation must be None or one of .*got 'gelu'"):
        F.add(a, a, "gelu", backend=BE)
    np.testing.assert_array_equal(F.add(a - 1, a, "relu", backend=BE), a)


@pytest.mark.parametrize("residual, exc, match", [
    (np.zeros((2, 3, 5, 5)), ValueError, r"residual must have the conv output shape \(2, 3, 4, 4\), got \(2, 3, 5"),
    (np.zeros((2, 3, 4)), ValueError, r"residual must be a 4-D array"),
    (np.zeros((2, 3, 4, 4), np.float32), TypeError, r"residual has dtype float32 but x has float64"),
    (torch.zeros(2, 3, 4, 4), TypeError, r"residual is a torch.Tensor"),
])
def test_bad_conv_residual(xw, residual, exc, match):
    with pytest.raises(exc, match=match):
        F.conv2d(*xw, residual=residual, backend=BE)


def test_empty_batch(xw):
    with pytest.raises(ValueError, match=r"x must hold at least one sample"):
        F.conv2d(np.zeros((0, 4, 6, 6)), xw[1], backend=BE)


def test_conv_backward_dy_shape(xw):
    with pytest.raises(ValueError, match=r"dy must have the conv output shape \(2, 3, 4, 4\), got \(2, 3, 5, 5\)"):
        F.conv2d_backward(np.zeros((2, 3, 5, 5)), *xw, backend=BE)


def test_conv_backward_dy_dtype(xw):
    with pytest.raises(TypeError, match=r"dy has dtype float32 but x has float64"):
        F.conv2d_backward(np.zeros((2, 3, 4, 4), np.float32), *xw, backend=BE)


def test_unknown_backend(xw):
    with pytest.raises(ValueError, match=r"backend must be one of numpy, numba, cupy, cudasim; got 'tensorflow'"):
        F.conv2d(*xw, backend="tensorflow")


# ----------------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("pool", ["max", "avg", "lp"])
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(kernel_size=0), ValueError, r"kernel_size must be >= 1"),
    (dict(kernel_size=2, stride=0), ValueError, r"stride must be >= 1"),
    (dict(kernel_size=2, padding=2), ValueError, r"padding \(2, 2\) must be at most half of kernel_size"),
    (dict(kernel_size=2, padding=-1), ValueError, r"padding must be >= 0"),
    (dict(kernel_size=8), ValueError, r"kernel_size \(8, 8\) is larger than the padded input 6x6"),
    (dict(kernel_size=(2, 2, 2)), TypeError, r"kernel_size must be an int or a pair of ints"),
])
def test_bad_pool_geometry(pool, kwargs, exc, match):
    x = np.zeros((1, 2, 6, 6))
    call = {"max": lambda: F.max_pool2d(x, backend=BE, **kwargs),
            "avg": lambda: F.avg_pool2d(x, backend=BE, **kwargs),
            "lp": lambda: F.lp_pool2d(x, 2.0, backend=BE, **kwargs)}[pool]
    with pytest.raises(exc, match=match):
        call()


def test_pool_input_checks():
    with pytest.raises(ValueError, match=r"x must be a 4-D array"):
        F.max_pool2d(np.zeros((6, 6)), 2, backend=BE)
    with pytest.raises(TypeError, match=r"x must be float32 or float64, got dtype int64"):
        F.avg_pool2d(np.zeros((1, 1, 6, 6), dtype=np.int64), 2, backend=BE)
    with pytest.raises(ValueError, match=r"dilation must be >= 1"):
        F.max_pool2d(np.zeros((1, 1, 6, 6)), 2, dilation=0, backend=BE)


def test_max_pool_backward_index_shape():
    with pytest.raises(ValueError, match=r"indices shape \(1, 1, 3, 3\) must equal dy shape \(1, 1, 2, 2\)"):
        F.max_pool2d_backward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3), np.int64), (1, 1, 4, 4), backend=BE)


@pytest.mark.parametrize("p, exc, match", [
    (0, ValueError, "must be a positive number"), (-2.0, ValueError, "must be a positive number"),
    (float("nan"), ValueError, "must be finite"), (float("inf"), ValueError, "must be finite"),
    ("2", TypeError, "must be a real number"), (True, TypeError, "must be a real number")])
def test_bad_lp_norm_type(p, exc, match):
    with pytest.raises(exc, match=r"norm_type \(p\) " + match):
        F.lp_pool2d(np.zeros((1, 1, 4, 4)), p, 2, backend=BE)


@pytest.mark.parametrize("group_size", [0, 4, 2.0])
def test_bad_feature_pool_group_size(group_size):
    with pytest.raises(ValueError, match=r"group_size must be a positive int dividing the 6 channels"):
        F.feature_pool(np.zeros((1, 6, 2, 2)), group_size, backend=BE)


# ----------------------------------------------------------------------------------------------- activations
def test_activation_checks():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"activation must be None or one of .*got 'gelu'"):
        F.activation(x, "gelu", backend=BE)
    with pytest.raises(ValueError, match=r"kind must name an activation, got None"):
        F.activation(x, None, backend=BE)
    with pytest.raises(ValueError, match=r"negative_slope must be a number >= 0, got -0.1"):
        F.leaky_relu(x, -0.1, backend=BE)
    with pytest.raises(TypeError, match=r"x must be float32 or float64"):
        F.relu(x.astype(int), backend=BE)
    with pytest.raises(ValueError, match=r"y must have the shape of dy, \(2, 3\); got \(3, 2\)"):
        F.activation_backward(x, np.zeros((3, 2)), "relu", backend=BE)


def test_softmax_needs_2d():
    with pytest.raises(ValueError, match=r"x must be a 2-D array"):
        F.softmax(np.zeros((2, 3, 4)), backend=BE)
    with pytest.raises(ValueError, match=r"x must be a 2-D array"):
        F.log_softmax(np.zeros(3), backend=BE)


# ----------------------------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("bad", ["weight", "bias", "running_mean", "running_var"])
def test_batch_norm_parameter_shapes(bad):
    args = {name: np.zeros(3) for name in ("weight", "bias", "running_mean", "running_var")}
    args[bad] = np.zeros(4)
    with pytest.raises(ValueError, match=rf"{bad} must have shape \(3,\) to match x's 3 channels"):
        F.batch_norm(np.zeros((2, 3, 2, 2)), **args, backend=BE)


def test_batch_norm_checks():
    x, v = np.zeros((2, 3, 2, 2)), np.ones(3)
    with pytest.raises(ValueError, match=r"needs more than one value per channel"):
        F.batch_norm(np.zeros((1, 3, 1, 1)), v, v, v.copy(), v.copy(), training=True, backend=BE)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        F.batch_norm(x, v, v, v.copy(), v.copy(), momentum=1.5, backend=BE)
    with pytest.raises(ValueError, match=r"eps > 0"):
        F.batch_norm(x, v, v, v.copy(), v.copy(), eps=0.0, backend=BE)
    with pytest.raises(TypeError, match=r"running_var must be float32 or float64"):
        F.batch_norm(x, v, v, v.copy(), np.ones(3, int), backend=BE)


# ----------------------------------------------------------------------------------------------- dropout, loss
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(p=float("nan")), ValueError, r"p must be finite"),
    (dict(p="0.5"), TypeError, r"p must be a real number"),
    (dict(seed=None), TypeError, r"seed must be an int"),
    (dict(shape=(2, -3)), ValueError, r"shape must be a tuple of non-negative ints"),
    (dict(dtype="int32"), TypeError, r"dtype must be float32 or float64"),
    (dict(offset=-1), ValueError, r"offset must be a non-negative int"),
    (dict(offset=2.0), ValueError, r"offset must be a non-negative int"),
])
def test_dropout_bad_arguments(kwargs, exc, match):
    args = dict(shape=(2, 3), p=0.5, seed=0) | kwargs
    with pytest.raises(exc, match=match):
        F.dropout_mask(**args, backend=BE)


def test_pool_backward_checks_dy_against_forward_shape():
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(1, 1, 2, 2\)"):
        F.avg_pool2d_backward(np.zeros((1, 1, 3, 3)), (1, 1, 4, 4), 2, backend=BE)
    with pytest.raises(ValueError, match=r"x_shape \(1, 2, 4, 4\) and dy"):
        F.max_pool2d_backward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), np.int64), (1, 2, 4, 4), backend=BE)
    with pytest.raises(TypeError, match=r"indices must be the integer argmax"):
        F.max_pool2d_backward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), (1, 1, 4, 4), backend=BE)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(activation="tanh"), ValueError, r"activation and y go together"),
    (dict(y=np.zeros((1, 1, 4, 4))), ValueError, r"activation and y go together"),
    (dict(activation="tanh", y=np.zeros((1, 1, 2, 2))), ValueError, r"y \(the activation's output\) must have "
                                                                   r"x_shape \(1, 1, 4, 4\)"),
    (dict(activation="tanh", y=np.zeros((1, 1, 4, 4), np.float32)), TypeError, r"y has dtype float32 but dy"),
    (dict(activation="swish", y=np.zeros((1, 1, 4, 4))), ValueError, r"swish"),
    (dict(activation="leaky_relu", y=np.zeros((1, 1, 4, 4)), negative_slope=-1), ValueError, r"negative_slope"),
])
def test_avg_pool_backward_through_an_activation_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        F.avg_pool2d_backward(np.zeros((1, 1, 2, 2)), (1, 1, 4, 4), 2, **kwargs, backend=BE)


def test_batch_norm_parameter_dtype_must_match_x():
    x = np.zeros((2, 3, 2, 2), np.float32)
    c = np.zeros(3, np.float64)
    with pytest.raises(TypeError, match=r"weight has dtype float64 but x has float32"):
        F.batch_norm(x, c, c, c, c, backend=BE)


def test_stride_accepts_numpy_ints_and_rejects_floats():
    x, w = np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3))
    assert F.conv2d(x, w, stride=np.int64(2), backend=BE).shape == (1, 1, 2, 2)
    with pytest.raises(TypeError, match=r"stride must be an int or a pair of ints, got 1.5"):
        F.conv2d(x, w, stride=1.5, backend=BE)
    with pytest.raises(TypeError, match=r"groups must be a positive int"):
        F.conv2d(x, w, groups=True, backend=BE)


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_dropout_probability_range(p):
    with pytest.raises(ValueError, match=r"dropout probability p must be in \[0, 1\)"):
        F.dropout_mask((2, 3), p, seed=0, backend=BE)


@pytest.mark.parametrize("labels, exc, match", [
    (np.array([0, 3, 1]), ValueError, r"labels must lie in \[0, 3\) for 3 classes, got values from 0 to 3"),
    (np.array([0, -1, 1]), ValueError, r"labels must lie in \[0, 3\)"),
    (np.array([0.0, 1.0, 2.0]), TypeError, r"labels must be a 1-D integer array"),
    (np.array([True, False, True]), TypeError, r"labels must be a 1-D integer array"),
    (np.array([[0], [1], [2]]), TypeError, r"labels must be a 1-D integer array"),
    ([0, 1, 2], TypeError, r"labels must be a 1-D integer array of backend 'numpy'"),
    (np.array([0, 1]), ValueError, r"labels has 2 entries but logits has 3 rows"),
])
def test_bad_labels(labels, exc, match):
    with pytest.raises(exc, match=match):
        F.softmax_cross_entropy(np.zeros((3, 3)), labels, backend=BE)


def test_bad_logits():
    with pytest.raises(ValueError, match=r"logits must be a 2-D array"):
        F.softmax_cross_entropy(np.zeros((3, 3, 1)), np.zeros(3, int), backend=BE)
    with pytest.raises(TypeError, match=r"logits must be float32 or float64"):
        F.softmax_cross_entropy(np.zeros((3, 3), int), np.zeros(3, int), backend=BE)


def test_deprecated_gradient_flag_names_still_work_and_warn(xw):
    x, w = xw
    dy = np.ones(F.conv2d(x, w).shape, dtype=x.dtype)
    with pytest.warns(DeprecationWarning, match="need_weight= is deprecated: use need_dw="):
        dx, dw, db = F.conv2d_backward(dy, x, w, need_weight=False)
    assert dw is None and dx is not None and db is not None
    with pytest.warns(DeprecationWarning, match="need_bias= is deprecated: use need_db="):
        assert F.linear_backward(np.ones((2, 3)), np.ones((2, 4)), np.ones((3, 4)), need_bias=False)[2] is None
