"""Property tests: Numba conv and pooling equal the NumPy reference (float64, RTOL_F64) on generated shapes.

Hypothesis draws the geometry (sizes, stride, asymmetric padding, dilation, groups, ceil_mode) and the conv path;
only valid geometries are generated (the kernel fits the padded input), so every example is a real check.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import assert_close_f64

import cnnkit.functional as F
from cnnkit.backend import backend
from cnnkit.backends.numba import conv as nb_conv

NB, NP = backend("numba"), backend("numpy")
SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c = groups * draw(st.integers(1, 3))
    k = groups * draw(st.integers(1, 6))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, 3)) for _ in range(4))
    h = draw(st.integers(max(1, dilation[0] * (r - 1) + 1 - padding[0] - padding[1]), 12))
    w = draw(st.integers(max(1, dilation[1] * (s - 1) + 1 - padding[2] - padding[3]), 12))
    paths = [p for p in nb_conv.PATHS if p not in nb_conv.STRIDE_ONE_PATHS or stride == (1, 1)]
    path = draw(st.sampled_from([None] + paths))
    return (draw(st.integers(1, 3)), c, h, w), (k, c // groups, r, s), stride, padding, dilation, groups, path


@SETTINGS
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_conv_forward_and_backward(case, seed):
    x_shape, w_shape, stride, padding, dilation, groups, path = case
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    geometry = (stride, padding, dilation, groups)
    y_ref = F.conv2d(x, w, b, *geometry, backend=NP)
    dy = rng.standard_normal(y_ref.shape)
    assert_close_f64(nb_conv.conv2d_forward(x, w, b, *geometry, path=path), y_ref, "y")
    for what, got, ref in zip(("dx", "dw", "db"), nb_conv.conv2d_backward(dy, x, w, *geometry, path=path),
                              F.conv2d_backward(dy, x, w, *geometry, backend=NP)):
        assert_close_f64(got, ref, what)


@st.composite
def pool_cases(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers(max(1, dilation[0] * (kernel[0] - 1) + 1 - 2 * padding[0]), 11))
    w = draw(st.integers(max(1, dilation[1] * (kernel[1] - 1) + 1 - 2 * padding[1]), 11))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w)
    return shape, kernel, stride, padding, dilation, draw(st.booleans()), draw(st.booleans())


@SETTINGS
@given(case=pool_cases(), seed=st.integers(0, 2**16), p=st.sampled_from([1.0, 2.0, 3.0]))
def test_pooling_forward_and_backward(case, seed, p):
    shape, kernel, stride, padding, dilation, ceil, include_pad = case
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal(shape) * 2) / 2          # ties for max pooling
    y_ref, idx_ref = F.max_pool2d(x, kernel, stride, padding, dilation, ceil, backend=NP)
    y, idx = F.max_pool2d(x, kernel, stride, padding, dilation, ceil, backend=NB)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    dy = rng.standard_normal(y.shape)
    if (idx_ref >= 0).all():  # NumPy's scatter needs every window to hold an input cell
        assert_close_f64(F.max_pool2d_backward(dy, idx, shape, backend=NB),
                         F.max_pool2d_backward(dy, idx_ref, shape, backend=NP), "max dx")
    args = (kernel, stride, padding, ceil)
    y_ref = F.avg_pool2d(x, *args, include_pad, backend=NP)
    assert_close_f64(F.avg_pool2d(x, *args, include_pad, backend=NB), y_ref, "avg y")
    dy = rng.standard_normal(y_ref.shape)
    assert_close_f64(F.avg_pool2d_backward(dy, shape, *args, include_pad, backend=NB),
                     F.avg_pool2d_backward(dy, shape, *args, include_pad, backend=NP), "avg dx")
    y_ref = F.lp_pool2d(x, p, *args, backend=NP)
    assert_close_f64(F.lp_pool2d(x, p, *args, backend=NB), y_ref, "lp y")
    assert_close_f64(F.lp_pool2d_backward(dy, x, y_ref, p, *args, backend=NB),
                     F.lp_pool2d_backward(dy, x, y_ref, p, *args, backend=NP), "lp dx")
