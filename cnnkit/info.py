"""``cnnkit info``: what this machine can run: versions, backends (with device, or why not), optional extras."""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import subprocess
import sys

import cnnkit
from cnnkit.backends import BACKEND_NAMES, INSTALL_HINTS

EXTRAS = (("tqdm", "progress"), ("matplotlib", "plot"), ("PIL", "image"), ("torch", "torch"), ("asv", "bench"),
          ("onnx", "onnx"), ("onnxruntime", "onnx"), ("mpi4py", "mpi"))
"""(import name, extra) of every optional dependency."""


def _engine_version(name: str) -> str:
    """What runs backend ``name``: its library and version (cudasim: the C++ compiler)."""
    if name == "cudasim":
        from cnnkit.backends.cudasim import build

        cxx = build.compiler()
        version = subprocess.run([cxx, "-dumpfullversion"], capture_output=True, text=True, timeout=60).stdout
        return f"CUDA simulator, {cxx} {version.strip()}"
    return f"{name} {importlib.import_module(name).__version__}"


def print_info() -> int:
    """Print versions, the backends usable here (with device) and why the others are not; exit status 2 when
    $CNNKIT_BACKEND names no backend."""
    from cnnkit.backend import backend, cupy_info, env_backend_name, unavailable_reason

    try:
        default = env_backend_name()
    except ValueError as exc:
        print(f"cnnkit: error: {exc}", file=sys.stderr)
        return 2

    print(f"cnnkit {cnnkit.__version__} on Python {platform.python_version()} ({platform.system()} "
          f"{platform.machine()}, {os.cpu_count()} CPUs)")
    print("backends:")
    for name in BACKEND_NAMES:
        reason = unavailable_reason(name)
        if reason is None:
            print(f"  {name:7s} available    {_engine_version(name)}, device {backend(name).device}")
        else:
            print(f"  {name:7s} unavailable  {reason}; install: {INSTALL_HINTS[name]}")
    print("optional extras:")
    for module, extra in EXTRAS:
        dist = {"PIL": "pillow"}.get(module, module)
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = f"not installed (pip install 'cnnkit[{extra}]')"
        print(f"  {dist:12s} {version}")
    print(f"CuPy/CUDA: {cupy_info()}")
    print(f"default backend: {default} (set CNNKIT_BACKEND to change it)")
    return 0
