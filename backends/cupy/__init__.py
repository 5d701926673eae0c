"""CuPy backend: Python launchers over hand-written CUDA C kernels (kernels/*.cu, loaded with cupy.RawModule).

float32 only. Importing this package does not import cupy; :func:`unavailable_reason` and :func:`create` do.
The launchers reach CuPy only through ``_module``'s seam (``array_module()``, ``launch``), so the cudasim backend runs
the very same launchers and kernels on the CPU.
"""
from __future__ import annotations

from cnnkit.backends import Backend, collect_ops

from . import _module, graph

NAME = "cupy"


def unavailable_reason() -> str | None:
    """None when cupy imports and sees at least one CUDA device, else why not."""
    try:
        import cupy
    except ImportError:
        return "cupy is not installed"
    except Exception as exc:  # a broken CUDA install can fail the import in other ways
        return f"cupy failed to import ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except (RuntimeError, OSError) as exc:  # CUDARuntimeError is a RuntimeError
        return f"no CUDA device visible (cupy.cuda.runtime.getDeviceCount() failed: {exc})"
    if count < 1:
        return "no CUDA device visible (cupy.cuda.runtime.getDeviceCount() returned 0)"
    return None


def launcher_ops():
    """The op table of the launcher modules (not yet bound to a runtime)."""
    from . import activation, conv, dropout, linear, loss, norm, optim, pool  # noqa: F401  (@implements registers the ops)

    return collect_ops(NAME)


def create() -> Backend:
    """The cupy Backend, bound to the current CUDA device."""
    import cupy

    device = cupy.cuda.Device()
    name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return Backend(
        name=NAME, xp=cupy, ops=_module.bind(_module.CupyRuntime(), launcher_ops()),
        array_type=cupy.ndarray, device=f"cuda:{device.id} ({name})", to_numpy=cupy.asnumpy,
        synchronize=device.synchronize, capture=graph.capture,
    )
