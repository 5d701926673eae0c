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
from cnnkit.nn.base import Layer, Parameter
from cnnkit.nn.conv import Conv2d
from cnnkit.nn.linear import Dropout, Flatten, Linear
from cnnkit.nn.norm import BatchNorm2d, SyncBatchNorm2d, convert_sync_batchnorm
from cnnkit.nn.pooling import AvgPool2d, FeaturePool, GlobalAvgPool2d, LPPool2d, MaxPool2d, Subsampling
from cnnkit.nn.residual import Residual, ZeroPadShortcut
from cnnkit.nn.sequential import Sequential, ShapeError

__all__ = [
    "Layer", "Parameter", "Sequential", "ShapeError", "Residual", "ZeroPadShortcut", "init",
    "Conv2d", "Linear", "Flatten", "Dropout", "BatchNorm2d", "SyncBatchNorm2d", "convert_sync_batchnorm",
    "MaxPool2d", "AvgPool2d", "LPPool2d", "FeaturePool", "GlobalAvgPool2d", "Subsampling",
    "Activation", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "ScaledTanh", "Softmax", "LogSoftmax",
]
