"""PyTorch twins of cnnkit's LeNet-5 and ResNet-20: the same module tree, so the same state-dict keys (batch
norm's num_batches_tracked included). Test oracles only."""
from __future__ import annotations

import torch


class TorchResidual(torch.nn.Module):
    """Same attribute names as cnnkit.nn.Residual, so the keys read body.* and projection.*."""

    def __init__(self, body: torch.nn.Module, projection: torch.nn.Module | None = None):
        super().__init__()
        self.body, self.projection = body, projection

    def forward(self, x):
        return self.body(x) + (x if self.projection is None else self.projection(x))


class TorchGlobalAvgPool(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def torch_lenet5() -> torch.nn.Sequential:
    t = torch.nn
    return t.Sequential(t.Conv2d(1, 6, 5), t.Tanh(), t.AvgPool2d(2), t.Conv2d(6, 16, 5), t.Tanh(), t.AvgPool2d(2),
                        t.Conv2d(16, 120, 5), t.Tanh(), t.Flatten(), t.Linear(120, 84), t.Tanh(), t.Linear(84, 10))


def torch_resnet20() -> torch.nn.Sequential:
    t = torch.nn

    def block(cin, cout, stride):
        body = t.Sequential(t.Conv2d(cin, cout, 3, stride, 1, bias=False), t.BatchNorm2d(cout), t.ReLU(),
                            t.Conv2d(cout, cout, 3, 1, 1, bias=False), t.BatchNorm2d(cout))
        projection = None
        if stride != 1 or cin != cout:
            projection = t.Sequential(t.Conv2d(cin, cout, 1, stride, bias=False), t.BatchNorm2d(cout))
        return t.Sequential(TorchResidual(body, projection), t.ReLU())

    stages, cin = [], 16
    for i, cout in enumerate((16, 32, 64)):
        stages.append(t.Sequential(*[block(cin if b == 0 else cout, cout, 2 if i and b == 0 else 1)
                                     for b in range(3)]))
        cin = cout
    return t.Sequential(t.Conv2d(3, 16, 3, 1, 1, bias=False), t.BatchNorm2d(16), t.ReLU(), *stages,
                        TorchGlobalAvgPool(), t.Linear(64, 10))
