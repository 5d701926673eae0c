"""Weight initialisation from one seeded generator, so a model built after ``manual_seed(s)`` is reproducible.

Every layer draws its initial values on the host (float64 NumPy) from this module's generator, then casts them
to its dtype on its backend, so the same seed gives the same weights on every backend. The generator starts
seeded with 0 at import; ``manual_seed`` restarts it (as ``torch.manual_seed`` does for PyTorch).

The rules are PyTorch's defaults: weights ``kaiming_uniform(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Iterator, Sequence

import numpy as np

from cnnkit.nn.base import FLOAT_DTYPES, Layer, Parameter, check_float_dtype

check_dtype = check_float_dtype
"""``dtype`` as the name of a float dtype layers can hold (float32, float64); a TypeError otherwise."""
__all__ = ["FLOAT_DTYPES", "check_dtype", "manual_seed", "fork_rng", "uniform", "kaiming_uniform", "bias_uniform",
           "parameter", "saved"]

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Restart the initialisation generator at ``seed`` (a non-negative int)."""
    global _generator
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    _generator = np.random.default_rng(seed)


@contextlib.contextmanager
def fork_rng() -> Iterator[None]:
    """Within the block, layers draw from a copy of the generator; after it, the generator is as it was before
    (``torch.random.fork_rng``'s role): building a throwaway model there changes no later model's weights."""
    global _generator
    kept = _generator
    _generator = copy.deepcopy(kept)
    try:
        yield
    finally:
        _generator = kept


def uniform(shape: Sequence[int], bound: float) -> np.ndarray:
    """float64 host array drawn from U(-bound, bound)."""
    return _generator.uniform(-bound, bound, size=tuple(shape))


def kaiming_uniform(shape: Sequence[int], fan_in: int, a: float = math.sqrt(5)) -> np.ndarray:
    """He uniform init with leaky-ReLU slope ``a``: U(-b, b), b = gain * sqrt(3 / fan_in), gain = sqrt(2/(1+a^2)).

    With PyTorch's default a = sqrt(5) this is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """
    gain = math.sqrt(2.0 / (1.0 + a * a))
    return uniform(shape, gain * math.sqrt(3.0 / fan_in))


def bias_uniform(shape: Sequence[int], fan_in: int) -> np.ndarray:
    """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform(shape, 1.0 / math.sqrt(fan_in))


def parameter(layer: Layer, values: np.ndarray, dtype: str) -> Parameter:
    """A Parameter holding a copy of ``values`` cast to ``dtype`` on ``layer``'s backend."""
    return Parameter(layer.backend.asarray(np.array(values, dtype=dtype)))


def saved(layer: Layer, value: object) -> object:
    """``value`` (what ``layer.forward`` kept for its backward); a clear error when forward has not run."""
    if value is None:
        raise RuntimeError(f"{type(layer).__name__}.backward was called before its forward")
    return value
