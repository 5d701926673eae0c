"""The simulator's side of the CUDA seam (``cupy._module.runtime``): NumPy arrays, and kernels loaded from the
libraries build.py makes, launched after the checks a real launch would fail or silently get wrong.

A launch checks the grid and block against CUDA's limits and the kernel's ``__launch_bounds__``, and every
argument against the kernel's C parameter type: a pointer takes a C-contiguous array of the pointee's dtype, a
scalar exactly the NumPy scalar type (a Python int where the kernel takes ``int`` is refused, because CuPy
would pass it as 64 bits and the real kernel would read garbage). Arrays allocated with ``empty`` are filled
with NaN (floats) or 0xA5 bytes (integers), so an output cell a kernel never writes cannot pass a test.
"""
from __future__ import annotations

import ctypes
import math
import os
import threading
from typing import Any

import numpy as np

from cnnkit.backends.cupy import _module as cuda

from . import build

MAX_BLOCK_THREADS = 1024
MAX_BLOCK_DIMS = (1024, 1024, 64)
MAX_GRID_DIMS = (2 ** 31 - 1, 65535, 65535)
MAX_DYNAMIC_SHARED = 48 * 1024
"""CUDA's limits for every compute capability cnnkit targets (dynamic shared memory without the opt-in)."""
INT_SENTINEL = 0xA5
_ERROR_BYTES = 1024
_RUNTIME_SYMBOL = {"address": "__asan_init", "thread": "__tsan_init"}


class LaunchError(RuntimeError):
    """A launch that a real GPU would refuse, or a kernel the simulator caught misbehaving."""


def sanitize_mode() -> str:
    """$CNNKIT_CUDASIM_SANITIZE: "" (off), "address" or "thread"."""
    mode = os.environ.get("CNNKIT_CUDASIM_SANITIZE", "").strip().lower()
    if mode not in build.SANITIZE_FLAGS:
        raise ValueError(f"CNNKIT_CUDASIM_SANITIZE must be one of address, thread (or unset); got {mode!r}")
    return mode


def sanitizer_problem(mode: str) -> str | None:
    """None when the sanitizer runtime ``mode`` needs is loaded in this process, else how to load it."""
    if not mode or hasattr(ctypes.CDLL(None), _RUNTIME_SYMBOL[mode]):
        return None
    return (f"CNNKIT_CUDASIM_SANITIZE={mode} needs the sanitizer's runtime loaded before Python starts: run "
            f"python3 -m cnnkit.backends.cudasim.sanitize {mode} [pytest arguments], which preloads it")


class PoisonedNumpy:
    """NumPy, except that ``empty`` and ``empty_like`` fill their arrays with NaN / sentinel bytes."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def _poison(a: np.ndarray) -> np.ndarray:
        if a.dtype.kind in "fc":
            a.fill(np.nan)
        else:
            a.view(np.uint8).fill(INT_SENTINEL)
        return a

    def empty(self, shape: Any, dtype: Any = float, order: str = "C") -> np.ndarray:
        return self._poison(np.empty(shape, dtype=dtype, order=order))

    def empty_like(self, a: Any, dtype: Any = None) -> np.ndarray:
        return self._poison(np.empty_like(a, dtype=dtype, order="C"))


def _dims(value: int | tuple[int, ...], what: str, limits: tuple[int, ...]) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise LaunchError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, (d, limit) in enumerate(zip(dims, limits)):
        if not 1 <= d <= limit:
            raise LaunchError(f"{what} dimension {'xyz'[axis]} is {d}; CUDA allows 1 to {limit} "
                              "(a real launch fails with 'invalid configuration argument')")
    return dims  # type: ignore[return-value]


class Kernel:
    """One simulated kernel: ``kernel(grid, block, args, shared_mem=0)``, as a cupy.RawKernel is called."""

    def __init__(self, library: ctypes.CDLL, sig: build.Signature, module: str):
        self.sig, self.module = sig, module
        self._entry = getattr(library, f"cudasim_launch_{sig.name}")
        self._entry.restype = ctypes.c_int
        self._entry.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.c_ulonglong, ctypes.POINTER(ctypes.c_void_p),
                                ctypes.c_char_p, ctypes.c_int]

    def __call__(self, grid: Any, block: Any, args: tuple, shared_mem: int = 0) -> None:
        where = f"kernel {self.sig.name} ({self.module}.cu)"
        grid3 = _dims(grid, f"{where}: grid", MAX_GRID_DIMS)
        block3 = _dims(block, f"{where}: block", MAX_BLOCK_DIMS)
        threads = math.prod(block3)
        limit = min(MAX_BLOCK_THREADS, self.sig.max_threads or MAX_BLOCK_THREADS)
        if threads > limit:
            bound = f"__launch_bounds__({self.sig.max_threads})" if self.sig.max_threads else "CUDA's limit"
            raise LaunchError(f"{where}: block of {threads} threads exceeds {bound}: at most {limit}")
        if not 0 <= shared_mem <= MAX_DYNAMIC_SHARED:
            raise LaunchError(f"{where}: shared_mem={shared_mem} bytes; at most {MAX_DYNAMIC_SHARED}")
        slots = self._arguments(args, where)
        pointers = (ctypes.c_void_p * len(slots))(*[ctypes.addressof(s) for s in slots])
        error = ctypes.create_string_buffer(_ERROR_BYTES)
        dims = (ctypes.c_uint * 6)(*grid3, *block3)
        if self._entry(dims, shared_mem, pointers, error, _ERROR_BYTES) != 0:
            raise LaunchError(f"{where}, grid {grid3}, block {block3}: {error.value.decode()}")

    def _arguments(self, args: tuple, where: str) -> list[Any]:
        params = self.sig.params
        if len(args) != len(params):
            raise LaunchError(f"{where} takes {len(params)} arguments ({', '.join(p.name for p in params)}), "
                              f"got {len(args)}")
        slots = []
        for p, a in zip(params, args):
            dtype = np.dtype(p.dtype)
            if p.is_pointer:
                if not isinstance(a, np.ndarray):
                    raise LaunchError(f"{where}: argument {p.name} ({p.ctype}) must be an array, got "
                                      f"{type(a).__name__}")
                if a.dtype != dtype or not a.flags.c_contiguous:
                    raise LaunchError(f"{where}: argument {p.name} ({p.ctype}) needs a C-contiguous {dtype} array, "
                                      f"got {a.dtype}{'' if a.flags.c_contiguous else ', not C-contiguous'}")
                slots.append(ctypes.c_void_p(a.ctypes.data))
            else:
                if type(a) is not dtype.type:
                    raise LaunchError(f"{where}: argument {p.name} is a C {p.ctype}: pass numpy.{dtype.name}, not "
                                      f"{type(a).__name__} (CuPy passes a Python int as 64 bits, a float as double)")
                slots.append(np.ctypeslib.as_ctypes_type(dtype)(a.item()))
        return slots


class SimulatorRuntime:
    """Kernels compiled by build.py and run by the shim's thread pool, over NumPy arrays."""

    name = "cudasim"
    xp = PoisonedNumpy()

    def __init__(self, sanitize: str = "", debug: bool = False, sources: dict[str, str] | None = None):
        """``sources`` replaces the text of named kernel files (the harness tests plant bugs in scratch copies)."""
        self.sanitize, self.debug = sanitize, debug
        self._sources = dict(sources or {})
        self._modules: dict[str, dict[str, Kernel]] = {}
        self._lock = threading.Lock()

    def module(self, name: str) -> dict[str, Kernel]:
        """The kernels of ``kernels/<name>.cu``, compiled (or loaded from the disk cache) once."""
        if name not in self._modules:
            text = self._sources.get(name) or cuda.source(name, line_markers=True)
            self._modules[name] = self.load(name, text)
        return self._modules[name]

    def load(self, name: str, text: str) -> dict[str, Kernel]:
        """The kernels of source ``text`` (tests load scratch copies of kernels this way)."""
        problem = sanitizer_problem(self.sanitize)
        if problem:
            raise LaunchError(problem)
        path, kernels = build.build(name, text, self.sanitize, self.debug)
        library = ctypes.CDLL(str(path))
        return {k: Kernel(library, sig, name) for k, sig in kernels.items()}

    def kernel(self, name: str, func: str) -> Kernel:
        kernels = self.module(name)
        if func not in kernels:
            raise LaunchError(f"kernels/{name}.cu has no extern \"C\" __global__ kernel {func!r}")
        return kernels[func]

    def launch(self, name: str, func: str, grid: Any, block: Any, args: tuple, shared_mem: int = 0) -> None:
        with self._lock:  # the shim runs one launch at a time per module; keep Python threads in line too
            self.kernel(name, func)(grid, block, args, shared_mem=shared_mem)
