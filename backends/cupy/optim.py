"""The SGD step launcher for kernels/optim.cu: one kernel per parameter instead of NumPy-style array arithmetic's
three or four (a ResNet-20 step updates 65 parameters, and each launch is a node of the recorded CUDA graph)."""
from __future__ import annotations

from typing import Any

from cnnkit.backends import implements

from ._module import THREADS, as_f32, blocks, f32, i32, launch


@implements("cupy")
def sgd_step(param: Any, grad: Any, momentum_buffer: Any | None, lr: float, momentum: float, dampening: float,
             weight_decay: float, nesterov: bool, first: bool) -> tuple[Any, Any | None]:
    """param (and momentum_buffer) updated in place by one launch; the same bits as the numpy backend's."""
    grad, buf = as_f32(grad, "grad"), momentum_buffer
    for name, a in (("param", param), ("momentum_buffer", buf)):
        if a is None:
            continue
        as_f32(a, name)  # the dtype check
        if not a.flags.c_contiguous or a.shape != param.shape:  # updated in place
            raise ValueError(f"{name} must be a C-contiguous array of param's shape {param.shape}")
    if grad.shape != param.shape:
        raise ValueError(f"grad has shape {grad.shape}, param {param.shape}")
    launch("optim", "sgd_step", blocks(param.size), THREADS, param, grad, param if buf is None else buf,
           *i32(param.size, buf is not None, bool(first), bool(nesterov), weight_decay != 0, dampening != 0),
           f32(lr), f32(momentum), f32(1.0 - dampening), f32(weight_decay))
    return param, buf
