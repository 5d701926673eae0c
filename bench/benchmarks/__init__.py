"""asv benchmarks for cnnkit: per-op kernels (bench_ops) and whole models (bench_models) on every backend.

Every benchmark is parametrised over all backends (numpy, numba, cupy). A backend that cannot run on this
machine makes ``setup`` raise NotImplementedError, which asv reports as skipped ("n/a"), not failed. Setup
builds the data, runs the timed call once untimed (Numba JIT compilation, CuPy kernel loading, first-touch
allocations) and synchronises; every timed call ends with ``backend.synchronize()`` so GPU times are the
kernels' real run time, not their launch time.

Set ``CNNKIT_BENCH_BACKENDS=numpy,numba`` to benchmark only those backends.
Run: ``cd bench && asv run --python=same --quick`` (this environment) or ``asv continuous main HEAD``.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from cnnkit.backends import BACKEND_NAMES, BENCHMARK_BACKENDS, Backend


def _bench_backends() -> tuple[str, ...]:
    """The backends to parametrise over: numpy, numba and cupy, or those named in $CNNKIT_BENCH_BACKENDS
    (comma-separated), which the CI smoke step uses to keep its time budget."""
    names = tuple(n.strip() for n in os.environ.get("CNNKIT_BENCH_BACKENDS", "").split(",") if n.strip())
    unknown = set(names) - set(BACKEND_NAMES)
    if unknown:
        raise ValueError(f"CNNKIT_BENCH_BACKENDS names unknown backends {sorted(unknown)}; valid: {BACKEND_NAMES}")
    return names or BENCHMARK_BACKENDS


BACKENDS: tuple[str, ...] = _bench_backends()


def backend_or_skip(name: str) -> Backend:
    """The Backend ``name``, or NotImplementedError (asv: skipped) when it cannot run here, with the reason."""
    from cnnkit.backend import backend, unavailable_reason

    reason = unavailable_reason(name)
    if reason is not None:
        raise NotImplementedError(f"backend {name} is not available here: {reason}")
    return backend(name)


def random(be: Backend, shape: tuple[int, ...], seed: int = 0) -> Any:
    """A float32 standard-normal array of ``shape`` on backend ``be`` (drawn on the host, so every backend
    gets the same values)."""
    rng = np.random.default_rng(seed)
    return be.asarray(rng.standard_normal(shape).astype(np.float32))
