"""The op contract: every kernel op a backend provides, with its signature and meaning, written once.

Every backend package (``cnnkit.backends.numpy``, ``.numba``, ``.cupy``; ``.cudasim`` runs cupy's) fills in
exactly these ops, under these names, in modules of the same names (``conv``, ``linear``, ``pool``, ``activation``,
``norm``, ``dropout``, ``loss``, ``optim``), and exposes ``create() -> Backend`` plus
``unavailable_reason() -> str | None``.

Conventions shared by all ops
-----------------------------
* Arrays are the backend's own (numpy.ndarray or cupy.ndarray), NCHW, float32 or float64 (cupy: float32).
  Outputs have the input's dtype. Inputs may be non-contiguous; ops never modify their inputs except the
  running statistics of ``batch_norm_forward`` and the parameter and momentum buffer of ``sgd_step``.
* Arguments arrive already validated and normalised by :mod:`cnnkit.functional` (kernels do not re-check):
  ``stride``, ``dilation``, ``kernel_size`` are ``(h, w)`` tuples of ints >= 1; conv ``padding`` is
  ``(top, bottom, left, right)`` ints >= 0; pooling ``padding`` is ``(h, w)``, applied on both sides.
* Output sizes come from :func:`conv_output_size` and :func:`pool_output_size` below, the one definition.
* Conv is cross-correlation (PyTorch's conv2d); weights are ``(K, C // groups, R, S)``.
* ``activation`` names one of :data:`ACTIVATIONS` or is ``None``.

The ops
-------
:data:`OPS` maps each op's name to its :class:`OpSpec`: the signature, the meaning and one example call, written
below as stub functions (read them as the contract). A backend registers each implementation where it is
defined, with ``@implements("<backend>")``, which checks its parameters against the spec; ``create()`` gathers
them with :func:`collect_ops`, where a missing op is an error. The numba warmup and the op benchmarks run the
examples.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import Any, Callable, NamedTuple, TypeVar

ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "sigmoid", "tanh", "scaled_tanh")
"""Elementwise activations a backend implements (and may fuse into the conv epilogue)."""

SCALED_TANH_A = 1.7159
SCALED_TANH_S = 2.0 / 3.0
"""LeCun's scaled tanh: A * tanh(S * x)."""
ACTIVATION_CODES: dict[str | None, int] = {None: 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4,
                                           "scaled_tanh": 5}
"""The integer each compiled kernel switches on (numba's epilogues, common.cuh's ACT_*; tests check common.cuh)."""
BATCH_NORM_ACTIVATIONS: tuple[str, ...] = ("relu",)
"""Activations batch_norm_forward can apply in its own pass (those whose derivative the output's sign gives)."""
LEAKY_SLOPE = 0.01
"""leaky_relu's default negative_slope, and the slope of a leaky_relu fused into conv2d_forward (no argument)."""
assert set(ACTIVATION_CODES) == {None, *ACTIVATIONS}

BACKEND_NAMES: tuple[str, ...] = ("numpy", "numba", "cupy", "cudasim")
BENCHMARK_BACKENDS: tuple[str, ...] = ("numpy", "numba", "cupy")
"""What ``cnnkit bench --backends all`` and the asv suite run by default: cudasim (the cupy kernels on a CPU
simulator) exists to check kernels, not to be fast."""

INSTALL_HINTS: dict[str, str] = {
    "numpy": "pip install cnnkit",
    "numba": "pip install 'cnnkit[numba]'",
    "cupy": "pip install 'cnnkit[cuda12]' (CUDA 12) or 'cnnkit[cuda13]' (CUDA 13), and an NVIDIA GPU with a driver",
    "cudasim": "install a C++20 compiler (g++ >= 10, or set CXX); no GPU or CuPy is needed",
}


class ConvGeometry(NamedTuple):
    """A conv's geometry as the ops take it (unpacked, in this order, after the arrays): normalised by
    :mod:`cnnkit.functional`."""

    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    dilation: tuple[int, int]
    groups: int


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
    capture: Callable[[Callable[[], None]], Callable[[], None]] | None = field(repr=False, default=None)
    """Records a callable's device work once and returns its replay (cupy: a CUDA graph); None: no graphs."""

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


# ------------------------------------------------------------------------------------------------ op specs
Example = Callable[[SimpleNamespace, Callable[..., Any]], tuple[tuple, dict]]
"""example(ops, make) -> (args, kwargs): one call of an op, with ``make(*shape)`` giving a random input array of
the backend and dtype in use, and ``ops`` the backend's op table (a backward example runs its forward)."""


@dataclass(frozen=True)
class OpSpec:
    """One op of the contract: its name, signature and meaning, and an example call."""

    name: str
    signature: inspect.Signature
    doc: str
    example: Example = field(repr=False)


OPS: dict[str, OpSpec] = {}
"""Every kernel op, by name, in the order below."""


def _op(example: Example) -> Callable[[Callable[..., Any]], OpSpec]:
    def define(stub: Callable[..., Any]) -> OpSpec:
        spec = OpSpec(stub.__name__, inspect.signature(stub), inspect.getdoc(stub) or "", example)
        OPS[spec.name] = spec
        return spec
    return define


_CONV = ((1, 1), (1, 1, 1, 1), (1, 1), 1)      # stride, padding, dilation, groups of the conv examples
_POOL = ((2, 2), (2, 2), (0, 0))               # kernel_size, stride, padding of the pooling examples


@_op(lambda ops, make: ((make(2, 3, 8, 8), make(4, 3, 3, 3), make(4), *_CONV),
                       {"activation": "relu", "residual": make(2, 4, 8, 8)}))
def conv2d_forward(x, w, b, stride, padding, dilation, groups, activation=None, residual=None):
    """y = act(conv(x, w) + b + residual); ``b`` is a (K,) array or None, ``residual`` one of y's shape and dtype
    or None (a residual block's shortcut, added before the activation: ``(conv + b) + residual``, as
    add_forward would on the conv's output). ``activation`` is the fused epilogue."""


@_op(lambda ops, make: ((make(2, 4, 8, 8), make(2, 3, 8, 8), make(4, 3, 3, 3), *_CONV), {}))
def conv2d_backward(dy, x, w, stride, padding, dilation, groups, need_dx=True, need_db=True, need_dw=True):
    """(dx, dw, db): gradients of the pre-activation conv output's gradient ``dy`` (N, K, OH, OW). Each is None,
    and not computed, unless its ``need_*`` flag is set (a frozen conv skips its weight gradient)."""


CONV_POOL = ((2, 2), (2, 2), (0, 0), False, True)
"""The pool of conv2d_pool_forward, as avg_pool2d_forward's arguments after x: 2x2, stride 2, no padding."""


@_op(lambda ops, make: ((make(2, 3, 9, 10), make(4, 3, 3, 3), make(4), *_CONV), {"activation": "tanh"}))
def conv2d_pool_forward(x, w, b, stride, padding, dilation, groups, activation=None, keep=True):
    """(y, pooled): y = conv2d_forward(x, w, b, stride, padding, dilation, groups, activation), or None unless
    ``keep`` (a training step's activation backward reads it), and pooled = avg_pool2d_forward(y, *CONV_POOL):
    a conv, its activation and LeNet's 2x2 subsampling in one call. The conv's output is at least 2x2."""


@_op(lambda ops, make: ((make(2, 3, 8, 8), *_POOL, (1, 1), False), {}))
def max_pool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode):
    """(y, argmax): PyTorch max_pool2d; padding counts as -inf. ``argmax`` (int64 array, y's shape) is the flat
    index ``h * W + w`` into the unpadded input plane, as PyTorch's return_indices (first maximum on ties)."""


def _max_pool_backward(ops, make):
    x = make(2, 3, 8, 8)
    y, argmax = ops.max_pool2d_forward(x, *_POOL, (1, 1), False)
    return (y, argmax, x.shape), {}


@_op(_max_pool_backward)
def max_pool2d_backward(dy, argmax, x_shape):
    """dx: dy scatter-added to the argmax positions."""


@_op(lambda ops, make: ((make(2, 3, 8, 8), *_POOL, False, True), {}))
def avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    """PyTorch avg_pool2d: the divisor counts padding cells when count_include_pad, never cells past the padded
    input that ceil_mode adds."""


@_op(lambda ops, make: ((make(2, 3, 4, 4), (2, 3, 8, 8), *_POOL, False, True),
                        {"activation": "tanh", "y": ops.activation_forward(make(2, 3, 8, 8), "tanh")}))
def avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad, activation=None,
                        y=None, negative_slope=LEAKY_SLOPE):
    """dx of avg_pool2d_forward. With ``activation`` and ``y``, that activation's output (the pool's input, of
    shape x_shape and dy's dtype): the gradient of the activation's input instead, activation_backward(dx, y,
    activation, negative_slope): an activation-then-pool pair's two backward passes in one."""


@_op(lambda ops, make: ((make(2, 3, 8, 8), 2.0, *_POOL, False), {}))
def lp_pool2d_forward(x, p, kernel_size, stride, padding, ceil_mode):
    """y = (sum over the window of |x| ** p) ** (1 / p); padding cells are zeros. p = 2 is L2 pooling."""


def _lp_pool_backward(ops, make):
    x = make(2, 3, 8, 8)
    y = ops.lp_pool2d_forward(x, 2.0, *_POOL, False)
    return (make(*y.shape), x, y, 2.0, *_POOL, False), {}


@_op(_lp_pool_backward)
def lp_pool2d_backward(dy, x, y, p, kernel_size, stride, padding, ceil_mode):
    """dx = sum over windows of dy * sign(x) * |x| ** (p - 1) / y ** (p - 1); windows with y == 0 give 0."""


@_op(lambda ops, make: ((make(2, 3, 8, 8), "tanh"), {}))
def activation_forward(x, kind, negative_slope=LEAKY_SLOPE):
    """relu, leaky_relu, sigmoid, tanh, or scaled_tanh (LeCun: 1.7159 * tanh(2x / 3)), elementwise."""


@_op(lambda ops, make: ((make(2, 3, 8, 8), ops.activation_forward(make(2, 3, 8, 8), "tanh"), "tanh"), {}))
def activation_backward(dy, y, kind, negative_slope=LEAKY_SLOPE):
    """dx from the output y alone (so a fused conv epilogue needs nothing else); negative_slope >= 0."""


@_op(lambda ops, make: ((make(2, 3, 8, 8), make(2, 3, 8, 8)), {"activation": "relu"}))
def add_forward(a, b, activation=None, negative_slope=LEAKY_SLOPE):
    """activation(a + b) elementwise, a and b of one shape and dtype (None: the plain sum): a residual block's
    sum and the activation after it in one pass."""


@_op(lambda ops, make: ((make(4, 6), make(3, 6), make(3)), {}))
def linear_forward(x, w, b):
    """y = x @ w.T + b for x (N, C), w (K, C) (PyTorch's Linear layout) and b (K,) or None."""


@_op(lambda ops, make: ((make(4, 3), make(4, 6), make(3, 6)), {}))
def linear_backward(dy, x, w, need_dx=True, need_dw=True, need_db=True):
    """(dx, dw, db) of linear_forward: dy @ w, dy.T @ x and the sum of dy's rows, each None where not needed."""


@_op(lambda ops, make: ((make(4, 10),), {}))
def softmax_forward(x):
    """Softmax over axis 1 of an (N, C) array, numerically stable (max subtracted)."""


@_op(lambda ops, make: ((make(4, 10), ops.softmax_forward(make(4, 10))), {}))
def softmax_backward(dy, y):
    """dx = y * (dy - sum(dy * y)) per row."""


@_op(lambda ops, make: ((make(4, 10),), {}))
def log_softmax_forward(x):
    """Log-softmax over axis 1 of an (N, C) array: (x - max) - log(sum(exp(x - max)))."""


@_op(lambda ops, make: ((make(4, 10), ops.log_softmax_forward(make(4, 10))), {}))
def log_softmax_backward(dy, y):
    """dx = dy - exp(y) * sum(dy) per row."""


@_op(lambda ops, make: (((2, 3, 8, 8), 0.5, 7, make(1).dtype), {}))
def dropout_mask(shape, p, seed, dtype, offset=0):
    """Inverted dropout: each element is 0 with probability p, else 1 / (1 - p). Same seed -> same mask.
    ``offset`` (an int >= 0): the mask's first element is element ``offset`` of the seed's sequence, so the mask
    of shape (n, ...) at offset r * prod(...) equals rows r to r + n of a bigger mask of the same seed (a rank's
    share of a data-parallel batch)."""


@_op(lambda ops, make: ((make(2, 3, 8, 8), make(3), make(3), make(3) * 0, make(3) ** 2 + 1, True, 0.1, 1e-5),
                        {"activation": "relu"}))
def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, activation=None):
    """(y, saved) per channel of NCHW. Training: batch mean and biased variance normalise; running_mean and
    running_var are updated in place (running = (1 - momentum) * running + momentum * batch, unbiased variance),
    as PyTorch. Eval: the running statistics normalise. ``activation`` (None or one of
    :data:`BATCH_NORM_ACTIVATIONS`) is applied to the normalised output in the same pass, exactly as the separate
    op would (relu(NaN) is NaN); the backward then takes dy of the activation's output and applies its derivative
    (0 where y <= 0) itself. ``saved`` is opaque, for the backward."""


def _batch_norm_backward(ops, make):
    weight = make(3)
    _, saved = ops.batch_norm_forward(make(2, 3, 8, 8), weight, make(3), make(3) * 0, make(3) ** 2 + 1, True, 0.1, 1e-5)
    return (make(2, 3, 8, 8), saved, weight), {}


@_op(_batch_norm_backward)
def batch_norm_backward(dy, saved, weight):
    """(dx, dweight, dbias) of batch_norm_forward (weight and bias are PyTorch's names for gamma and beta); dy
    is the gradient of what the forward returned (after its activation, if it applied one)."""


@_op(lambda ops, make: ((make(4, 10), (make(4) > 0).astype("int64") * 3), {}))
def softmax_cross_entropy(logits, labels):
    """(loss, dlogits): logits (N, C), labels int (N,) in [0, C). loss is a 0-d array: mean over the batch of
    -log softmax(logits)[label]; dlogits is its gradient, (softmax - onehot) / N."""


@_op(lambda ops, make: ((make(3, 4), make(3, 4), make(3, 4), 0.1, 0.9, 0.0, 0.01, False, False), {}))
def sgd_step(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov, first):
    """One step of SGD on one parameter, in place, as torch.optim.SGD: with g = grad + weight_decay * param (grad
    itself when weight_decay is 0), the contiguous momentum buffer becomes g on the ``first`` step, else
    buffer * momentum + (1 - dampening) * g (+ g when dampening is 0); then param -= lr * (g + momentum * buffer
    if nesterov else buffer). Without momentum, momentum_buffer is None and param -= lr * g. The scalars are
    taken in the arrays' dtype and each product and sum rounds on its own, in that order (no fused multiply-add),
    so every backend gives the bits of NumPy's array arithmetic. Returns (param, momentum_buffer)."""


# ------------------------------------------------------------------------------------------------ registration
_IMPLEMENTATIONS: dict[str, dict[str, Callable[..., Any]]] = {}
F = TypeVar("F", bound=Callable[..., Any])


def _check_signature(backend: str, fn: Callable[..., Any], spec: OpSpec) -> None:
    """The implementation takes the spec's parameters, in order, with defaults where the spec has them; extra
    parameters (a backend's own options) come after and have defaults."""
    params = list(inspect.signature(fn).parameters.values())
    wanted = list(spec.signature.parameters.values())
    names = [p.name for p in params[:len(wanted)]]
    problem = None
    if names != [p.name for p in wanted]:
        problem = f"parameters {names} differ from the contract's {[p.name for p in wanted]}"
    elif any((p.default is p.empty) != (q.default is q.empty) for p, q in zip(params, wanted)):
        problem = "defaults differ from the contract's"
    elif any(p.default is p.empty for p in params[len(wanted):]):
        problem = "a parameter beyond the contract's has no default"
    if problem:
        raise TypeError(f"{fn.__module__}.{fn.__name__} ({backend}): {problem}: {spec.name}{spec.signature}")


def implements(backend: str) -> Callable[[F], F]:
    """``@implements("numba")`` registers the decorated function as that backend's op of the same name."""
    def register(fn: F) -> F:
        name = fn.__name__
        if name not in OPS:
            raise TypeError(f"{fn.__module__}.{name} is registered as an op of {backend!r}, but the contract has no "
                            f"op {name!r} (ops: {', '.join(OPS)})")
        _check_signature(backend, fn, OPS[name])
        _IMPLEMENTATIONS.setdefault(backend, {})[name] = fn
        return fn
    return register


def collect_ops(backend_name: str, *modules: ModuleType) -> SimpleNamespace:
    """The op table of a backend, from what its ``modules`` (imported by now) registered; a missing op is an
    error, not a fallback."""
    table = _IMPLEMENTATIONS.get(backend_name, {})
    missing = [op for op in OPS if op not in table]
    if missing:
        raise NotImplementedError(f"backend {backend_name!r} does not implement op(s) {', '.join(missing)}")
    return SimpleNamespace(**{op: table[op] for op in OPS})


def run_example(spec: OpSpec, ops: SimpleNamespace, make: Callable[..., Any]) -> Any:
    """Call ``ops``'s implementation of ``spec`` with the spec's example arguments."""
    args, kwargs = spec.example(ops, make)
    return getattr(ops, spec.name)(*args, **kwargs)
