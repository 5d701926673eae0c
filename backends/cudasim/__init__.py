"""cudasim backend: the cupy backend's own launchers and ``.cu`` kernels, run on the CPU over NumPy arrays.

No GPU and no CuPy are needed, only a C++20 compiler (g++ >= 10, or $CXX). The kernels are compiled by
:mod:`.build` with the shim header ``cudasim.h`` (CUDA's built-ins: thread and block indices, ``__shared__``,
``__syncthreads``, atomics) and launched by :mod:`.runtime`, which runs the blocks of a grid one after another on
a pool of OS threads, one per thread of the block. It exists so that every kernel runs in every CI run; it is
slow (see bench/NOTES.md), and not part of ``cnnkit bench --backends all``.

Environment: ``CNNKIT_CUDASIM_SANITIZE=address|thread`` builds the kernels with AddressSanitizer /
ThreadSanitizer (the stand-ins for compute-sanitizer memcheck / racecheck; the sanitizer runtime must be
preloaded, see :func:`runtime.sanitizer_problem`), ``CNNKIT_CUDASIM_DEBUG=1`` builds without optimisation for
stepping through a kernel in gdb, ``CNNKIT_CUDASIM_CACHE`` moves the build cache (default
``~/.cache/cnnkit/cudasim``).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from cnnkit.backends import Backend

if TYPE_CHECKING:
    from .runtime import SimulatorRuntime

NAME = "cudasim"


def unavailable_reason() -> str | None:
    """None when a C++20 compiler is there (and any requested sanitizer runtime is loaded), else why not."""
    from . import build, runtime

    problem = build.compiler_problem(build.compiler())
    if problem is None:
        try:
            problem = runtime.sanitizer_problem(runtime.sanitize_mode())
        except ValueError as exc:
            problem = str(exc)
    return problem


def create(sim: SimulatorRuntime | None = None) -> Backend:
    """The cudasim Backend: float32 NumPy arrays in and out, kernels on the simulator ``sim`` (by default one
    configured from the environment)."""
    from cnnkit.backends.cupy import _module, launcher_ops

    from .runtime import SimulatorRuntime, sanitize_mode

    if sim is None:
        sim = SimulatorRuntime(sanitize=sanitize_mode(), debug=os.environ.get("CNNKIT_CUDASIM_DEBUG") == "1")
    return Backend(name=NAME, xp=np, ops=_module.bind(sim, launcher_ops()), array_type=np.ndarray,
                   device="cpu (CUDA simulator)", to_numpy=np.asarray)
