"""Head-to-head benchmark (``cnnkit bench``): the same model, batch and weights on each cnnkit backend and PyTorch.

Every engine gets identical weights (one cnnkit model's state dict, copied), the same random batch and the same
SGD settings. Engines are timed in interleaved rounds (A B C A B C ...) after a warm-up, so a machine that slows
down (turbo, other processes) penalises all of them alike; the reported time is the median round. A round runs
enough steps to last ``--min-time`` seconds, so fast steps are not lost in timer noise. Each step ends with the
engine's synchronisation, so GPU numbers are real. The table adds images/s, the speed relative to PyTorch eager
and the fraction of this machine's measured float32 GEMM peak reached by the model's FLOPs
(:func:`cnnkit.analysis.flops`).

PyTorch (optional) runs eager and, when it works here, ``torch.compile``; on CPU it gets the same thread count as
the CPU backends, on GPU cuDNN autotuning with TF32 off (cnnkit's kernels compute in full float32).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit import backends as _contract
from cnnkit.backend import backend as get_engine
from cnnkit.backend import unavailable_reason

MODES = ("train", "infer")
LR, MOMENTUM = 0.01, 0.9
GEMM_SIZE = {"cpu": 2048, "gpu": 8192}
Step = Callable[[], None]


# ------------------------------------------------------------------------------------------------ cnnkit side
def build_model(name: str, backend: str = "numpy", state: dict[str, np.ndarray] | None = None):
    """cnnkit model ``name`` on ``backend``, loaded with ``state`` when given (float32)."""
    from cnnkit import models
    from cnnkit.backend import use_backend

    with use_backend("numpy"):
        model = models.create(name)
    if state is not None:
        model.load_state_dict(state)
    return model.to(backend)


def random_batch(input_shape: tuple[int, ...], batch: int, num_classes: int, seed: int = 0):
    """A float32 batch of shape (batch, *input_shape) and int64 labels in [0, num_classes), on the host."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
    return x, rng.integers(0, num_classes, size=batch).astype(np.int64)


def cnnkit_step(model: Any, x: np.ndarray, labels: np.ndarray, mode: str) -> Step:
    """One synchronised step of ``model`` on its backend: inference, or forward + loss + backward + SGD."""
    from cnnkit.losses import softmax_cross_entropy
    from cnnkit.optim import SGD

    be = model.backend
    xb, yb = be.asarray(x), be.asarray(labels)
    if mode == "infer":
        model.eval()

        def infer() -> None:
            model(xb)
            be.synchronize()
        return infer

    model.train()
    opt = SGD(model, lr=LR, momentum=MOMENTUM)

    def train() -> None:
        opt.zero_grad()
        _, dlogits = softmax_cross_entropy(model(xb), yb, backend=be)
        with model.input_grad_skipped():  # as PyTorch, which computes no gradient for the input batch
            model.backward(dlogits)
        opt.step()
        be.synchronize()
    return train


def make_step(model_name: str, backend: str, batch: int, mode: str, seed: int = 0) -> Step:
    """A ready-to-time step for ``model_name`` on ``backend`` (the asv benchmarks use this)."""
    model = build_model(model_name, backend)
    x, labels = random_batch(tuple(model.input_shape), batch, _num_classes(model), seed)
    return cnnkit_step(model, x, labels, mode)


def _num_classes(model: Any) -> int:
    """Width of the model's output (one forward of a single zero image on the model's backend)."""
    was_training = model.training
    out = model.eval()(model.backend.asarray(np.zeros((1, *model.input_shape), np.float32)))
    model.train(was_training)
    return int(out.shape[1])


# ------------------------------------------------------------------------------------------------ timing
@dataclass
class Engine:
    """A named, ready-to-time step; ``note`` says anything a reader of the table should know about it."""

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


def step_flops(model: Any, batch: int, mode: str) -> float:
    """GEMM FLOPs of one step (cnnkit.analysis.flops, counted for one image and scaled by the batch): forward
    for inference, forward + backward for training."""
    from cnnkit.analysis import flops

    total = flops(model, batch_size=1)[-1]
    return float(batch * (total["forward"] + (total["backward"] if mode == "train" else 0)))


# ------------------------------------------------------------------------------------------------ one case
def cpu_threads(backends: list[str]) -> int:
    """Threads the CPU backends use: numba's pool size when numba runs, else the core count (numpy's BLAS)."""
    if "numba" in backends:
        import numba
        return int(numba.get_num_threads())
    return os.cpu_count() or 1


def run_case(model_name: str, batch: int, mode: str, backends: list[str], device: str, use_torch: bool,
             compile_torch: bool, rounds: int, warmup: int, min_time: float, threads: int) -> list[dict]:
    """Time one (model, batch, mode) on every engine; one result row per engine."""
    ref = build_model(model_name)
    state = ref.state_dict()
    x, labels = random_batch(tuple(ref.input_shape), batch, _num_classes(ref))
    engines = [Engine(b, cnnkit_step(build_model(model_name, b, state), x, labels, mode)) for b in backends]
    if use_torch:
        engines += torch_engines(ref, x, labels, mode, device, threads, compile_torch)
    time_interleaved(engines, rounds, warmup, min_time)

    flop = step_flops(ref, batch, mode)
    eager = next((e for e in engines if e.name == "torch" and e.times), None)
    rows = []
    for e in engines:
        row = {"model": model_name, "batch": batch, "mode": mode, "engine": e.name, "device": device,
               "note": e.note, "ms": None, "images_per_s": None, "vs_torch": None, "pct_peak": None,
               "gflop_per_step": flop / 1e9, "round_ms": [t * 1e3 for t in e.times]}
        if e.times:
            sec = statistics.median(e.times)
            row.update(ms=sec * 1e3, images_per_s=batch / sec)
            if eager is not None:
                row["vs_torch"] = statistics.median(eager.times) / sec
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ PyTorch side
@functools.cache
def _torch_extras() -> tuple[type, type]:
    """PyTorch modules with no built-in equivalent (residual block, LeCun's scaled tanh), defined on first use
    so that cnnkit itself never imports torch."""
    import torch

    class Residual(torch.nn.Module):
        def __init__(self, body: torch.nn.Module, projection: torch.nn.Module | None):
            super().__init__()
            self.body, self.projection = body, projection

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x) + (x if self.projection is None else self.projection(x))

    class ScaledTanh(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _contract.SCALED_TANH_A * torch.tanh(_contract.SCALED_TANH_S * x)

    return Residual, ScaledTanh


def torch_mirror(layer: Any) -> Any:
    """The PyTorch module with the same structure as the cnnkit ``layer``, hence the same state-dict keys.

    Built layer by layer from the cnnkit model itself, so both sides always run the same architecture. A layer
    PyTorch has no plain equivalent for (LeNet-5 classic's subsampling and connection table, ...) raises
    NotImplementedError naming it.
    """
    from torch import nn as tnn

    from cnnkit import nn

    residual, scaled_tanh = _torch_extras()
    kind = type(layer)
    if kind is nn.Sequential:
        return tnn.Sequential(*(torch_mirror(child) for child in layer))
    if kind is nn.Residual:
        return residual(torch_mirror(layer.body), None if layer.projection is None else torch_mirror(layer.projection))
    plain_conv = kind is nn.Conv2d and layer.connections is None and not layer.flip_kernel and not (
        isinstance(layer.padding, (tuple, list)) and len(layer.padding) == 4)
    if plain_conv:
        return tnn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, layer.groups, bias=layer.bias is not None)
    simple: dict[type, Callable[[Any], Any]] = {
        nn.Linear: lambda m: tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None),
        nn.BatchNorm2d: lambda m: tnn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine),
        nn.MaxPool2d: lambda m: tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode),
        nn.AvgPool2d: lambda m: tnn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad),
        nn.GlobalAvgPool2d: lambda m: tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten()),
        nn.Flatten: lambda m: tnn.Flatten(),
        nn.Dropout: lambda m: tnn.Dropout(m.p),
        nn.ReLU: lambda m: tnn.ReLU(),
        nn.LeakyReLU: lambda m: tnn.LeakyReLU(m.negative_slope),
        nn.Tanh: lambda m: tnn.Tanh(),
        nn.Sigmoid: lambda m: tnn.Sigmoid(),
        nn.ScaledTanh: lambda m: scaled_tanh(),
    }
    if kind not in simple:
        raise NotImplementedError(f"no PyTorch equivalent of cnnkit's {layer!r}")
    return simple[kind](layer)


def torch_step(net: Any, x: np.ndarray, labels: np.ndarray, mode: str, device: str) -> Step:
    """One synchronised PyTorch step, the same work as :func:`cnnkit_step`."""
    import torch

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
    net = net.to(dev)
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(labels).to(dev)
    if mode == "infer":
        net.eval()

        def infer() -> None:
            with torch.inference_mode():
                net(xt)
            sync()
        return infer

    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
        sync()
    return train


def torch_engines(ref: Any, x: np.ndarray, labels: np.ndarray, mode: str, device: str, threads: int,
                  compile_torch: bool) -> list[Engine]:
    """PyTorch eager (and torch.compile when it works) on the same device, loaded with ``ref``'s weights.

    A missing PyTorch, CUDA device or layer equivalent gives an engine with no step and a note saying why.
    """
    try:
        import torch
    except ImportError:
        return [Engine("torch", None, "PyTorch is not installed")]
    if device == "gpu":
        if not torch.cuda.is_available():
            return [Engine("torch", None, "PyTorch sees no CUDA device")]
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(threads)
    state = {key: torch.from_numpy(value) for key, value in ref.state_dict().items()}

    def mirror() -> Any:
        net = torch_mirror(ref)
        net.load_state_dict(state, strict=True)
        return net

    try:
        engines = [Engine("torch", torch_step(mirror(), x, labels, mode, device))]
    except NotImplementedError as exc:
        return [Engine("torch", None, str(exc))]
    if compile_torch:
        try:
            step = torch_step(torch.compile(mirror()), x, labels, mode, device)
            step()  # compiles now; a compiler missing or failing here raises
            engines.append(Engine("torch.compile", step))
        except Exception as exc:  # noqa: BLE001 - any compile failure means: report eager only, with the reason
            torch._dynamo.reset()
            reason = (str(exc).strip().splitlines() or [""])[0][:100]
            engines.append(Engine("torch.compile", None, f"torch.compile failed here ({type(exc).__name__}: "
                                                         f"{reason}); eager only"))
    return engines


# ------------------------------------------------------------------------------------------------ report
COLUMNS = (("model", "{}"), ("batch", "{}"), ("mode", "{}"), ("engine", "{}"), ("ms", "{:.3f}"),
           ("images_per_s", "{:.1f}"), ("vs_torch", "{:.2f}x"), ("pct_peak", "{:.2f}%"))
HEADERS = ("model", "batch", "mode", "engine", "ms/step", "images/s", "vs torch", "% GEMM peak")


def format_table(rows: list[dict], machine: dict) -> str:
    """The results as an aligned text table, with the machine line above and the notes below."""
    cells = [HEADERS] + [tuple("-" if row[key] is None else fmt.format(row[key]) for key, fmt in COLUMNS)
                         for row in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    lines = [f"device: {machine['device']} ({machine['processor']}), {machine['threads']} CPU threads, "
             f"measured float32 GEMM peak {machine['gemm_peak_gflops']:.1f} GFLOP/s",
             "vs torch: PyTorch eager time / this engine's time (above 1 = faster than PyTorch eager)",
             "% GEMM peak: the model's conv/linear FLOPs per second over that matmul rate (a faster GEMM than "
             "the measured one, or a machine busier during the peak test, can exceed 100%)"]
    for i, c in enumerate(cells):
        padded = [v.ljust(w) if j < 4 else v.rjust(w) for j, (v, w) in enumerate(zip(c, widths, strict=True))]
        lines.append("  ".join(padded))
        if i == 0:
            lines.append("-" * len(lines[-1]))
    notes = sorted({f"{row['engine']}: {row['note']}" for row in rows if row["note"]})
    return "\n".join(lines + [f"note: {n}" for n in notes])


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


def machine_info(device: str, threads: int) -> dict[str, Any]:
    """Where the numbers come from: host, versions, threads and the measured GEMM peak."""
    import cnnkit

    info: dict[str, Any] = {"device": device, "processor": _cpu_name(),
                            "platform": platform.platform(), "python": platform.python_version(),
                            "numpy": np.__version__, "cnnkit": cnnkit.__version__, "threads": threads,
                            "gemm_peak_gflops": gemm_peak_gflops(device),
                            "gemm_peak_how": f"best of 5 float32 {GEMM_SIZE[device]}^2 matmuls with "
                                             f"{'cupy' if device == 'gpu' else 'numpy'}"}
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


# ------------------------------------------------------------------------------------------------ CLI
def _csv(kind: Callable[[str], Any], choices: tuple[str, ...] | None = None) -> Callable[[str], list]:
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


def _positive(kind: Callable[[str], Any], minimum: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value
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
    parser.add_argument("--rounds", type=_positive(int, 1), default=5, help="timed rounds per engine (median)")
    parser.add_argument("--warmup", type=_positive(int, 0), default=2, help="untimed steps per engine first")
    parser.add_argument("--min-time", type=_positive(float, 0.0), default=0.1,
                        help="seconds each round lasts at least (fast steps repeat), default 0.1")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: numpy/numba and PyTorch CPU; gpu: cupy and PyTorch CUDA")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for bench.json and bench.png")
    parser.add_argument("--no-torch", action="store_true", help="do not run PyTorch")
    parser.add_argument("--no-compile", action="store_true", help="run PyTorch eager only (skip torch.compile)")


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


def _import_torch_first() -> None:
    """Load PyTorch before any numba kernel runs. Otherwise torch shares the OpenMP runtime numba's threading
    layer loaded, and its CPU ops run about 4x slower (LeNet-5 train step at batch 64 on 2 cores: 3.3 ms alone,
    15.5 ms after numba), which would flatter every ratio to PyTorch."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pass


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``: print the table, write JSON and the chart; exit status."""
    from cnnkit.models import names

    try:
        unknown = [m for m in args.models if m not in names()]
        if unknown:
            raise ValueError(f"--models: unknown model(s) {', '.join(unknown)}; choose from {', '.join(names())}")
        backends = select_backends(args.backends, args.device)
    except ValueError as exc:
        print(f"cnnkit bench: error: {exc}", file=sys.stderr)
        return 2
    if not backends:
        reasons = "; ".join(f"{n}: {unavailable_reason(n)}" for n in _contract.BACKEND_NAMES
                            if (n == "cupy") == (args.device == "gpu"))
        print(f"cnnkit bench: error: no cnnkit backend can run on --device {args.device} here ({reasons})",
              file=sys.stderr)
        return 2
    if not args.no_torch:
        _import_torch_first()
    threads = cpu_threads(backends)
    machine = machine_info(args.device, threads)  # the GEMM peak first, before the cases heat the machine
    rows = []
    for model_name in args.models:
        for batch in args.batch:
            for mode in args.mode:
                rows += run_case(model_name, batch, mode, backends, args.device, not args.no_torch,
                                 not args.no_compile, args.rounds, args.warmup, args.min_time, threads)
    # A shared machine can be busy at either end: the peak is the best rate seen, before or after the cases.
    machine.update(engine_versions(), gemm_peak_gflops=max(machine["gemm_peak_gflops"], gemm_peak_gflops(args.device)),
                   gemm_peak_how=machine["gemm_peak_how"] + ", before and after the cases")
    for row in rows:
        if row["ms"] is not None:
            row["pct_peak"] = 100.0 * row["gflop_per_step"] / (row["ms"] / 1e3) / machine["gemm_peak_gflops"]
    print(format_table(rows, machine))
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if not callable(v)}
    (args.out / "bench.json").write_text(json.dumps({"machine": machine, "config": config, "results": rows},
                                                    indent=1, default=str))
    note = write_chart(rows, machine, args.out / "bench.png")
    print(note or f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    if note:
        print(f"wrote {args.out / 'bench.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python3 bench/compare.py ...``: the same as ``cnnkit bench ...``."""
    parser = argparse.ArgumentParser(prog="cnnkit bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
