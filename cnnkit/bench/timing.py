"""Timing: interleaved rounds over engines, the machine's measured GEMM peak, and the CPU thread count.

Engines are timed in interleaved rounds (A B C A B C ...) after a warm-up, so a machine that slows down (turbo,
other processes) penalises all of them alike. A round repeats the step until it lasts ``min_time`` seconds, so
fast steps are not lost in timer noise.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from cnnkit.backend import backend as get_engine
from cnnkit.bench.steps import Step

GEMM_SIZE = {"cpu": 2048, "gpu": 8192}
"""Side of the square float32 matmul that measures the GEMM peak, per device."""


@dataclass
class Engine:
    """A named, ready-to-time step; ``note`` says anything a reader of the table should know about it.

    ``step`` is None for an engine that cannot run here (the note says why); it then gets no times.
    """

    name: str
    step: Step | None
    note: str = ""
    times: list[float] = field(default_factory=list)


def time_interleaved(engines: list[Engine], rounds: int, warmup: int, min_time: float) -> None:
    """Fill each engine's ``times`` (seconds per step, one per round), rounds interleaved across engines."""
    live = [e for e in engines if e.step is not None]
    reps = {}
    for e in live:
        for _ in range(warmup):
            e.step()
        t0 = time.perf_counter()
        e.step()
        reps[e.name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-9)))
    for _ in range(rounds):
        for e in live:
            t0 = time.perf_counter()
            for _ in range(reps[e.name]):
                e.step()
            e.times.append((time.perf_counter() - t0) / reps[e.name])


def gemm_peak_gflops(device: str) -> float:
    """This machine's measured float32 GEMM rate (best of 5 square matmuls): numpy on CPU, cupy on GPU."""
    be = get_engine("cupy" if device == "gpu" else "numpy")
    n = GEMM_SIZE[device]
    rng = np.random.default_rng(0)
    a, b = (be.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
    a @ b
    be.synchronize()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        be.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def cpu_threads(backends: list[str]) -> int:
    """Threads the CPU backends use: numba's pool size when numba runs, else the core count (numpy's BLAS).

    PyTorch on CPU gets the same count, so no engine wins by using more cores.
    """
    if "numba" in backends:
        import numba
        return int(numba.get_num_threads())
    return os.cpu_count() or 1
