"""Where a step's time goes: each backend op's and each CUDA kernel's time in one step of a model, summed by name.

For the measured steps every op of the model's backend is wrapped: on the GPU with CUDA events around the call
(read after the step's synchronisation, so nothing waits inside the step), on the CPU with the wall clock (the
ops there return when done); on the cupy and cudasim backends each kernel launch is timed the same way. What
the ops do not cover (Python, array-module calls outside the ops, the optimizer) is the remainder. The step's
host time (issuing it, without the final synchronisation) next to its wall time tells whether a GPU step is
bound by its launches.

``python3 bench/op_profile.py --models lenet5,resnet20 --backend cupy --batch 256``
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

from cnnkit.bench.cli import _csv
from cnnkit.bench.steps import MODES, build_model, cnnkit_step, num_classes, random_batch
from cnnkit.validate import at_least


def _clock(be: Any) -> Callable[[], Callable[[], Callable[[], float]]]:
    """start() -> stop() -> seconds(): CUDA events on a GPU backend, the wall clock on a CPU one."""
    if be.name == "cupy":
        import cupy

        def start_event():
            begin = cupy.cuda.Event()
            begin.record()

            def stop():
                end = cupy.cuda.Event()
                end.record()
                return lambda: cupy.cuda.get_elapsed_time(begin, end) / 1e3
            return stop
        return start_event

    def start_clock():
        begin = time.perf_counter()

        def stop():
            seconds = time.perf_counter() - begin
            return lambda: seconds
        return stop
    return start_clock


@contextlib.contextmanager
def wrapped_ops(be: Any, wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """Within: every op of backend ``be`` is ``wrap(name, op)``; the op table is restored on the way out."""
    original = dict(vars(be.ops))
    for name, op in original.items():
        setattr(be.ops, name, wrap(name, op))
    try:
        yield
    finally:
        for name, op in original.items():
            setattr(be.ops, name, op)


@contextlib.contextmanager
def timed_ops(be: Any, record: list[tuple[str, Callable[[], float]]]) -> Iterator[None]:
    """Within: every op of backend ``be`` appends (op name, seconds()) to ``record`` per call."""
    start = _clock(be)

    def timed(name: str, op: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            stop = start()
            out = op(*args, **kwargs)
            record.append((name, stop()))
            return out
        return call

    with wrapped_ops(be, timed):
        yield


def _runtime_class(be: Any) -> type | None:
    """The class whose ``launch`` starts the backend's CUDA kernels (cupy, cudasim); None for other backends."""
    if be.name == "cupy":
        from cnnkit.backends.cupy._module import CupyRuntime
        return CupyRuntime
    if be.name == "cudasim":
        from cnnkit.backends.cudasim.runtime import SimulatorRuntime
        return SimulatorRuntime
    return None


@contextlib.contextmanager
def timed_kernels(be: Any, record: list[tuple[str, Callable[[], float]]]) -> Iterator[None]:
    """Within: every CUDA kernel launch of backend ``be`` appends (kernel name, seconds()) to ``record``
    (nothing on a backend without kernels)."""
    runtime = _runtime_class(be)
    if runtime is None:
        yield
        return
    start, original = _clock(be), runtime.launch

    def launch(self: Any, name: str, func: str, grid: Any, block: Any, args: tuple, shared_mem: int = 0) -> None:
        stop = start()
        original(self, name, func, grid, block, args, shared_mem)
        record.append((func, stop()))

    runtime.launch = launch
    try:
        yield
    finally:
        runtime.launch = original


def _medians(records: list[list[tuple[str, Callable[[], float]]]]) -> dict[str, dict]:
    """{name: {"ms": median milliseconds per step, "calls": per step}} of one record per step."""
    per_step: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(records))
    calls: dict[str, int] = defaultdict(int)
    for i, record in enumerate(records):
        for name, seconds in record:
            per_step[name][i] += seconds()
            calls[name] += 1
    return {name: {"ms": 1e3 * statistics.median(times), "calls": calls[name] // len(records)}
            for name, times in per_step.items()}


def profile(model_name: str, backend: str, batch: int, mode: str = "train", steps: int = 5,
            warmup: int = 2) -> dict:
    """Per-op and per-kernel milliseconds per step (medians over ``steps``), the step's wall and host
    milliseconds."""
    model = build_model(model_name, backend)
    x, labels = random_batch(tuple(model.input_shape), batch, num_classes(model))
    step = cnnkit_step(model, x, labels, mode, graph=False)  # op by op: a graph would hide the ops
    issue = cnnkit_step(model, x, labels, mode, synchronize=False, graph=False)
    be = model.backend
    for _ in range(warmup):
        step()
    wall, host = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        wall.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        issue()
        host.append(time.perf_counter() - t0)
        be.synchronize()
    op_records, kernel_records = [], []
    for _ in range(steps):
        op_records.append([])
        kernel_records.append([])
        with timed_ops(be, op_records[-1]), timed_kernels(be, kernel_records[-1]):
            step()
    return {"model": model_name, "backend": backend, "batch": batch, "mode": mode, "device": be.device,
            "wall_ms": 1e3 * statistics.median(wall), "host_ms": 1e3 * statistics.median(host),
            "ops": _medians(op_records), "kernels": _medians(kernel_records)}


def _ranked(title: str, rows: dict[str, dict], wall: float) -> list[str]:
    lines = [f"  {title:<28} {'calls':>5} {'ms':>9} {'% step':>7}"]
    for name, row in sorted(rows.items(), key=lambda item: -item[1]["ms"]):
        lines.append(f"  {name:<28} {row['calls']:>5} {row['ms']:>9.3f} {100 * row['ms'] / wall:>6.1f}%")
    return lines


def format_profile(result: dict) -> str:
    """The profile as text: one line per op, slowest first, the remainder outside the ops, then the kernels."""
    wall = result["wall_ms"]
    lines = [f"{result['model']} batch {result['batch']} {result['mode']} on {result['backend']} "
             f"({result['device']}): step {wall:.3f} ms wall, {result['host_ms']:.3f} ms to issue (host)",
             *_ranked("op", result["ops"], wall)]
    rest = wall - sum(op["ms"] for op in result["ops"].values())
    lines.append(f"  {'(outside the ops)':<28} {'':>5} {rest:>9.3f} {100 * rest / wall:>6.1f}%")
    if result["kernels"]:
        total = sum(k["ms"] for k in result["kernels"].values())
        lines += _ranked("kernel", result["kernels"], wall)
        lines.append(f"  {'(all kernels)':<28} {'':>5} {total:>9.3f} {100 * total / wall:>6.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``bench/op_profile.py``: print the profile of each model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=_csv(str), default=["lenet5", "resnet20"],
                        help="comma-separated model names")
    parser.add_argument("--backend", default="numpy", help="a cnnkit backend name (cupy for the GPU)")
    parser.add_argument("--batch", type=at_least(int, 1), default=64)
    parser.add_argument("--mode", choices=MODES, default="train")
    parser.add_argument("--steps", type=at_least(int, 1), default=5, help="measured steps (medians)")
    args = parser.parse_args(argv)
    for name in args.models:
        print(format_profile(profile(name, args.backend, args.batch, args.mode, args.steps)), flush=True)
    return 0
