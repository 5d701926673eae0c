"""Head-to-head benchmark (``cnnkit bench``): the same model, batch and weights on each cnnkit backend and PyTorch.

Every engine gets identical weights, the same random batch and the same SGD settings, and is timed in
interleaved rounds after a warm-up; each step ends with the engine's synchronisation, so GPU numbers are real.
The table adds images/s, the speed relative to PyTorch eager, the model's FLOPs per second
(:func:`cnnkit.analysis.flops`) and their fraction of this machine's measured float32 FMA peak (GEMM peak on GPU).

One job per module:

- :mod:`~cnnkit.bench.steps`: the cnnkit side: model, random batch, one synchronised step, its FLOPs.
- :mod:`~cnnkit.bench.timing`: interleaved timing, the measured GEMM peak, the CPU thread count.
- :mod:`~cnnkit.bench.peak`: the measured FMA peak (a JIT-compiled loop of independent vector FMAs).
- :mod:`~cnnkit.bench.pytorch`: the PyTorch engines (eager, ``torch.compile``) on the model's PyTorch twin
  (:mod:`cnnkit.interop.torch`).
- :mod:`~cnnkit.bench.cases`: one (model, batch, mode) on every engine, as result rows.
- :mod:`~cnnkit.bench.report`: the text table, the chart, machine and version information.
- :mod:`~cnnkit.bench.cli`: the command-line options and the run.
- :mod:`~cnnkit.bench.distributed`: ``--distributed``, the data-parallel step under mpiexec at 1, 2, ... ranks.

PyTorch is optional and imported only when a run asks for it; importing this package never imports torch.
"""
from __future__ import annotations

from cnnkit.bench.cases import add_peak_fraction, run_case
from cnnkit.bench.cli import add_arguments, main, run, select_backends
from cnnkit.bench.peak import fma_peak_gflops
from cnnkit.bench.pytorch import import_torch_first, torch_engines, torch_step
from cnnkit.bench.report import (
    COLUMNS,
    HEADERS,
    engine_versions,
    format_table,
    machine_info,
    measured_peaks,
    write_chart,
)
from cnnkit.bench.steps import (
    LR,
    MODES,
    MOMENTUM,
    Step,
    build_model,
    cnnkit_step,
    make_step,
    num_classes,
    random_batch,
    step_flops,
)
from cnnkit.bench.timing import GEMM_SIZE, Engine, cpu_threads, gemm_peak_gflops, time_interleaved

__all__ = [
    "COLUMNS", "GEMM_SIZE", "HEADERS", "LR", "MODES", "MOMENTUM", "Engine", "Step", "add_arguments",
    "add_peak_fraction", "build_model", "cnnkit_step", "cpu_threads", "engine_versions", "format_table",
    "fma_peak_gflops", "gemm_peak_gflops", "import_torch_first", "machine_info", "measured_peaks", "main",
    "make_step", "num_classes", "random_batch", "run", "run_case", "select_backends", "step_flops",
    "time_interleaved", "torch_engines", "torch_step", "write_chart",
]
