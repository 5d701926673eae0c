"""BatchNorm2d: per-channel batch normalisation of NCHW with running statistics (PyTorch semantics)."""
from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit import functional as F
from cnnkit.nn import init
from cnnkit.nn.base import Layer

Array = Any


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

    def forward(self, x: Array) -> Array:
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}) needs (N, {self.num_features}, H, W) input, "
                             f"got shape {tuple(x.shape)}")
        gamma, beta = self._gamma_beta()
        y, saved = F.batch_norm(x, gamma, beta, self.running_mean, self.running_var, self.training,
                                self.momentum, self.eps, backend=self.backend)
        if self.training:
            self.num_batches_tracked += 1
        self._saved = saved
        return y

    def backward(self, dy: Array) -> Array:
        saved = init.saved(self, self._saved)
        dx, dgamma, dbeta = F.batch_norm_backward(dy, saved, self._gamma_beta()[0], backend=self.backend)
        if self.affine:
            self.accumulate(self.weight, dgamma)
            self.accumulate(self.bias, dbeta)
        return dx

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
