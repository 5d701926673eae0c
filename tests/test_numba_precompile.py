"""First-run compiling on numba (cnnkit.backends.numba.precompile): the notice appears exactly when kernels compile
(subprocesses on a fresh NUMBA_CACHE_DIR), not when they load from the cache or its logger is silenced;
precompile leaves nothing for training to compile, the helper process caches the very signatures the step uses,
and it comes back later to a call whose kernel the main process is compiling. The model is LeNet-300-100: its
only kernels are the ReLU forward and backward (seconds to compile)."""
from __future__ import annotations

import functools
import logging
import os
import pickle
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from cnnkit import models, nn
from cnnkit.backends.numba import precompile as pc

BUILD = functools.partial(models.create, "lenet300-100", num_classes=10)
BATCH = 8
NOTICE = "compiling kernels (first run only)"
STEP = f"""
import functools
import numpy as np
from cnnkit import data, models, optim, train
from cnnkit.backends.numba.precompile import precompile, watch

build = functools.partial(models.create, "lenet300-100", num_classes=10)
precompile(build, {BATCH})
before = watch().count
model = build().to("numba")
images = np.random.default_rng(0).standard_normal((2 * {BATCH}, 1, 28, 28)).astype("float32")
loader = data.DataLoader((images, np.arange(2 * {BATCH}) % 10), {BATCH}, backend="numba")
train.fit(model, loader, loader, optimizer=optim.SGD(model.parameters(), lr=0.1),
          config=train.TrainConfig(epochs=1, progress=False))
print("compiled during training:", watch().count - before)
"""


def _run(cache, *argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    result = subprocess.run([sys.executable, *argv], input=stdin, capture_output=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return result


def test_precompile_says_so_exactly_when_kernels_compile(tmp_path):
    cold = _run(tmp_path, "-c", STEP)
    assert cold.stderr.decode().count(NOTICE) == 1
    assert f"{NOTICE}: " in cold.stderr.decode()  # with the seconds it took
    assert b"compiled during training: 0" in cold.stdout
    warm = _run(tmp_path, "-c", STEP)
    assert NOTICE not in warm.stderr.decode()
    assert b"compiled during training: 0" in warm.stdout


def test_helper_caches_the_signatures_of_the_step(tmp_path):
    pc._prepare(str(tmp_path))
    request = pickle.dumps((BUILD, BATCH, "float32", None)) + pickle.dumps(str(tmp_path))
    _run(tmp_path / "cache", "-m", pc.__name__, stdin=request)
    after = _run(tmp_path / "cache", "-c", STEP)
    assert NOTICE not in after.stderr.decode()  # everything loaded from what the helper compiled


def test_helper_comes_back_to_a_call_whose_kernel_the_main_process_is_compiling(tmp_path):
    pc._prepare(str(tmp_path))
    compiling = tmp_path / "main" / "kernel"  # the main process's marker
    compiling.touch()
    made = []

    def needs_it(x):
        if compiling.exists():
            (tmp_path / "helper" / "caller").touch()  # the helper's own compile, given up with the call
            raise pc._Busy(str(compiling))
        made.append(x)

    def other(x):
        made.append(x)
        compiling.unlink()  # the main process saved the kernel meanwhile

    def broken(x):
        raise ValueError("the main process reports this")

    ops = SimpleNamespace(needs_it=needs_it, other=other, broken=broken)
    pc._replay([("needs_it", (1,), {}), ("broken", (2,), {}), ("other", (3,), {})], ops, str(tmp_path / "helper"))
    assert made == [3, 1]
    assert not list((tmp_path / "helper").iterdir())


def _event(function) -> SimpleNamespace:
    return SimpleNamespace(data={"dispatcher": SimpleNamespace(py_func=function)})


def _compile(watch: pc._Watch, *functions) -> None:
    """Compile events of ``functions`` nested in one another (a kernel and its callees)."""
    for function in functions:
        watch.on_start(_event(function))
    for function in functions[::-1]:
        watch.on_end(_event(function))


def test_helper_takes_the_convs_and_poolings_first_from_the_forwards_end():
    """The helper's calls (LeNet-5): every conv and pooling call before the rest; among them the forward's last
    conv (C5) first, C3's before C1's, then the backward's from its last call (C1's)."""
    calls = pc._record(functools.partial(models.create, "lenet5", num_classes=10), 2, "float32", None)
    costly = ["conv" in name or "pool" in name for name, _, _ in calls]
    assert costly == sorted(costly, reverse=True) and any(costly) and not all(costly)
    convs = [(name, args[1].shape) for name, args, _ in calls if name.startswith("conv2d_")]
    forward = [c for c in convs if not c[0].endswith("_backward")]
    assert [shape for _, shape in forward[:3]] == [(120, 16, 5, 5), (16, 6, 5, 5), (6, 1, 5, 5)]
    assert convs[:len(forward)] == forward  # the forward's convs before the backward's
    first_backward = next(args for name, args, _ in calls if name == "conv2d_backward")
    assert first_backward[2].shape == (6, 1, 5, 5)  # (dy, x, w): C1's gradient, the backward's last call


def test_notice_is_logged_once_and_silenced_by_the_loggers_level(caplog):
    caplog.set_level(logging.WARNING, logger="cnnkit.backends.numba")
    watch = pc._Watch()
    _compile(watch, lambda: None)  # not a cnnkit kernel
    assert watch.count == 0 and not caplog.records
    _compile(watch, pc._step, pc._plain)
    _compile(watch, pc._step)
    assert watch.count == 2
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("cnnkit.backends.numba", logging.WARNING, f"{NOTICE} ...")]
    caplog.clear()
    caplog.set_level(logging.ERROR, logger="cnnkit.backends.numba")
    _compile(pc._Watch(), pc._step)
    assert not caplog.records


@pytest.mark.parametrize("value, plain", [
    (np.zeros(2), True), ((2, 3), True), ("tanh", True), (None, True), (np.dtype("float32"), True), (0.5, True),
    ((np.zeros(2), np.ones(2), True), False),  # a forward's saved state: the helper leaves the call out
])
def test_plain_arguments(value, plain):
    assert pc._plain(value) is plain


def test_fork_rng_leaves_later_models_weights_alone():
    nn.init.manual_seed(3)
    expected = models.create("lenet5").state_dict()
    nn.init.manual_seed(3)
    with nn.init.fork_rng():
        models.create("lenet5")
    got = models.create("lenet5").state_dict()
    assert all(np.array_equal(got[key], expected[key]) for key in expected)
