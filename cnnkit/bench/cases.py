"""One benchmark case: a (model, batch, mode) timed on every engine, as result rows (one per engine).

Every engine gets identical weights (one cnnkit model's state dict, copied), the same random batch and the same
SGD settings; the reported time is the median round.
"""
from __future__ import annotations

import statistics
from typing import Any

from cnnkit.backend import backend as get_engine
from cnnkit.bench.pytorch import torch_engines
from cnnkit.bench.steps import build_model, cnnkit_step, num_classes, random_batch, step_flops
from cnnkit.bench.timing import Engine, time_interleaved


def run_case(model_name: str, batch: int, mode: str, backends: list[str], device: str, use_torch: bool,
             compile_torch: bool, rounds: int, warmup: int, min_time: float, threads: int) -> list[dict]:
    """Time one (model, batch, mode) on every engine; one result row per engine."""
    ref = build_model(model_name)
    state = ref.state_dict()
    x, labels = random_batch(tuple(ref.input_shape), batch, num_classes(ref))
    engines = [Engine(b, cnnkit_step(build_model(model_name, b, state), x, labels, mode)) for b in backends]
    engines += [Engine(f"{b}-eager", cnnkit_step(build_model(model_name, b, state), x, labels, mode, graph=False),
                       note="issued op by op (no graph)")
                for b in backends if get_engine(b).capture is not None]  # what the graphs save
    if use_torch:
        engines += torch_engines(ref, x, labels, mode, device, threads, compile_torch)
    time_interleaved(engines, rounds, warmup, min_time)
    flop = step_flops(ref, batch, mode)
    eager = next((e for e in engines if e.name == "torch" and e.times), None)
    return [_row(e, eager, model_name, batch, mode, device, flop) for e in engines]


def _row(e: Engine, eager: Engine | None, model_name: str, batch: int, mode: str, device: str,
         flop: float) -> dict[str, Any]:
    """The result row of engine ``e``; speeds are None when it did not run, ``vs_torch`` when eager did not."""
    row = {"model": model_name, "batch": batch, "mode": mode, "engine": e.name, "device": device,
           "note": e.note, "ms": None, "images_per_s": None, "vs_torch": None, "gflop_per_s": None, "pct_peak": None,
           "gflop_per_step": flop / 1e9, "round_ms": [t * 1e3 for t in e.times]}
    if e.times:
        sec = statistics.median(e.times)
        row.update(ms=sec * 1e3, images_per_s=batch / sec, gflop_per_s=flop / 1e9 / sec)
        if eager is not None:
            row["vs_torch"] = statistics.median(eager.times) / sec
    return row


def add_peak_fraction(rows: list[dict], peak_gflops: float) -> None:
    """Set each timed row's ``pct_peak``: its FLOPs per second as a percentage of the measured peak."""
    for row in rows:
        if row["ms"] is not None:
            row["pct_peak"] = 100.0 * row["gflop_per_s"] / peak_gflops
