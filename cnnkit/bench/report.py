"""Reporting the bench: the text table, the bar chart, and where the numbers come from (machine, versions)."""
from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.bench.peak import fma_peak_gflops
from cnnkit.bench.timing import GEMM_SIZE, gemm_peak_gflops

COLUMNS = (("model", "{}"), ("batch", "{}"), ("mode", "{}"), ("engine", "{}"), ("ms", "{:.3f}"),
           ("images_per_s", "{:.1f}"), ("vs_torch", "{:.2f}x"), ("gflop_per_s", "{:.1f}"), ("pct_peak", "{:.1f}%"))
"""Result-row key and format of each table column."""
HEADERS = ("model", "batch", "mode", "engine", "ms/step", "images/s", "vs torch", "GFLOP/s", "% peak")


def format_table(rows: list[dict], machine: dict) -> str:
    """The results as an aligned text table, with the machine line above and the notes below."""
    cells = [HEADERS] + [tuple("-" if row[key] is None else fmt.format(row[key]) for key, fmt in COLUMNS)
                         for row in rows]
    fma = machine.get("fma_peak_gflops")
    lines = [f"device: {machine['device']} ({machine['processor']}), {machine['threads']} CPU threads, measured "
             + ("" if fma is None else f"float32 FMA peak {fma:.1f} GFLOP/s, ")
             + f"float32 GEMM {machine['gemm_peak_gflops']:.1f} GFLOP/s",
             "vs torch: PyTorch eager time / this engine's time (above 1 = faster than PyTorch eager)",
             "GFLOP/s: the model's conv/linear FLOPs (cnnkit.analysis.flops) per second; % peak: of the "
             f"measured {machine['peak_kind']} peak (a machine busier during the peak test can exceed 100%)"]
    lines += aligned_lines(cells, left=4)
    notes = sorted({f"{row['engine']}: {row['note']}" for row in rows if row["note"]})
    return "\n".join(lines + [f"note: {n}" for n in notes])


def aligned_lines(cells: list[tuple[str, ...]], left: int) -> list[str]:
    """``cells`` (the header row first) as aligned text lines, the first ``left`` columns left-aligned and the
    others right-aligned, with a rule under the header."""
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) if j < left else v.rjust(w)
                               for j, (v, w) in enumerate(zip(c, widths, strict=True))))
        if i == 0:
            lines.append("-" * len(lines[-1]))
    return lines


def write_chart(rows: list[dict], machine: dict, path: Path) -> str | None:
    """Grouped bar chart of images/s per (model, batch, mode), one bar per engine; a note when matplotlib is
    missing (the chart is optional), else None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install 'cnnkit[plot]')"
    cases = list(dict.fromkeys((r["model"], r["batch"], r["mode"]) for r in rows))
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    speed = {(r["model"], r["batch"], r["mode"], r["engine"]): r["images_per_s"] for r in rows}
    width = 0.8 / len(engines)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cases) * len(engines) ** 0.5), 4.0))
    for i, engine in enumerate(engines):
        values = [speed.get((*case, engine)) or 0.0 for case in cases]
        ax.bar([k + (i - (len(engines) - 1) / 2) * width for k in range(len(cases))], values, width, label=engine)
    ax.set_xticks(range(len(cases)), [f"{m}\nbatch {b}\n{mode}" for m, b, mode in cases])
    ax.set_yscale("log")
    ax.set_ylabel("images / s (log scale)")
    ax.set_title(f"cnnkit bench, {machine['device']}: {machine['processor']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def measured_peaks(device: str, threads: int, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """The machine's measured float32 rates: the GEMM peak and, on CPU, the FMA peak (:mod:`cnnkit.bench.peak`);
    ``peak_gflops`` is the FMA one when measured, else the GEMM one. With ``before`` (an earlier result) each is
    the best of both: a shared machine can be busy at any moment of a run."""
    gemm = gemm_peak_gflops(device)
    fma = fma_peak_gflops(threads) if device == "cpu" else None
    if before is not None:
        gemm = max(gemm, before["gemm_peak_gflops"])
        fma = None if fma is None else max(fma, before["fma_peak_gflops"] or 0.0)
    return {"gemm_peak_gflops": gemm, "fma_peak_gflops": fma, "peak_gflops": gemm if fma is None else fma,
            "peak_kind": "GEMM" if fma is None else "FMA",
            "gemm_peak_how": f"best of 5 float32 {GEMM_SIZE[device]}^2 matmuls with "
                             f"{'cupy' if device == 'gpu' else 'numpy'}" + ("" if before is None else ", before and "
                                                                              "after each case"),
            "fma_peak_how": None if fma is None else f"independent vector FMAs on {threads} threads at once "
                                                     "(cnnkit.bench.peak)"}


def machine_info(device: str, threads: int) -> dict[str, Any]:
    """Where the numbers come from: host, versions, threads and the measured peaks."""
    import cnnkit

    info: dict[str, Any] = {"device": device, "processor": _cpu_name(),
                            "platform": platform.platform(), "python": platform.python_version(),
                            "numpy": np.__version__, "cnnkit": cnnkit.__version__, "threads": threads,
                            **measured_peaks(device, threads)}
    if device == "gpu":
        import cupy
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        info["processor"] = name.decode() if isinstance(name, bytes) else str(name)
    return info


def engine_versions() -> dict[str, str]:
    """Versions of the engines this process has run (call after the runs)."""
    return {name: sys.modules[name].__version__ for name in ("numba", "cupy", "torch")
            if getattr(sys.modules.get(name), "__version__", None)}


def _cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
