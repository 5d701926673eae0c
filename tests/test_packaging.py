"""Packaging: backends/ is installed as cnnkit.backends, for editable and regular installs alike."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_backends_import_from_any_working_directory(tmp_path):
    code = "import cnnkit.backends.numpy as m, cnnkit; print(m.NAME, cnnkit.__version__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "numpy"


def test_import_cnnkit_does_not_import_gpu_or_jit_engines(tmp_path):
    code = "import sys, cnnkit; print('cupy' in sys.modules, 'numba' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


@pytest.mark.slow
def test_wheel_contains_backends_and_cuda_sources(tmp_path):
    """A regular (non-editable) install gets cnnkit/backends/** including the .cu kernels and the data sample."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("cnnkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("cnnkit/backends/__init__.py", "cnnkit/backends/numpy/__init__.py",
                     "cnnkit/backends/numba/__init__.py", "cnnkit/backends/cupy/__init__.py",
                     "cnnkit/functional.py", "cnnkit/nn/base.py"):
        assert required in names, f"{required} missing from the wheel"
    cu_sources = {p.name for p in (REPO / "backends/cupy/kernels").glob("*.cu")}
    assert cu_sources, "no CUDA sources in backends/cupy/kernels"
    assert {n.rsplit("/", 1)[-1] for n in names if n.endswith(".cu")} == cu_sources
