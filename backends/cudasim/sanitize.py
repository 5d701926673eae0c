"""Run pytest with the simulator's kernels built under a sanitizer, the CPU stand-ins for compute-sanitizer:

    python3 -m cnnkit.backends.cudasim.sanitize address [pytest arguments]   # memcheck: out-of-bounds, use after free
    python3 -m cnnkit.backends.cudasim.sanitize thread [pytest arguments]    # racecheck: shared-memory races

The sanitizer's runtime must be loaded before Python starts, so this preloads it (LD_PRELOAD) into a fresh
interpreter; the first report ends the run with a non-zero exit. With no pytest arguments it runs SANITIZER_SUBSET
of the op suite on cudasim, the same cases bench/gpu_check.sh gives compute-sanitizer on a GPU.
"""
from __future__ import annotations

import os
import subprocess
import sys

from . import build

SANITIZER_SUBSET = ("conv_paths_agree or integers or bn-split or x7x10 or x3x1000 or dropout_mask or relu-nan-inf "
                    "or sgd_step")
"""pytest -k expression: every kernel at least once (both conv paths and the split-K sums, max pool's atomics,
the block reductions of softmax, cross-entropy and batch norm, dropout, activations, the SGD step), on small
arrays."""
DEFAULT_ARGS = ("-q", "-p", "no:cacheprovider", "-m", "cudasim", "-k", SANITIZER_SUBSET, "tests/test_ops.py",
                "tests/test_cuda_launchers.py")
_LIBRARY = {"address": "libasan.so", "thread": "libtsan.so"}
_OPTIONS = {
    "address": ("ASAN_OPTIONS", "detect_leaks=0:halt_on_error=1"),  # Python itself "leaks" at exit
    "thread": ("TSAN_OPTIONS", "halt_on_error=1:exitcode=66"),
}


def environment(mode: str) -> dict[str, str]:
    """os.environ plus what a sanitized simulator run needs."""
    if mode not in _LIBRARY:
        raise SystemExit(f"sanitizer must be one of {', '.join(_LIBRARY)}; got {mode!r}")
    cxx = build.compiler()
    lib = subprocess.run([cxx, f"-print-file-name={_LIBRARY[mode]}"], capture_output=True, text=True,
                         check=True).stdout.strip()
    if not os.path.isabs(lib):
        raise SystemExit(f"{cxx} has no {_LIBRARY[mode]} (install the compiler's sanitizer runtime)")
    name, options = _OPTIONS[mode]
    return {**os.environ, "LD_PRELOAD": lib, "CNNKIT_CUDASIM_SANITIZE": mode, name: options}


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    mode, pytest_args = argv[0], argv[1:] or list(DEFAULT_ARGS)
    # the interpreter itself, not a shell wrapper (pyenv shims are bash, which the TSan runtime crashes)
    return subprocess.run([sys.executable, "-m", "pytest", *pytest_args], env=environment(mode)).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
