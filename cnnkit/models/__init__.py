"""Ready-made models: LeNet-1, LeNet-5 (modern and 1998 classic), LeNet-300-100 and CIFAR ResNets.

``create(name, **kwargs)`` builds one by name (see ``names()``); every model has ``input_shape`` (C, H, W).
"""
from __future__ import annotations

from typing import Any, Callable

from cnnkit.models.lenet import C3_CONNECTIONS, lenet1, lenet5, lenet300_100
from cnnkit.models.resnet import basic_block, resnet, resnet20, resnet32, resnet44, resnet56, resnet110
from cnnkit.nn import Sequential


def _lenet5_classic(**kwargs: Any) -> Sequential:
    return lenet5(classic=True, **kwargs)


_REGISTRY: dict[str, Callable[..., Sequential]] = {
    "lenet5": lenet5,
    "lenet5-classic": _lenet5_classic,
    "lenet1": lenet1,
    "lenet300-100": lenet300_100,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
}


def names() -> list[str]:
    """The model names ``create`` accepts."""
    return list(_REGISTRY)


def create(name: str, **kwargs: Any) -> Sequential:
    """Build the model called ``name`` (e.g. "lenet5", "resnet20"); ``kwargs`` go to its builder (num_classes)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


__all__ = ["create", "names", "lenet1", "lenet5", "lenet300_100", "C3_CONNECTIONS", "basic_block",
           "resnet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
