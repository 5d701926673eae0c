"""PyTorch twins of cnnkit models: the same module tree, hence the same state-dict keys.

There are two ways to get a twin, for two purposes:

- :func:`torch_mirror` derives it from a cnnkit model, layer by layer, so ``cnnkit bench`` always runs the same
  architecture on PyTorch as on cnnkit.
- :func:`torch_lenet5` and :func:`torch_resnet20` are written out by hand from the architectures' descriptions.
  The parity tests use them as oracles: a twin derived from our model would copy a mistake in
  ``cnnkit.models``, a hand-written one does not. tests/test_bench.py checks that both ways give the same tree.

Weights move with :func:`cnnkit.io.from_torch` and :func:`cnnkit.io.to_torch` (:mod:`cnnkit.interop.weights`),
which need no PyTorch import for reading (any object with ``.detach()`` converts).

This module imports torch at import time; ``import cnnkit`` never imports it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn as tnn

from cnnkit import backends as _contract
from cnnkit import nn

__all__ = ["Residual", "ScaledTanh", "ZeroPadShortcut", "global_avg_pool", "torch_mirror", "torch_lenet5",
           "torch_resnet20"]


class Residual(tnn.Module):
    """``body(x) + shortcut(x)``, with cnnkit.nn.Residual's attribute names (keys read body.* and projection.*);
    the shortcut is the identity when ``projection`` is None. PyTorch has no built-in equivalent."""

    def __init__(self, body: tnn.Module, projection: tnn.Module | None = None):
        super().__init__()
        self.body, self.projection = body, projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.projection is None else self.projection(x))


class ScaledTanh(tnn.Module):
    """LeCun's ``A * tanh(S * x)``, with the constants of cnnkit's op contract. PyTorch has no built-in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _contract.SCALED_TANH_A * torch.tanh(_contract.SCALED_TANH_S * x)


class ZeroPadShortcut(tnn.Module):
    """He et al.'s option-A shortcut as the CIFAR reference implementations write it: ``x[:, :, ::s, ::s]``
    padded with ``pad`` zero maps before and after (``F.pad`` over the channel axis). No parameters."""

    def __init__(self, pad: int, stride: int):
        super().__init__()
        self.pad, self.stride = pad, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        return tnn.functional.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.pad, self.pad))


def global_avg_pool() -> tnn.Module:
    """Mean over the spatial axes, (N, C, H, W) -> (N, C), as cnnkit.nn.GlobalAvgPool2d (no state)."""
    return tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())


def _layer_builders() -> dict[type, Callable[[Any], tnn.Module]]:
    """PyTorch equivalents of the cnnkit layers that map one to one, keyed by cnnkit layer type."""
    return {
        nn.Linear: lambda m: tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None),
        nn.BatchNorm2d: lambda m: tnn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine),
        nn.MaxPool2d: lambda m: tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode),
        nn.AvgPool2d: lambda m: tnn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad),
        nn.GlobalAvgPool2d: lambda m: global_avg_pool(),
        nn.Flatten: lambda m: tnn.Flatten(),
        nn.Dropout: lambda m: tnn.Dropout(m.p),
        nn.ReLU: lambda m: tnn.ReLU(),
        nn.LeakyReLU: lambda m: tnn.LeakyReLU(m.negative_slope),
        nn.Tanh: lambda m: tnn.Tanh(),
        nn.Sigmoid: lambda m: tnn.Sigmoid(),
        nn.ScaledTanh: lambda m: ScaledTanh(),
        nn.ZeroPadShortcut: lambda m: ZeroPadShortcut(m.pad, m.stride),
    }


def torch_mirror(layer: nn.Layer) -> tnn.Module:
    """The PyTorch module with the same structure as the cnnkit ``layer``, hence the same state-dict keys.

    Built layer by layer from the cnnkit model itself, so both sides always run the same architecture. A layer
    PyTorch has no plain equivalent for (LeNet-5 classic's subsampling and connection table, ...) raises
    NotImplementedError naming it.
    """
    kind = type(layer)
    if kind is nn.Sequential:
        return tnn.Sequential(*(torch_mirror(child) for child in layer))
    if kind is nn.Residual:
        return Residual(torch_mirror(layer.body), None if layer.projection is None else torch_mirror(layer.projection))
    plain_conv = kind is nn.Conv2d and layer.connections is None and not layer.flip_kernel and not (
        isinstance(layer.padding, (tuple, list)) and len(layer.padding) == 4)
    if plain_conv:
        return tnn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, layer.groups, bias=layer.bias is not None)
    builders = _layer_builders()
    if kind not in builders:
        raise NotImplementedError(f"no PyTorch equivalent of cnnkit's {layer!r}")
    return builders[kind](layer)


def torch_lenet5() -> tnn.Sequential:
    """LeNet-5 (modern: tanh, average pooling, full connections) for 1x32x32 inputs and 10 classes."""
    t = tnn
    return t.Sequential(t.Conv2d(1, 6, 5), t.Tanh(), t.AvgPool2d(2), t.Conv2d(6, 16, 5), t.Tanh(), t.AvgPool2d(2),
                        t.Conv2d(16, 120, 5), t.Tanh(), t.Flatten(), t.Linear(120, 84), t.Tanh(), t.Linear(84, 10))


def _basic_block(cin: int, cout: int, stride: int, shortcut: str = "B") -> tnn.Sequential:
    """ResNet basic block: two 3x3 conv + batch norm, a shortcut when the shape changes (B: 1x1 conv projection
    + BN, A: the subsampled identity zero-padded to ``cout`` maps), ReLU."""
    t = tnn
    body = t.Sequential(t.Conv2d(cin, cout, 3, stride, 1, bias=False), t.BatchNorm2d(cout), t.ReLU(),
                        t.Conv2d(cout, cout, 3, 1, 1, bias=False), t.BatchNorm2d(cout))
    projection = None
    if (stride != 1 or cin != cout) and shortcut == "A":
        projection = ZeroPadShortcut((cout - cin) // 2, stride)
    elif stride != 1 or cin != cout:
        projection = t.Sequential(t.Conv2d(cin, cout, 1, stride, bias=False), t.BatchNorm2d(cout))
    return t.Sequential(Residual(body, projection), t.ReLU())


def torch_resnet20(shortcut: str = "B") -> tnn.Sequential:
    """CIFAR ResNet-20 (He et al. 2016): 3x3 stem, three stages of three basic blocks (16, 32, 64 channels),
    global average pooling and a linear layer, for 3x32x32 inputs and 10 classes; ``shortcut`` "B" (projection)
    or "A" (zero padding) at the two downsampling blocks."""
    t = tnn
    stages, cin = [], 16
    for i, cout in enumerate((16, 32, 64)):
        stages.append(t.Sequential(*[_basic_block(cin if b == 0 else cout, cout, 2 if i and b == 0 else 1, shortcut)
                                     for b in range(3)]))
        cin = cout
    return t.Sequential(t.Conv2d(3, 16, 3, 1, 1, bias=False), t.BatchNorm2d(16), t.ReLU(), *stages,
                        global_avg_pool(), t.Linear(64, 10))
