"""Conv2d: 2-D cross-correlation (or true convolution) with optional bias, connection table and fused activation."""
from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit import functional as F
from cnnkit.nn import init
from cnnkit.nn.base import Layer

Array = Any


class Conv2d(Layer):
    """PyTorch's Conv2d: weight (out_channels, in_channels // groups, kh, kw), bias (out_channels,).

    ``connections`` is LeNet-5's C3 idea: a boolean (out_channels, in_channels) table saying which input maps
    feed which output map. It is a fixed mask on the weights: disconnected weights start at zero, are multiplied
    by zero in the forward and get zero gradient, so they stay zero under any optimiser. The parameter keeps its
    full shape (so state dicts match an unmasked PyTorch conv); :meth:`num_effective_parameters` counts only the
    connected weights.

    ``flip_kernel=True`` computes a true convolution: the kernel is flipped in both spatial axes before the
    cross-correlation (and the weight gradient flipped back), as in the signal-processing definition.

    ``padding`` takes an int, (h, w), (top, bottom, left, right), "valid" (narrow) or "same" (wide, stride 1).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True, *,
                 connections: Any = None, flip_kernel: bool = False, dtype: str = "float32"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = F.pair(kernel_size, "kernel_size")
        self.stride = F.pair(stride, "stride")
        self.dilation = F.pair(dilation, "dilation")
        F.conv_padding(padding, self.kernel_size, self.dilation, self.stride)  # validates early
        self.padding = padding
        self.flip_kernel = bool(flip_kernel)
        dtype = init.check_dtype(dtype)

        shape = (out_channels, in_channels // groups, *self.kernel_size)
        fan_in = shape[1] * shape[2] * shape[3]
        weight = init.kaiming_uniform(shape, fan_in)
        self.connections = None if connections is None else self._check_connections(connections)
        if self.connections is not None:
            weight *= self.connections[:, :, None, None]
        self.weight = init.parameter(self, weight, dtype)
        self.bias = init.parameter(self, init.bias_uniform((out_channels,), fan_in), dtype) if bias else None
        self._moved()
        self._x: Array | None = None

    def _check_connections(self, connections: Any) -> np.ndarray:
        table = np.asarray(connections)
        expected = (self.out_channels, self.in_channels)
        if self.groups != 1:
            raise ValueError("connections needs groups=1 (the table already says which inputs feed each output)")
        if table.shape != expected or table.dtype.kind not in "bui":
            raise ValueError(f"connections must be a boolean (out_channels, in_channels) = {expected} table, "
                             f"got {table.dtype} array of shape {table.shape}")
        if not np.isin(table, (0, 1)).all():
            raise ValueError("connections must hold only True/False (or 1/0)")
        if not table.any(axis=1).all():
            raise ValueError("connections leaves some output map with no input: every row needs a True")
        return table.astype(bool)

    def _moved(self) -> None:
        """Re-create the connection mask on the current backend, in the weight's dtype."""
        self._mask = None if self.connections is None else self.backend.asarray(
            self.connections[:, :, None, None], dtype=self.weight.data.dtype)

    def own_parameter_count(self) -> int:
        """Parameters that can be nonzero: connected weights plus biases (LeNet-5's C3: 60 * 25 + 16 = 1516)."""
        per_map = self.kernel_size[0] * self.kernel_size[1]
        maps = self.weight.shape[0] * self.weight.shape[1] if self.connections is None else int(self.connections.sum())
        return maps * per_map + (self.out_channels if self.bias is not None else 0)

    def effective_weight(self) -> Array:
        """The kernel the cross-correlation uses: weight times the connection mask, flipped for true convolution."""
        w = self.weight.data
        if self._mask is not None:
            w = w * self._mask
        return w[:, :, ::-1, ::-1] if self.flip_kernel else w

    def _conv(self, x: Array, activation: str | None) -> Array:
        self._x = x
        bias = None if self.bias is None else self.bias.data
        return F.conv2d(x, self.effective_weight(), bias, self.stride, self.padding, self.dilation, self.groups,
                        activation=activation, backend=self.backend)

    def forward(self, x: Array) -> Array:
        return self._conv(x, None)

    def fuse_activation(self, x: Array, kind: str) -> Array:
        """Forward with activation ``kind`` applied in the conv kernel's epilogue (used by Sequential)."""
        return self._conv(x, kind)

    def fuse_activation_pool(self, x: Array, kind: str, keep: bool) -> tuple[Array | None, Array]:
        """Forward with activation ``kind`` and a 2x2 average pool after it in one call (used by Sequential):
        (output, or None unless ``keep``; pooled output)."""
        self._x = x
        bias = None if self.bias is None else self.bias.data
        return F.conv2d_pool(x, self.effective_weight(), bias, self.stride, self.padding, self.dilation,
                             self.groups, activation=kind, keep=keep, backend=self.backend)

    def fold_batchnorm(self, x: Array, norm: Layer, activation: str | None, residual: Array | None = None) -> Array:
        """Eval-mode forward of this conv followed by batch norm ``norm`` (then + ``residual``, then
        ``activation``) as one conv: the running statistics folded into the weights and bias (used by
        Sequential). The folded kernel is recomputed on every call, which costs microseconds for ResNet-sized
        weights and cannot go stale."""
        scale, shift = norm.eval_affine()
        weight = self.effective_weight() * scale[:, None, None, None]
        bias = shift if self.bias is None else self.bias.data * scale + shift
        self._x = x
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                        activation=activation, residual=residual, backend=self.backend)

    def output_shape(self, x_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(N, out_channels, OH, OW) of this conv on an input of shape ``x_shape``."""
        padding = F.conv_padding(self.padding, self.kernel_size, self.dilation, self.stride)
        return F.conv2d_output_shape(x_shape, self.weight.shape, self.stride, padding, self.dilation, self.groups)

    def backward(self, dy: Array) -> Array | None:
        """dy is the gradient of the pre-activation output (a fused activation's backward has already run).
        Returns dx, or None when ``requires_input_grad`` is off (see Layer.input_grad_skipped)."""
        x = init.saved(self, self._x)
        need_db = self.trainable and self.bias is not None
        dx, dw, db = F.conv2d_backward(dy, x, self.effective_weight(), self.stride, self.padding, self.dilation,
                                       self.groups, need_dx=self.requires_input_grad, need_db=need_db,
                                       need_dw=self.trainable, backend=self.backend)
        if self.trainable:
            if self.flip_kernel:
                dw = self.backend.xp.ascontiguousarray(dw[:, :, ::-1, ::-1])
            if self._mask is not None:
                dw = dw * self._mask
            self.accumulate(self.weight, dw)
            if self.bias is not None:
                self.accumulate(self.bias, db)
        return dx

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"]
        if self.padding not in (0, (0, 0), "valid"):
            parts.append(f"padding={self.padding!r}")
        if self.dilation != (1, 1):
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bias is None:
            parts.append("bias=False")
        if self.connections is not None:
            parts.append(f"connections={int(self.connections.sum())}/{self.connections.size}")
        if self.flip_kernel:
            parts.append("flip_kernel=True")
        return ", ".join(parts)
