"""The fully connected layer's ops: the numpy backend's (BLAS matmuls on one thread, see ``create``), which no
Numba loop of this size beats."""
from __future__ import annotations

from cnnkit.backends import implements

from ..numpy import linear

linear_forward = implements("numba")(linear.linear_forward)
linear_backward = implements("numba")(linear.linear_backward)
