"""BatchNorm2d: per-channel batch normalisation of NCHW with running statistics (PyTorch semantics);
SyncBatchNorm2d and :func:`convert_sync_batchnorm`: its data-parallel form, with the statistics of the global
batch of every rank."""
from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit import functional as F
from cnnkit.backends import BATCH_NORM_ACTIVATIONS
from cnnkit.nn import init
from cnnkit.nn.base import Layer

Array = Any

_AXES = (0, 2, 3)  # everything but the channel axis of NCHW


class BatchNorm2d(Layer):
    """Batch norm over the channels of NCHW, as PyTorch's BatchNorm2d.

    Training normalises with the batch statistics and moves ``running_mean`` / ``running_var`` by ``momentum``
    (unbiased variance); eval normalises with the running statistics. Parameters ``weight`` (gamma, ones) and
    ``bias`` (beta, zeros) exist when ``affine``. Buffers ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` (int64, counts training batches) are saved in the state dict, so its keys are
    exactly PyTorch's and weights transfer 1:1.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True, *,
                 dtype: str = "float32"):
        super().__init__()
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        if not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        self.num_features, self.eps, self.momentum, self.affine = num_features, float(eps), float(momentum), affine
        dtype = init.check_dtype(dtype)
        ones, zeros = np.ones(num_features), np.zeros(num_features)
        self.weight = init.parameter(self, ones, dtype) if affine else None
        self.bias = init.parameter(self, zeros, dtype) if affine else None
        self.register_buffer("running_mean", self.backend.asarray(np.zeros(num_features, dtype=dtype)))
        self.register_buffer("running_var", self.backend.asarray(np.ones(num_features, dtype=dtype)))
        self.register_buffer("num_batches_tracked", self.backend.asarray(np.array(0, dtype=np.int64)))
        self._moved()
        self._saved: Any = None

    def _moved(self) -> None:
        """Without affine, the kernel still takes gamma and beta: constant ones and zeros on the current backend."""
        if not self.affine:
            dtype = self.running_mean.dtype
            self._gamma = self.backend.xp.ones(self.num_features, dtype=dtype)
            self._beta = self.backend.xp.zeros(self.num_features, dtype=dtype)

    def _gamma_beta(self) -> tuple[Array, Array]:
        return (self.weight.data, self.bias.data) if self.affine else (self._gamma, self._beta)

    fusable_activations = BATCH_NORM_ACTIVATIONS
    """The activations :meth:`fuse_activation` takes (Sequential fuses a following ReLU) ..."""
    fuses_activation_backward = True
    """... and whose backward the fused backward includes."""

    def forward(self, x: Array) -> Array:
        return self._normalise(x, None)

    def fuse_activation(self, x: Array, kind: str) -> Array:
        """Forward with the activation ``kind`` (one of :attr:`fusable_activations`) in the same pass; the
        backward then takes dy of the activation's output and applies its derivative itself (used by
        Sequential, which then skips the activation layer's backward)."""
        return self._normalise(x, kind)

    def _normalise(self, x: Array, activation: str | None) -> Array:
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}) needs (N, {self.num_features}, H, W) input, "
                             f"got shape {tuple(x.shape)}")
        gamma, beta = self._gamma_beta()
        y, saved = F.batch_norm(x, gamma, beta, self.running_mean, self.running_var, self.training,
                                self.momentum, self.eps, activation, backend=self.backend)
        if self.training:
            self.num_batches_tracked += 1
        self._saved = saved
        return y

    def eval_affine(self) -> tuple[Array, Array]:
        """(scale, shift) per channel such that eval mode computes y = x * scale + shift: scale = gamma /
        sqrt(running_var + eps), shift = beta - running_mean * scale (what a preceding conv folds in)."""
        gamma, beta = self._gamma_beta()
        xp = self.backend.xp
        scale = gamma / xp.sqrt(self.running_var + xp.asarray(self.eps, dtype=self.running_var.dtype))
        return scale, beta - self.running_mean * scale

    def backward(self, dy: Array) -> Array:
        saved = init.saved(self, self._saved)
        dx, dgamma, dbeta = F.batch_norm_backward(dy, saved, self._gamma_beta()[0], backend=self.backend)
        if self.affine:
            self.accumulate(self.weight, dgamma)
            self.accumulate(self.bias, dbeta)
        return dx

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


def _channels(v: Array) -> Array:
    return v[None, :, None, None]


class SyncBatchNorm2d(BatchNorm2d):
    """A BatchNorm2d whose training statistics are those of the global batch of every rank of ``comm`` (a
    :class:`cnnkit.distributed.Communicator`), as PyTorch's SyncBatchNorm: the forward allreduces each channel's
    sum, sum of squares and count; the backward allreduces the sums of dy and dy * x_hat (weighted by each
    rank's batch size, the weighting of ``allreduce_gradients(..., count=)``) for dx, while the weight and bias
    gradients stay this rank's contributions, which ``allreduce_gradients`` then combines. So N ranks at batch B
    train as one process at batch N * B. Eval mode, and a communicator of one rank, are plain BatchNorm2d.
    Made by :func:`convert_sync_batchnorm`."""

    comm: Any = None
    _sync = False
    fuse_activation = None  # the synchronised statistics are not the kernel's: activations run as their own layer

    def forward(self, x: Array) -> Array:
        self._sync = self.training and self.comm is not None and self.comm.size > 1
        if not self._sync or x.ndim != 4 or x.shape[1] != self.num_features:
            return super().forward(x)
        be, c = self.backend, self.num_features
        local = be.to_numpy(be.xp.stack([x.sum(axis=_AXES, dtype=np.float64),
                                         (x * x).sum(axis=_AXES, dtype=np.float64)]))
        totals = self.comm.agreed_sum_(np.concatenate([local.ravel(), [x.size // c]]).astype(np.float64))
        m = totals[-1]
        mean = totals[:c] / m
        var = np.maximum(totals[c:2 * c] / m - mean * mean, 0.0)
        if m < 2:
            raise ValueError(f"batch norm in training mode needs more than one value per channel over all ranks "
                             f"(x has shape {tuple(x.shape)})")
        dtype, momentum = x.dtype, self.momentum
        self.running_mean *= 1 - momentum
        self.running_mean += be.asarray((momentum * mean).astype(dtype))
        self.running_var *= 1 - momentum
        self.running_var += be.asarray((momentum * var * (m / (m - 1))).astype(dtype))
        self.num_batches_tracked += 1
        inv_std = be.asarray((1 / np.sqrt(var + self.eps)).astype(dtype))
        x_hat = (x - _channels(be.asarray(mean.astype(dtype)))) * _channels(inv_std)
        gamma, beta = self._gamma_beta()
        self._saved = (x_hat, inv_std, m, x.shape[0])
        return x_hat * _channels(gamma) + _channels(beta)

    def backward(self, dy: Array) -> Array:
        if not self._sync:
            return super().backward(dy)
        x_hat, inv_std, m, n = init.saved(self, self._saved)
        be, c = self.backend, self.num_features
        dgamma, dbeta = (dy * x_hat).sum(axis=_AXES), dy.sum(axis=_AXES)
        local = np.concatenate([be.to_numpy(dgamma), be.to_numpy(dbeta)]).astype(np.float64) * n
        totals = be.asarray((self.comm.agreed_sum_(local) / (n * m)).astype(dy.dtype))  # in this rank's loss scale
        gamma = self._gamma_beta()[0]
        dx = _channels(gamma * inv_std) * (dy - _channels(totals[c:]) - x_hat * _channels(totals[:c]))
        if self.affine:
            self.accumulate(self.weight, dgamma)
            self.accumulate(self.bias, dbeta)
        return dx


def convert_sync_batchnorm(model: Layer, comm: Any) -> Layer:
    """Make every BatchNorm2d of ``model`` a :class:`SyncBatchNorm2d` over ``comm``, in place (parameters,
    buffers and state-dict keys unchanged); returns ``model``. Call it on every rank, before training."""
    for _, layer in model.modules():
        if isinstance(layer, BatchNorm2d):
            layer.__class__ = SyncBatchNorm2d
            layer.comm = comm
    return model
