"""Argument checks shared by the whole library: each raises a clear error that names the argument and the
expected form (cnnkit.functional checks op arguments once with these; layers, data loaders, training and the
command line use the same ones)."""
from __future__ import annotations

import argparse
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from cnnkit.backends import ACTIVATIONS, BATCH_NORM_ACTIVATIONS, Backend

Array = Any
IntPair = int | Sequence[int]

FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float64"))  # cupy arrays carry numpy dtypes too


def check_array(be: Backend, a: Array, name: str, ndim: int | None = None, floating: bool = True) -> None:
    """Raise a clear error unless ``a`` is an array of backend ``be`` with the expected rank and dtype."""
    if not be.is_native(a):
        kind = f"{type(a).__module__}.{type(a).__name__}"
        raise TypeError(
            f"{name} is a {kind}, but the backend is {be.name!r}, which takes {be.array_type.__module__}."
            f"{be.array_type.__name__}: convert it with cnnkit.backend.backend({be.name!r}).asarray({name}) "
            f"or move the model with model.to(...)")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {tuple(a.shape)}")
    if floating and a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")


def same_dtype(x: Array, other: Array, name: str) -> None:
    """``other`` must have x's dtype."""
    if other.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {other.dtype} but x has {x.dtype}; cast one of them")


def check_like(be: Backend, a: Array, name: str, ref: Array, ref_name: str) -> None:
    """``a`` must be an array of backend ``be`` with ``ref``'s shape and dtype."""
    check_array(be, a, name)
    if tuple(a.shape) != tuple(ref.shape):
        raise ValueError(f"{name} must have the shape of {ref_name}, {tuple(ref.shape)}; got {tuple(a.shape)}")
    if a.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but {ref_name} has {ref.dtype}; cast one of them")


def is_int(v: Any) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def number(value: Any, name: str) -> float:
    """``value`` as a finite float; TypeError for a non-number (bools included), ValueError for NaN/inf."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def pair(value: IntPair, name: str, minimum: int = 1) -> tuple[int, int]:
    """``value`` as an (h, w) pair of ints >= ``minimum``; a clear error otherwise."""
    # fast paths, before the general checks: a pair already normalised (layers pass their own every call) is
    # returned as it is, a plain int doubled
    if type(value) is tuple and len(value) == 2 and type(value[0]) is type(value[1]) is int:
        if value[0] >= minimum and value[1] >= minimum:
            return value
    elif type(value) is int and value >= minimum:
        return value, value
    if is_int(value):
        items: tuple = (value, value)
    elif isinstance(value, (tuple, list)):
        items = tuple(value)
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if len(items) != 2 or not all(is_int(v) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in items):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


def shape4(shape: Sequence[int], name: str) -> tuple[int, int, int, int]:
    """An (N, C, H, W) tuple of positive ints."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 4 or not all(is_int(v) and v > 0 for v in shape):
        raise ValueError(f"{name} must be an (N, C, H, W) tuple of positive ints, got {shape!r}")
    return tuple(int(v) for v in shape)  # type: ignore[return-value]


def conv_padding(padding: IntPair | str, kernel_hw: tuple[int, int], dilation: tuple[int, int],
                 stride: tuple[int, int]) -> tuple[int, int, int, int]:
    """Normalise conv ``padding`` (int, (h, w), (top, bottom, left, right), "valid" or "same") to 4 ints."""
    if type(padding) is int and padding >= 0:  # the common case, on every conv call: no general checks
        return padding, padding, padding, padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' needs stride=1 (as in PyTorch)")
            out = []
            for k, d in zip(kernel_hw, dilation):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return tuple(out)  # type: ignore[return-value]
        raise ValueError(f"padding must be an int, a pair, a 4-tuple, 'valid' or 'same'; got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        if not all(is_int(p) for p in padding):
            raise TypeError(f"padding must be ints, got {padding!r}")
        if any(p < 0 for p in padding):
            raise ValueError(f"padding must be non-negative, got {padding!r}")
        return tuple(int(p) for p in padding)  # type: ignore[return-value]
    ph, pw = pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


def dropout_args(shape: Any, p: Any, seed: Any, offset: Any) -> tuple[tuple[int, ...], float, int, int]:
    """dropout_mask's (shape, p, seed, offset), checked: a tuple of ints >= 0, p in [0, 1), an int, an int >= 0."""
    p = number(p, "p")
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
    if not is_int(seed):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not isinstance(shape, (tuple, list)) or not all(is_int(v) and v >= 0 for v in shape):
        raise ValueError(f"shape must be a tuple of non-negative ints, got {shape!r}")
    return tuple(int(v) for v in shape), p, int(seed), nonneg_int(offset, "offset")


def activation_name(activation: str | None) -> str | None:
    """None or one of the contract's activations."""
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got {activation!r}")
    return activation


def activation_kind(kind: str) -> str:
    """One of the contract's activations (None is an error: an activation op needs one)."""
    if activation_name(kind) is None:
        raise ValueError("kind must name an activation, got None")
    return kind


# ----------------------------------------------------------------------------------------------- convolution


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1 (Python or NumPy int, not a bool)."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def nonneg_int(value: Any, name: str) -> int:
    """``value`` as an int >= 0 (Python or NumPy int, not a bool)."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int; got {value!r}")
    return int(value)


def argparse_type(kind: Callable[[str], Any], accepts: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that ``accepts``, else a usage error saying what was ``expected``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


def at_least(kind: Callable[[str], Any], minimum: float) -> Callable[[str], Any]:
    """An argparse type: one finite ``kind`` value >= ``minimum``."""
    return argparse_type(kind, lambda v: bool(np.isfinite(v)) and v >= minimum,
                         f"a {getattr(kind, '__name__', 'number')} >= {minimum}")


def activation_before_pool(be: Backend, activation: str | None, y: Array | None, negative_slope: float, dy: Array,
                           x_shape: tuple[int, ...]) -> tuple[str | None, float]:
    """A pool backward's optional activation (with its output y, the pool's input): both or neither; y an array of
    the backend with x_shape and dy's dtype. Returns (activation, negative_slope), checked."""
    if (activation is None) != (y is None):
        raise ValueError("activation and y go together: pass both (the activation before the pool and its output) "
                         f"or neither; got activation={activation!r} and y {'None' if y is None else 'given'}")
    if activation is None:
        return None, negative_slope
    check_array(be, y, "y", ndim=4)
    if y.dtype != dy.dtype:
        raise TypeError(f"y has dtype {y.dtype} but dy has {dy.dtype}; cast one of them")
    if tuple(y.shape) != tuple(x_shape):
        raise ValueError(f"y (the activation's output) must have x_shape {tuple(x_shape)}, got {tuple(y.shape)}")
    return activation_kind(activation), negative_slope_value(negative_slope)


def check_dy(dy: Array, expected: tuple[int, ...]) -> None:
    """A backward pass's dy must have the forward output's shape."""
    if tuple(dy.shape) != tuple(expected):
        raise ValueError(f"dy must have the forward output's shape {tuple(expected)}, got {tuple(dy.shape)}")


def lp_norm_type(p: float) -> float:
    """Lp pooling's p: a finite number > 0."""
    p = number(p, "norm_type (p)")
    if not p > 0:
        raise ValueError(f"norm_type (p) must be a positive number, got {p!r}")
    return p


def negative_slope_value(negative_slope: float) -> float:
    """leaky_relu's negative_slope: a finite number >= 0."""
    negative_slope = number(negative_slope, "negative_slope")
    if negative_slope < 0:
        raise ValueError(f"negative_slope must be a number >= 0, got {negative_slope!r}")
    return float(negative_slope)


def check_labels(be: Backend, labels: Array, logits: Array) -> None:
    """Class labels for (N, C) logits: a 1-D integer array of backend ``be``, one per row, each in [0, C)
    (the range is checked on CPU backends only: on a GPU it would cost a host synchronisation)."""
    if not be.is_native(labels) or labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be a 1-D integer array of backend {be.name!r}, got "
                        f"{type(labels).__name__} {getattr(labels, 'dtype', '')} {getattr(labels, 'shape', '')}")
    if logits.shape[0] == 0:
        raise ValueError("logits must hold at least one row (batch size >= 1)")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but logits has {logits.shape[0]} rows")
    if be.device == "cpu" and labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}) for {logits.shape[1]} classes, got "
                         f"values from {labels.min()} to {labels.max()}")


def deprecated_alias(old_value: Any, old: str, value: Any, new: str) -> Any:
    """``value``, or ``old_value`` when given under the deprecated name ``old`` (with a DeprecationWarning)."""
    if old_value is None:
        return value
    warnings.warn(f"{old}= is deprecated: use {new}=", DeprecationWarning, stacklevel=3)
    return old_value


def batch_norm_args(be: Backend, x: Array, vectors: Sequence[Array], training: bool, momentum: Any, eps: Any,
                    activation: Any) -> tuple[float, float]:
    """Check batch norm's arguments (``vectors``: weight, bias, running_mean, running_var); returns momentum and
    eps as floats."""
    if activation not in (None, *BATCH_NORM_ACTIVATIONS):
        raise ValueError(f"batch norm's activation must be None or one of {BATCH_NORM_ACTIVATIONS}, "
                         f"got {activation!r}")
    check_array(be, x, "x", ndim=4)
    c = x.shape[1]
    for name, a in zip(("weight", "bias", "running_mean", "running_var"), vectors, strict=True):
        check_array(be, a, name, ndim=1)
        same_dtype(x, a, name)
        if a.shape[0] != c:
            raise ValueError(f"{name} must have shape ({c},) to match x's {c} channels, got {tuple(a.shape)}")
    if training and x.shape[0] * x.shape[2] * x.shape[3] < 2:
        raise ValueError("batch norm in training mode needs more than one value per channel "
                         f"(x has shape {tuple(x.shape)})")
    momentum, eps = number(momentum, "momentum"), number(eps, "eps")
    if not 0 <= momentum <= 1 or not eps > 0:
        raise ValueError(f"momentum must be in [0, 1] and eps > 0, got momentum={momentum}, eps={eps}")
    return momentum, eps
