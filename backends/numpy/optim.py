"""The optimizer's op: one SGD step on one parameter, in NumPy's in-place array arithmetic."""
from __future__ import annotations

from typing import Any

from cnnkit.backends import implements


@implements("numpy")
def sgd_step(param: Any, grad: Any, momentum_buffer: Any | None, lr: float, momentum: float, dampening: float,
             weight_decay: float, nesterov: bool, first: bool) -> tuple[Any, Any | None]:
    """param (and momentum_buffer) updated in place; the Python scalars act in the arrays' dtype."""
    g = grad + weight_decay * param if weight_decay else grad
    buf = momentum_buffer
    if buf is not None:
        if first:
            buf[...] = g
        else:
            buf *= momentum
            buf += (1.0 - dampening) * g if dampening else g  # g * 1.0 is g: no temporary
        g = g + momentum * buf if nesterov else buf
    param -= lr * g
    return param, buf
