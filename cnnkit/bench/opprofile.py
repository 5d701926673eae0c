"""Where a step's time goes: each backend op's time in one step of a model, summed by op name.

For the measured steps every op of the model's backend is wrapped: on the GPU with CUDA events around the call
(read after the step's synchronisation, so nothing waits inside the step), on the CPU with the wall clock (the
ops there return when done). What the ops do not cover (Python, array-module calls outside the ops, the optimizer)
is the remainder. The step's host time (issuing it, without the final synchronisation) next to its wall time
tells whether a GPU step is bound by its launches.

``python3 bench/op_profile.py --models lenet5,resnet20 --backend cupy --batch 256``
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

from cnnkit.bench.steps import MODES, build_model, cnnkit_step, num_classes, random_batch


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
def timed_ops(be: Any, record: list[tuple[str, Callable[[], float]]]) -> Iterator[None]:
    """Within: every op of backend ``be`` appends (op name, seconds()) to ``record`` per call."""
    start = _clock(be)
    original = dict(vars(be.ops))

    def timed(name: str, op: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            stop = start()
            out = op(*args, **kwargs)
            record.append((name, stop()))
            return out
        return call

    for name, op in original.items():
        setattr(be.ops, name, timed(name, op))
    try:
        yield
    finally:
        for name, op in original.items():
            setattr(be.ops, name, op)


def profile(model_name: str, backend: str, batch: int, mode: str = "train", steps: int = 5,
            warmup: int = 2) -> dict:
    """Per-op milliseconds per step (medians over ``steps``), the step's wall and host milliseconds."""
    model = build_model(model_name, backend)
    x, labels = random_batch(tuple(model.input_shape), batch, num_classes(model))
    step = cnnkit_step(model, x, labels, mode)
    issue = cnnkit_step(model, x, labels, mode, synchronize=False)
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
    per_op: dict[str, list[float]] = defaultdict(lambda: [0.0] * steps)
    calls: dict[str, int] = defaultdict(int)
    for i in range(steps):
        record: list[tuple[str, Callable[[], float]]] = []
        with timed_ops(be, record):
            step()
        for name, seconds in record:
            per_op[name][i] += seconds()
            calls[name] += 1
    ops = {name: {"ms": 1e3 * statistics.median(times), "calls": calls[name] // steps}
           for name, times in per_op.items()}
    return {"model": model_name, "backend": backend, "batch": batch, "mode": mode, "device": be.device,
            "wall_ms": 1e3 * statistics.median(wall), "host_ms": 1e3 * statistics.median(host), "ops": ops}


def format_profile(result: dict) -> str:
    """The profile as text: one line per op, slowest first, and the remainder outside the ops."""
    wall = result["wall_ms"]
    lines = [f"{result['model']} batch {result['batch']} {result['mode']} on {result['backend']} "
             f"({result['device']}): step {wall:.3f} ms wall, {result['host_ms']:.3f} ms to issue (host)",
             f"  {'op':<28} {'calls':>5} {'ms':>9} {'% step':>7}"]
    ranked = sorted(result["ops"].items(), key=lambda item: -item[1]["ms"])
    for name, op in ranked:
        lines.append(f"  {name:<28} {op['calls']:>5} {op['ms']:>9.3f} {100 * op['ms'] / wall:>6.1f}%")
    rest = wall - sum(op["ms"] for op in result["ops"].values())
    lines.append(f"  {'(outside the ops)':<28} {'':>5} {rest:>9.3f} {100 * rest / wall:>6.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``bench/op_profile.py``: print the profile of each model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,resnet20", help="comma-separated model names")
    parser.add_argument("--backend", default="numpy", help="a cnnkit backend name (cupy for the GPU)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--mode", choices=MODES, default="train")
    parser.add_argument("--steps", type=int, default=5, help="measured steps (medians)")
    args = parser.parse_args(argv)
    for name in args.models.split(","):
        print(format_profile(profile(name, args.backend, args.batch, args.mode, args.steps)), flush=True)
    return 0
