"""The ``cnnkit bench`` command line (also ``python3 bench/compare.py``): options, backend choice, the run."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnkit import backends as _contract
from cnnkit.backend import unavailable_reason
from cnnkit.bench.cases import add_peak_fraction, run_case
from cnnkit.bench.pytorch import import_torch_first
from cnnkit.bench.report import engine_versions, format_table, machine_info, measured_peaks, write_chart
from cnnkit.bench.steps import MODES
from cnnkit.bench.timing import cpu_threads
from cnnkit.validate import at_least


def _csv(kind: Callable[[str], Any], choices: tuple[str, ...] | None = None) -> Callable[[str], list]:
    """argparse type: a comma-separated list of ``kind``, each in ``choices`` (or a positive int)."""
    def parse(text: str) -> list:
        items = [kind(item.strip()) for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        bad = [i for i in items if (choices is not None and i not in choices) or (kind is int and i < 1)]
        if bad:
            raise argparse.ArgumentTypeError(f"invalid value(s) {bad}; expected "
                                             f"{'one of ' + ', '.join(choices) if choices else 'positive ints'}")
        return items
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``cnnkit bench`` options (also ``python3 bench/compare.py``)."""
    parser.add_argument("--models", type=_csv(str), default=["lenet5", "resnet20"],
                        help="comma-separated model names (cnnkit.models.create), default lenet5,resnet20")
    parser.add_argument("--backends", default="all",
                        help="'all' (every available backend for --device) or a list such as numpy,numba")
    parser.add_argument("--batch", type=_csv(int), default=[64], help="comma-separated batch sizes, default 64")
    parser.add_argument("--mode", type=_csv(str, MODES), default=list(MODES),
                        help="train (forward+loss+backward+SGD), infer, or both (default train,infer)")
    parser.add_argument("--rounds", type=at_least(int, 1), default=5, help="timed rounds per engine (median)")
    parser.add_argument("--warmup", type=at_least(int, 0), default=2, help="untimed steps per engine first")
    parser.add_argument("--min-time", type=at_least(float, 0.0), default=0.1,
                        help="seconds each round lasts at least (fast steps repeat), default 0.1")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: numpy/numba and PyTorch CPU; gpu: cupy and PyTorch CUDA")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for bench.json and bench.png")
    parser.add_argument("--no-torch", action="store_true", help="do not run PyTorch")
    parser.add_argument("--no-compile", action="store_true", help="run PyTorch eager only (skip torch.compile)")
    parser.add_argument("--distributed", action="store_true",
                        help="instead: the data-parallel training step under mpiexec at each of --ranks, --batch per "
                             "rank, one thread per rank: step and gradient-allreduce times (bench_distributed.json)")
    parser.add_argument("--ranks", type=_csv(int), default=[1, 2],
                        help="with --distributed: comma-separated numbers of ranks to launch, default 1,2")


def select_backends(spec: str, device: str) -> list[str]:
    """The backends to run: 'all' means every available one on ``device``; named ones must be available."""
    on_device = [n for n in _contract.BACKEND_NAMES if (n == "cupy") == (device == "gpu")]
    if spec == "all":
        return [n for n in on_device if n in _contract.BENCHMARK_BACKENDS and unavailable_reason(n) is None]
    names = [n.strip().lower() for n in spec.split(",") if n.strip()]
    for name in names:
        if name not in _contract.BACKEND_NAMES:
            raise ValueError(f"--backends: unknown backend {name!r}; choose from {', '.join(_contract.BACKEND_NAMES)}")
        if name not in on_device:
            raise ValueError(f"--backends: {name} does not run on --device {device} "
                             f"(--device gpu means the cupy backend, cpu means numpy/numba/cudasim)")
        reason = unavailable_reason(name)
        if reason is not None:
            raise ValueError(f"--backends: {name} is not available here: {reason}. "
                             f"Install it with: {_contract.INSTALL_HINTS[name]}")
    return names


def _checked_backends(args: argparse.Namespace) -> list[str]:
    """The backends to run for ``args``, after checking the model names; ValueError saying what is wrong."""
    from cnnkit.models import names

    unknown = [m for m in args.models if m not in names()]
    if unknown:
        raise ValueError(f"--models: unknown model(s) {', '.join(unknown)}; choose from {', '.join(names())}")
    backends = select_backends(args.backends, args.device)
    if not backends:
        reasons = "; ".join(f"{n}: {unavailable_reason(n)}" for n in _contract.BACKEND_NAMES
                            if (n == "cupy") == (args.device == "gpu"))
        raise ValueError(f"no cnnkit backend can run on --device {args.device} here ({reasons})")
    return backends


def _write(args: argparse.Namespace, machine: dict, rows: list[dict]) -> None:
    """bench.json (machine, configuration, results) and, when matplotlib is installed, bench.png in ``args.out``."""
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if not callable(v)}
    (args.out / "bench.json").write_text(json.dumps({"machine": machine, "config": config, "results": rows},
                                                    indent=1, default=str))
    note = write_chart(rows, machine, args.out / "bench.png")
    print(note or f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    if note:
        print(f"wrote {args.out / 'bench.json'}")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``: print the table, write JSON and the chart; exit status."""
    try:
        backends = _checked_backends(args)
    except ValueError as exc:
        print(f"cnnkit bench: error: {exc}", file=sys.stderr)
        return 2
    if args.distributed:
        from cnnkit.bench.distributed import run_distributed

        return run_distributed(args, backends)
    if not args.no_torch:
        import_torch_first()
    threads = cpu_threads(backends)
    machine = machine_info(args.device, threads)  # the peaks first, before the cases heat the machine
    rows = []
    for model_name in args.models:
        for batch in args.batch:
            for mode in args.mode:
                rows += run_case(model_name, batch, mode, backends, args.device, not args.no_torch,
                                 not args.no_compile, args.rounds, args.warmup, args.min_time, threads)
                # again after each case: a shared machine's reading moves by 2x within a minute; the best counts
                machine.update(measured_peaks(args.device, threads, before=machine))
    machine.update(engine_versions())
    add_peak_fraction(rows, machine["peak_gflops"])
    print(format_table(rows, machine))
    _write(args, machine, rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python3 bench/compare.py ...``: the same as ``cnnkit bench ...``."""
    from cnnkit import bench

    parser = argparse.ArgumentParser(prog="cnnkit bench", description=bench.__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
