"""Numba backend: ``@njit(parallel=True, cache=True)`` loops over NumPy arrays, float32 and float64.

Importing this package does not import numba; :func:`create` does. Kernels compile on first use (seconds each;
the first compile in a process logs "compiling kernels (first run only) ..." on the logger
``cnnkit.backends.numba``, see :mod:`.precompile`) or load from numba's on-disk cache (next to the sources, or
under ``NUMBA_CACHE_DIR``; well under a second in a new process). :func:`.precompile.precompile` does either up
front for one model's training, in two processes; :func:`warmup` for every kernel. Numba keys a cached kernel
on its own file only: after editing ``conv/_loops.py``, ``conv/simd.py``, ``reduce.py`` or ``activation.py``
(whose helpers other kernels inline or call), delete the cache files ``__pycache__/*.nbi`` and ``*.nbc`` (here and
in ``conv/``).

Compile time: numba compiles a kernel once per distinct argument types, and a literal (``0``, ``False``) is a
type of its own, so a call passes ``np.int64(0)`` or ``np.bool_(False)`` where other calls of the same kernel
pass a variable; and an absent optional array is ``None``, not empty, where numba should leave out the code
that uses it (branches on ``is None`` are pruned by type: the shifted conv's residual).

Threads: the kernels use numba's thread pool as configured, ``NUMBA_NUM_THREADS`` or
``numba.set_num_threads(n)``; nothing here overrides it. Everything runs on that one pool, the conv matmuls
included (they are Numba code, not BLAS: see conv/plan.py), and results do not depend on the thread count.
The Linear layers' NumPy matmuls (and the dense-geometry conv's, LeNet-5's C5) still use OpenBLAS, whose
worker threads spin for a long while after each call and take the cores from Numba's pool (every parallel
region then waits for a descheduled thread). So :func:`create` limits BLAS to one thread for the process with
``threadpoolctl`` (a dependency of the ``numba`` extra) unless ``OPENBLAS_NUM_THREADS`` is set, which is then
obeyed; the NumPy backend loses nothing by it (its matrices are too small for a second BLAS thread to pay).
Threading layer: numba's default here is OpenMP, whose workers spin briefly between regions, which suits the
many short regions of a training step better than ``workqueue`` or ``OMP_WAIT_POLICY=passive``. Calling the
backend from several Python threads at once needs a thread-safe layer (``omp`` or ``tbb``; ``workqueue`` aborts
on concurrent use). The measurements behind these choices are in bench/NOTES.md.

Memory: every op allocates its outputs and scratch arrays afresh, hundreds of KiB to MiB each. glibc's malloc
serves those with fresh ``mmap`` pages and returns the freed heap top to the system, so each step page-faults
on most of its arrays again. With glibc, :func:`create` therefore raises ``M_MMAP_THRESHOLD`` to 32 MiB (its
maximum) and ``M_TRIM_THRESHOLD`` to 1 GiB with ``mallopt``, unless ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` is set: freed blocks are reused, and the process keeps up to its peak heap (as a
caching allocator would).
"""
from __future__ import annotations

import ctypes
import os
import sys
import time
import warnings
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from cnnkit.backends import OPS, Backend, collect_ops, run_example

NAME = "numba"


def unavailable_reason() -> str | None:
    """None when numba imports, else why not."""
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        return f"numba is not installed ({exc})"
    return None


def _ops() -> SimpleNamespace:
    from . import activation, conv, dropout, linear, loss, norm, optim, pool  # noqa: F401  (@implements registers the ops)

    return collect_ops(NAME)


def create() -> Backend:
    from .precompile import watch

    ops = _ops()
    watch()
    _single_thread_blas()
    _keep_freed_memory()
    return Backend(
        name=NAME, xp=np, ops=ops,
        array_type=np.ndarray, device="cpu", to_numpy=np.asarray,
    )


def _single_thread_blas() -> None:
    """One BLAS thread for the process (see the module docstring), unless OPENBLAS_NUM_THREADS says otherwise."""
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        warnings.warn("threadpoolctl is not installed, so OpenBLAS threads will compete with numba's for the "
                      "cores (training steps several times slower): pip install 'cnnkit[numba]' or set "
                      "OPENBLAS_NUM_THREADS=1", RuntimeWarning, stacklevel=3)
        return
    threadpool_limits(limits=1, user_api="blas")


def _keep_freed_memory() -> bool:
    """glibc: reuse freed memory instead of fresh pages (see the module docstring); True when it was set."""
    if not sys.platform.startswith("linux") or any(
            name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def warmup(dtypes: Sequence[str] = ("float32",), verbose: bool = True) -> float:
    """Compile (or load from cache) every kernel a model can use: each op's example call from the contract, and
    each conv path on it, on tiny inputs of each dtype in ``dtypes``; returns the seconds it took (and prints
    them when ``verbose``)."""
    from . import conv

    ops = _ops()
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        def make(*shape: int, dtype: str = dtype) -> np.ndarray:
            return rng.standard_normal(shape).astype(dtype)

        for spec in OPS.values():
            run_example(spec, ops, make)
        conv_args, conv_kwargs = OPS["conv2d_forward"].example(ops, make)
        for path in conv.PATHS:
            y = conv.conv2d_forward(*conv_args, **conv_kwargs, path=path)
            conv.conv2d_backward(y, *conv_args[:2], *conv_args[3:], path=path)
        x, w, b = make(2, 3, 3, 3), make(4, 3, 3, 3), make(4)  # LeNet-5's C5: one output pixel, a plain matmul
        dense = ((1, 1), (0, 0, 0, 0), (1, 1), 1)
        conv.conv2d_backward(conv.conv2d_forward(x, w, b, *dense, activation="tanh"), x, w, *dense)
    seconds = time.perf_counter() - start
    if verbose:
        print(f"cnnkit numba warmup ({', '.join(dtypes)}): {seconds:.2f} s")
    return seconds
