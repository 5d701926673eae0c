"""Data-parallel training over MPI: each test runs ``mpiexec -n 2`` (the one next to this interpreter) on a small
script, with a timeout and one thread per rank. Marked ``mpi``; CI installs the extra (mpi4py + mpich)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.mpi

TIMEOUT = 180

_TRAIN = """
import sys
import numpy as np
from cnnkit import distributed, losses, models, nn, optim
from cnnkit.data import DataLoader

out, batch = sys.argv[1], int(sys.argv[2])
comm = distributed.init()
nn.init.manual_seed(0)
model = models.lenet5().to("numpy")
if comm.rank == 1 and "--other-model" in sys.argv:
    model = models.lenet1().to("numpy")
distributed.broadcast_parameters(model, comm)
np.savez(f"{out}-init.npz", **{k: np.asarray(v) for k, v in model.state_dict().items()})
rng = np.random.default_rng(5)
images, labels = rng.random((201, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 201)
loader = DataLoader((images, labels), batch, shuffle=True, seed=3, shard=comm if comm.size > 1 else None)
opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
steps = 0
while steps < 20:
    for x, y in loader:
        loss, dlogits = losses.softmax_cross_entropy(model(x), y, backend="numpy")
        opt.zero_grad()
        model.backward(dlogits)
        distributed.allreduce_gradients(model, comm, count=len(y))
        opt.step()
        steps += 1
        if steps == 20:
            break
np.savez(f"{out}-rank{comm.rank}.npz", **{k: np.asarray(v) for k, v in model.state_dict().items()})
"""

_FAIL = """
import sys, time
from cnnkit import distributed
comm = distributed.init()
if comm.rank == 1:
    raise ValueError("rank 1 fails on purpose")
comm.barrier()  # rank 0 would wait here forever without the abort
time.sleep(60)
"""


def _mpiexec() -> str:
    path = Path(sys.executable).parent / "mpiexec"
    found = str(path) if path.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpiexec not found next to the interpreter: pip install 'cnnkit[mpi]'")
    return found


def _run(script: str, tmp_path: Path, *args: str, ranks: int = 2) -> subprocess.CompletedProcess:
    path = tmp_path / "job.py"
    path.write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    cmd = [_mpiexec(), "-n", str(ranks), sys.executable, str(path), *args] if ranks > 1 else \
        [sys.executable, str(path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def test_two_ranks_at_32_train_as_one_process_at_64(tmp_path):
    """20 SGD steps (momentum, weight decay; 201 samples, so the last global batch of each epoch is partial and
    split 5/4, which the count-weighted average must handle): equal weights, and identical on both ranks."""
    two = _run(_TRAIN, tmp_path, str(tmp_path / "two"), "32")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run(_TRAIN, tmp_path, str(tmp_path / "one"), "64", ranks=1)
    assert one.returncode == 0, one.stderr[-3000:]
    r0, r1, ref = (np.load(tmp_path / name) for name in ("two-rank0.npz", "two-rank1.npz", "one-rank0.npz"))
    assert sorted(r0.files) == sorted(ref.files)
    for key in ref.files:
        np.testing.assert_array_equal(r0[key], r1[key], err_msg=f"{key} differs between the ranks")
        np.testing.assert_allclose(r0[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    init = np.load(tmp_path / "one-init.npz")
    assert not np.allclose(ref["0.weight"], init["0.weight"]), "the model did not train"


def test_a_failing_rank_ends_the_whole_job(tmp_path):
    result = _run(_FAIL, tmp_path)
    assert result.returncode != 0
    assert "rank 1 fails on purpose" in result.stderr and "aborting the whole job" in result.stderr


def test_ranks_with_different_models_get_a_clear_error(tmp_path):
    result = _run(_TRAIN, tmp_path, str(tmp_path / "bad"), "32", "--other-model")
    assert result.returncode != 0
    assert "built a different model from rank 0" in result.stderr, result.stderr[-3000:]
