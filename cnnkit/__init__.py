"""cnnkit: convolutional neural networks on NumPy, Numba and CuPy, with explicit forward and backward."""
from __future__ import annotations

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

__all__ = [
    "BackendUnavailableError", "available_backends", "backend", "get_backend", "set_backend", "use_backend",
    "functional", "__version__",
]
