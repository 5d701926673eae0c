"""Backend registry and selection: which engine the functional API and new layers use.

The default comes from ``$CNNKIT_BACKEND`` ("numpy" when unset), read lazily on first use so setting it after
``import cnnkit`` still works. ``use_backend`` is context-local (contextvars), so threads and asyncio tasks
each see their own choice.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.metadata
import os
from typing import Iterator

from cnnkit.backends import BACKEND_NAMES, INSTALL_HINTS, Backend

_current: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("cnnkit_backend", default=None)
_created: dict[str, Backend] = {}


class BackendUnavailableError(RuntimeError):
    """The named backend exists but cannot run on this machine."""


def _module(name: str):
    return importlib.import_module(f"cnnkit.backends.{name}")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {name!r}")
    return name.lower()


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None when it can."""
    name = _check_name(name)
    try:
        return _module(name).unavailable_reason()
    except ImportError as exc:  # a backend package whose engine is not installed
        return f"{exc}"


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, in preference order of simplicity."""
    return [name for name in BACKEND_NAMES if unavailable_reason(name) is None]


def backend(name: str | Backend) -> Backend:
    """The Backend object for ``name`` (created once per process); a clear error when it cannot run here."""
    if isinstance(name, Backend):
        return name
    name = _check_name(name)
    if name not in _created:
        reason = unavailable_reason(name)
        if reason is not None:
            raise BackendUnavailableError(
                f"backend {name!r} is not available: {reason}. Install it with: {INSTALL_HINTS[name]}")
        _created[name] = _module(name).create()
    return _created[name]


def get_backend() -> Backend:
    """The current backend: the innermost ``use_backend``, else ``set_backend``, else ``$CNNKIT_BACKEND``."""
    current = _current.get()
    if current is None:
        current = backend(env_backend_name())
    return current


def env_backend_name() -> str:
    """The backend ``$CNNKIT_BACKEND`` names ("numpy" when unset or empty); a ValueError naming the variable
    when it names no backend (``cnnkit info`` calls this to fail on a bad value)."""
    value = os.environ.get("CNNKIT_BACKEND", "").strip() or "numpy"
    try:
        return _check_name(value)
    except ValueError:
        raise ValueError(f"environment variable CNNKIT_BACKEND={os.environ['CNNKIT_BACKEND']!r} names no backend; "
                         f"it must be one of {', '.join(BACKEND_NAMES)} (or unset for numpy)") from None


def set_backend(name: str | Backend) -> Backend:
    """Make ``name`` the current backend for this context and return it."""
    be = backend(name)
    _current.set(be)
    return be


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[Backend]:
    """``with use_backend("numba"): ...`` runs the block on that backend, restoring the previous one after."""
    token = _current.set(backend(name))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


CUPY_DISTRIBUTIONS = ("cupy-cuda13x", "cupy-cuda12x", "cupy")
"""The pip distributions that provide ``import cupy``: the two CUDA lines of the ``cuda13`` / ``cuda12`` extras
(``cuda`` is an alias of ``cuda12``), and a source build."""


def _cuda_version(code: int) -> str:
    """CUDA's integer version (12040) as text ("12.4")."""
    return f"{code // 1000}.{code % 1000 // 10}"


def cupy_info() -> str:
    """One line on the CuPy and CUDA found here, for ``cnnkit info``: the CuPy version and its pip distribution
    (hence the CUDA line), the CUDA runtime and the driver's CUDA version, the device count; or why none is
    usable, with the extra to install. Never raises."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install failing the import another way
        return (f"CuPy not usable ({type(exc).__name__}: {exc}); install: pip install 'cnnkit[cuda12]' (CUDA 12) "
                f"or 'cnnkit[cuda13]' (CUDA 13)")
    dists = []
    for dist in CUPY_DISTRIBUTIONS:
        try:
            dists.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    text = f"CuPy {getattr(cupy, '__version__', '?')} ({', '.join(dists) or 'distribution unknown'})"
    if len(dists) > 1:
        text += " - several CuPy distributions are installed; keep only one"
    try:
        runtime = cupy.cuda.runtime
        text += (f", CUDA runtime {_cuda_version(runtime.runtimeGetVersion())}, driver supports CUDA "
                 f"{_cuda_version(runtime.driverGetVersion())}, {runtime.getDeviceCount()} device(s)")
    except Exception as exc:  # CUDARuntimeError without a driver or device
        text += f", no usable CUDA driver/device ({type(exc).__name__}: {exc})"
    return text
