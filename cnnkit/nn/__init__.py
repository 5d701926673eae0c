"""Layers with explicit forward/backward, bound to a backend: ``from cnnkit import nn``.

Initial weights come from one seeded generator: call ``cnnkit.nn.init.manual_seed(s)`` before building a
model to make its weights reproducible.
"""
from __future__ import annotations

from cnnkit.nn import init
from cnnkit.nn.activation import (
    Activation,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    ScaledTanh,
    Sigmoid,
    Softmax,
    Tanh,
)
from cnnkit.nn.base import Layer, Parameter, Sequential
from cnnkit.nn.conv import Conv2d
from cnnkit.nn.linear import Dropout, Flatten, Linear
from cnnkit.nn.norm import BatchNorm2d
from cnnkit.nn.pooling import AvgPool2d, FeaturePool, GlobalAvgPool2d, LPPool2d, MaxPool2d, Subsampling
from cnnkit.nn.residual import Residual


def num_effective_parameters(model: Layer) -> int:
    """Parameters of ``model`` that can be nonzero: like ``model.num_parameters()`` except that a conv with a
    connection table counts only its connected weights (LeNet-5 classic: 60,850)."""
    total = 0
    for _, layer in model.modules():
        if isinstance(layer, Conv2d):
            total += layer.num_effective_parameters()
        else:
            total += sum(int(p.data.size) for p in vars(layer).values() if isinstance(p, Parameter))
    return total


__all__ = [
    "Layer", "Parameter", "Sequential", "Residual", "init", "num_effective_parameters",
    "Conv2d", "Linear", "Flatten", "Dropout", "BatchNorm2d",
    "MaxPool2d", "AvgPool2d", "LPPool2d", "FeaturePool", "GlobalAvgPool2d", "Subsampling",
    "Activation", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "ScaledTanh", "Softmax", "LogSoftmax",
]
