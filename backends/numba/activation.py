"""Elementwise activations and softmax, Numba.

Each activation has an integer code; :func:`act_run` applies one to a run of elements (the conv kernels' fused
epilogue uses it too) with the choice of activation made outside the loop, so every loop vectorises. Values
are computed in float64 and rounded once to the array's dtype, except tanh of float32 arrays, computed in float32
(twice the SIMD lanes; a rational approximation, 3e-7 relative). exp and tanh are written here, branch-free
(Cody-Waite reduction and Taylor polynomials, within 1 ulp of libm in float64), because a libm call per element
keeps LLVM from vectorising and costs far more than the arithmetic. ``error_model="numpy"`` everywhere: a
division then needs no zero check, which would also block vectorisation.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from cnnkit.backends import ACTIVATION_CODES, ACTIVATIONS, LEAKY_SLOPE, SCALED_TANH_A, SCALED_TANH_S, implements

from .vectors import TANH_CAP, TANH_P, TANH_Q, tanh32_pool_pairs, tanh32_vectors

CODES = ACTIVATION_CODES
NONE, RELU, LEAKY_RELU, SIGMOID, TANH, SCALED_TANH = (CODES[k] for k in (None, *ACTIVATIONS))
_A, _S = SCALED_TANH_A, SCALED_TANH_S
_S_OVER_A, _A2 = SCALED_TANH_S / SCALED_TANH_A, SCALED_TANH_A ** 2
_LN2_HI, _LN2_LO, _INV_LN2 = 6.93147180369123816490e-01, 1.90821492927058770002e-10, 1.44269504088896338700e+00
_BLOCK = 4096  # elements per task of the elementwise kernels
SERIAL_ELEMENTS = 1 << 16
"""Arrays up to this many elements are done on the calling thread by the serial run functions (the parallel
kernels' own task bodies): waking the worker threads would cost more than the second core saves, and a model
whose arrays are all this small (LeNet-5's dense layers, the loss) compiles no parallel kernel for them."""


def code(kind: str | None) -> int:
    """The kernel code of activation ``kind`` (None: identity)."""
    try:
        return CODES[kind]
    except KeyError:
        raise ValueError(f"unknown activation {kind!r}") from None


# ----------------------------------------------------------------------------------------------- exp, tanh
@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _taylor_expm1(r):
    """exp(r) - 1 for |r| <= ln2 / 2, Taylor to r^13 (truncation below 1e-17 relative)."""
    return r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (1.0 / 720 + r * (
        1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (1.0 / 3628800 + r * (1.0 / 39916800 + r * (
            1.0 / 479001600 + r / 6227020800.0))))))))))))


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def exp_neg(t):
    """exp(-t) for t >= 0 (0 beyond 745): t = k ln2 - r, exp(-r) by Taylor, 2^-k from the bits of k (k <= 1443:
    bit 1024 scales by 2^-512 twice, 2^-1024 being subnormal)."""
    t = 1000.0 if t > 1000.0 else t  # (a NaN passes through)
    k = math.floor(t * _INV_LN2 + 0.5)
    p = 1.0 + _taylor_expm1((k * _LN2_HI - t) + k * _LN2_LO)
    b = np.int64(k)
    s = ((0.5 if b & 1 else 1.0) * (0.25 if b & 2 else 1.0)) * ((2.0 ** -4 if b & 4 else 1.0)
                                                                * (2.0 ** -8 if b & 8 else 1.0))
    s = s * ((2.0 ** -16 if b & 16 else 1.0) * (2.0 ** -32 if b & 32 else 1.0))
    s = s * ((2.0 ** -64 if b & 64 else 1.0) * (2.0 ** -128 if b & 128 else 1.0))
    s = s * ((2.0 ** -256 if b & 256 else 1.0) * (2.0 ** -512 if b & 512 else 1.0))
    big = 2.0 ** -512 if b & 1024 else 1.0
    return ((p * s) * big) * big


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def tanh(x):
    """tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)), sign restored. One reduction t = k ln2 - r serves every
    |x| (k = 0 near 0, so expm1(-t) is the polynomial itself: no cancellation); 2|x| is capped at 44, where
    exp(-44) no longer changes a float64 tanh, so 2^-k needs only six bits."""
    t = 2.0 * abs(x)
    t = 44.0 if t > 44.0 else t  # (a NaN passes through)
    k = math.floor(t * _INV_LN2 + 0.5)
    r = (k * _LN2_HI - t) + k * _LN2_LO
    q = _taylor_expm1(r)
    b = np.int64(k)
    s = ((0.5 if b & 1 else 1.0) * (0.25 if b & 2 else 1.0)) * ((2.0 ** -4 if b & 4 else 1.0)
                                                                * (2.0 ** -8 if b & 8 else 1.0))
    s = s * ((2.0 ** -16 if b & 16 else 1.0) * (2.0 ** -32 if b & 32 else 1.0))
    em1 = q * s + (s - 1.0)  # exp(-t) - 1 = (1 + q) 2^-k - 1; exactly q when k = 0
    return math.copysign(-em1 / (2.0 + em1), x)


_F32 = np.float32
_CAP32 = _F32(TANH_CAP)
_P32, _Q32 = tuple(_F32(c) for c in TANH_P), tuple(_F32(c) for c in TANH_Q)


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def tanh32(x):
    """tanh for float32 outputs in float32 arithmetic (twice the SIMD lanes of float64): x * P(x^2) / Q(x^2)
    with x clamped to +-8, the rational of vectors.py (never above 1 in magnitude); within 3e-7 relative of
    float64 tanh over the float32 range (checked on a dense grid in the tests)."""
    x = np.copysign(_CAP32, x) if abs(x) > _CAP32 else x  # (a NaN passes through)
    t = x * x
    p0, p1, p2, p3, p4 = _P32
    q0, q1, q2, q3, q4 = _Q32
    return x * (p0 + t * (p1 + t * (p2 + t * (p3 + t * p4)))) / (q0 + t * (q1 + t * (q2 + t * (q3 + t * q4))))


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def sigmoid(x):
    """1 / (1 + exp(-x)) with exp only of -|x| (no overflow), as the NumPy reference."""
    e = exp_neg(abs(x))
    return 1.0 / (1.0 + e) if x >= 0.0 else e / (1.0 + e)


# ----------------------------------------------------------------------------------------------- runs
@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def act_run(dst, d0, src, s0, count, bias, kind, slope):
    """dst[d0 + u] = kind(src[s0 + u] + bias) for u < count (the sum in the arrays' dtype, the activation in
    float64); one loop per kind, unsigned indices."""
    if count <= 0:
        return
    d, o, n = np.uint64(d0), np.uint64(s0), np.uint64(count)
    if kind == RELU:
        relu_run(dst, d0, src, s0, count, bias, True)
    elif kind == LEAKY_RELU:
        for u in range(n):
            v = float(src[o + u] + bias)
            dst[d + u] = v if v > 0.0 else v * slope
    elif kind == SIGMOID:
        for u in range(n):
            dst[d + u] = sigmoid(float(src[o + u] + bias))
    elif kind == TANH or kind == SCALED_TANH:
        a, sc = (1.0, 1.0) if kind == TANH else (_A, _S)
        if dst.itemsize == 4:  # float32 output: tanh in float32 arithmetic (a loop of its own, so both vectorise)
            a32, sc32 = _F32(a), _F32(sc)
            if kind == TANH:  # literal unit scales, which LLVM folds away: two multiplies fewer per vector
                done = np.uint64(tanh32_vectors(dst, d, src, o, n, _F32(bias), _F32(1.0), _F32(1.0)))
            else:
                done = np.uint64(tanh32_vectors(dst, d, src, o, n, _F32(bias), a32, sc32))  # all, if contiguous
            for u in range(done, n):
                dst[d + u] = a32 * tanh32(sc32 * _F32(src[o + u] + bias))
        else:
            for u in range(n):
                dst[d + u] = a * tanh(sc * float(src[o + u] + bias))
    else:
        for u in range(n):
            dst[d + u] = src[o + u] + bias


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def act_run_inline(dst, d0, src, s0, count, bias, kind, slope):
    """:func:`act_run`, with the runs of ReLU and of no activation inlined at the call: the shifted conv's
    epilogue calls it once per image row of a channel (32 elements at 32x32), where a call costs about as much as
    the row itself. One loop serves both (:func:`relu_run`, a select on a flag fixed for the run): two inlined
    loops would not both vectorise."""
    if kind == RELU or kind == NONE:
        relu_run(dst, d0, src, s0, count, bias, kind == RELU)
    else:
        act_run(dst, d0, src, s0, count, bias, kind, slope)


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def relu_run(dst, d0, src, s0, count, bias, relu):
    """:func:`act_run`'s ReLU: dst[d0 + u] = relu(src[s0 + u] + bias) for u < count, NaN passing; the plain sum
    where ``relu`` is false (one loop with a select on the flag: :func:`act_run_inline` runs both)."""
    d, o, n = np.uint64(d0), np.uint64(s0), np.uint64(max(count, 0))
    for u in range(n):
        v = src[o + u] + bias
        dst[d + u] = 0.0 if relu and v < 0.0 else v


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def relu_sum_run(dst, d0, src, s0, bias, res, r0, count):
    """dst[d0 + u] = relu((src[s0 + u] + bias) + res[r0 + u]) for u < count (NaN passes); starts must be >= 0."""
    if count <= 0:
        return
    d, o, r, n = np.uint64(d0), np.uint64(s0), np.uint64(r0), np.uint64(count)
    for u in range(n):
        v = (src[o + u] + bias) + res[r + u]
        dst[d + u] = 0.0 if v < 0.0 else v


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def pools_activated(kind, itemsize):
    """True when :func:`act_pool_pairs` runs ``kind`` on arrays of this itemsize (float32 tanh and scaled tanh)."""
    return (kind == TANH or kind == SCALED_TANH) and itemsize == 4


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def act_pool_pairs(dst, d0, src, s0, width, count, bias, kind):
    """vectors.pool_pairs of the rows after kind(x + bias) (:func:`act_run`'s arithmetic), in one pass, where
    :func:`pools_activated` (else nothing is written)."""
    if kind == TANH:  # literal unit scales, folded away as in act_run
        tanh32_pool_pairs(dst, d0, src, s0, width, count, _F32(bias), _F32(1.0), _F32(1.0))
    else:
        tanh32_pool_pairs(dst, d0, src, s0, width, count, _F32(bias), _F32(_A), _F32(_S))


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def costly_remainder(kind, itemsize):
    """True when :func:`act_run` computes ``kind`` past the last whole vector element by element at some cost
    (sigmoid; tanh in float64; float32 tanh runs are all vectors): the conv epilogues then activate whole rows."""
    return kind == SIGMOID or ((kind == TANH or kind == SCALED_TANH) and itemsize != 4)


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def relu_grad(g, y, slope):
    """The gradient g of a ReLU's output as its input's, from the output y: y <= 0, not "not y > 0", so a NaN
    passes g on, as PyTorch's threshold_backward. The *_grad functions are the one definition of each
    activation's backward (grad_run and the pooling backward loop over them, one loop per kind)."""
    return 0.0 if y <= 0.0 else g


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def leaky_relu_grad(g, y, slope):
    """y > 0 exactly where x > 0, since slope >= 0."""
    return g if y > 0.0 else g * slope


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def sigmoid_grad(g, y, slope):
    v = float(y)
    return g * v * (1.0 - v)


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def tanh_grad(g, y, slope):
    v = float(y)
    return g * (1.0 - v * v)


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def scaled_tanh_grad(g, y, slope):
    v = float(y)
    return g * (_S_OVER_A * (_A2 - v * v))


@njit(cache=True, fastmath=False, error_model="numpy")
def grad_run(dx, dy, y, start, count, kind, slope):
    """dx = dy * kind'(x), written in terms of the output y, for elements start .. start+count-1."""
    o, n = np.uint64(start), np.uint64(count)
    if kind == RELU:
        for u in range(n):
            dx[o + u] = relu_grad(dy[o + u], y[o + u], slope)
    elif kind == LEAKY_RELU:
        for u in range(n):
            dx[o + u] = leaky_relu_grad(dy[o + u], y[o + u], slope)
    elif kind == SIGMOID:
        for u in range(n):
            dx[o + u] = sigmoid_grad(dy[o + u], y[o + u], slope)
    elif kind == TANH:
        for u in range(n):
            dx[o + u] = tanh_grad(dy[o + u], y[o + u], slope)
    elif kind == SCALED_TANH:
        for u in range(n):
            dx[o + u] = scaled_tanh_grad(dy[o + u], y[o + u], slope)
    else:
        for u in range(n):
            dx[o + u] = dy[o + u]


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _forward(x, y, kind, slope, zero):
    for blk in prange((x.size + _BLOCK - 1) // _BLOCK):
        act_run(y, blk * _BLOCK, x, blk * _BLOCK, min(_BLOCK, x.size - blk * _BLOCK), zero, kind, slope)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _backward(dy, y, dx, kind, slope):
    for blk in prange((y.size + _BLOCK - 1) // _BLOCK):
        grad_run(dx, dy, y, blk * _BLOCK, min(_BLOCK, y.size - blk * _BLOCK), kind, slope)


def activate(a: np.ndarray, kind: int, slope: float) -> None:
    """a = kind(a) in place, for a 1-D C-contiguous array (each element is read before it is written)."""
    _activate_into(a, a, kind, slope)


def _activate_into(y: np.ndarray, x: np.ndarray, kind: int, slope: float) -> None:
    """y = kind(x) for 1-D C-contiguous arrays: one run on this thread up to SERIAL_ELEMENTS, else in parallel
    blocks (the same bits either way: each element is computed alone)."""
    if x.size <= SERIAL_ELEMENTS:
        act_run(y, 0, x, 0, x.size, x.dtype.type(0), kind, float(slope))
    else:
        _forward(x, y, kind, float(slope), x.dtype.type(0))


@implements("numba")
def activation_forward(x: np.ndarray, kind: str, negative_slope: float = LEAKY_SLOPE) -> np.ndarray:
    """y = kind(x) for relu, leaky_relu, sigmoid, tanh or scaled_tanh (A * tanh(S * x))."""
    flat = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(flat)
    _activate_into(y, flat, code(kind), negative_slope)
    return y.reshape(x.shape)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _add(a, b, y, kind, slope, zero):
    """y = kind(a + b) over flat arrays, block by block: the plain sum and ReLU in one loop (ReLU as
    relu((a + 0) + b), the bits of :func:`act_run`'s relu((a + b) + 0): both make a -0 sum +0); other kinds the
    sum into a block buffer, then the activation."""
    for blk in prange((y.size + _BLOCK - 1) // _BLOCK):
        start, count = blk * _BLOCK, min(_BLOCK, y.size - blk * _BLOCK)
        o = np.uint64(start)
        if kind == NONE:
            for u in range(np.uint64(count)):  # unsigned indices: no wraparound checks, so the loop vectorises
                y[o + u] = a[o + u] + b[o + u]
        elif kind == RELU:
            relu_sum_run(y, start, a, start, zero, b, start, count)
        else:
            total = np.empty(count, dtype=y.dtype)
            for u in range(np.uint64(count)):
                total[u] = a[o + u] + b[o + u]
            act_run(y, start, total, np.int64(0), count, zero, kind, slope)


@implements("numba")
def add_forward(a: np.ndarray, b: np.ndarray, activation: str | None = None,
                negative_slope: float = LEAKY_SLOPE) -> np.ndarray:
    """activation(a + b) elementwise in one parallel pass; the plain sum when ``activation`` is None."""
    af = np.ascontiguousarray(a).reshape(-1)
    y = np.empty_like(af)
    _add(af, np.ascontiguousarray(b, dtype=af.dtype).reshape(-1), y, code(activation), float(negative_slope),
         af.dtype.type(0))
    return y.reshape(a.shape)


@implements("numba")
def activation_backward(dy: np.ndarray, y: np.ndarray, kind: str, negative_slope: float = LEAKY_SLOPE) -> np.ndarray:
    """dx from dy and the output y (on this thread up to SERIAL_ELEMENTS, as the forward)."""
    yf = np.ascontiguousarray(y).reshape(-1)
    dyf = np.ascontiguousarray(dy, dtype=y.dtype).reshape(-1)
    dx = np.empty_like(yf)
    if yf.size <= SERIAL_ELEMENTS:
        grad_run(dx, dyf, yf, 0, yf.size, code(kind), float(negative_slope))
    else:
        _backward(dyf, yf, dx, code(kind), float(negative_slope))
    return dx.reshape(y.shape)


# ----------------------------------------------------------------------------------------------- softmax
@njit(cache=True, fastmath=False, error_model="numpy")
def row_max_logsumexp(row):
    """(max, log(sum(exp(row - max)))) of a row: the stable pieces of every softmax. (It takes the row, not the
    matrix and an index, whose type differs between callers: one compiled version serves them all.)"""
    m = -np.inf
    for j in range(row.size):
        if row[j] > m:
            m = float(row[j])
    s = 0.0
    for j in range(row.size):
        s += exp_neg(m - row[j])
    return m, math.log(s)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _softmax(x, y, log):
    for i in prange(x.shape[0]):
        m, lse = row_max_logsumexp(x[i])
        for j in range(x.shape[1]):
            z = (x[i, j] - m) - lse
            y[i, j] = z if log else exp_neg(-z)


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _softmax_backward(dy, y, dx, log):
    for i in prange(y.shape[0]):
        s = 0.0
        for j in range(y.shape[1]):
            s += dy[i, j] if log else dy[i, j] * y[i, j]
        for j in range(y.shape[1]):
            dx[i, j] = dy[i, j] - math.exp(y[i, j]) * s if log else y[i, j] * (dy[i, j] - s)


def _rows(x: np.ndarray, log: bool) -> np.ndarray:
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _softmax(x, y, log)
    return y


def _rows_backward(dy: np.ndarray, y: np.ndarray, log: bool) -> np.ndarray:
    y = np.ascontiguousarray(y)
    dx = np.empty_like(y)
    _softmax_backward(np.ascontiguousarray(dy, dtype=y.dtype), y, dx, log)
    return dx


@implements("numba")
def softmax_forward(x: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of (N, C), max subtracted so exp never overflows."""
    return _rows(x, False)


@implements("numba")
def log_softmax_forward(x: np.ndarray) -> np.ndarray:
    """log(softmax(x)) over axis 1 of (N, C), as (x - max) - log(sum(exp(x - max)))."""
    return _rows(x, True)


@implements("numba")
def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = y * (dy - sum(dy * y)) per row."""
    return _rows_backward(dy, y, False)


@implements("numba")
def log_softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = dy - softmax * sum(dy) per row, with softmax = exp(y)."""
    return _rows_backward(dy, y, True)
