"""The CuPy backend's CUDA C compiles, and its Python launchers agree with it, checked without a GPU.

Every ``backends/cupy/kernels/*.cu`` must compile with nvcc for sm_80 and sm_90 with every warning an error, as
the file on disk (includes resolved by nvcc) and as the text cupy.RawModule receives (common.cuh pasted in). Not
marked ``gpu``: CI has nvcc. Without nvcc the compile tests fail under CI=true and skip, saying why, elsewhere.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cnnkit.backends import ACTIVATION_CODES, ACTIVATIONS, SCALED_TANH_A, SCALED_TANH_S
from cnnkit.backends.cupy import _module
from cnnkit.backends.cupy import conv as cuda_conv

BACKEND_DIR = _module.KERNEL_DIR.parent
KERNELS = sorted(_module.KERNEL_DIR.glob("*.cu"))
ARCHES = ("sm_80", "sm_90")
ENTRY = re.compile(r'extern "C" __global__ void(?: __launch_bounds__\([^)]*\))?\s+(\w+)\s*\(')


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("nvcc is not on PATH but CI=true: the CUDA kernels must be compile-checked in CI")
        pytest.skip("nvcc is not on PATH: install the CUDA toolkit to compile-check backends/cupy/kernels")
    return path


def _compile(nvcc: str, source: Path, arch: str, out: Path) -> str:
    cmd = [nvcc, "-std=c++17", f"-arch={arch}", "-Werror", "all-warnings", "--ptx", "-o", str(out), str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return out.read_text()


def test_there_are_kernels():
    assert {p.stem for p in KERNELS} == {"conv", "pool", "activation", "norm", "dropout", "loss", "optim"}


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("cu", KERNELS, ids=[p.name for p in KERNELS])
def test_kernel_file_compiles(nvcc, cu, arch, tmp_path):
    """nvcc -std=c++17 -arch=<arch> -Werror all-warnings --ptx, and every extern "C" kernel is a PTX entry
    under its plain name (what RawModule.get_function looks up)."""
    ptx = _compile(nvcc, cu, arch, tmp_path / f"{cu.stem}.ptx")
    names = ENTRY.findall(cu.read_text())
    assert names, f"{cu.name} defines no kernels"
    for name in names:
        assert re.search(rf"\.entry {name}\(", ptx), f"kernel {name} is not an unmangled PTX entry"


@pytest.mark.parametrize("cu", KERNELS, ids=[p.name for p in KERNELS])
def test_rawmodule_source_compiles(nvcc, cu, tmp_path):
    """The text handed to cupy.RawModule (common.cuh pasted in, no include left) compiles on its own."""
    text = _module.source(cu.stem)
    assert "#include" not in text
    pasted = tmp_path / f"{cu.stem}_pasted.cu"
    pasted.write_text(text)
    _compile(nvcc, pasted, ARCHES[0], tmp_path / "pasted.ptx")


def _launched() -> set[tuple[str, str]]:
    """(kernel file, kernel name) of every launch(...) in the launchers, tile variants expanded."""
    pattern = re.compile(r'launch\(\s*"(\w+)",\s*f?"([\w{}]+)"')
    found = set()
    for py in BACKEND_DIR.glob("*.py"):
        for file, name in pattern.findall(py.read_text()):
            names = [name.replace("{tm}", str(tm)) for tm in cuda_conv.TMS] if "{tm}" in name else [name]
            names = [n.replace("{tile}", cuda_conv._tile(rows)[0]) for n in names for rows in (16, 32, 64)]
            names = [n.replace("{wtile}", cuda_conv._weight_tile(rows, cols)[0]) for n in names
                     for rows in (16, 32, 64) for cols in (64, 65)]
            found.update((file, n) for n in names)
    return found


def test_every_launched_kernel_exists():
    launched = _launched()
    assert len(launched) >= 20
    defined = {(cu.stem, name) for cu in KERNELS for name in ENTRY.findall(cu.read_text())}
    assert launched - defined == set()
    assert defined - launched == set(), "kernels nothing launches"


def test_activation_codes_and_constants_match_the_contract():
    header = (_module.KERNEL_DIR / "common.cuh").read_text()
    codes = {name.lower(): int(v) for name, v in re.findall(r"#define ACT_(\w+) (\d+)", header)}
    assert codes == {("none" if k is None else k): v for k, v in ACTIVATION_CODES.items()}
    assert set(codes) - {"none"} == set(ACTIVATIONS)
    a = re.search(r"#define SCALED_TANH_A ([\d.]+)f", header).group(1)
    s = re.search(r"#define SCALED_TANH_S \(([\d.]+)f / ([\d.]+)f\)", header).groups()
    assert float(a) == SCALED_TANH_A
    assert float(s[0]) / float(s[1]) == pytest.approx(SCALED_TANH_S, rel=1e-15)


def test_importing_the_backend_does_not_import_cupy():
    code = "import sys, cnnkit, cnnkit.backends.cupy; assert 'cupy' not in sys.modules, 'cupy imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_unavailable_reason_here():
    from cnnkit.backends.cupy import unavailable_reason

    reason = unavailable_reason()
    if importlib.util.find_spec("cupy") is None:
        assert reason == "cupy is not installed"
    else:  # cupy installed: either a device is visible or the reason says why not
        assert reason is None or reason.startswith(("no CUDA device visible", "cupy failed to import"))


def test_unavailable_reason_when_the_runtime_fails(monkeypatch):
    from cnnkit.backends.cupy import unavailable_reason

    def broken():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    runtime = types.SimpleNamespace(getDeviceCount=broken)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime)))
    assert unavailable_reason() == ("no CUDA device visible (cupy.cuda.runtime.getDeviceCount() failed: "
                                    "cudaErrorNoDevice: no CUDA-capable device is detected)")
    runtime.getDeviceCount = lambda: 0
    assert unavailable_reason() == "no CUDA device visible (cupy.cuda.runtime.getDeviceCount() returned 0)"


@pytest.mark.parametrize("count, splits, multiple", [(1, 1, 1), (162, 1, 16), (768, 3, 16), (131072, 64, 16),
                                                     (1000, 7, 1), (5, 64, 1)])
def test_splits_cover_the_reduction_exactly(count, splits, multiple):
    got, chunk = _module.splits_for(count, splits, multiple)
    assert 1 <= got <= splits and chunk % multiple == 0
    assert (got - 1) * chunk < count <= got * chunk, "every chunk but the last full, none empty"
