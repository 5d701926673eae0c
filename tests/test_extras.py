"""The CUDA extras (one per CuPy CUDA line, ``cuda`` an alias) and cnnkit.backend.cupy_info, the CuPy/CUDA line of
``cnnkit info``."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from cnnkit.backend import cupy_info

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11 (tomllib)")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_cuda_extras_one_per_cupy_line_and_cuda_alias():
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert [r.split(">=")[0] for r in extras["cuda12"]] == ["cupy-cuda12x"]
    assert [r.split(">=")[0] for r in extras["cuda13"]] == ["cupy-cuda13x"]
    assert extras["cuda"] == ["cnnkit[cuda12]"]
    assert [r.split(">=")[0] for r in extras["onnx"]] == ["onnx", "onnxruntime"]


def test_cupy_info_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    text = cupy_info()
    assert text.startswith("CuPy not usable") and "cnnkit[cuda12]" in text and "cnnkit[cuda13]" in text


def _fake_cupy(device_count):
    def count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    runtime = types.SimpleNamespace(runtimeGetVersion=lambda: 12040, driverGetVersion=lambda: 12060,
                                    getDeviceCount=count)
    return types.SimpleNamespace(__version__="13.3.0", cuda=types.SimpleNamespace(runtime=runtime))


def test_cupy_info_reports_versions_and_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(2))
    text = cupy_info()
    assert text.startswith("CuPy 13.3.0 (")
    assert "CUDA runtime 12.4, driver supports CUDA 12.6, 2 device(s)" in text


def test_cupy_info_without_a_device_never_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(RuntimeError("cudaErrorNoDevice")))
    assert "no usable CUDA driver/device (RuntimeError: cudaErrorNoDevice)" in cupy_info()
