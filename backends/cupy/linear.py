"""The fully connected layer's ops as 1x1 convolutions of (N, C, 1, 1) images, on conv.cu's kernels.

Not cuBLAS: CuPy refuses cuBLAS calls while a stream is being recorded into a CUDA graph (cnnkit.step), and the
conv kernels are cnnkit's own, tested on the simulator like every other kernel.
"""
from __future__ import annotations

from typing import Any

from cnnkit.backends import implements

from .conv import NO_PADS, UNIT, conv2d_backward, conv2d_forward


def _images(a: Any) -> Any:
    """(N, C) as (N, C, 1, 1)."""
    return a.reshape(a.shape[0], a.shape[1], 1, 1)


@implements("cupy")
def linear_forward(x: Any, w: Any, b: Any) -> Any:
    return conv2d_forward(_images(x), _images(w), b, UNIT, NO_PADS, UNIT, 1).reshape(x.shape[0], w.shape[0])


@implements("cupy")
def linear_backward(dy: Any, x: Any, w: Any, need_dx: bool = True, need_dw: bool = True,
                    need_db: bool = True) -> tuple[Any, Any, Any]:
    dx, dw, db = conv2d_backward(_images(dy), _images(x), _images(w), UNIT, NO_PADS, UNIT, 1, need_dx, need_db,
                                 need_dw)
    return (None if dx is None else dx.reshape(x.shape), None if dw is None else dw.reshape(w.shape), db)
