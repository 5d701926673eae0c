"""The CUDA simulator itself: built-ins, launch checks, poisoning, barrier checking, builds and the cache.

Each test compiles small kernels of its own (scratch sources, never the shipped kernel files) with
``SimulatorRuntime.load``. Marked ``cudasim``.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cnnkit.backends.cudasim import build, unavailable_reason
from cnnkit.backends.cudasim.runtime import LaunchError, SimulatorRuntime
from cnnkit.backends.cupy import _module as cuda

pytestmark = pytest.mark.cudasim

KERNELS = r"""
#define BLOCK 64
// Each block writes its index and the block's dimensions; each thread its flat thread index.
extern "C" __global__ void indices(int* __restrict__ out, int* __restrict__ dims) {
    const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    out[block * blockDim.x * blockDim.y * blockDim.z + t] = block;
    if (block == 0 && t == 0) {
        dims[0] = gridDim.x; dims[1] = gridDim.y; dims[2] = gridDim.z;
        dims[3] = blockDim.x; dims[4] = blockDim.y; dims[5] = blockDim.z;
    }
}

// Block reduction through static shared memory: reversed copy, barrier, then every thread reads another's cell.
extern "C" __global__ void __launch_bounds__(BLOCK) reverse_block(const float* __restrict__ x, float* __restrict__ y) {
    __shared__ float tile[BLOCK];
    const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    tile[t] = x[base + t];
    __syncthreads();
    y[base + t] = tile[blockDim.x - 1 - t];
}

// Reads shared memory that no thread wrote: the simulator's 0xFF fill must show through.
extern "C" __global__ void read_unwritten_shared(float* __restrict__ y) {
    __shared__ float tile[32];
    if (threadIdx.x == 0) tile[0] = 1.0f;
    __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = tile[threadIdx.x];
    __syncthreads();
    tile[threadIdx.x] = 2.0f;  // the next block must not see this
}

// Dynamic shared memory sized by the launch.
extern "C" __global__ void dynamic_rotate(const int* __restrict__ x, int* __restrict__ y, int n) {
    extern __shared__ int buffer[];
    const int t = threadIdx.x;
    buffer[t] = x[t];
    __syncthreads();
    y[t] = buffer[(t + 1) % n];
}

// Atomics: float sum, int max, and a CAS-built counter.
extern "C" __global__ void atomics(float* __restrict__ sum, int* __restrict__ biggest, unsigned int* __restrict__ cas) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(sum, 1.0f);
    atomicMax(biggest, t);
    unsigned int old = *cas, seen;
    do {
        seen = old;
        old = atomicCAS(cas, seen, seen + 1u);
    } while (old != seen);
}

// Thread 0 leaves early while the others wait at the barrier: undefined on a GPU, an error here.
extern "C" __global__ void early_exit(float* __restrict__ y) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    y[threadIdx.x] = 1.0f;
}

extern "C" __global__ void scalars(float* __restrict__ y, int n, float scale, unsigned long long seed) {
    if (threadIdx.x == 0) y[0] = (float)n * scale + (float)(seed % 7ULL) + (float)min(n, 3) + (float)max(n, 3);
}
"""


@pytest.fixture(scope="module")
def sim():
    assert unavailable_reason() is None, unavailable_reason()
    return SimulatorRuntime()


@pytest.fixture(scope="module")
def kernels(sim):
    return sim.load("harness_kernels", KERNELS)


def test_thread_and_block_indices_cover_the_grid(kernels):
    grid, block = (3, 2, 2), (4, 2, 3)
    out = np.full(12 * 24, -1, dtype=np.int32)
    dims = np.zeros(6, dtype=np.int32)
    kernels["indices"](grid, block, (out, dims))
    np.testing.assert_array_equal(out, np.repeat(np.arange(12), 24))
    np.testing.assert_array_equal(dims, [*grid, *block])


def test_syncthreads_is_a_real_barrier_and_blocks_keep_their_own_shared_memory(kernels):
    x = np.arange(3 * 64, dtype=np.float32)
    y = np.empty_like(x)
    kernels["reverse_block"](3, 64, (x, y))
    np.testing.assert_array_equal(y, x.reshape(3, 64)[:, ::-1].ravel())


def test_shared_memory_is_poisoned_before_every_block(kernels):
    y = np.zeros(2 * 32, dtype=np.float32)
    kernels["read_unwritten_shared"](2, 32, (y,))
    y = y.reshape(2, 32)
    assert (y[:, 0] == 1).all()
    assert np.isnan(y[:, 1:]).all(), "cells never written in this block must read as NaN, not 0 or 2"


def test_dynamic_shared_memory(kernels):
    x = np.arange(40, dtype=np.int32)
    y = np.zeros_like(x)
    kernels["dynamic_rotate"](1, 40, (x, y, np.int32(40)), shared_mem=40 * 4)
    np.testing.assert_array_equal(y, np.roll(x, -1))


def test_atomics(kernels):
    total, biggest, counter = np.zeros(1, np.float32), np.full(1, -5, np.int32), np.zeros(1, np.uint32)
    kernels["atomics"](4, 96, (total, biggest, counter))
    assert (total[0], biggest[0], counter[0]) == (384.0, 383, 384)


def test_threads_passing_different_numbers_of_barriers_is_an_error(kernels):
    with pytest.raises(LaunchError, match=r"early_exit.*block \(0, 0, 0\): 1 of its 32 threads finished the block "
                                          r"while 31 wait at __syncthreads\(\) number 1"):
        kernels["early_exit"](1, 32, (np.zeros(32, np.float32),))
    y = np.zeros(4, np.float32)  # the pool is usable again after the abandoned launch
    kernels["scalars"](1, 1, (y, np.int32(2), np.float32(1.5), np.uint64(9)))
    assert y[0] == 2 * 1.5 + 2 + 2 + 3


@pytest.mark.parametrize("args, message", [
    ((np.zeros(4, np.float32), 2, np.float32(1), np.uint64(0)), r"argument n is a C int: pass numpy.int32, not int"),
    ((np.zeros(4, np.float32), np.int32(2), 1.0, np.uint64(0)), r"scale is a C float: pass numpy.float32"),
    ((np.zeros(4, np.float64), np.int32(2), np.float32(1), np.uint64(0)), r"y \(float\*\) needs a C-contiguous "
                                                                         r"float32 array, got float64"),
    ((np.zeros((4, 2), np.float32)[:, 0], np.int32(2), np.float32(1), np.uint64(0)), "not C-contiguous"),
    ((np.zeros(4, np.float32), np.int32(2)), r"takes 4 arguments \(y, n, scale, seed\), got 2"),
])
def test_arguments_must_have_the_kernels_c_types(kernels, args, message):
    with pytest.raises(LaunchError, match=message):
        kernels["scalars"](1, 1, args)


@pytest.mark.parametrize("grid, block, message", [
    (1, 65, r"block of 65 threads exceeds __launch_bounds__\(64\)"),
    (0, 64, "grid dimension x is 0"),
    ((1, 65536), 64, "grid dimension y is 65536"),
    (1, (2, 2, 65), "block dimension z is 65"),
])
def test_launch_configuration_is_checked(kernels, grid, block, message):
    x = np.zeros(64, np.float32)
    with pytest.raises(LaunchError, match=message):
        kernels["reverse_block"](grid, block, (x, x.copy()))


def test_compile_errors_name_the_cu_file_and_line(sim):
    """A scratch copy of activation.cu (common.cuh pasted in, as the loader does) with one broken line: the
    compiler's message points at that line of the original file, after the pasted header."""
    path = cuda.KERNEL_DIR / "activation.cu"
    line = path.read_text().split("\n").index("    if (i < n) y[i] = activate(act, x[i], slope);") + 1
    text = cuda.source("activation", line_markers=True).replace("y[i] = activate(", "y[i] = undefined_name(", 1)
    with pytest.raises(build.CompileError, match=rf"{path}:{line}:\d+: error: .undefined_name"):
        sim.load("broken_activation", text)


def test_builds_are_cached_by_source_and_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_CUDASIM_CACHE", str(tmp_path))
    text = 'extern "C" __global__ void k(float* y) { y[threadIdx.x] = 1.0f; }\n'
    first, _ = build.build("cached", text)
    stamp = first.stat().st_mtime_ns
    again, _ = build.build("cached", text)
    assert again == first and again.stat().st_mtime_ns == stamp, "an unchanged source must not be recompiled"
    debug, _ = build.build("cached", text, debug=True)
    changed, _ = build.build("cached", text.replace("1.0f", "2.0f"))
    assert len({first, debug, changed}) == 3
    assert sorted(p.name for p in tmp_path.glob("*.so")) == sorted(p.name for p in (first, debug, changed))


def test_unavailable_without_a_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-cnnkit")
    assert "'no-such-compiler-cnnkit' is not on PATH" in unavailable_reason()


def test_a_sanitizer_without_its_runtime_says_how_to_run_it(monkeypatch):
    monkeypatch.setenv("CNNKIT_CUDASIM_SANITIZE", "thread")
    assert "python3 -m cnnkit.backends.cudasim.sanitize thread" in unavailable_reason()
    monkeypatch.setenv("CNNKIT_CUDASIM_SANITIZE", "memory")
    assert "must be one of address, thread" in unavailable_reason()


def test_empty_outputs_are_poisoned():
    from cnnkit.backends.cudasim.runtime import PoisonedNumpy

    xp = PoisonedNumpy()
    assert np.isnan(xp.empty((3, 2), dtype=np.float32)).all()
    assert (xp.empty(5, dtype=np.int64).view(np.uint8) == 0xA5).all()
    assert np.isnan(xp.empty_like(np.zeros((2, 2), np.float32))).all()
    assert xp.zeros(3).sum() == 0 and xp.float32 is np.float32


def test_selected_like_every_backend_but_not_benchmarked():
    from cnnkit.bench import select_backends

    code = "import cnnkit as ck; print(ck.get_backend().name, ck.get_backend().device)"
    env = {**os.environ, "CNNKIT_BACKEND": "cudasim"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "cudasim cpu (CUDA simulator)", out.stderr
    assert "cudasim" not in select_backends("all", "cpu")
    assert select_backends("cudasim", "cpu") == ["cudasim"]
