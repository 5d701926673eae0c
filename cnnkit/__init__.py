"""cnnkit: convolutional neural networks on NumPy, Numba and CuPy, with explicit forward and backward.

Sub-modules load on first use (``ck.models``, ``ck.nn``, ``ck.optim`` ...), so ``import cnnkit`` stays light and
never imports numba, cupy or torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from cnnkit import functional
from cnnkit.backend import (
    BackendUnavailableError,
    available_backends,
    backend,
    get_backend,
    set_backend,
    use_backend,
)

__version__ = "0.1.0"

_SUBMODULES = ("nn", "models", "losses", "optim", "io", "analysis", "data", "train", "plots", "bench")
_FROM_ANALYSIS = ("summary", "receptive_field", "flops")

__all__ = [
    "BackendUnavailableError", "available_backends", "backend", "get_backend", "set_backend", "use_backend",
    "functional", "__version__", *_SUBMODULES, *_FROM_ANALYSIS,
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES or name == "benchmark":  # benchmark: the deprecated alias of bench (it warns)
        return importlib.import_module(f"cnnkit.{name}")
    if name in _FROM_ANALYSIS:
        return getattr(importlib.import_module("cnnkit.analysis"), name)
    raise AttributeError(f"module 'cnnkit' has no attribute {name!r}")
