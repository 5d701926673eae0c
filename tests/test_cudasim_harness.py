"""The net catches planted bugs: scratch copies of shipped kernels, each with one classic mistake, must be
caught by the stand-in for the tool that would catch it on a GPU. Each check also runs the unplanted copy the
same way, which must pass, so a test here fails when the net has a hole or when it catches what is not there.
The shipped kernel files are never modified.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cnnkit.backends.cudasim import sanitize
from cnnkit.backends.cupy import _module as cuda

pytestmark = pytest.mark.cudasim

# Runs one op on a cudasim backend whose `module` kernel file is replaced by the text in argv[1] (a file path).
_RUN_OP = """
import sys, numpy as np
import cnnkit.functional as F
from cnnkit.backends.cudasim import create
from cnnkit.backends.cudasim.runtime import SimulatorRuntime, sanitize_mode
module, path, op = sys.argv[1], sys.argv[2], sys.argv[3]
be = create(SimulatorRuntime(sanitize=sanitize_mode(), sources={module: open(path).read()}))
x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
y = F.softmax(x, backend=be) if op == "softmax" else F.activation(x, op, backend=be)
print("finite" if np.isfinite(y).all() else "not finite")
"""


def _run(mode: str, module: str, text: str, op: str, shape: tuple[int, ...], tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / f"{module}.cu"
    path.write_text(text)
    code = _RUN_OP.replace("SHAPE", repr(shape))
    return subprocess.run([sys.executable, "-c", code, module, str(path), op], env=sanitize.environment(mode),
                          capture_output=True, text=True, timeout=300)


def _planted(module: str, old: str, new: str) -> tuple[str, str]:
    """(shipped text, the same with ``old`` replaced once by ``new``): the loader's text, with #line markers."""
    text = cuda.source(module, line_markers=True)
    assert text.count(old) >= 1, f"{old!r} is no longer in {module}.cu: update the planted bug"
    return text, text.replace(old, new, 1)


def test_addresssanitizer_catches_an_off_by_one_bound(tmp_path):
    """activation_fwd's `i < n` written `i <= n`: one float read and written past both arrays' ends."""
    clean, planted = _planted("activation", "if (i < n) y[i] = activate(", "if (i <= n) y[i] = activate(")
    shape = (1000,)  # not a multiple of the 256-thread block, and over NumPy's small-allocation cache
    ok = _run("address", "activation", clean, "relu", shape, tmp_path)
    assert ok.returncode == 0 and ok.stdout.strip() == "finite", ok.stderr[-3000:]
    bad = _run("address", "activation", planted, "relu", shape, tmp_path)
    assert bad.returncode != 0 and "AddressSanitizer: heap-buffer-overflow" in bad.stderr, bad.stderr[-3000:]
    assert "activation.cu:" in bad.stderr, "the report names the kernel's source line"


def test_threadsanitizer_catches_a_missing_syncthreads_in_a_block_reduction(tmp_path):
    """common.cuh's block_sum without the barrier between its tree steps: threads read partial sums that
    others are still writing (softmax_fwd reduces each row with it)."""
    step = "        if (t < s) sh[t] += sh[t + s];\n        __syncthreads();\n"
    clean, planted = _planted("activation", step, "        if (t < s) sh[t] += sh[t + s];\n")
    ok = _run("thread", "activation", clean, "softmax", (3, 100), tmp_path)
    assert ok.returncode == 0 and ok.stdout.strip() == "finite", ok.stderr[-3000:]
    bad = _run("thread", "activation", planted, "softmax", (3, 100), tmp_path)
    assert bad.returncode != 0 and "ThreadSanitizer: data race" in bad.stderr, bad.stderr[-3000:]
    assert "common.cuh:" in bad.stderr, "the report names the header line of the race"


def test_the_parity_suite_catches_a_wrong_derivative():
    """common.cuh's sigmoid derivative y (1 - y) written y (1 + y), run through the op suite's own activation
    backward test on a cudasim backend built from the scratch copy: that test must fail, and pass on the clean copy."""
    from op_cases import ACTIVATION_CASES
    from test_ops import Target, test_activation_backward

    from cnnkit.backends.cudasim import create
    from cnnkit.backends.cudasim.runtime import SimulatorRuntime

    case = next(c for c in ACTIVATION_CASES if c.kind == "sigmoid" and not c.special)
    clean, planted = _planted("activation", "case ACT_SIGMOID: return dy * y * (1.0f - y);",
                              "case ACT_SIGMOID: return dy * y * (1.0f + y);")
    for text, should_pass in ((clean, True), (planted, False)):
        target = Target(create(SimulatorRuntime(sources={"activation": text})), np.dtype(np.float32))
        if should_pass:
            test_activation_backward(target, case)
        else:
            with pytest.raises(AssertionError, match="dx"):
                test_activation_backward(target, case)
