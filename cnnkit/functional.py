"""The functional API: argument checking in one place, then the backend's kernel.

Every function takes the backend's arrays and an optional ``backend=`` (a name or Backend; default: the current
one). Forward functions return what their backward needs to be given back; backward functions return
gradients. Layers (:mod:`cnnkit.nn`) are thin stateful wrappers around these.
"""
from __future__ import annotations

from typing import Any, Sequence

from cnnkit.backend import backend as _resolve
from cnnkit.backend import get_backend
from cnnkit.backends import Backend, ConvGeometry, conv_output_size, pool_output_size
from cnnkit.validate import (  # noqa: F401  (check_array, check_like, conv_padding, pair: public here too)
    FLOAT_DTYPES,
    activation_before_pool,
    activation_kind,
    activation_name,
    batch_norm_args,
    check_array,
    check_dy,
    check_labels,
    check_like,
    conv_padding,
    deprecated_alias,
    dropout_args,
    is_int,
    lp_norm_type,
    negative_slope_value,
    number,
    pair,
    same_dtype,
    shape4,
)

Array = Any
IntPair = int | Sequence[int]


# ----------------------------------------------------------------------------------------------- backend
def _be(backend: str | Backend | None) -> Backend:
    return get_backend() if backend is None else _resolve(backend)


def conv2d(x: Array, weight: Array, bias: Array | None = None, stride: IntPair = 1,
           padding: IntPair | str = 0, dilation: IntPair = 1, groups: int = 1,
           activation: str | None = None, *, residual: Array | None = None,
           backend: str | Backend | None = None) -> Array:
    """2-D cross-correlation (PyTorch's conv2d), optionally fused with bias, a ``residual`` of the output's shape
    (a residual block's shortcut: ``activation(conv + bias + residual)``) and an activation."""
    be = _be(backend)
    x_, w_, b_, geometry = _conv_args(be, x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        _check_conv_output(be, residual, "residual", x_, w_, geometry)
    return be.conv2d_forward(x_, w_, b_, *geometry, activation=activation_name(activation), residual=residual)


def conv2d_pool(x: Array, weight: Array, bias: Array | None = None, stride: IntPair = 1, padding: IntPair | str = 0,
                dilation: IntPair = 1, groups: int = 1, activation: str | None = None, *, keep: bool = True,
                backend: str | Backend | None = None) -> tuple[Array | None, Array]:
    """(y, pooled): y = conv2d(x, weight, bias, ..., activation) (None unless ``keep``) and its 2x2, stride-2
    average pool (LeNet's subsampling), in one call: fused into the conv's epilogue where the backend can."""
    be = _be(backend)
    x_, w_, b_, geometry = _conv_args(be, x, weight, bias, stride, padding, dilation, groups)
    out = conv2d_output_shape(x_.shape, w_.shape, *geometry)
    if min(out[2:]) < 2:
        raise ValueError(f"the conv output {out} is smaller than the 2x2 pool window")
    return be.conv2d_pool_forward(x_, w_, b_, *geometry, activation=activation_name(activation), keep=bool(keep))


def conv2d_backward(dy: Array, x: Array, weight: Array, stride: IntPair = 1, padding: IntPair | str = 0,
                    dilation: IntPair = 1, groups: int = 1, need_dx: bool = True, need_db: bool = True,
                    need_dw: bool = True, *, backend: str | Backend | None = None, need_bias: bool | None = None,
                    need_weight: bool | None = None) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients (dx, dweight, dbias) of conv2d, given dy of its pre-activation output; each is None (and not
    computed) when its ``need_*`` flag is off. ``need_bias`` / ``need_weight`` are the deprecated names of
    ``need_db`` / ``need_dw``."""
    need_db = deprecated_alias(need_bias, "need_bias", need_db, "need_db")
    need_dw = deprecated_alias(need_weight, "need_weight", need_dw, "need_dw")
    be = _be(backend)
    x_, w_, _, geometry = _conv_args(be, x, weight, None, stride, padding, dilation, groups)
    _check_conv_output(be, dy, "dy", x_, w_, geometry)
    return be.conv2d_backward(dy, x_, w_, *geometry, need_dx=need_dx, need_db=need_db, need_dw=need_dw)


def conv2d_output_shape(x_shape: Sequence[int], w_shape: Sequence[int], stride: tuple[int, int],
                        padding: tuple[int, int, int, int], dilation: tuple[int, int],
                        groups: int = 1) -> tuple[int, int, int, int]:
    """(N, K, OH, OW) of a conv with normalised geometry."""
    n, _, h, w = x_shape
    k, _, r, s = w_shape
    return (n, k, conv_output_size(h, r, stride[0], padding[0], padding[1], dilation[0]),
            conv_output_size(w, s, stride[1], padding[2], padding[3], dilation[1]))


def _check_conv_output(be, a: Array, name: str, x: Array, weight: Array, geometry) -> None:
    """``a`` (dy, or a residual) must be a 4-D array of backend ``be`` with x's dtype and the conv's output shape."""
    check_array(be, a, name, ndim=4)
    same_dtype(x, a, name)
    expected = conv2d_output_shape(x.shape, weight.shape, *geometry)
    if tuple(a.shape) != expected:
        raise ValueError(f"{name} must have the conv output shape {expected}, got {tuple(a.shape)}")


def _conv_args(be, x, weight, bias, stride, padding, dilation, groups):
    check_array(be, x, "x", ndim=4)
    check_array(be, weight, "weight", ndim=4)
    same_dtype(x, weight, "weight")
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    if not is_int(groups):
        raise TypeError(f"groups must be a positive int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    n, c, h, w = x.shape
    k, cg, r, s = weight.shape
    if min(c, k, cg, r, s) < 1:
        raise ValueError(f"x {tuple(x.shape)} and weight {tuple(weight.shape)} must have no empty channel or "
                         "kernel dimension")
    if c % groups or k % groups:
        raise ValueError(f"groups={groups} must divide both in_channels={c} and out_channels={k}")
    if cg * groups != c:
        raise ValueError(f"channel mismatch: x has {c} channels but weight {tuple(weight.shape)} expects "
                         f"{cg * groups} (weight is (out_channels, in_channels/groups, kh, kw), groups={groups})")
    pads = conv_padding(padding, (r, s), dilation, stride)
    if h + pads[0] + pads[1] < dilation[0] * (r - 1) + 1 or w + pads[2] + pads[3] < dilation[1] * (s - 1) + 1:
        raise ValueError(f"kernel {r}x{s} (dilation {dilation}) is larger than the padded input "
                         f"{h + pads[0] + pads[1]}x{w + pads[2] + pads[3]}")
    if n < 1:
        raise ValueError("x must hold at least one sample (batch size >= 1)")
    if bias is not None:
        check_array(be, bias, "bias", ndim=1)
        same_dtype(x, bias, "bias")
        if bias.shape[0] != k:
            raise ValueError(f"bias must have shape ({k},), got {tuple(bias.shape)}")
    return x, weight, bias, ConvGeometry(stride, pads, dilation, groups)


# ----------------------------------------------------------------------------------------------- pooling
def _pool_args(be, x, kernel_size, stride, padding, dilation=1):
    check_array(be, x, "x", ndim=4)
    return _pool_geometry(x.shape, kernel_size, stride, padding, dilation)


def _pool_geometry(x_shape, kernel_size, stride, padding, dilation=1):
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding", minimum=0)
    dilation = pair(dilation, "dilation")
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel} (as in PyTorch)")
    _, _, h, w = x_shape
    if any(size + 2 * p < d * (k - 1) + 1 for size, p, d, k in zip((h, w), padding, dilation, kernel)):
        raise ValueError(f"kernel_size {kernel} is larger than the padded input {h + 2 * padding[0]}x"
                         f"{w + 2 * padding[1]}")
    return kernel, stride, padding, dilation


def pool2d_output_shape(x_shape, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    """(N, C, OH, OW) of a pooling op with normalised geometry."""
    n, c, h, w = x_shape
    return (n, c, pool_output_size(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode),
            pool_output_size(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode))


def max_pool2d(x: Array, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               dilation: IntPair = 1, ceil_mode: bool = False, *,
               backend: str | Backend | None = None) -> tuple[Array, Array]:
    """Max pooling; returns (y, argmax indices) as PyTorch's return_indices=True."""
    be = _be(backend)
    geometry = _pool_args(be, x, kernel_size, stride, padding, dilation)
    return be.max_pool2d_forward(x, *geometry, bool(ceil_mode))


def max_pool2d_backward(dy: Array, indices: Array, x_shape: Sequence[int], *,
                        backend: str | Backend | None = None) -> Array:
    """Gradient of max_pool2d: dy routed to the argmax positions."""
    be = _be(backend)
    check_array(be, dy, "dy", ndim=4)
    check_array(be, indices, "indices", floating=False)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be the integer argmax array from max_pool2d, got dtype {indices.dtype}")
    if tuple(indices.shape) != tuple(dy.shape):
        raise ValueError(f"indices shape {tuple(indices.shape)} must equal dy shape {tuple(dy.shape)}")
    x_shape = shape4(x_shape, "x_shape")
    if x_shape[:2] != tuple(dy.shape[:2]):
        raise ValueError(f"x_shape {x_shape} and dy {tuple(dy.shape)} must agree on batch and channels")
    return be.max_pool2d_backward(dy, indices, x_shape)


def avg_pool2d(x: Array, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, *,
               backend: str | Backend | None = None) -> Array:
    """Average pooling (PyTorch semantics for padding, ceil_mode and count_include_pad)."""
    be = _be(backend)
    kernel, stride, padding, _ = _pool_args(be, x, kernel_size, stride, padding)
    return be.avg_pool2d_forward(x, kernel, stride, padding, bool(ceil_mode), bool(count_include_pad))


def avg_pool2d_backward(dy: Array, x_shape: Sequence[int], kernel_size: IntPair, stride: IntPair | None = None,
                        padding: IntPair = 0, ceil_mode: bool = False, count_include_pad: bool = True, *,
                        activation: str | None = None, y: Array | None = None, negative_slope: float = 0.01,
                        backend: str | Backend | None = None) -> Array:
    """Gradient of avg_pool2d; with ``activation`` and its output ``y`` (the pool's input), that of the activation's
    input: activation_backward of the pool's gradient, in one call (one pass where the backend fuses it)."""
    be = _be(backend)
    check_array(be, dy, "dy", ndim=4)
    x_shape = shape4(x_shape, "x_shape")
    kernel, stride, padding, _ = _pool_geometry(x_shape, kernel_size, stride, padding)
    check_dy(dy, pool2d_output_shape(x_shape, kernel, stride, padding, (1, 1), bool(ceil_mode)))
    activation, negative_slope = activation_before_pool(be, activation, y, negative_slope, dy, x_shape)
    return be.avg_pool2d_backward(dy, x_shape, kernel, stride, padding, bool(ceil_mode), bool(count_include_pad),
                                  activation=activation, y=y, negative_slope=negative_slope)


def lp_pool2d(x: Array, norm_type: float, kernel_size: IntPair, stride: IntPair | None = None,
              padding: IntPair = 0, ceil_mode: bool = False, *, backend: str | Backend | None = None) -> Array:
    """Power-average (Lp) pooling: (sum |x|^p)^(1/p) over each window; p=2 is L2 pooling."""
    be = _be(backend)
    kernel, stride, padding, _ = _pool_args(be, x, kernel_size, stride, padding)
    return be.lp_pool2d_forward(x, lp_norm_type(norm_type), kernel, stride, padding, bool(ceil_mode))


def lp_pool2d_backward(dy: Array, x: Array, y: Array, norm_type: float, kernel_size: IntPair,
                       stride: IntPair | None = None, padding: IntPair = 0, ceil_mode: bool = False, *,
                       backend: str | Backend | None = None) -> Array:
    """Gradient of lp_pool2d, given its input x and output y."""
    be = _be(backend)
    kernel, stride, padding, _ = _pool_args(be, x, kernel_size, stride, padding)
    check_array(be, dy, "dy", ndim=4)
    check_dy(dy, pool2d_output_shape(x.shape, kernel, stride, padding, (1, 1), bool(ceil_mode)))
    check_like(be, y, "y", dy, "dy")
    same_dtype(x, dy, "dy")
    return be.lp_pool2d_backward(dy, x, y, lp_norm_type(norm_type), kernel, stride, padding, bool(ceil_mode))


def feature_pool(x: Array, group_size: int, *, backend: str | Backend | None = None) -> Array:
    """L2 pooling across feature maps: channel c of the output is the L2 norm of input channels
    [c*g, (c+1)*g) at each pixel (plain array algebra, the same on every backend)."""
    be = _be(backend)
    check_array(be, x, "x", ndim=4)
    n, c, h, w = x.shape
    if not isinstance(group_size, int) or group_size < 1 or c % group_size:
        raise ValueError(f"group_size must be a positive int dividing the {c} channels, got {group_size!r}")
    return be.xp.sqrt((x.reshape(n, c // group_size, group_size, h, w) ** 2).sum(axis=2))


def feature_pool_backward(dy: Array, x: Array, y: Array, group_size: int) -> Array:
    """Gradient of feature_pool: dx = dy * x / y (0 where y is 0)."""
    n, c, h, w = x.shape
    scale = dy / (y + (y == 0))
    return (x.reshape(n, c // group_size, group_size, h, w) * scale[:, :, None]).reshape(n, c, h, w)


def global_avg_pool2d(x: Array, *, backend: str | Backend | None = None) -> Array:
    """Mean over each feature map: (N, C, H, W) -> (N, C)."""
    be = _be(backend)
    check_array(be, x, "x", ndim=4)
    return x.mean(axis=(2, 3))


def global_avg_pool2d_backward(dy: Array, x_shape: Sequence[int], *,
                               backend: str | Backend | None = None) -> Array:
    """Gradient of global_avg_pool2d: dy spread evenly over each map."""
    be = _be(backend)
    x_shape = shape4(x_shape, "x_shape")
    check_array(be, dy, "dy", ndim=2)
    check_dy(dy, x_shape[:2])
    h, w = x_shape[2], x_shape[3]
    return be.xp.broadcast_to((dy / (h * w))[:, :, None, None], tuple(x_shape)).copy()


# ----------------------------------------------------------------------------------------------- activations
def activation(x: Array, kind: str, negative_slope: float = 0.01, *,
               backend: str | Backend | None = None) -> Array:
    """Elementwise activation ``kind`` (relu, leaky_relu, sigmoid, tanh, scaled_tanh)."""
    be = _be(backend)
    check_array(be, x, "x")
    return be.activation_forward(x, activation_kind(kind), negative_slope_value(negative_slope))


def activation_backward(dy: Array, y: Array, kind: str, negative_slope: float = 0.01, *,
                        backend: str | Backend | None = None) -> Array:
    """Gradient of ``activation`` from its output y."""
    be = _be(backend)
    check_array(be, dy, "dy")
    check_like(be, y, "y", dy, "dy")
    return be.activation_backward(dy, y, activation_kind(kind), negative_slope_value(negative_slope))


def add(a: Array, b: Array, activation: str | None = None, negative_slope: float = 0.01, *,
        backend: str | Backend | None = None) -> Array:
    """activation(a + b) elementwise in one pass (a residual sum and the activation after it); a plain sum
    when ``activation`` is None. a and b must have one shape and dtype."""
    be = _be(backend)
    check_array(be, a, "a")
    check_like(be, b, "b", a, "a")
    return be.add_forward(a, b, activation_name(activation), negative_slope_value(negative_slope))


def relu(x: Array, *, backend: str | Backend | None = None) -> Array:
    return activation(x, "relu", backend=backend)


def leaky_relu(x: Array, negative_slope: float = 0.01, *, backend: str | Backend | None = None) -> Array:
    return activation(x, "leaky_relu", negative_slope, backend=backend)


def sigmoid(x: Array, *, backend: str | Backend | None = None) -> Array:
    return activation(x, "sigmoid", backend=backend)


def tanh(x: Array, *, backend: str | Backend | None = None) -> Array:
    return activation(x, "tanh", backend=backend)


def scaled_tanh(x: Array, *, backend: str | Backend | None = None) -> Array:
    """LeCun's 1.7159 * tanh(2x/3)."""
    return activation(x, "scaled_tanh", backend=backend)


def softmax(x: Array, *, backend: str | Backend | None = None) -> Array:
    """Softmax over the classes of (N, C) scores."""
    be = _be(backend)
    check_array(be, x, "x", ndim=2)
    return be.softmax_forward(x)


def log_softmax(x: Array, *, backend: str | Backend | None = None) -> Array:
    """log(softmax(x)) over the classes of (N, C) scores, computed stably."""
    be = _be(backend)
    check_array(be, x, "x", ndim=2)
    return be.log_softmax_forward(x)


def softmax_backward(dy: Array, y: Array, *, backend: str | Backend | None = None) -> Array:
    be = _be(backend)
    check_array(be, dy, "dy", ndim=2)
    check_like(be, y, "y", dy, "dy")
    return be.softmax_backward(dy, y)


def log_softmax_backward(dy: Array, y: Array, *, backend: str | Backend | None = None) -> Array:
    be = _be(backend)
    check_array(be, dy, "dy", ndim=2)
    check_like(be, y, "y", dy, "dy")
    return be.log_softmax_backward(dy, y)


# ----------------------------------------------------------------------------------------------- others
def batch_norm(x: Array, weight: Array, bias: Array, running_mean: Array, running_var: Array,
               training: bool = True, momentum: float = 0.1, eps: float = 1e-5, activation: str | None = None, *,
               backend: str | Backend | None = None) -> tuple[Array, Any]:
    """Batch norm over the channels of NCHW, then ``activation`` (None or "relu") in the same pass; returns (y,
    saved) where saved feeds batch_norm_backward, which then takes dy of the activation's output."""
    be = _be(backend)
    momentum, eps = batch_norm_args(be, x, (weight, bias, running_mean, running_var), training, momentum, eps,
                                    activation)
    return be.batch_norm_forward(x, weight, bias, running_mean, running_var, bool(training), float(momentum),
                                 float(eps), activation=activation)


def batch_norm_backward(dy: Array, saved: Any, weight: Array, *,
                        backend: str | Backend | None = None) -> tuple[Array, Array, Array]:
    """Gradients (dx, dweight, dbias) of batch_norm, from dy of what it returned."""
    be = _be(backend)
    check_array(be, dy, "dy", ndim=4)
    check_array(be, weight, "weight", ndim=1)
    if weight.shape[0] != dy.shape[1]:
        raise ValueError(f"weight has {weight.shape[0]} channels but dy has {dy.shape[1]}")
    return be.batch_norm_backward(dy, saved, weight)


def dropout_mask(shape: Sequence[int], p: float, seed: int, dtype: Any = "float32", offset: int = 0, *,
                 backend: str | Backend | None = None) -> Array:
    """Inverted-dropout mask: 0 with probability p, else 1/(1-p); the same seed gives the same mask. ``offset``
    (an int >= 0) starts it at that element of the seed's sequence: the slice of a bigger mask (a rank's rows
    of a data-parallel batch, see the op contract)."""
    be = _be(backend)
    shape, p, seed, offset = dropout_args(shape, p, seed, offset)
    dtype = be.xp.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return be.dropout_mask(shape, p, seed, dtype, offset)


def linear(x: Array, weight: Array, bias: Array | None = None, *,
           backend: str | Backend | None = None) -> Array:
    """y = x @ weight.T + bias, weight (out_features, in_features) as PyTorch."""
    be = _be(backend)
    check_array(be, x, "x", ndim=2)
    check_array(be, weight, "weight", ndim=2)
    same_dtype(x, weight, "weight")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features but weight {tuple(weight.shape)} expects {weight.shape[1]}")
    if bias is not None:
        check_array(be, bias, "bias", ndim=1)
        same_dtype(x, bias, "bias")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return be.linear_forward(x, weight, bias)


def linear_backward(dy: Array, x: Array, weight: Array, need_db: bool = True, need_dx: bool = True,
                    need_dw: bool = True, *, need_bias: bool | None = None,
                    backend: str | Backend | None = None) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients (dx, dweight, dbias) of linear, each None where not needed (``need_bias`` is the deprecated
    name of ``need_db``)."""
    need_db = deprecated_alias(need_bias, "need_bias", need_db, "need_db")
    be = _be(backend)
    check_array(be, dy, "dy", ndim=2)
    if tuple(dy.shape) != (x.shape[0], weight.shape[0]):
        raise ValueError(f"dy must have shape {(x.shape[0], weight.shape[0])} (batch, out_features), "
                         f"got {tuple(dy.shape)}")
    return be.linear_backward(dy, x, weight, need_dx, need_dw, need_db)


def softmax_cross_entropy(logits: Array, labels: Array, *,
                          backend: str | Backend | None = None) -> tuple[Array, Array]:
    """Mean softmax cross-entropy of (N, C) logits against int labels; returns (loss 0-d array, dlogits)."""
    be = _be(backend)
    check_array(be, logits, "logits", ndim=2)
    check_labels(be, labels, logits)
    return be.softmax_cross_entropy(logits, labels)
