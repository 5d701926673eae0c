"""The one place that loads the CUDA kernels and computes launch configurations (from shapes only), and the
seam between the launchers and what runs them.

The seam: launchers allocate with :func:`array_module` and start kernels with :func:`launch`; both go to the *runtime*
active in the current context. The default is CuPy: each ``kernels/<name>.cu`` becomes one
``cupy.RawModule``, compiled on first use in a process and cached on disk by CuPy (``~/.cupy/kernel_cache``),
so later processes load the binary without compiling. Kernels are fetched by their plain ``extern "C"``
names; ``name_expressions`` is deliberately not used because it bypasses CuPy's disk cache. ``#include
"common.cuh"`` is pasted in as text before compiling, so the cache key (a hash of the source) changes whenever
the header does. The cudasim backend binds the same launchers to its CPU simulator (:func:`bind`).
"""
from __future__ import annotations

import contextvars
import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Protocol

import numpy as np

from cnnkit.backends import ACTIVATION_CODES

KERNEL_DIR = Path(__file__).parent / "kernels"
COMPILE_OPTIONS = ("--std=c++17",)
THREADS = 256
"""Threads per block of every one-thread-per-element kernel, and of the block reductions (CNN_MAX_BLOCK)."""
MAX_ELEMENTS = 2 ** 31 - 1
"""Kernels index with 32-bit ints; larger arrays are refused with a clear error."""

ACT_CODES = ACTIVATION_CODES
"""The contract's activation codes, which kernels/common.cuh's ACT_* repeat (tests/test_cuda_compile.py checks)."""

_INCLUDE = '#include "common.cuh"'


def source(name: str, line_markers: bool = False) -> str:
    """The text of ``kernels/<name>.cu`` with common.cuh pasted in place of its include line; with
    ``line_markers``, ``#line`` directives keep compiler messages and debuggers on the original files."""
    path, header = KERNEL_DIR / f"{name}.cu", KERNEL_DIR / "common.cuh"
    lines = path.read_text().split("\n")
    at = lines.index(_INCLUDE)
    if not line_markers:
        return "\n".join([*lines[:at], header.read_text(), *lines[at + 1:]])
    return "\n".join([f'#line 1 "{path}"', *lines[:at], f'#line 1 "{header}"', header.read_text(),
                      f'#line {at + 2} "{path}"', *lines[at + 1:]])


class Runtime(Protocol):
    """What runs the launchers' kernels: an array module and a kernel launch."""

    name: str
    xp: Any

    def launch(self, name: str, func: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple,
               shared_mem: int = 0) -> None: ...


@functools.cache
def _module(name: str, device_id: int) -> Any:  # keyed by device: a loaded binary belongs to one device
    import cupy

    return cupy.RawModule(code=source(name), options=COMPILE_OPTIONS)


@functools.cache
def _function(name: str, func: str, device_id: int) -> Any:
    return _module(name, device_id).get_function(func)


class CupyRuntime:
    """CuPy arrays and cupy.RawModule kernels on the current CUDA device."""

    name = "cupy"

    @property
    def xp(self) -> Any:
        import cupy

        return cupy

    def kernel(self, name: str, func: str) -> Any:
        """Kernel ``func`` of ``kernels/<name>.cu`` for the current device (compiled or loaded once)."""
        import cupy

        return _function(name, func, cupy.cuda.Device().id)

    def launch(self, name: str, func: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple,
               shared_mem: int = 0) -> None:
        self.kernel(name, func)(grid, block, args, shared_mem=shared_mem)


_CUPY = CupyRuntime()
_active: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar("cnnkit_cuda_runtime", default=None)


def runtime() -> Runtime:
    """The runtime of the current context (CuPy unless a bound op set another)."""
    active = _active.get()
    return _CUPY if active is None else active


def array_module() -> Any:
    """The array module of the current runtime (cupy, or the simulator's NumPy)."""
    return runtime().xp


def bind(rt: Runtime, ops: SimpleNamespace) -> SimpleNamespace:
    """The op table ``ops`` with every op running under runtime ``rt``."""
    def bound(op: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(op)
        def call(*args: Any, **kwargs: Any) -> Any:
            token = _active.set(rt)
            try:
                return op(*args, **kwargs)
            finally:
                _active.reset(token)
        return call
    return SimpleNamespace(**{name: bound(op) for name, op in vars(ops).items()})


def launch(name: str, func: str, grid: int | tuple[int, ...], block: int, *args: Any, shared_mem: int = 0) -> None:
    """Launch a kernel on the current runtime (CuPy: the current stream); ``args`` must already be arrays or
    numpy scalars of the exact C types (i32 / f32 below), since CuPy passes a Python int as 64 bits."""
    grid = (grid,) if isinstance(grid, int) else grid
    runtime().launch(name, func, grid, (block,), args, shared_mem=shared_mem)


def blocks(n: int, threads: int = THREADS) -> int:
    """Blocks of ``threads`` that cover ``n`` elements (at least 1)."""
    return max(1, ceil_div(n, threads))


def reduction_threads(n: int) -> int:
    """Power-of-two block size in [32, 256] for a block that reduces ``n`` values (common.cuh's trees)."""
    return min(THREADS, max(32, 1 << max(0, (n - 1).bit_length())))


def i32(*values: int) -> tuple[np.int32, ...]:
    """Python ints as C ``int`` kernel arguments."""
    return tuple(np.int32(v) for v in values)


def f32(value: float) -> np.float32:
    """A Python float as a C ``float`` kernel argument."""
    return np.float32(value)


def check_elements(count: int, what: str) -> None:
    """Refuse shapes whose flat indices would overflow the kernels' 32-bit ints."""
    if count > MAX_ELEMENTS:
        raise ValueError(f"{what} has {count} elements; the cupy backend's kernels index with 32-bit ints "
                         f"(at most {MAX_ELEMENTS}): split the batch")


def as_f32(a: Any, name: str) -> Any:
    """``a`` as a C-contiguous float32 array (no copy when it already is); TypeError for any other dtype."""
    if a.dtype != np.float32:
        raise TypeError(f"{name} has dtype {a.dtype}, but the cupy backend computes in float32 only: pass "
                        f"{name}.astype(cupy.float32), or use the numpy or numba backend for {a.dtype}")
    check_elements(a.size, name)
    return array_module().ascontiguousarray(a)


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for ints."""
    return -(-a // b)


def splits_for(count: int, splits: int, multiple: int = 1) -> tuple[int, int]:
    """(splits, chunk): cut ``count`` reduction items into at most ``splits`` consecutive chunks whose length
    is a multiple of ``multiple``; every chunk but the last is full and none is empty."""
    chunk = max(multiple, ceil_div(ceil_div(count, max(1, splits)), multiple) * multiple)
    return ceil_div(count, chunk), chunk
