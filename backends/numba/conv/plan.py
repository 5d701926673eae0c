"""Convolution, Numba: the path rule (:func:`plan`) and the two ops, which run each pass on the path it picks.

Paths (one module each, all parallel over the output they write):

* ``shifted`` (stride 1): implicit GEMM on the wide grid of zero-margined planes, no im2col (shifted.py).
* ``lanes`` (stride 1, forward and weight gradient; small planes): implicit GEMM with the batch as the vector
  axis, only real outputs computed (lanes.py); its input gradient is the shifted one.
* ``im2row`` (many weights per output): each output pixel's window gathered channel-last as one row, each
  output one long dot product (im2row.py).
* ``packed`` (strided convs with few weights per output, or outputs much narrower than the padded input):
  im2col tiles plus the GEMM, col2im for the input gradient; a plain matmul for LeNet-5's C5 geometry
  (packed.py).
* ``direct`` (few outputs per group, e.g. depthwise): plain loops per output plane; the GEMM's 4x4 register
  blocks would be mostly empty (direct.py).
* ``channels`` (any stride; the input gradient at stride 1): each task's input rows transposed channel-last into
  a window; the forward with the output channels as the vector axis, the weight gradient as dy's rows times the
  window's (s, c) runs; only real outputs computed (channels.py). Forcing it gives an input gradient whose
  flipped padding does not fit its automatic path.
* ``planar`` (any stride; the input gradient at stride 1): the channels path's operands for few input channels,
  the input rows copied as planes (no transpose) and read through per-position and per-tap offsets (planar.py).
* ``winograd`` (3x3 kernels, stride 1, no dilation): Winograd's F(2x2, 3x3) on the channels path's operands, 4/9
  of the multiplies (winograd.py).

Rule (:func:`plan`), with Kg = K / groups and Cg*R*S weights per output: direct when Kg < 4; the plain matmul for
LeNet-5's C5 geometry; strided convs: im2row from ROW_MIN_STRIDED (64) weights per output, else packed (direct
weight gradient when Kg < 8); stride 1: the weight gradient is im2row from ROW_MIN (256) weights per output, else
lanes when the shifted path's planes (shifted.grid_shape) exceed the output by LANES_WASTE (1.5: LeNet-5's C3;
planar instead where Kg is a multiple of PLANAR_K (16), whole vectors), else shifted unless their width exceeds
MAX_WIDE_WASTE (1.5) times the output width (then packed); the forward is im2row from ROW_MIN weights per output
when those planes are over ROW_WASTE (1.4) times the output (small planes with wide padding), else as a narrow
weight gradient; the input gradient is im2row from Kg*R*S >= ROW_MIN when the planes are over ROW_WASTE times the
input, else shifted when their width is at most 1.5 times both the output and the input width, else packed. Whatever
the stride, the forward is channels for kernels wider than 1x1 with at least CHANNELS_MIN_C (16) input channels per
group and a multiple of CHANNELS_K (32) outputs per group (whole tiles): ResNet-20's 32- and 64-channel layers; so
is the stride-1 input gradient where it is such a correlation (Kg inputs, Cg outputs) and its flipped padding fits
(``_loops.flip_fits``), ahead of im2row's; and the weight gradient from CHANNELS_MIN_C input channels and
WEIGHT_GEMM_MIN (8) outputs per group (kernels wider than 1x1), ahead of every other rule but direct's, on the
planar path instead where Kg is a multiple of PLANAR_K and Cg is not one of CHANNELS_K (the channels path's
(s, c) runs then end in partial tiles: 35-50% slower at Cg = 17 to 40; 4-8% at ResNet-20's Cg = 16). Where the
channels rule takes a forward or input gradient of a 3x3 kernel at stride 1 without dilation, winograd takes it
instead (ResNet-20's 32- and 64-channel layers), and so the weight gradient where Kg is also a multiple of
WINOGRAD_WEIGHT_K (64: the channels path's wide tiles; at 32 channels the two were even). ``path=`` forces one
(the tests run every path on every shape; ``lanes`` forces the shifted input gradient; ``winograd`` runs the
passes it cannot on their automatic paths).

Non-finite values land where PyTorch puts them, which treats padding taps as real zeros (a NaN or inf weight times a
padding zero is NaN) and multiplies nothing else: the direct forward and weight gradient skip padding taps, the
lanes passes multiply exactly the real taps, the channels and planar passes the real and padding taps, and the
shifted and im2row passes also multiply margins and wide-grid columns that are no real tap (0 * NaN is NaN). So a
non-finite weight sends the direct forward and the shifted/im2row input gradient to the packed path, and a non-
finite weight (or bias) gradient from the direct or shifted path is recomputed on the packed path; the checks read
only the weights and the weight gradient (small arrays), and finite values take the paths the rule picks. The
winograd passes mix a tile's inputs, so they check their own inputs and recompute on the channels path where a
value is not finite (winograd.py); a non-finite weight sends the winograd input gradient to the packed path too.

Why no BLAS: NumPy's OpenBLAS keeps its own thread pool, which spins after each call and fights Numba's pool for
the cores (the conv stalls when they alternate); and its kernels are built for AVX2 ("Haswell") while LLVM
compiles these loops for the machine it runs on (AVX-512 where there is one). The one exception is the dense
geometry (LeNet-5's C5, see packed.py): a single small matmul per pass, where one-thread BLAS (as the Linear
layers use, see ``create``) is as fast as a Numba kernel at b64 and saves that kernel's seconds of compiling.

Task decomposition (race-free, thread-count independent, so results do not depend on NUMBA_NUM_THREADS): forward
over (image, group, pixel tile) (lanes: (group, output row, run of pixels); channels and winograd: (image, group,
band of output rows); planar: (group, run of images)); backward-data over (group, position tile) for shifted and
(image block, group) for packed (col2im scatters within its own images); backward-weight over (batch chunk,
group) with one partial gradient per chunk (shifted: per run of pixels, see shifted.py; lanes: per chunk of
output rows; channels, planar and winograd: per chunk of images), summed afterwards.
"""
from __future__ import annotations

import functools

import numpy as np

from cnnkit.backends import CONV_POOL, LEAKY_SLOPE, conv_output_size, implements

from ..activation import add_forward, code
from ..pool import avg_pool2d_forward
from ..reduce import channel_sums
from . import channels, direct, im2row, lanes, packed, planar, shifted, winograd
from ._loops import Pads, Pair, flip_fits, flipped_data_grad

GEMM_MIN_ROWS = 4      # outputs per group below which forward and backward-data loop directly
WEIGHT_GEMM_MIN = 8    # ... and below which a strided backward-weight does
MAX_WIDE_WASTE = 1.5
ROW_MIN = 256          # im2row: weights per output (Cg*R*S) from which stride-1 convs gather rows ...
ROW_MIN_STRIDED = 64   # ... and strided ones (the packed path's tiles are short there)
ROW_WASTE = 1.4        # ... when the shifted grid's planes exceed the output (forward) or input (dx) by this factor
LANES_WASTE = 1.5      # lanes: the stride-1 forward and weight gradient below ROW_MIN when the grid's planes
                       # exceed the output by this factor (the shifted path would compute them all)
CHANNELS_MIN_C = 16    # channels: the forward of convs with a kernel wider than 1x1, at least this many input ...
CHANNELS_K = 32        # ... and a multiple of this many output channels per group (whole tiles), any stride
PLANAR_K = 16          # planar: where lanes would run, with a multiple of this many outputs per group (whole vectors)
WINOGRAD_WEIGHT_K = 64  # winograd: the weight gradient from this many outputs per group (a multiple of it)
PATHS = ("direct", "shifted", "packed", "im2row", "lanes", "channels", "planar", "winograd")
STRIDE_ONE_PATHS = ("shifted", "lanes")


@functools.lru_cache(maxsize=1024)
def plan(x_shape, w_shape, stride: Pair, padding: Pads, dilation: Pair, groups: int,
         path: str | None = None) -> tuple[str, str, str]:
    """The paths (forward, backward-weight, backward-data) of this conv; see the module docstring. Cached per
    geometry (every pass asks; the arguments are tuples and ints)."""
    if path is not None:
        if path not in PATHS:
            raise ValueError(f"path must be None or one of {PATHS}, got {path!r}")
        if path in STRIDE_ONE_PATHS and stride != (1, 1):
            raise ValueError(f"path={path!r} needs stride 1")
        if path in ("channels", "planar"):  # an input gradient they cannot run takes the automatic path
            data = plan(x_shape, w_shape, stride, padding, dilation, groups)[2]
            return path, path, path if flip_fits(stride, padding, dilation, w_shape) else data
        if path == "winograd":  # the passes it cannot run take the automatic paths
            auto = plan(x_shape, w_shape, stride, padding, dilation, groups)
            runs = winograd.fits(w_shape, stride, dilation)
            return (path if runs else auto[0], path if runs else auto[1],
                    path if runs and flip_fits(stride, padding, dilation, w_shape) else auto[2])
        return path, path, "shifted" if path == "lanes" else path
    kg = w_shape[0] // groups
    if kg < GEMM_MIN_ROWS:
        return "direct", "direct", "direct"
    out_h = conv_output_size(x_shape[2], w_shape[2], stride[0], padding[0], padding[1], dilation[0])
    out_w = conv_output_size(x_shape[3], w_shape[3], stride[1], padding[2], padding[3], dilation[1])
    if packed.dense_geometry(x_shape, w_shape, padding, groups, out_h * out_w):
        return "packed", "packed", "packed"
    reduction = w_shape[1] * w_shape[2] * w_shape[3]
    channels_fit = _channels_fit(w_shape[1], kg, w_shape)
    channels_weight = w_shape[1] >= CHANNELS_MIN_C and kg >= WEIGHT_GEMM_MIN and w_shape[2] * w_shape[3] > 1
    if stride != (1, 1):
        route = "im2row" if reduction >= ROW_MIN_STRIDED else "packed"
        weight = _weight_gemm(w_shape, kg) if channels_weight else "direct" if kg < WEIGHT_GEMM_MIN else route
        return "channels" if channels_fit else route, weight, route
    grid_h, grid_w = shifted.grid_shape(x_shape, (out_h, out_w), padding)
    wide_ok = grid_w <= MAX_WIDE_WASTE * out_w
    narrow = "shifted" if wide_ok else "packed"
    if reduction < ROW_MIN and grid_h * grid_w > LANES_WASTE * out_h * out_w:
        narrow = "planar" if kg % PLANAR_K == 0 else "lanes"
    weight = _weight_gemm(w_shape, kg) if channels_weight else "im2row" if reduction >= ROW_MIN else narrow
    forward = "im2row" if reduction >= ROW_MIN and grid_h * grid_w > ROW_WASTE * out_h * out_w else narrow
    square = winograd.fits(w_shape, stride, dilation)
    if channels_fit:
        forward = "winograd" if square else "channels"
    if square and channels_weight and kg % WINOGRAD_WEIGHT_K == 0:
        weight = "winograd"
    if _channels_fit(kg, w_shape[1], w_shape) and flip_fits(stride, padding, dilation, w_shape):
        data = "winograd" if square else "channels"  # the flipped correlation: Kg inputs, Cg outputs per group
    elif (kg * w_shape[2] * w_shape[3] >= ROW_MIN and grid_h * grid_w > ROW_WASTE * x_shape[2] * x_shape[3]
            and flip_fits(stride, padding, dilation, w_shape)):
        data = "im2row"
    else:
        data = "shifted" if wide_ok and grid_w <= MAX_WIDE_WASTE * x_shape[3] else "packed"
    return forward, weight, data


def _channels_fit(inputs: int, outputs: int, w_shape) -> bool:
    """Whether a correlation with these input and output channels per group suits the channels path."""
    return inputs >= CHANNELS_MIN_C and outputs % CHANNELS_K == 0 and w_shape[2] * w_shape[3] > 1


def _weight_gemm(w_shape, kg: int) -> str:
    """The weight gradient's path where the channels rule takes it: planar for whole vectors of outputs per group
    and input channels that are no multiple of CHANNELS_K, else channels."""
    return "planar" if kg % PLANAR_K == 0 and w_shape[1] % CHANNELS_K != 0 else "channels"


def _finite(a: np.ndarray) -> bool:
    """True when ``a`` (weights or a weight gradient: small) holds no NaN or inf."""
    return bool(np.isfinite(a).all())


@implements("numba")
def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair, padding: Pads,
                   dilation: Pair, groups: int, activation: str | None = None, residual: np.ndarray | None = None,
                   path: str | None = None) -> np.ndarray:
    """y = act(cross_correlate(x, w) + b + residual), shape (N, K, OH, OW); ``path`` forces one of PATHS. The
    shifted path adds the residual in its epilogue; the others run add_forward on their output."""
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w, dtype=x.dtype)
    n, k = x.shape[0], w.shape[0]
    oh = conv_output_size(x.shape[2], w.shape[2], stride[0], padding[0], padding[1], dilation[0])
    ow = conv_output_size(x.shape[3], w.shape[3], stride[1], padding[2], padding[3], dilation[1])
    b = np.zeros(k, dtype=x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    y = np.empty((n, k, oh, ow), dtype=x.dtype)
    route = plan(x.shape, w.shape, stride, padding, dilation, groups, path)[0]
    if route == "direct" and not _finite(w):  # padding taps must give w * 0 (see the module docstring)
        route = "packed"
    if route in ("shifted", "channels", "planar", "winograd"):
        res = None if residual is None else np.ascontiguousarray(residual, dtype=x.dtype)
        if route == "shifted":
            shifted.forward(x, w, b, y, padding, dilation, groups, code(activation), LEAKY_SLOPE, res)
        else:
            path_module = {"channels": channels, "planar": planar, "winograd": winograd}[route]
            path_module.forward(x, w, b, y, stride, padding, dilation, groups, code(activation), LEAKY_SLOPE, res)
        return y
    kind = code(activation if residual is None else None)
    if route == "direct":
        direct.forward(x, w, b, y, stride, padding, dilation, groups, kind, LEAKY_SLOPE)
    elif route == "lanes":
        lanes.forward(x, w, b, y, padding, dilation, groups, kind, LEAKY_SLOPE)
    elif route == "im2row":
        im2row.forward(x, w, b, y, stride, padding, dilation, groups, kind, LEAKY_SLOPE)
    else:
        packed.forward(x, w, b, y, stride, padding, dilation, groups, kind, LEAKY_SLOPE)
    return y if residual is None else add_forward(y, residual, activation)


@implements("numba")
def conv2d_pool_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair, padding: Pads,
                        dilation: Pair, groups: int, activation: str | None = None, keep: bool = True):
    """(y or None, avg_pool2d(y)): on the shifted and planar paths the pool runs in the conv's epilogue, where
    the output is still in cache (and y is not written unless kept); elsewhere the two ops in turn."""
    route = plan(x.shape, w.shape, stride, padding, dilation, groups)[0]
    if route not in ("shifted", "planar"):
        y = conv2d_forward(x, w, b, stride, padding, dilation, groups, activation)
        return (y if keep else None), avg_pool2d_forward(y, *CONV_POOL)
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w, dtype=x.dtype)
    n, k = x.shape[0], w.shape[0]
    oh = conv_output_size(x.shape[2], w.shape[2], stride[0], padding[0], padding[1], dilation[0])
    ow = conv_output_size(x.shape[3], w.shape[3], stride[1], padding[2], padding[3], dilation[1])
    b = np.zeros(k, dtype=x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    y = np.empty((n, k, oh, ow) if keep else (0, 0, 0, 0), dtype=x.dtype)
    pooled = np.empty((n, k, oh // 2, ow // 2), dtype=x.dtype)
    if route == "shifted":
        shifted.forward(x, w, b, y, padding, dilation, groups, code(activation), LEAKY_SLOPE, None, pooled, (oh, ow))
    else:
        planar.forward(x, w, b, y, stride, padding, dilation, groups, code(activation), LEAKY_SLOPE, None, pooled,
                       (oh, ow))
    return (y if keep else None), pooled


@implements("numba")
def conv2d_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pads, dilation: Pair,
                    groups: int, need_dx: bool = True, need_db: bool = True, need_dw: bool = True,
                    path: str | None = None):
    """(dx, dw, db) of the pre-activation conv output's gradient ``dy``; each is None when not needed."""
    x = np.ascontiguousarray(x)
    w, dy = np.ascontiguousarray(w, dtype=x.dtype), np.ascontiguousarray(dy, dtype=x.dtype)
    n, k, oh, ow = dy.shape
    db = None
    if need_db:
        db = np.empty(k, dtype=x.dtype)
        channel_sums(dy.reshape(n, k, oh * ow), db)
    _, weight_route, data_route = plan(x.shape, w.shape, stride, padding, dilation, groups, path)
    flipped = ("shifted", "im2row", "channels", "planar", "winograd")
    if need_dx and data_route in flipped and not _finite(w):  # see the module docstring
        data_route = "packed"
    if data_route == "packed" and packed.dense_geometry(x.shape, w.shape, padding, groups, oh * ow):
        return (*packed.dense_backward(dy, x, w, need_dx, need_dw), db)
    dw = _weight_grad(weight_route, dy, x, w.shape, stride, padding, dilation, groups) if need_dw else None
    if (need_dw and weight_route in ("direct", "shifted")
            and not (_finite(dw) and (db is None or _finite(db)))):  # see the module docstring
        dw = _weight_grad("packed", dy, x, w.shape, stride, padding, dilation, groups)
    dx = _data_grad(data_route, dy, x.shape, w, stride, padding, dilation, groups) if need_dx else None
    return dx, dw, db


def _weight_grad(route: str, dy, x, w_shape, stride: Pair, padding: Pads, dilation: Pair, groups: int):
    """dw by the backward-weight path ``route`` (see :func:`plan`)."""
    if route == "shifted":
        return shifted.weight_grad(dy, x, w_shape, padding, dilation, groups)
    if route == "lanes":
        return lanes.weight_grad(dy, x, w_shape, padding, dilation, groups)
    path = {"direct": direct, "im2row": im2row, "packed": packed, "channels": channels, "planar": planar,
            "winograd": winograd}[route]
    return path.weight_grad(dy, x, w_shape, stride, padding, dilation, groups)


def _data_grad(route: str, dy, x_shape, w, stride: Pair, padding: Pads, dilation: Pair, groups: int):
    """dx by the backward-data path ``route`` (see :func:`plan`)."""
    if route == "shifted":
        return shifted.data_grad(dy, x_shape, w, padding, dilation, groups)
    if route in ("channels", "planar", "winograd"):
        forward = {"channels": channels, "planar": planar, "winograd": winograd}[route].forward
        return flipped_data_grad(forward, dy, w, padding, dilation, groups, x_shape)
    if route == "im2row" and flip_fits(stride, padding, dilation, w.shape):
        return flipped_data_grad(im2row.forward, dy, w, padding, dilation, groups, x_shape)
    if route == "im2row":
        return im2row.scatter_data_grad(dy, w, stride, padding, dilation, groups, x_shape)
    path = {"direct": direct, "packed": packed}[route]
    return path.data_grad(dy, x_shape, w, stride, padding, dilation, groups)
