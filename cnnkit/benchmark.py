"""Deprecated alias of :mod:`cnnkit.bench` (the ``cnnkit bench`` engine, now a package with one job per module).

Importing it warns; every public name of the old module still resolves here. ``torch_mirror`` now lives in
:mod:`cnnkit.interop.torch` and is loaded (with torch) only when asked for.
"""
from __future__ import annotations

import warnings
from typing import Any

from cnnkit.bench import *  # noqa: F403 - the alias re-exports the package's public names
from cnnkit.bench import __all__ as _bench_names

warnings.warn("cnnkit.benchmark is deprecated: use cnnkit.bench (and cnnkit.interop.torch.torch_mirror)",
              DeprecationWarning, stacklevel=2)

__all__ = [*_bench_names, "torch_mirror"]  # noqa: F405 - torch_mirror comes from __getattr__ below


def __getattr__(name: str) -> Any:
    if name == "torch_mirror":
        from cnnkit.interop.torch import torch_mirror
        return torch_mirror
    raise AttributeError(f"module 'cnnkit.benchmark' has no attribute {name!r}")
