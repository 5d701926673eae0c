"""Data-parallel training over MPI (mpi4py): the same script runs alone or under ``mpiexec -n N``.

``init()`` returns a :class:`Communicator` over ``MPI.COMM_WORLD`` (a size-1 one without MPI) and, in a
multi-process job, installs an excepthook that aborts the whole job when any rank raises, so no rank is left
waiting in a collective. The model's parameters and buffers start equal on every rank
(:func:`broadcast_parameters`), after a check that every rank built the same model (:func:`check_same_model`);
each step's gradients are averaged through one flat buffer per dtype and one in-place allreduce
(:func:`allreduce_gradients`). With ``DataLoader(..., shard=comm)`` each rank takes its slice of every global
batch, so N ranks at batch B are the optimisation of one process at batch N * B (batch norm aside: its batch
statistics stay per rank, unless :func:`cnnkit.nn.convert_sync_batchnorm` makes them global). Every sample
counts: a rank whose share of a last, small global batch is empty skips its forward but joins every collective
(:func:`data_parallel_step`), and Dropout masks are each rank's rows of the global batch's mask.

``fit(..., comm=comm)`` uses the helpers at the end of this module: :func:`global_batch` and
:func:`data_parallel_step` around each step, :meth:`Communicator.totals` (sums that are the same on every rank, so
every stop decision is too), :func:`average_buffers`, :func:`after_resume` and :func:`global_partial`.
``cnnkit train`` calls :func:`init` when :func:`launched_size` says mpiexec started several ranks, and
:func:`abort_job` after an error it handled on one rank.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np

from cnnkit.nn.base import Layer, Parameter
from cnnkit.nn.linear import Dropout


class Communicator:
    """The ranks of a job: ``rank``, ``size``, ``barrier()``, and the collectives cnnkit needs."""

    def __init__(self, mpi_comm: Any = None):
        self._comm = mpi_comm
        self.rank = 0 if mpi_comm is None else mpi_comm.Get_rank()
        self.size = 1 if mpi_comm is None else mpi_comm.Get_size()
        self._buffers: dict[tuple[int, str], np.ndarray] = {}
        self._groups: dict[tuple[int, ...], Communicator | None] = {}

    def barrier(self) -> None:
        if self._comm is not None:
            self._comm.Barrier()

    def allreduce_sum_(self, buffer: np.ndarray) -> np.ndarray:
        """Sum a contiguous host array over the ranks, in place."""
        if self._comm is not None and self.size > 1:
            from mpi4py import MPI

            self._comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        return buffer

    def broadcast_(self, buffer: np.ndarray, root: int = 0) -> np.ndarray:
        """Root's contiguous host array, copied into every rank's ``buffer`` in place."""
        if self._comm is not None and self.size > 1:
            self._comm.Bcast(buffer, root=root)
        return buffer

    def allgather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (a small picklable object), in rank order."""
        return [value] if self._comm is None or self.size == 1 else self._comm.allgather(value)

    def agreed_sum_(self, buffer: np.ndarray) -> np.ndarray:
        """Sum a contiguous host array over the ranks in place, then broadcast rank 0's result, so every rank
        holds bit for bit the same sums (and takes the same decisions from them)."""
        return self.broadcast_(self.allreduce_sum_(buffer))

    def totals(self, *values: Any) -> tuple[float, ...]:
        """Numbers (or backend scalars) summed over the ranks as float64, the same on every rank (agreed_sum_)."""
        return tuple(self.agreed_sum_(np.array([float(v) for v in values], dtype=np.float64)).tolist())

    def group(self, ranks: tuple[int, ...]) -> Communicator | None:
        """The communicator of ``ranks`` (in rank order; None on a rank outside them), made once per set of ranks.
        Collective the first time: every rank asks for the same ``ranks``."""
        if len(ranks) == self.size:
            return self
        if ranks not in self._groups:
            from mpi4py import MPI

            inside = self.rank in ranks
            sub = self._comm.Split(0 if inside else MPI.UNDEFINED, self.rank)
            self._groups[ranks] = Communicator(sub) if inside else None
        return self._groups[ranks]

    def flat_buffer(self, model: Layer, dtype: np.dtype, size: int) -> np.ndarray:
        """The preallocated host buffer of ``size`` elements for ``model``'s gradients of ``dtype``."""
        key = (id(model), np.dtype(dtype).str)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.size != size:
            buffer = self._buffers[key] = np.empty(size, dtype=dtype)
        return buffer


_world: Communicator | None = None  # the communicator init() returned


def init() -> Communicator:
    """The job's communicator: MPI.COMM_WORLD when mpi4py is installed, else a size-1 one. In a job of several
    ranks an uncaught exception on any rank aborts every rank (MPI_Abort), after printing its traceback."""
    global _world
    try:
        from mpi4py import MPI
    except ImportError:
        return Communicator()
    if _world is None:
        _world = Communicator(MPI.COMM_WORLD)
        if _world.size > 1:
            sys.excepthook = _abort_job_hook(sys.excepthook)
    return _world


ABORT_GRACE_S = 0.3  # seconds a failing rank waits, after flushing its output, before MPI_Abort
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_size() -> int:
    """How many ranks the launcher started (MPICH's, Open MPI's or MVAPICH's mpiexec, read from the environment
    without importing MPI); 1 outside a job."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def join_launched_job() -> Communicator | None:
    """The communicator of the mpiexec job of several ranks that started this process (:func:`init`), else None;
    a RuntimeError when mpiexec started several but MPI here does not see them (no mpi4py, or another MPI's)."""
    started = launched_size()
    if started == 1:
        return None
    comm = init()
    if comm.size != started:
        raise RuntimeError(f"mpiexec started {started} processes but this one runs alone (mpi4py is not installed, "
                           "or it was built for another MPI): pip install 'cnnkit[mpi]' in this environment")
    return comm


def abort_job(code: int = 1) -> None:
    """End every rank of the job that :func:`init` joined (after an error this rank handled and reported, so the
    others do not wait for it in a collective); nothing in a one-process run."""
    if _world is not None and _world.size > 1:
        _flush_for_mpiexec()
        _world._comm.Abort(code)


def _abort_job_hook(previous: Any) -> Any:
    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        from mpi4py import MPI

        sys.stderr.write(f"cnnkit: rank {MPI.COMM_WORLD.Get_rank()} failed; aborting the whole job\n")
        previous(kind, value, tb)
        _flush_for_mpiexec()
        MPI.COMM_WORLD.Abort(1)
    return hook


def _flush_for_mpiexec() -> None:
    """Flush this rank's output and give mpiexec ABORT_GRACE_S to forward it: MPI_Abort tears the job down at
    once, and output still in transit was seen lost (a CI run of the different-models test printed nothing)."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(ABORT_GRACE_S)


def _model_arrays(model: Layer) -> list[tuple[str, Any]]:
    """(name, array) of every parameter's data and every buffer, in a fixed order."""
    return ([(name, p.data) for name, p in model.named_parameters()]
            + [(name, b) for name, b in model.named_buffers()])


def model_signature(model: Layer) -> str:
    """A hash of every parameter's and buffer's name, shape, dtype and trainable flag."""
    trainable = {name: layer.trainable for name, layer in model.modules()}
    parts = [f"{name}:{tuple(a.shape)}:{a.dtype}:{trainable.get(name.rpartition('.')[0], True)}"
             for name, a in _model_arrays(model)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def check_same_model(model: Layer, comm: Communicator) -> None:
    """A clear error on every rank (not a hang in a later collective) when the ranks built different models."""
    signatures = comm.allgather(model_signature(model))
    differ = [r for r, s in enumerate(signatures) if s != signatures[0]]
    if differ:
        raise RuntimeError(f"rank(s) {differ} built a different model from rank 0 (parameter names, shapes, dtypes "
                           f"or trainable flags differ): every rank must build the same model")


def broadcast_parameters(model: Layer, comm: Communicator, root: int = 0) -> None:
    """Root's parameters and buffers (batch-norm running statistics included) copied to every rank, in place."""
    if comm.size == 1:
        return
    check_same_model(model, comm)
    be = model.backend
    for _, array in _model_arrays(model):
        host = np.ascontiguousarray(be.to_numpy(array))
        comm.broadcast_(host, root)
        if be.is_native(array) and isinstance(array, np.ndarray):
            array[...] = host
        else:  # a device array: copy back through the backend
            array[...] = be.asarray(host)


def _trainable_parameters(model: Layer) -> list[Parameter]:
    """The parameters of every trainable layer, in a fixed order: the same list on every rank, whichever
    gradients exist (a frozen layer's stay None on every rank)."""
    found = {id(v): v for _, layer in model.modules() if layer.trainable
             for v in vars(layer).values() if isinstance(v, Parameter)}
    return list(found.values())


def allreduce_gradients(model: Layer, comm: Communicator, count: int | None = None) -> None:
    """Average the gradients of every trainable parameter over the ranks through one flat host buffer per dtype
    and one in-place allreduce.

    With ``count`` (this rank's batch size) the average is weighted by it, so ranks with unequal batches (the
    last, partial global batch) give exactly the gradient of one process over the whole global batch. A rank
    without a gradient for a parameter (count 0: its share of the global batch was empty and it ran no backward)
    sends zeros, so the buffer has the same layout on every rank; a parameter no rank has a gradient for keeps
    ``grad`` None (the optimiser skips it, as in one process)."""
    if comm.size == 1:
        return
    params = _trainable_parameters(model)
    for dtype in sorted({np.dtype(p.data.dtype).str for p in params}):
        group = [p for p in params if np.dtype(p.data.dtype).str == dtype]
        sizes = [p.data.size for p in group]
        buffer = comm.flat_buffer(model, np.dtype(dtype), sum(sizes) + len(group) + 1)
        _pack(model, group, sizes, buffer, 1.0 if count is None else float(count))
        comm.allreduce_sum_(buffer)
        if buffer[-1] == 0:
            raise ValueError("allreduce_gradients: count is 0 on every rank; at least one rank must have samples")
        _unpack(model, group, sizes, buffer)


def _pack(model: Layer, group: list[Parameter], sizes: list[int], buffer: np.ndarray, weight: float) -> None:
    """``buffer`` = [weight * every gradient (zeros for None), one has-a-gradient flag per parameter, weight]."""
    be, offset, total = model.backend, 0, sum(sizes)
    for i, (p, n) in enumerate(zip(group, sizes)):
        buffer[total + i] = p.grad is not None
        buffer[offset:offset + n] = 0 if p.grad is None else be.to_numpy(p.grad).ravel()
        offset += n
    buffer[:total] *= weight
    buffer[-1] = weight


def _unpack(model: Layer, group: list[Parameter], sizes: list[int], buffer: np.ndarray) -> None:
    """The summed buffer divided by the summed weight, written into the gradients (allocated where a rank had
    none) of the parameters some rank had a gradient for."""
    be, offset, total = model.backend, 0, sum(sizes)
    buffer[:total] /= buffer[-1]
    for i, (p, n) in enumerate(zip(group, sizes)):
        if buffer[total + i]:
            value = be.asarray(buffer[offset:offset + n].reshape(p.data.shape))
            if p.grad is None:
                p.grad = value.copy()
            else:
                p.grad[...] = value
        offset += n


# ------------------------------------------------------------------------------------------------ fit's helpers
class GlobalBatch(NamedTuple):
    """Where a rank's batch sits in the global batch of a data-parallel step: rank r holds ``sizes[r]`` rows, in
    rank order, so this rank's are rows ``offset`` to ``offset + rows`` of ``sum(sizes)``. A rank may hold none
    (a last global batch smaller than the number of ranks). ``DataLoader.global_batch`` is the one of the batch
    it yielded last."""

    sizes: tuple[int, ...]
    rank: int = 0

    @property
    def offset(self) -> int:
        return sum(self.sizes[:self.rank])

    @property
    def rows(self) -> int:
        return self.sizes[self.rank]


def global_batch(loader: Any, comm: Communicator, rows: int) -> GlobalBatch:
    """The :class:`GlobalBatch` of the batch of ``rows`` samples that ``loader`` just yielded: the loader's
    ``global_batch`` when it is sharded over ``comm`` (DataLoader), else every rank's count, gathered (one
    collective per step; the ranks' batches are then taken to be consecutive in rank order)."""
    batch = getattr(loader, "global_batch", None)
    if isinstance(batch, GlobalBatch) and len(batch.sizes) == comm.size and batch.rows == rows:
        return batch
    return GlobalBatch(tuple(comm.allgather(rows)), comm.rank)


@contextlib.contextmanager
def data_parallel_step(model: Layer, comm: Communicator, batch: GlobalBatch) -> Iterator[None]:
    """Around this rank's forward and backward of one training step (which it runs only if ``batch.rows``);
    ends with the gradients averaged (:func:`allreduce_gradients`, weighted by ``batch.rows``), ready for the
    optimiser's step, which is then the same on every rank.

    Each Dropout layer draws this rank's rows of the mask of the whole global batch (``batch_offset``), and a
    rank without rows counts the forward it skips, so masks stay in step. When some rank holds no rows, the
    layers with collectives of their own (SyncBatchNorm2d's ``comm``) run them among the ranks that do, and
    afterwards their buffers (statistics of the global batch) and every integer buffer (batch counters) are the
    first such rank's on every rank."""
    if comm.size == 1:  # one process: its batch is the global batch, with nothing to place or to average
        yield
        return
    modules = list(model.modules())
    dropouts = [layer for _, layer in modules if isinstance(layer, Dropout)]
    for layer in dropouts:
        layer.batch_offset = batch.offset
        if not batch.rows:
            layer.skip()
    working = tuple(r for r, n in enumerate(batch.sizes) if n)
    uneven = len(working) < comm.size
    holders = {name: layer for name, layer in modules
               if uneven and isinstance(getattr(layer, "comm", None), Communicator)}
    own = {name: layer.comm for name, layer in holders.items()}
    try:
        for layer in holders.values():
            layer.comm = comm.group(working)
        yield
    finally:
        for name, layer in holders.items():
            layer.comm = own[name]
        for layer in dropouts:
            layer.batch_offset = 0
    allreduce_gradients(model, comm, count=batch.rows)
    if uneven:
        _share_buffers(model, comm, set(holders), root=working[0])


def _share_buffers(model: Layer, comm: Communicator, layers: set[str], root: int) -> None:
    """``root``'s buffers of the named ``layers`` and its integer buffers of every layer, on every rank."""
    be = model.backend
    for name, array in model.named_buffers():
        if name.rpartition(".")[0] in layers or np.dtype(array.dtype).kind in "iu":
            array[...] = be.asarray(comm.broadcast_(np.ascontiguousarray(be.to_numpy(array)), root))


def average_buffers(model: Layer, comm: Communicator) -> None:
    """Average every floating-point buffer (batch norm's running statistics, per rank without sync batch norm)
    over the ranks, so every rank evaluates and saves the same model; integer buffers (counters) are equal."""
    if comm.size == 1:
        return
    be = model.backend
    for _, array in model.named_buffers():
        if np.dtype(array.dtype).kind != "f":
            continue
        host = np.ascontiguousarray(be.to_numpy(array), dtype=np.float64)
        comm.broadcast_(comm.allreduce_sum_(host))
        array[...] = be.asarray((host / comm.size).astype(array.dtype))


def global_partial(state: dict[str, Any] | None, comm: Communicator) -> dict[str, Any] | None:
    """A mid-epoch checkpoint's running sums (``EpochSums.to_state``) made the sums over all ranks; after a
    resume rank 0 starts from them and the other ranks from zero (:func:`after_resume`)."""
    if state is None or comm.size == 1:
        return state
    loss_sum, correct, n = comm.totals(state["loss_sum"], state["correct"], state["n"])
    return {**state, "loss_sum": np.asarray(loss_sum, dtype=state["loss_sum"].dtype),
            "correct": np.asarray(correct, dtype=state["correct"].dtype), "n": int(n)}


def after_resume(model: Layer, comm: Communicator, sums: Any, saved_size: int, loader: Any, path: Any) -> None:
    """What a resume on several ranks adds: rank 0's model broadcast, the epoch's running sums (global in the
    checkpoint) kept by rank 0 only, and a warning when the checkpoint was written by another number of ranks."""
    broadcast_parameters(model, comm)
    if comm.rank != 0:
        sums.loss_sum, sums.correct, sums.n = 0, 0, 0
    if saved_size != comm.size and comm.rank == 0:
        batch = getattr(loader, "batch_size", None)
        change = ("" if batch is None else f" from {saved_size} x {batch} = {saved_size * batch} to "
                  f"{comm.size} x {batch} = {comm.size * batch}")
        warnings.warn(f"{path} was written by {saved_size} process(es), this run has {comm.size}: the global batch "
                      f"changes{change} images per step at the same learning rate"
                      + ("; the epoch in progress continues at its step count, now of the new batch"
                         if sums.step else ""), stacklevel=3)
