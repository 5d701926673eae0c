"""The op contract: every kernel op a backend provides, with its signature and meaning, written once.

Every backend package (``cnnkit.backends.numpy``, ``.numba``, ``.cupy``) fills in exactly these ops, under these
names, in modules of the same names (``conv``, ``pool``, ``activation``, ``norm``, ``loss``), and exposes
``create() -> Backend`` plus ``unavailable_reason() -> str | None``.

Conventions shared by all ops
-----------------------------
* Arrays are the backend's own (numpy.ndarray or cupy.ndarray), NCHW, float32 or float64 (cupy: float32).
  Outputs have the input's dtype. Inputs may be non-contiguous; ops never modify their inputs except the
  running statistics of ``batch_norm_forward``.
* Arguments arrive already validated and normalised by :mod:`cnnkit.functional` (kernels do not re-check):
  ``stride``, ``dilation``, ``kernel_size`` are ``(h, w)`` tuples of ints >= 1; conv ``padding`` is
  ``(top, bottom, left, right)`` ints >= 0; pooling ``padding`` is ``(h, w)``, applied on both sides.
* Output sizes come from :func:`conv_output_size` and :func:`pool_output_size` below, the one definition.
* Conv is cross-correlation (PyTorch's conv2d); weights are ``(K, C // groups, R, S)``.
* ``activation`` names one of :data:`ACTIVATIONS` or is ``None``.

The ops
-------
conv2d_forward(x, w, b, stride, padding, dilation, groups, activation=None) -> y
    y = act(conv(x, w) + b); ``b`` is a (K,) array or None. ``activation`` is the fused epilogue.
conv2d_backward(dy, x, w, stride, padding, dilation, groups, need_dx=True, need_db=True, need_dw=True)
        -> (dx, dw, db)
    Gradients of the pre-activation conv output ``dy`` (N, K, OH, OW). Each is None, and not computed, unless
    its ``need_*`` flag is set (a frozen conv skips its weight gradient).
max_pool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode) -> (y, argmax)
    PyTorch max_pool2d; padding counts as -inf. ``argmax`` (int64 array, y's shape) is the flat index
    ``h * W + w`` into the unpadded input plane, as PyTorch's return_indices (first maximum on ties).
max_pool2d_backward(dy, argmax, x_shape) -> dx
    Scatter-adds dy to the argmax positions.
avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad) -> y
    PyTorch avg_pool2d: divisor counts padding cells when count_include_pad, never cells past the padded
    input that ceil_mode adds.
avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad) -> dx
lp_pool2d_forward(x, p, kernel_size, stride, padding, ceil_mode) -> y
    y = (sum over the window of |x| ** p) ** (1 / p); padding cells are zeros. p = 2 is L2 pooling.
lp_pool2d_backward(dy, x, y, p, kernel_size, stride, padding, ceil_mode) -> dx
    dx = sum over windows of dy * sign(x) * |x| ** (p - 1) / y ** (p - 1); windows with y == 0 give 0.
activation_forward(x, kind, negative_slope=0.01) -> y
    relu, leaky_relu, sigmoid, tanh, or scaled_tanh (LeCun: 1.7159 * tanh(2x / 3)).
activation_backward(dy, y, kind, negative_slope=0.01) -> dx
    From the output y alone (so a fused conv epilogue needs nothing else); negative_slope >= 0.
softmax_forward(x) -> y ;  log_softmax_forward(x) -> y
    Over axis 1 of an (N, C) array, numerically stable (max subtracted).
softmax_backward(dy, y) -> dx ;  log_softmax_backward(dy, y) -> dx
dropout_mask(shape, p, seed, dtype) -> mask
    Inverted dropout: each element is 0 with probability p, else 1 / (1 - p). Same seed -> same mask.
batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps) -> (y, saved)
    Per channel of NCHW. Training: batch mean and biased variance normalise; running_mean and running_var
    are updated in place (running = (1 - momentum) * running + momentum * batch, unbiased variance), as
    PyTorch. Eval: the running statistics normalise. ``saved`` is opaque, for the backward.
batch_norm_backward(dy, saved, gamma) -> (dx, dgamma, dbeta)
softmax_cross_entropy(logits, labels) -> (loss, dlogits)
    logits (N, C), labels int (N,) in [0, C). loss is a 0-d array: mean over the batch of
    -log softmax(logits)[label]; dlogits is its gradient, (softmax - onehot) / N.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import Any, Callable

OPS: tuple[str, ...] = (
    "conv2d_forward", "conv2d_backward",
    "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward",
    "lp_pool2d_forward", "lp_pool2d_backward",
    "activation_forward", "activation_backward",
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
    "dropout_mask",
    "batch_norm_forward", "batch_norm_backward",
    "softmax_cross_entropy",
)
"""Every kernel op, by name; the module docstring gives each one's signature and meaning."""

ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "sigmoid", "tanh", "scaled_tanh")
"""Elementwise activations a backend implements (and may fuse into the conv epilogue)."""

SCALED_TANH_A = 1.7159
SCALED_TANH_S = 2.0 / 3.0
"""LeCun's scaled tanh: A * tanh(S * x)."""

BACKEND_NAMES: tuple[str, ...] = ("numpy", "numba", "cupy", "cudasim")
BENCHMARK_BACKENDS: tuple[str, ...] = ("numpy", "numba", "cupy")
"""What ``cnnkit bench --backends all`` and the asv suite run by default: cudasim (the cupy kernels on a CPU
simulator) exists to check kernels, not to be fast."""

INSTALL_HINTS: dict[str, str] = {
    "numpy": "pip install cnnkit",
    "numba": "pip install 'cnnkit[numba]'",
    "cupy": "pip install 'cnnkit[cuda]' (and an NVIDIA GPU with a working driver)",
    "cudasim": "install a C++20 compiler (g++ >= 10, or set CXX); no GPU or CuPy is needed",
}


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int, dilation: int) -> int:
    """Output length of a convolution along one axis (PyTorch's formula)."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of a pooling window along one axis, PyTorch's rule: with ceil_mode the last window
    may hang past the input but must start inside the input or the left padding."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


@dataclass(frozen=True)
class Backend:
    """One engine: its array module, its op table and its host/device transfers."""

    name: str
    xp: ModuleType
    ops: SimpleNamespace = field(repr=False)
    array_type: type = field(repr=False)
    device: str = "cpu"
    to_numpy: Callable[[Any], Any] = field(repr=False, default=None)  # type: ignore[assignment]
    synchronize: Callable[[], None] = field(repr=False, default=lambda: None)

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """``a`` as this backend's array (copied to the device where needed)."""
        if not isinstance(a, self.array_type) and hasattr(a, "get"):  # a cupy array going to a CPU backend
            a = a.get()
        return self.xp.asarray(a, dtype=dtype)

    def is_native(self, a: Any) -> bool:
        """True when ``a`` is an array this backend computes on directly."""
        return isinstance(a, self.array_type)

    def __getattr__(self, op: str) -> Callable[..., Any]:
        """``backend.conv2d_forward(...)`` is ``backend.ops.conv2d_forward(...)``."""
        if op in OPS:
            return getattr(self.ops, op)
        raise AttributeError(op)


def collect_ops(backend_name: str, *modules: ModuleType) -> SimpleNamespace:
    """The op table of a backend, gathered from its modules; a missing op is an error, not a fallback."""
    table = {}
    for op in OPS:
        impl = next((getattr(m, op) for m in modules if hasattr(m, op)), None)
        if impl is None:
            raise NotImplementedError(f"backend {backend_name!r} does not implement op {op!r}")
        table[op] = impl
    return SimpleNamespace(**table)
