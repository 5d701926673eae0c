"""CIFAR ResNets of He et al. 2016 (section 4.2): depth 6n + 2 (20, 32, 44, 56, 110), for 3x32x32 input.

Layout (an ``nn.Sequential``, state-dict keys in brackets)::

    [0] conv3x3(3, 16)  [1] BatchNorm2d(16)  [2] ReLU
    [3] stage 1: n BasicBlocks, 16 maps, 32x32
    [4] stage 2: n BasicBlocks, 32 maps, 16x16 (the first block has stride 2)
    [5] stage 3: n BasicBlocks, 64 maps, 8x8 (the first block has stride 2)
    [6] GlobalAvgPool2d  [7] Linear(64, num_classes)

BasicBlock ``[s.b]`` = Sequential(Residual(body, projection), ReLU) with body = conv3x3, BN, ReLU, conv3x3, BN
(keys ``3.0.0.body.0.weight``, ``3.0.0.body.1.running_mean`` ...). Where a block changes the shape (stride 2,
more maps) the shortcut depends on ``shortcut``; elsewhere it is the identity:

- ``"B"`` (the default): a projection, 1x1 conv with stride 2 followed by BN (He et al.'s option B; keys
  ``4.0.0.projection.0.weight``, ``4.0.0.projection.1.weight`` ...). It adds 2 x (1x1 conv + BN) =
  (16*32 + 64) + (32*64 + 128) = 2,752 parameters: ResNet-20 has 272,474.
- ``"A"``: the paper's CIFAR choice, :class:`cnnkit.nn.ZeroPadShortcut` (the identity subsampled by 2, the new
  maps zero, no parameters): ResNet-20 has 269,722 parameters, the paper's 0.27M.

Convolutions have no bias (BN follows each one).
"""
from __future__ import annotations

from cnnkit import nn

DEPTHS = (20, 32, 44, 56, 110)
"""The depths of the paper's CIFAR-10 table; any 6n + 2 >= 8 builds."""


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


SHORTCUTS = ("A", "B")
"""He et al.'s shortcut options for blocks that change the shape: A zero-pads, B projects (the default)."""


def basic_block(in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "B") -> nn.Sequential:
    """relu(body(x) + shortcut(x)) with body = conv3x3-BN-ReLU-conv3x3-BN; when the shape changes the shortcut is
    a 1x1-conv + BN projection (``shortcut="B"``) or a parameter-free zero-padded identity (``"A"``), else the
    identity."""
    body = nn.Sequential(_conv3x3(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels), nn.ReLU(),
                         _conv3x3(out_channels, out_channels), nn.BatchNorm2d(out_channels))
    projection = None
    if (stride != 1 or in_channels != out_channels) and shortcut == "A":
        projection = nn.ZeroPadShortcut(in_channels, out_channels, stride)
    elif stride != 1 or in_channels != out_channels:
        projection = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_channels))
    return nn.Sequential(nn.Residual(body, projection), nn.ReLU())


def resnet(depth: int, num_classes: int = 10, shortcut: str = "B") -> nn.Sequential:
    """The CIFAR ResNet of ``depth`` = 6n + 2 layers (n BasicBlocks per stage) with ``num_classes`` outputs.

    ``shortcut`` is the option for the two blocks that change the shape: ``"B"`` (the default, kept for existing
    checkpoints) a 1x1-conv + BN projection, ``"A"`` the paper's parameter-free zero-padded identity (ResNet-20:
    269,722 parameters with A, 272,474 with B).
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (e.g. {', '.join(map(str, DEPTHS))}), "
                         f"got {depth!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be 'A' (zero-padded identity) or 'B' (projection), got {shortcut!r}")
    n = (depth - 2) // 6
    stages, in_channels = [], 16
    for index, channels in enumerate((16, 32, 64)):
        blocks = []
        for b in range(n):
            blocks.append(basic_block(in_channels, channels, 2 if index > 0 and b == 0 else 1, shortcut))
            in_channels = channels
        stages.append(nn.Sequential(*blocks))
    model = nn.Sequential(_conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU(), *stages,
                          nn.GlobalAvgPool2d(), nn.Linear(64, num_classes))
    model.input_shape = (3, 32, 32)
    return model


def resnet20(num_classes: int = 10, shortcut: str = "B") -> nn.Sequential:
    return resnet(20, num_classes, shortcut)


def resnet32(num_classes: int = 10, shortcut: str = "B") -> nn.Sequential:
    return resnet(32, num_classes, shortcut)


def resnet44(num_classes: int = 10, shortcut: str = "B") -> nn.Sequential:
    return resnet(44, num_classes, shortcut)


def resnet56(num_classes: int = 10, shortcut: str = "B") -> nn.Sequential:
    return resnet(56, num_classes, shortcut)


def resnet110(num_classes: int = 10, shortcut: str = "B") -> nn.Sequential:
    return resnet(110, num_classes, shortcut)
