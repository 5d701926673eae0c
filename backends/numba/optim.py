"""The optimizer's op: the numpy backend's (elementwise array arithmetic, memory-bound: no kernel to compile)."""
from __future__ import annotations

from cnnkit.backends import implements

from ..numpy import optim

sgd_step = implements("numba")(optim.sgd_step)
