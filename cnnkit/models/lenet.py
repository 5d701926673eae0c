"""LeNet family: LeNet-1 (1989), LeNet-5 in its modern form and as in LeCun et al. 1998, and the LeNet-300-100 MLP.

Every model is an ``nn.Sequential`` whose state-dict keys equal those of the same ``torch.nn.Sequential``
(``0.weight``, ``0.bias``, ``3.weight`` ...), and carries ``input_shape`` (C, H, W) for the CLI and summary.
"""
from __future__ import annotations

import numpy as np

from cnnkit import nn


def _c3_connections() -> np.ndarray:
    """LeNet-5's C3 connection table (LeCun et al. 1998, Table I) as a (16 C3 maps, 6 S2 maps) boolean array.

    C3 maps 0-5 read 3 contiguous S2 maps, 6-11 read 4 contiguous ones, 12-14 read 4 non-contiguous ones and
    map 15 reads all 6: 6*3 + 6*4 + 3*4 + 6 = 60 connections (contiguity wraps around from map 5 to map 0).
    """
    rows = [[(j + i) % 6 for i in range(3)] for j in range(6)]
    rows += [[(j + i) % 6 for i in range(4)] for j in range(6)]
    rows += [[0, 1, 3, 4], [1, 2, 4, 5], [0, 2, 3, 5], list(range(6))]
    table = np.zeros((16, 6), dtype=bool)
    for out, inputs in enumerate(rows):
        table[out, inputs] = True
    return table


C3_CONNECTIONS = _c3_connections()


def _model(layers: list[nn.Layer], input_shape: tuple[int, int, int]) -> nn.Sequential:
    model = nn.Sequential(*layers)
    model.input_shape = input_shape
    return model


def lenet5(classic: bool = False, num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 for 1x32x32 input.

    Modern (default, 61,706 parameters with 10 classes): conv5-tanh-avgpool2 twice, conv5 to 120 maps, tanh,
    then Linear(120, 84), tanh, Linear(84, num_classes).

    ``classic=True`` follows LeCun et al. 1998 (60,850 effective parameters): scaled tanh (1.7159 tanh(2x/3))
    everywhere, trainable subsampling S2/S4 (coefficient and bias per map), and C3 wired by the paper's
    connection table (:data:`C3_CONNECTIONS`). Its output layer is a plain Linear(84, num_classes) rather than
    the paper's Euclidean RBF units.
    """
    _check_classes(num_classes)
    if not classic:
        return _model([
            nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten(),
            nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes),
        ], (1, 32, 32))
    return _model([
        nn.Conv2d(1, 6, 5), nn.ScaledTanh(),                                   # C1: 156
        nn.Subsampling(6), nn.ScaledTanh(),                                    # S2: 12
        nn.Conv2d(6, 16, 5, connections=C3_CONNECTIONS), nn.ScaledTanh(),      # C3: 1,516
        nn.Subsampling(16), nn.ScaledTanh(),                                   # S4: 32
        nn.Conv2d(16, 120, 5), nn.ScaledTanh(), nn.Flatten(),                  # C5: 48,120
        nn.Linear(120, 84), nn.ScaledTanh(),                                   # F6: 10,164
        nn.Linear(84, num_classes),                                            # output: 850
    ], (1, 32, 32))


def lenet1(num_classes: int = 10) -> nn.Sequential:
    """LeNet-1 for 1x28x28 input: conv5 to 4 maps, tanh, avgpool2, conv5 to 12 maps, tanh, avgpool2, Linear(192)."""
    _check_classes(num_classes)
    return _model([
        nn.Conv2d(1, 4, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(4, 12, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(192, num_classes),
    ], (1, 28, 28))


def lenet300_100(num_classes: int = 10) -> nn.Sequential:
    """LeNet-300-100, the fully connected baseline of LeCun et al. 1998, for 1x28x28 input."""
    _check_classes(num_classes)
    return _model([
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, num_classes),
    ], (1, 28, 28))


def _check_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
