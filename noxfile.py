"""nox sessions: tests (CPU suite), sanitize (CUDA kernels under ASan/TSan on the simulator), gpu (GPU suite +
benchmarks), lint, bench (asv quick), demo."""
from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

CPU_EXTRAS = ".[test,torch,onnx,mpi,numba,plot,progress,image]"


@nox.session
def tests(session: nox.Session) -> None:
    """The CPU test suite, as CI runs it (GPU tests deselected explicitly)."""
    session.install("-e", CPU_EXTRAS)
    session.run("python", "-m", "pytest", "-m", "not gpu", *session.posargs)


@nox.session
def sanitize(session: nox.Session) -> None:
    """The CUDA kernels' op cases on the CPU simulator under AddressSanitizer, then ThreadSanitizer."""
    session.install("-e", CPU_EXTRAS)
    for mode in ("address", "thread"):
        session.run("python", "-m", "cnnkit.backends.cudasim.sanitize", mode, *session.posargs)


@nox.session(python=False)
def gpu(session: nox.Session) -> None:
    """On a GPU machine with CuPy installed: GPU tests, sanitizers and the GPU benchmark table."""
    session.run("bash", "bench/gpu_check.sh", external=True)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "cnnkit", "backends", "bench", "tests", "examples", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """asv quick run in this environment (one sample per benchmark)."""
    session.install("-e", ".[numba,bench]")
    session.chdir("bench")
    session.run("asv", "machine", "--yes")
    session.run("asv", "run", "--python=same", "--quick", "--show-stderr", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: LeNet-5 on the bundled Fashion-MNIST sample."""
    session.install("-e", ".[numba,progress]")
    session.run("cnnkit", "demo")
