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


_FIT = """
import json, sys
import numpy as np
from cnnkit import distributed, models, nn, optim, train
from cnnkit.data import DataLoader

out, batch = sys.argv[1], int(sys.argv[2])
comm = distributed.init()
shard = comm if comm.size > 1 else None
nn.init.manual_seed(0 if comm.rank == 0 else 1)  # rank 1 starts elsewhere: fit broadcasts rank 0's weights
model = models.lenet5().to("numpy")
rng = np.random.default_rng(5)
images, labels = rng.random((201, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 201)
val = rng.random((90, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 90)
loader = DataLoader((images, labels), batch, shuffle=True, seed=3, shard=shard)
val_loader = DataLoader(val, 20, shard=shard)
opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
history = train.fit(model, loader, val_loader, optimizer=opt, epochs=3, max_steps=10, log_every=2,
                    checkpoint_dir=f"{out}-ckpt-rank{comm.rank}", comm=comm if comm.size > 1 else None)
np.savez(f"{out}-rank{comm.rank}.npz", **{k: np.asarray(v) for k, v in model.state_dict().items()})
with open(f"{out}-history-rank{comm.rank}.json", "w") as f:
    json.dump({"epochs": history.epochs, "partial": history.partial, "stopped": history.stopped}, f)
"""


_RESUME = """
import sys
import numpy as np
from cnnkit import distributed, models, nn, optim, train
from cnnkit.data import DataLoader

out, ckpt, max_steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]) or None, sys.argv[4] == "resume"
comm = distributed.init()
nn.init.manual_seed(0)
model = models.lenet5().to("numpy")
rng = np.random.default_rng(5)
images, labels = rng.random((201, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 201)
loader = DataLoader((images, labels), 32, shuffle=True, seed=3, shard=comm if comm.size > 1 else None)
opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
history = train.fit(model, loader, optimizer=opt, epochs=3, max_steps=max_steps, checkpoint_dir=ckpt,
                    resume=f"{ckpt}/last.npz" if resume else None, comm=comm, progress=False)
np.savez(f"{out}-rank{comm.rank}.npz", **{k: np.asarray(v) for k, v in model.state_dict().items()})
np.save(f"{out}-loss{comm.rank}.npy", history[-1]["train_loss"])  # a file: mpiexec may drop late stdout
"""


_SYNC_BN = """
import sys
import numpy as np
from cnnkit import distributed, models, nn, optim, train
from cnnkit.data import DataLoader

out, batch, sync, dtype = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "sync", sys.argv[4]
comm = distributed.init()
nn.init.manual_seed(0)
model = models.create("resnet20").to("numpy", dtype)
if sync:
    nn.convert_sync_batchnorm(model, comm)
rng = np.random.default_rng(5)
images, labels = rng.standard_normal((160, 3, 32, 32)).astype(dtype), rng.integers(0, 10, 160)
loader = DataLoader((images, labels), batch, shuffle=True, seed=3, dtype=dtype,
                    shard=comm if comm.size > 1 else None)
opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
train.fit(model, loader, optimizer=opt, epochs=1, comm=comm, progress=False)  # 5 steps
np.savez(f"{out}-rank{comm.rank}.npz", **{k: np.asarray(v) for k, v in model.state_dict().items()})
"""


_EVERY_SAMPLE = """
import json, sys
import numpy as np
from cnnkit import distributed, nn, optim, train
from cnnkit.data import DataLoader

out, batch = sys.argv[1], int(sys.argv[2])
comm = distributed.init()
shard = comm if comm.size > 1 else None


def build(kind):
    nn.init.manual_seed(0)
    norm = [nn.BatchNorm2d(4)] if kind == "syncbn" else []
    drop = kind == "dropout"
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), *norm, nn.ReLU(), *([nn.Dropout(0.3, seed=1)] * drop),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 16), nn.ReLU(),
                          *([nn.Dropout(0.5, seed=2)] * drop), nn.Linear(16, 10)).to("numpy", "float64")
    return nn.convert_sync_batchnorm(model, comm) if kind == "syncbn" else model


rng = np.random.default_rng(5)
data = rng.standard_normal((65, 1, 8, 8)), rng.integers(0, 10, 65)  # 2 x 32 + 1: the last global batch is 1
val = rng.standard_normal((33, 1, 8, 8)), rng.integers(0, 10, 33)
for kind in ("plain", "dropout", "syncbn"):
    model = build(kind)
    loader = DataLoader(data, batch, shuffle=True, seed=3, dtype="float64", shard=shard)
    val_loader = DataLoader(val, batch, dtype="float64", shard=shard)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    history = train.fit(model, loader, val_loader, optimizer=opt, epochs=2, comm=comm, progress=False)
    result = train.evaluate(model, val_loader, comm=comm)
    np.savez(f"{out}-{kind}-rank{comm.rank}.npz", **{k: np.asarray(v) for k, v in model.state_dict().items()})
    with open(f"{out}-{kind}-rank{comm.rank}.json", "w") as f:
        json.dump({"epochs": history.epochs, "evaluate": result, "steps": len(loader)}, f)
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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}  # every line reaches mpiexec before MPI_Finalize
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


def _records(path: Path) -> list[dict]:
    import json

    data = json.loads(path.read_text())
    return data["epochs"] + [data["partial"]]


def test_fit_on_two_ranks_at_32_equals_one_process_at_64(tmp_path):
    """fit(comm=...): 10 steps (2 epochs of 4 and a partial third, the last global batch of each epoch split 5/4)
    with momentum, weight decay and a sharded validation loader: the weights equal one process at batch 64, are
    identical on both ranks (rank 1 started from other weights), the logged train and validation metrics are the
    global ones, and only rank 0 printed and wrote checkpoint files."""
    two = _run(_FIT, tmp_path, str(tmp_path / "two"), "32")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run(_FIT, tmp_path, str(tmp_path / "one"), "64", ranks=1)
    assert one.returncode == 0, one.stderr[-3000:]
    r0, r1, ref = (np.load(tmp_path / name) for name in ("two-rank0.npz", "two-rank1.npz", "one-rank0.npz"))
    for key in ref.files:
        np.testing.assert_array_equal(r0[key], r1[key], err_msg=f"{key} differs between the ranks")
        np.testing.assert_allclose(r0[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    mine, theirs = _records(tmp_path / "two-history-rank0.json"), _records(tmp_path / "one-history-rank0.json")
    assert [r.get("partial") for r in mine] == [None, None, "2/4"] == [r.get("partial") for r in theirs]
    for a, b in zip(mine, theirs):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    timeless = [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in mine]
    assert [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
            for r in _records(tmp_path / "two-history-rank1.json")] == timeless
    assert sorted(p.name for p in (tmp_path / "two-ckpt-rank0").iterdir()) == \
        ["best.npz", "history.csv", "history.json", "last.npz"]
    assert not (tmp_path / "two-ckpt-rank1").exists()
    assert two.stdout.count("epoch 1/3:") == 1 and two.stdout.count("epoch 2/3:") == 1, two.stdout


def test_a_two_rank_run_stopped_and_resumed_equals_a_straight_one(tmp_path):
    """max_steps=6 stops mid-epoch 2 (step 2 of 4); the resume on 2 ranks finishes the run with the weights of an
    uninterrupted 2-rank run, bit for bit, and the same logged loss; the checkpoint records the world size, and a
    resume on 1 process says how the global batch changes."""
    straight = _run(_RESUME, tmp_path, str(tmp_path / "straight"), str(tmp_path / "a"), "0", "new")
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = _run(_RESUME, tmp_path, str(tmp_path / "first"), str(tmp_path / "b"), "6", "new")
    assert first.returncode == 0, first.stderr[-3000:]
    from cnnkit.io import load_checkpoint

    assert load_checkpoint(tmp_path / "b" / "last.npz")["world_size"] == 2
    second = _run(_RESUME, tmp_path, str(tmp_path / "second"), str(tmp_path / "b"), "0", "resume")
    assert second.returncode == 0, second.stderr[-3000:]
    a, b = np.load(tmp_path / "straight-rank0.npz"), np.load(tmp_path / "second-rank0.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert float(np.load(tmp_path / "second-loss0.npy")) == \
        pytest.approx(float(np.load(tmp_path / "straight-loss0.npy")), rel=1e-6)
    alone = _run(_RESUME, tmp_path, str(tmp_path / "alone"), str(tmp_path / "b"), "0", "resume", ranks=1)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "written by 2 process(es), this run has 1: the global batch changes from 2 x 32 = 64 to 1 x 32 = 32" \
        in alone.stderr, alone.stderr[-3000:]


def test_cnnkit_train_under_mpiexec_trains_on_both_ranks_and_only_rank_0_writes(tmp_path):
    """``mpiexec -n 2 python -m cnnkit train ...`` joins the job by itself: sharded loaders, one set of output
    lines (rank 0's), the checkpoint of a 2-process run, and the help says how the batch and lr are meant."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}  # every line reaches mpiexec before MPI_Finalize
    out = tmp_path / "out"
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "cnnkit", "train", "lenet5", "--dataset",
           "fashion-mnist-sample", "--epochs", "2", "--max-steps", "6", "--batch-size", "32", "--eval-batch-size",
           "250", "--out", str(out), "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert sum(line.startswith("training lenet5") for line in lines) == 1, result.stdout
    assert "2 processes x batch 32 = global batch 64" in result.stdout
    assert sum(line.startswith("epoch 1/2 (stopped at step 6/") for line in lines) == 1, result.stdout
    assert sum(line.startswith("test: ") for line in lines) == 1, result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "history.json", "last.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    from cnnkit.io import load_checkpoint

    state = load_checkpoint(out / "last.npz")
    assert state["world_size"] == 2 and state["steps"] == 6
    from cnnkit import cli

    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "mpiexec -n N" in text and "the global batch is N x this" in text and "of the global batch" in text


def _max_relative_difference(a: np.lib.npyio.NpzFile, b: np.lib.npyio.NpzFile) -> float:
    return max(float(np.max(np.abs(a[k] - b[k])) / max(float(np.max(np.abs(b[k]))), 1e-12))
               for k in b.files if a[k].dtype.kind == "f")


def test_sync_batchnorm_resnet20_on_two_ranks_at_16_equals_one_process_at_32(tmp_path):
    """ResNet-20, 5 SGD steps (momentum, weight decay) through fit, in float64 so that the comparison is one of
    arithmetic, not of float32's noise (in float32 ResNet-20's gradients at initialisation already differ by about
    2e-3 relative from float64's in one process): with convert_sync_batchnorm, 2 ranks x 16 give the weights and
    running statistics of 1 process x 32 to rounding, identical on both ranks; without it each rank normalises
    by its own half-batch statistics, which moves the weights by orders of magnitude more."""
    for name, ranks, batch, mode in (("one", 1, "32", "plain"), ("sync", 2, "16", "sync"),
                                     ("local", 2, "16", "plain")):
        result = _run(_SYNC_BN, tmp_path, str(tmp_path / name), batch, mode, "float64", ranks=ranks)
        assert result.returncode == 0, result.stderr[-3000:]
    ref, r0, r1, local = (np.load(tmp_path / f"{name}.npz")
                          for name in ("one-rank0", "sync-rank0", "sync-rank1", "local-rank0"))
    for key in ref.files:
        np.testing.assert_array_equal(r0[key], r1[key], err_msg=f"{key} differs between the ranks")
        np.testing.assert_allclose(r0[key], ref[key], rtol=1e-9, atol=1e-9 * max(1.0, np.abs(ref[key]).max()),
                                   err_msg=key)
    assert _max_relative_difference(local, ref) > 1e-4 > 1e-8 > _max_relative_difference(r0, ref)


def _echo_comm(rank: int = 0):
    """A stand-in communicator of 'two' ranks whose collectives return this rank's numbers (no MPI behind it): a
    SyncBatchNorm2d over it must compute exactly what a BatchNorm2d computes on the same batch."""
    from cnnkit.distributed import Communicator

    comm = Communicator()
    comm.size, comm.rank = 2, rank
    return comm


def test_sync_batchnorm_layer_over_one_batch_is_batchnorm():
    from cnnkit import nn

    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((8, 4, 5, 5)) * 3 + 1, rng.standard_normal((8, 4, 5, 5))
    nn.init.manual_seed(0)
    plain = nn.BatchNorm2d(4, dtype="float64")
    nn.init.manual_seed(0)
    sync = nn.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4, dtype="float64")), _echo_comm())[0]
    assert isinstance(sync, nn.SyncBatchNorm2d) and sorted(sync.state_dict()) == sorted(plain.state_dict())
    plain.bias.data[...] = sync.bias.data[...] = rng.standard_normal(4)
    np.testing.assert_allclose(sync(x), plain(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sync.backward(dy), plain.backward(dy), rtol=1e-12, atol=1e-12)
    for a, b in ((sync.weight.grad, plain.weight.grad), (sync.bias.grad, plain.bias.grad),
                 (sync.running_mean, plain.running_mean), (sync.running_var, plain.running_var)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    sync.eval()
    plain.eval()
    np.testing.assert_array_equal(sync(x), plain(x))


@pytest.fixture(scope="module")
def every_sample(tmp_path_factory):
    """_EVERY_SAMPLE's three models (no dropout, dropout, sync batch norm), 2 epochs over 65 samples (the last
    global batch of each epoch is 1 sample: rank 1's share is empty) and a validation set of 33 (the same), on 2
    ranks at batch 16 and on 1 process at batch 32; the folder of their files."""
    tmp_path = tmp_path_factory.mktemp("every_sample")
    for name, ranks, batch in (("two", 2, "16"), ("one", 1, "32")):
        result = _run(_EVERY_SAMPLE, tmp_path, str(tmp_path / name), batch, ranks=ranks)
        assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path


def _load_run(folder: Path, name: str, kind: str, rank: int = 0) -> tuple[np.lib.npyio.NpzFile, dict]:
    import json

    return (np.load(folder / f"{name}-{kind}-rank{rank}.npz"),
            json.loads((folder / f"{name}-{kind}-rank{rank}.json").read_text()))


def _same_as_one_process(folder: Path, kind: str) -> None:
    """Rank 0's and rank 1's weights and buffers are identical and equal one process's (float64, to rounding),
    and so are the logged training and validation metrics."""
    (r0, two), (r1, _), (ref, one) = (_load_run(folder, *args) for args in
                                      (("two", kind), ("two", kind, 1), ("one", kind)))
    assert sorted(r0.files) == sorted(ref.files)
    for key in ref.files:
        np.testing.assert_array_equal(r0[key], r1[key], err_msg=f"{key} differs between the ranks")
        np.testing.assert_allclose(r0[key], ref[key], rtol=1e-9, atol=1e-12, err_msg=key)
    for a, b in zip(two["epochs"], one["epochs"], strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-9), key


def test_sharded_training_and_evaluation_count_every_sample(every_sample):
    """65 samples at 2 x 16: 3 steps per epoch on each rank (the third 1 sample on rank 0, none on rank 1, which
    runs no forward but joins the gradient average with count 0) give one process's weights at batch 32; a
    sharded evaluate counts all 33 validation samples (rank 1's second batch is empty)."""
    _same_as_one_process(every_sample, "plain")
    two, one = _load_run(every_sample, "two", "plain")[1], _load_run(every_sample, "one", "plain")[1]
    assert two["steps"] == one["steps"] == 3
    assert two["evaluate"]["n"] == one["evaluate"]["n"] == 33
    assert two["evaluate"]["loss"] == pytest.approx(one["evaluate"]["loss"], rel=1e-9)


def test_dropout_on_two_ranks_at_16_equals_one_process_at_32(every_sample):
    """Each rank's Dropout masks are its rows of the masks one process draws for the global batch (a 4-D one
    after the conv, a 2-D one after the hidden layer), also after a step where rank 1 had no samples and skipped
    its forward: 6 SGD steps with momentum give one process's weights."""
    _same_as_one_process(every_sample, "dropout")


def test_sync_batchnorm_with_an_empty_rank_equals_one_process(every_sample):
    """With sync batch norm, a step where rank 1 has no samples runs the statistics' collectives among the ranks
    that have some, and rank 1 takes rank 0's running statistics and batch counter after: weights, running
    statistics and num_batches_tracked equal one process's."""
    _same_as_one_process(every_sample, "syncbn")


def test_drop_last_drops_the_partial_global_batch_on_every_rank():
    """drop_last=True drops a partial last global batch on every rank, as one process at the global batch does;
    without it every rank has the same number of batches, empty ones included, and together they hold every
    sample once."""
    from cnnkit.data import DataLoader

    data = np.zeros((65, 1, 2, 2), np.float32), np.arange(65)
    ranks = [_echo_comm(rank) for rank in (0, 1)]
    assert [len(DataLoader(data, 16, drop_last=True, shard=c)) for c in ranks] == [2, 2]
    assert len(DataLoader(data, 32, drop_last=True)) == 2
    seen = []
    for comm in ranks:
        loader = DataLoader(data, 16, shuffle=True, shard=comm)
        batches = [(y, loader.global_batch) for _, y in loader]
        assert [b.sizes for _, b in batches] == [(16, 16), (16, 16), (1, 0)]
        assert [(b.offset, b.rows) for _, b in batches][-1] == ((0, 1) if comm.rank == 0 else (1, 0))
        seen += [int(v) for y, _ in batches for v in y]
    assert sorted(seen) == list(range(65))


@pytest.mark.parametrize("name", [pytest.param("cudasim", marks=pytest.mark.cudasim),
                                  pytest.param("cupy", marks=pytest.mark.gpu)])
def test_sync_batchnorm_and_the_collectives_on_a_cuda_backend(name):
    """SyncBatchNorm2d and the gradient / parameter collectives copy through the backend (to_numpy / asarray),
    so they work where arrays are not NumPy's: over the echo communicator the layer is float64 BatchNorm2d to
    float32 rounding, its results stay arrays of the backend, and allreduce_gradients (count-weighted) and
    broadcast_parameters give every array back unchanged, on the device."""
    from op_cases import backend_under_test
    from tolerances import assert_close_f32

    from cnnkit import distributed, nn

    be = backend_under_test(name)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((4, 3, 5, 5)) * 2 + 1, rng.standard_normal((4, 3, 5, 5))
    ref = nn.BatchNorm2d(3, dtype="float64")
    sync = nn.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), _echo_comm()).to(name)
    layer = sync[0]
    y, dx = layer(be.asarray(x, dtype=np.float32)), layer.backward(be.asarray(dy, dtype=np.float32))
    y_ref, dx_ref = ref(x), ref.backward(dy)
    ref.eval()
    layer.eval()  # plain BatchNorm2d: the simulator's (or the GPU's) kernel, with the synced running statistics
    for what, ours, theirs in (("y", y, y_ref), ("dx", dx, dx_ref), ("dweight", layer.weight.grad, ref.weight.grad),
                               ("dbias", layer.bias.grad, ref.bias.grad),
                               ("running_mean", layer.running_mean, ref.running_mean),
                               ("running_var", layer.running_var, ref.running_var),
                               ("eval y", layer(be.asarray(x, dtype=np.float32)), ref(x))):
        assert be.is_native(ours), f"{what} is not a {name} array"
        assert_close_f32(be.to_numpy(ours), theirs, what)
    before = {k: np.asarray(v) for k, v in sync.state_dict().items()}
    grads = [be.to_numpy(p.grad).copy() for p in sync.parameters()]
    distributed.allreduce_gradients(sync, _echo_comm(), count=4)
    distributed.broadcast_parameters(sync, _echo_comm())
    for p, g in zip(sync.parameters(), grads):
        assert be.is_native(p.grad) and be.is_native(p.data)
        np.testing.assert_array_equal(be.to_numpy(p.grad), g)
    for key, value in sync.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_allreduce_gradients_layout_ignores_which_grads_exist():
    """Every trainable parameter has its place in the flat buffer whether or not this rank has a gradient for it:
    a frozen layer's parameters keep grad None, and a rank that had no samples (count 0) is refused only when no
    rank had any (the echo communicator's sum is this rank's)."""
    from cnnkit import distributed, nn

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to("numpy", "float64")
    model[0].trainable = False
    x = np.random.default_rng(1).standard_normal((5, 3))
    model(x)
    model.backward(np.ones((5, 2)))
    assert distributed._trainable_parameters(model) == [model[2].weight, model[2].bias]
    expected = model[2].weight.grad.copy()
    distributed.allreduce_gradients(model, _echo_comm(), count=5)
    np.testing.assert_allclose(model[2].weight.grad, expected, rtol=1e-15)
    assert model[0].weight.grad is None and model[0].bias.grad is None
    model.zero_grad()
    with pytest.raises(ValueError, match="count is 0 on every rank"):
        distributed.allreduce_gradients(model, _echo_comm(), count=0)


def test_dropout_at_a_batch_offset_draws_those_rows_of_the_global_mask():
    """A Dropout layer at batch_offset r over a batch of n rows gives rows r..r+n of what the same layer draws
    for the whole batch at its next call (4-D and 2-D inputs)."""
    from cnnkit import nn

    for shape in ((6, 3, 4, 4), (6, 10)):
        x = np.ones(shape)
        whole, part = nn.Dropout(0.5, seed=4), nn.Dropout(0.5, seed=4)
        part.batch_offset = 2
        np.testing.assert_array_equal(part(x[2:5]), whole(x)[2:5])
        part.skip()
        whole(x)
        part.batch_offset = 0
        np.testing.assert_array_equal(part(x[:3]), whole(x)[:3])


def test_bench_distributed_times_the_step_at_one_and_two_ranks(tmp_path):
    """``cnnkit bench --distributed`` (tiny settings): one row per rank count with the step, the allreduce (none
    at one rank) and its share, and images/s of all ranks, printed and in bench_distributed.json."""
    import json

    cmd = [sys.executable, "-m", "cnnkit", "bench", "--distributed", "--models", "lenet5", "--batch", "4",
           "--backends", "numpy", "--rounds", "1", "--warmup", "0", "--min-time", "0", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench_distributed.json").read_text())
    rows = data["results"]
    assert [(r["model"], r["batch"], r["backend"], r["ranks"]) for r in rows] == \
        [("lenet5", 4, "numpy", 1), ("lenet5", 4, "numpy", 2)]
    one, two = rows
    assert one["allreduce_ms"] == 0 and 0 < two["allreduce_ms"] < two["step_ms"]
    for r in rows:
        assert r["step_ms"] > 0
        assert r["allreduce_pct"] == pytest.approx(100 * r["allreduce_ms"] / r["step_ms"])
        assert r["images_per_s"] == pytest.approx(r["ranks"] * 4 / (r["step_ms"] / 1e3))
    assert data["machine"]["threads_per_rank"] == 1 and data["config"]["ranks"] == [1, 2]
    assert "allreduce ms" in result.stdout and "bench_distributed.json" in result.stdout


def test_bench_distributed_says_what_to_install(monkeypatch, tmp_path, capsys):
    """Without mpi4py, or without an mpiexec next to the interpreter or on PATH: exit 2 and the pip command."""
    from cnnkit import bench
    from cnnkit.bench import distributed as bench_distributed

    args = ["--distributed", "--models", "lenet5", "--backends", "numpy", "--out", str(tmp_path)]
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert bench.main(args) == 2
    assert "needs mpi4py, which is not installed: pip install 'cnnkit[mpi]'" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"needs mpiexec, found neither next to .* nor on PATH: pip install"):
        bench_distributed.mpiexec_path()
