"""Pooling layers: max, average, Lp (L2) pooling over windows, L2 pooling across feature maps, global average,
and LeNet's trainable subsampling."""
from __future__ import annotations

from typing import Any

from cnnkit import functional as F
from cnnkit.nn import init
from cnnkit.nn.base import Layer

Array = Any


class _WindowPool(Layer):
    """Shared geometry of the windowed pools: kernel_size, stride (default: kernel_size), padding, ceil_mode."""

    def __init__(self, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool):
        super().__init__()
        self.kernel_size = F.pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else F.pair(stride, "stride")
        self.padding = F.pair(padding, "padding", minimum=0)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding {self.padding} must be at most half of kernel_size {self.kernel_size}")
        self.ceil_mode = bool(ceil_mode)
        self._saved: Any = None

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")


class MaxPool2d(_WindowPool):
    """Max over each window (PyTorch's MaxPool2d; padding counts as -inf)."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 ceil_mode: bool = False):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.dilation = F.pair(dilation, "dilation")

    def forward(self, x: Array) -> Array:
        y, argmax = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                 backend=self.backend)
        self._saved = (argmax, x.shape)
        return y

    def backward(self, dy: Array) -> Array:
        argmax, x_shape = init.saved(self, self._saved)
        return F.max_pool2d_backward(dy, argmax, x_shape, backend=self.backend)


class AvgPool2d(_WindowPool):
    """Mean over each window (PyTorch's AvgPool2d, including count_include_pad)."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x: Array) -> Array:
        self._saved = x.shape
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                            backend=self.backend)

    def backward(self, dy: Array) -> Array:
        return self._gradient(dy)

    @property
    def subsamples(self) -> bool:
        """True for LeNet's subsampling (2x2 windows, stride 2, no padding, floor): the pool a conv can run in
        its epilogue (F.conv2d_pool)."""
        return (self.kernel_size == (2, 2) and self.stride == (2, 2) and self.padding == (0, 0)
                and not self.ceil_mode)

    def set_input_shape(self, shape: tuple[int, ...]) -> None:
        """Record the input shape of a forward a fused conv ran for this pool, for the backward."""
        self._saved = tuple(shape)

    def backward_through(self, dy: Array, activation: Layer) -> Array:
        """This pool's backward and then that of ``activation``, the layer before it (an Activation, whose
        ``derivative`` gives its output and kind), in one call: the gradient of the activation's input."""
        y, kind, slope = activation.derivative()
        return self._gradient(dy, activation=kind, y=y, negative_slope=slope)

    def _gradient(self, dy: Array, **activation: Any) -> Array:
        return F.avg_pool2d_backward(dy, init.saved(self, self._saved), self.kernel_size, self.stride,
                                     self.padding, self.ceil_mode, self.count_include_pad, **activation,
                                     backend=self.backend)


class LPPool2d(_WindowPool):
    """Power-average pooling (sum over the window of |x|^p)^(1/p); norm_type=2 is L2 pooling.
    ``padding`` (zeros) is an extension over PyTorch's LPPool2d."""

    def __init__(self, norm_type: float, kernel_size: Any, stride: Any = None, ceil_mode: bool = False, *,
                 padding: Any = 0):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        if not isinstance(norm_type, (int, float)) or isinstance(norm_type, bool) or not norm_type > 0:
            raise ValueError(f"norm_type must be a positive number, got {norm_type!r}")
        self.norm_type = float(norm_type)

    def forward(self, x: Array) -> Array:
        y = F.lp_pool2d(x, self.norm_type, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                        backend=self.backend)
        self._saved = (x, y)
        return y

    def backward(self, dy: Array) -> Array:
        x, y = init.saved(self, self._saved)
        return F.lp_pool2d_backward(dy, x, y, self.norm_type, self.kernel_size, self.stride, self.padding,
                                    self.ceil_mode, backend=self.backend)

    def extra_repr(self) -> str:
        return f"norm_type={self.norm_type}, " + super().extra_repr()


class FeaturePool(Layer):
    """L2 pooling across feature maps: output map c is the pixelwise L2 norm of input maps [c*g, (c+1)*g)."""

    def __init__(self, group_size: int):
        super().__init__()
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        self.group_size = group_size
        self._saved: Any = None

    def forward(self, x: Array) -> Array:
        y = F.feature_pool(x, self.group_size, backend=self.backend)
        self._saved = (x, y)
        return y

    def backward(self, dy: Array) -> Array:
        x, y = init.saved(self, self._saved)
        return F.feature_pool_backward(dy, x, y, self.group_size)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class GlobalAvgPool2d(Layer):
    """Mean over each whole feature map: (N, C, H, W) -> (N, C)."""

    def __init__(self) -> None:
        super().__init__()
        self._saved: Any = None

    def forward(self, x: Array) -> Array:
        self._saved = x.shape
        return F.global_avg_pool2d(x, backend=self.backend)

    def backward(self, dy: Array) -> Array:
        return F.global_avg_pool2d_backward(dy, init.saved(self, self._saved), backend=self.backend)


class Subsampling(Layer):
    """LeNet-5's trainable subsampling (S2, S4): y[c] = weight[c] * (sum of the window) + bias[c].

    Two parameters per channel (S2: 6 maps -> 12, S4: 16 -> 32). The window sum is average pooling times the
    window size. Init follows PyTorch's default rule with fan_in = window size: U(-1/sqrt(kh*kw), +).
    """

    def __init__(self, channels: int, kernel_size: Any = 2, stride: Any = None, *, dtype: str = "float32"):
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.kernel_size = F.pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else F.pair(stride, "stride")
        dtype = init.check_dtype(dtype)
        window = self.kernel_size[0] * self.kernel_size[1]
        self.weight = init.parameter(self, init.kaiming_uniform((channels,), window), dtype)
        self.bias = init.parameter(self, init.bias_uniform((channels,), window), dtype)
        self._saved: Any = None

    def forward(self, x: Array) -> Array:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"Subsampling({self.channels}) needs (N, {self.channels}, H, W) input, "
                             f"got shape {tuple(x.shape)}")
        window = self.kernel_size[0] * self.kernel_size[1]
        sums = F.avg_pool2d(x, self.kernel_size, self.stride, backend=self.backend) * window
        self._saved = (sums, x.shape)
        return sums * self.weight.data[:, None, None] + self.bias.data[:, None, None]

    def backward(self, dy: Array) -> Array:
        sums, x_shape = init.saved(self, self._saved)
        window = self.kernel_size[0] * self.kernel_size[1]
        if self.trainable:
            self.accumulate(self.weight, (dy * sums).sum(axis=(0, 2, 3)))
            self.accumulate(self.bias, dy.sum(axis=(0, 2, 3)))
        dsums = dy * (self.weight.data[:, None, None] * window)
        return F.avg_pool2d_backward(dsums, x_shape, self.kernel_size, self.stride, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}"
