"""Central finite differences in float64, shared by the gradient-check tests.

Usage: perturb an array in place and re-evaluate a scalar loss that reads it (usually through a closure)::

    r = rng.standard_normal(y.shape)                   # a random projection: loss = sum(y * r), dloss/dy = r
    loss = lambda: float((F.conv2d(x, w, b, backend="numpy") * r).sum())
    check_grad(loss, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})   # dx, dw, db from backward(r)
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from tolerances import FD_EPS, FD_RTOL, norm_rel_err


def numerical_grad(f: Callable[[], float], a: np.ndarray, eps: float = FD_EPS) -> np.ndarray:
    """d f / d a by central differences (f(a + eps e_i) - f(a - eps e_i)) / (2 eps), one element at a time.

    ``a`` must be a float64 array that ``f`` reads; it is perturbed in place and restored exactly.
    """
    if a.dtype != np.float64:
        raise TypeError(f"finite differences need a float64 array, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError("numerical_grad needs a C-contiguous array (perturbing a copy would change nothing)")
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)  # views
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def check_grad(f: Callable[[], float], params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
               eps: float = FD_EPS, rtol: float = FD_RTOL, what: str = "") -> None:
    """Assert that every analytic ``grads[name]`` matches the finite-difference gradient of ``f`` with respect to
    ``params[name]`` within ``rtol``, by norm-relative error ||analytic - numeric|| / ||numeric||."""
    assert set(params) == set(grads), f"{what}: params {sorted(params)} but grads {sorted(grads)}"
    for name, a in params.items():
        analytic = np.asarray(grads[name])
        assert analytic.shape == a.shape, f"{what} d{name}: shape {analytic.shape} != {a.shape}"
        numeric = numerical_grad(f, a, eps)
        err = norm_rel_err(analytic, numeric)
        assert err <= rtol, f"{what} d{name}: norm-relative error {err:.3g} > {rtol}"
