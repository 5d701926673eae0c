"""``cnnkit bench --distributed``: the data-parallel training step over MPI at 1, 2, ... ranks on this machine.

The parent launches ``mpiexec -n N`` (the one next to this interpreter, else on PATH) for each rank count, with
one thread per rank (NUMBA_NUM_THREADS=1 and the BLAS variables), so N ranks use N cores; every rank runs
:func:`worker` (``python -m cnnkit.bench.distributed CONFIG``). Per model and batch (per rank) the worker times
the whole step (forward, loss, backward, :func:`cnnkit.distributed.allreduce_gradients`, SGD) and, separately
after a barrier, the gradient allreduce alone with its host copies, so the allreduce's figure is its own cost
and not the wait for a slower rank. Each figure is the median over rounds of the slowest rank's time. The table
reports step ms, allreduce ms and its share of the step, and images/s of the whole job (N x batch per step);
``bench_distributed.json`` in ``--out`` holds the rows, the machine and the settings.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnkit.bench.report import _cpu_name, aligned_lines

TIMEOUT_S = 900
"""Seconds one ``mpiexec`` launch may take before the bench gives up on it."""
ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
COLUMNS = (("model", "{}"), ("batch", "{}"), ("backend", "{}"), ("ranks", "{}"), ("step_ms", "{:.2f}"),
           ("allreduce_ms", "{:.3f}"), ("allreduce_pct", "{:.2f}%"), ("images_per_s", "{:.1f}"))
HEADERS = ("model", "batch/rank", "backend", "ranks", "ms/step", "allreduce ms", "of step", "images/s")


def mpiexec_path() -> str:
    """The mpiexec next to this interpreter (the mpi extra's), else the one on PATH; a RuntimeError saying how to
    install them when mpi4py or mpiexec is missing."""
    hint = "pip install 'cnnkit[mpi]' (mpi4py and the MPICH wheel, which brings mpiexec)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise RuntimeError(f"--distributed needs mpi4py, which is not installed: {hint}") from None
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        raise RuntimeError(f"--distributed needs mpiexec, found neither next to {sys.executable} nor on PATH: {hint}")
    return found


def run_distributed(args: argparse.Namespace, backends: list[str]) -> int:
    """Launch the workers for every rank count of ``args.ranks``, print the table and write
    bench_distributed.json in ``args.out``; the exit status (2 for a usage or installation problem)."""
    try:
        if args.device != "cpu":
            raise RuntimeError("--distributed runs on --device cpu (MPI ranks on CPU cores; NCCL is not built yet)")
        launcher = mpiexec_path()
    except RuntimeError as exc:
        print(f"cnnkit bench: error: {exc}", file=sys.stderr)
        return 2
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cnnkit-bench-") as folder:
        for ranks in args.ranks:
            config = {"models": args.models, "batch": args.batch, "backends": backends, "rounds": args.rounds,
                      "warmup": args.warmup, "min_time": args.min_time, "result": f"{folder}/n{ranks}.json"}
            path = Path(folder) / f"n{ranks}-config.json"
            path.write_text(json.dumps(config))
            cmd = [launcher, "-n", str(ranks), sys.executable, "-m", "cnnkit.bench.distributed", str(path)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                                  env={**os.environ, **ONE_THREAD})
            if done.returncode != 0:
                print(f"cnnkit bench: error: {' '.join(cmd)} failed (exit {done.returncode}):\n"
                      f"{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            rows += json.loads(Path(config["result"]).read_text())
    rows.sort(key=lambda r: (r["model"], r["batch"], r["backend"], r["ranks"]))
    machine = {"processor": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(), "threads_per_rank": 1, "launcher": launcher}
    print(format_table(rows, machine))
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if not callable(v)}
    (args.out / "bench_distributed.json").write_text(
        json.dumps({"machine": machine, "config": settings, "results": rows}, indent=1, default=str))
    print(f"wrote {args.out / 'bench_distributed.json'}")
    return 0


def format_table(rows: list[dict], machine: dict) -> str:
    """The rows as an aligned text table under a line saying where they were measured."""
    cells = [HEADERS] + [tuple(fmt.format(row[key]) for key, fmt in COLUMNS) for row in rows]
    return "\n".join([f"{machine['processor']}, {machine['cpu_count']} cores; one thread per rank; allreduce = "
                      "allreduce_gradients (host copies included) timed alone after a barrier; images/s of all "
                      "ranks"] + aligned_lines(cells, left=3))


# ------------------------------------------------------------------------------------------------ on every rank
def worker(config_path: str) -> None:
    """One rank of the job: time every (model, batch, backend) of the config; rank 0 writes the rows."""
    from cnnkit import distributed

    config = json.loads(Path(config_path).read_text())
    comm = distributed.init()
    rows = [_time_case(comm, model, batch, backend, config)
            for model in config["models"] for batch in config["batch"] for backend in config["backends"]]
    if comm.rank == 0:
        Path(config["result"]).write_text(json.dumps(rows))
    comm.barrier()


def _time_case(comm: Any, name: str, batch: int, backend: str, config: dict) -> dict:
    """The result row of model ``name`` at ``batch`` per rank on ``backend``."""
    from cnnkit import distributed
    from cnnkit.bench.steps import build_model, cnnkit_step, num_classes, random_batch

    model = build_model(name, backend)
    distributed.broadcast_parameters(model, comm)
    x, labels = random_batch(tuple(model.input_shape), batch, num_classes(model), seed=comm.rank)

    def allreduce() -> None:
        distributed.allreduce_gradients(model, comm, count=batch)
        model.backend.synchronize()

    step = cnnkit_step(model, x, labels, "train", before_update=allreduce, graph=False)  # MPI: host work
    step_s = _median_time(comm, step, config)
    allreduce_s = _median_time(comm, allreduce, config) if comm.size > 1 else 0.0
    return {"model": name, "batch": batch, "backend": backend, "ranks": comm.size, "step_ms": 1e3 * step_s,
            "allreduce_ms": 1e3 * allreduce_s, "allreduce_pct": 100 * allreduce_s / step_s,
            "images_per_s": comm.size * batch / step_s}


def _median_time(comm: Any, fn: Callable[[], None], config: dict) -> float:
    """Seconds per call of ``fn`` (a collective on every rank): the median over rounds of the slowest rank's
    mean. A round repeats ``fn`` until ``min_time`` has passed on rank 0 (the same count on every rank) and
    starts after a barrier."""
    for _ in range(config["warmup"]):
        fn()
    comm.barrier()
    started = time.perf_counter()
    fn()
    once = comm.allgather(time.perf_counter() - started)[0]
    reps = max(1, int(config["min_time"] / max(once, 1e-9)))
    rounds = []
    for _ in range(config["rounds"]):
        comm.barrier()
        started = time.perf_counter()
        for _ in range(reps):
            fn()
        rounds.append(max(comm.allgather((time.perf_counter() - started) / reps)))
    return statistics.median(rounds)


if __name__ == "__main__":
    worker(sys.argv[1])
