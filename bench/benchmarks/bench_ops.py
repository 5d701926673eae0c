"""Per-op kernel timings: conv2d forward and backward for every distinct conv of LeNet-5 and ResNet-20, max and
average pooling at LeNet-5's pooling shapes, batch norm (training) at ResNet-20's shapes, and every op of the
contract on its spec's example call.

Each op runs on a batch of ``OP_BATCH`` images, parametrised over backend x shape. The shape lists are written
out (not derived at import) so result keys stay stable across commits; tests/test_bench.py checks that they
are exactly the shapes the models run.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from cnnkit import functional as F
from cnnkit.backends import OPS

from . import BACKENDS, backend_or_skip, random

OP_BATCH = 64


class ConvShape(NamedTuple):
    """One conv call: input (C, H, W), K output maps, a square R x R kernel, stride, padding, bias or not."""

    c: int
    h: int
    w: int
    k: int
    r: int
    stride: int
    padding: int
    bias: bool

    @property
    def label(self) -> str:
        return (f"{self.c}x{self.h}x{self.w}->{self.k} k{self.r} s{self.stride} p{self.padding}"
                f"{' bias' if self.bias else ''}")


CONV_SHAPES: dict[str, ConvShape] = {s.label: s for s in (
    # LeNet-5 (modern): C1, C3, C5, all with bias
    ConvShape(1, 32, 32, 6, 5, 1, 0, True),
    ConvShape(6, 14, 14, 16, 5, 1, 0, True),
    ConvShape(16, 5, 5, 120, 5, 1, 0, True),
    # ResNet-20: stem, the 3x3 convs of each stage, the stride-2 convs and 1x1 projections (no bias: BN follows)
    ConvShape(3, 32, 32, 16, 3, 1, 1, False),
    ConvShape(16, 32, 32, 16, 3, 1, 1, False),
    ConvShape(16, 32, 32, 32, 3, 2, 1, False),
    ConvShape(16, 32, 32, 32, 1, 2, 0, False),
    ConvShape(32, 16, 16, 32, 3, 1, 1, False),
    ConvShape(32, 16, 16, 64, 3, 2, 1, False),
    ConvShape(32, 16, 16, 64, 1, 2, 0, False),
    ConvShape(64, 8, 8, 64, 3, 1, 1, False),
)}

POOL_SHAPES: dict[str, tuple[int, int, int]] = {f"{c}x{h}x{w} k2 s2": (c, h, w) for c, h, w in (
    (6, 28, 28), (16, 10, 10),  # LeNet-5's two pooling layers (2x2, stride 2)
)}

BN_SHAPES: dict[str, tuple[int, int, int]] = {f"{c}x{h}x{w}": (c, h, w) for c, h, w in (
    (16, 32, 32), (32, 16, 16), (64, 8, 8),  # ResNet-20's three stages
)}


class _Op:
    """Shared setup: pick the backend (or skip), build the inputs, run the op once untimed and synchronise."""

    param_names = ("backend", "shape")

    def setup(self, backend: str, shape: str) -> None:
        self.be = backend_or_skip(backend)
        self.prepare(shape)
        self.run()
        self.be.synchronize()

    def prepare(self, shape: str) -> None:
        raise NotImplementedError

    def run(self) -> Any:
        raise NotImplementedError

    def timed(self) -> None:
        self.run()
        self.be.synchronize()


class _Conv(_Op):
    params = (list(BACKENDS), list(CONV_SHAPES))

    def prepare(self, shape: str) -> None:
        s = CONV_SHAPES[shape]
        self.geometry = {"stride": s.stride, "padding": s.padding}
        self.x = random(self.be, (OP_BATCH, s.c, s.h, s.w), 0)
        self.w = random(self.be, (s.k, s.c, s.r, s.r), 1)
        self.b = random(self.be, (s.k,), 2) if s.bias else None
        self.y = F.conv2d(self.x, self.w, self.b, backend=self.be, **self.geometry)
        self.dy = random(self.be, tuple(self.y.shape), 3)


class Conv2dForward(_Conv):
    def run(self) -> Any:
        return F.conv2d(self.x, self.w, self.b, backend=self.be, **self.geometry)

    def time_conv2d_forward(self, backend: str, shape: str) -> None:
        self.timed()


class Conv2dBackward(_Conv):
    """dx, dweight and (with bias) dbias, as a training step needs them."""

    def run(self) -> Any:
        return F.conv2d_backward(self.dy, self.x, self.w, need_db=self.b is not None, backend=self.be,
                                 **self.geometry)

    def time_conv2d_backward(self, backend: str, shape: str) -> None:
        self.timed()


class _Pool(_Op):
    params = (list(BACKENDS), list(POOL_SHAPES))

    def prepare(self, shape: str) -> None:
        self.x = random(self.be, (OP_BATCH, *POOL_SHAPES[shape]))
        y, self.argmax = F.max_pool2d(self.x, 2, backend=self.be)
        self.dy = random(self.be, tuple(y.shape), 1)


class MaxPool2dForward(_Pool):
    def run(self) -> Any:
        return F.max_pool2d(self.x, 2, backend=self.be)

    def time_max_pool2d_forward(self, backend: str, shape: str) -> None:
        self.timed()


class MaxPool2dBackward(_Pool):
    def run(self) -> Any:
        return F.max_pool2d_backward(self.dy, self.argmax, self.x.shape, backend=self.be)

    def time_max_pool2d_backward(self, backend: str, shape: str) -> None:
        self.timed()


class AvgPool2dForward(_Pool):
    def run(self) -> Any:
        return F.avg_pool2d(self.x, 2, backend=self.be)

    def time_avg_pool2d_forward(self, backend: str, shape: str) -> None:
        self.timed()


class AvgPool2dBackward(_Pool):
    def run(self) -> Any:
        return F.avg_pool2d_backward(self.dy, self.x.shape, 2, backend=self.be)

    def time_avg_pool2d_backward(self, backend: str, shape: str) -> None:
        self.timed()


class _BatchNorm(_Op):
    params = (list(BACKENDS), list(BN_SHAPES))

    def prepare(self, shape: str) -> None:
        c = BN_SHAPES[shape][0]
        xp = self.be.xp
        self.x = random(self.be, (OP_BATCH, *BN_SHAPES[shape]))
        self.dy = random(self.be, tuple(self.x.shape), 1)
        self.gamma, self.beta = xp.ones(c, dtype="float32"), xp.zeros(c, dtype="float32")
        self.mean, self.var = xp.zeros(c, dtype="float32"), xp.ones(c, dtype="float32")
        self.saved = self.forward()[1]

    def forward(self) -> Any:
        return F.batch_norm(self.x, self.gamma, self.beta, self.mean, self.var, training=True, backend=self.be)


class BatchNormForward(_BatchNorm):
    """Training mode: batch statistics plus the running-statistics update."""

    def run(self) -> Any:
        return self.forward()

    def time_batch_norm_forward(self, backend: str, shape: str) -> None:
        self.timed()


class BatchNormBackward(_BatchNorm):
    def run(self) -> Any:
        return F.batch_norm_backward(self.dy, self.saved, self.gamma, backend=self.be)

    def time_batch_norm_backward(self, backend: str, shape: str) -> None:
        self.timed()


class OpExample:
    """Every op of the contract, called as its spec's example (cnnkit.backends.OPS): small inputs, so this
    times per-call overhead and shows an op a backend makes slow; the classes above time the models' shapes."""

    param_names = ("backend", "op")
    params = (list(BACKENDS), list(OPS))

    def setup(self, backend: str, op: str) -> None:
        self.be = backend_or_skip(backend)
        seeds = iter(range(1 << 30))
        args, kwargs = OPS[op].example(self.be.ops, lambda *shape: random(self.be, shape, next(seeds)))
        self.call = lambda: getattr(self.be.ops, op)(*args, **kwargs)
        self.call()
        self.be.synchronize()

    def time_op(self, backend: str, op: str) -> None:
        self.call()
        self.be.synchronize()
