"""First-run compiling, Numba: a notice when kernels compile, and :func:`precompile`, which compiles the kernels of
one model's training step before training, in two processes at once.

Numba compiles a kernel the first time it runs with new argument types, holding the GIL (one core), and keeps it
in its on-disk cache; later runs load it from there. So a first run spends seconds per kernel compiling.

* The notice: ``create()`` installs a numba compile-event listener (:func:`watch`). The first time a cnnkit kernel
  actually compiles in the process (one loaded from the cache is no compile event), it logs "compiling kernels
  (first run only) ..." at WARNING on the logger ``cnnkit.backends.numba``, which Python prints to stderr unless
  logging is configured otherwise; ``logging.getLogger("cnnkit.backends.numba").setLevel(logging.ERROR)``
  silences it. During :func:`precompile` it logs "compiling kernels (first run only): <seconds> s" at the end
  instead.
* :func:`precompile` runs one training step (forward, loss and backward in training mode, then a forward in eval
  mode, as :func:`cnnkit.train.fit` does) of a fresh copy of the model on a random batch of the training shape,
  so every kernel training calls is compiled or loaded with the argument types training passes. At the first
  compile (at once on a first run, :func:`_first_run`), a helper process (this module run as a script) starts on
  the same step from the other end: it records the step's kernel calls on the NumPy backend (their inputs) and
  makes the same calls on this backend from the other end, the convs and poolings first, each the forward's last
  call first and then the backward's last first (:func:`_record`), so that the two meet in the middle; this
  process loads what the helper compiled from numba's cache. The helper is ended when this process is through
  its step.

The two share numba's cache through a temporary folder. Numba writes each cache file atomically (a temporary
file, then ``os.replace``), but adding an entry reads, extends and rewrites the function's index and then writes
the data file: two processes adding different argument types of one function at the same moment could lose one or
pair it with the other's data file, and a reader can catch an index entry before its data. So both hold a lock
on a file there around numba's index updates (exclusive) and loads (shared). And neither compiles what the other
is compiling: a process marks each kernel from its cache miss to its save; when this process needs a kernel
the helper has marked, it waits for it and loads it; when the helper needs one this process has marked, it gives
the call up and comes back to it after the others. Without ``fcntl`` (Windows), or on one core, no helper starts.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from numba.core import caching, event

from cnnkit.backends import OPS

try:
    import fcntl
except ImportError:  # Windows: no helper process
    fcntl = None

logger = logging.getLogger("cnnkit.backends.numba")
NOTICE = "compiling kernels (first run only)"
WAIT_LIMIT = 60.0  # seconds the main process waits at most for a kernel the helper is compiling
Call = tuple[str, tuple, dict]


class _Watch(event.Listener):
    """Counts the compiles of cnnkit kernels in this process (callees compile inside their caller's event and
    count with it) and logs the notice at the first one, or calls ``precompiling`` instead."""

    def __init__(self) -> None:
        self.count = 0
        self.noticed = False
        self.precompiling: Callable[[], None] | None = None
        self._depth = 0

    def on_start(self, ev: event.Event) -> None:
        self._depth += 1
        function = getattr(ev.data.get("dispatcher"), "py_func", None)
        if self._depth > 1 or not (getattr(function, "__module__", None) or "").startswith("cnnkit."):
            return
        self.count += 1
        if self.precompiling is not None:
            self.precompiling()
        elif not self.noticed:
            self.noticed = True
            logger.warning("%s ...", NOTICE)

    def on_end(self, ev: event.Event) -> None:
        self._depth -= 1


_WATCH: _Watch | None = None


def watch() -> _Watch:
    """The process's compile listener, registered with numba on the first call (``create()`` makes it)."""
    global _WATCH
    if _WATCH is None:
        _WATCH = _Watch()
        event.register("numba:compile", _WATCH)
    return _WATCH


# ----------------------------------------------------------------------------------------------- the step
def _step(model: Any, batch_size: int, dtype: str, input_shape: Sequence[int]) -> None:
    """The backend calls of a training step and an evaluation (:func:`cnnkit.train.fit`'s): forward, loss and
    backward (no input gradient) in training mode, then a forward in eval mode, on a random batch."""
    from cnnkit.losses import softmax_cross_entropy

    be = model.backend
    x = be.asarray(np.random.default_rng(0).standard_normal((batch_size, *input_shape)), dtype=dtype)
    model.train()
    _, dlogits = softmax_cross_entropy(model.forward(x), be.asarray(np.zeros(batch_size, dtype=np.int64)), backend=be)
    with model.input_grad_skipped():
        model.backward(dlogits)
    model.eval()
    model.forward(x)


def _plain(value: Any) -> bool:
    """An argument the helper can pass on as recorded: an array, a scalar, a name, a dtype, None or a tuple of
    ints (a shape); not what a forward keeps for its backward (batch norm's ``saved``, which differs by backend)."""
    if isinstance(value, tuple):
        return all(isinstance(v, int) for v in value)
    return value is None or isinstance(value, (np.ndarray, np.dtype, type, str, int, float))


def _record(build: Callable[[], Any], batch_size: int, dtype: str, input_shape: Sequence[int] | None) -> list[Call]:
    """The kernel calls of :func:`_step` for the model ``build()`` returns, recorded on the NumPy backend (with
    their inputs), in the helper's order: the conv and pooling calls first, whose kernels are the costliest to
    compile, then the rest (elementwise ops, the loss: this process soon reaches them itself); in each, the
    forward's calls last first, then the backward's last first. So the two processes meet in the middle of the
    forward (a model's first and later conv layers often need different kernels) and then of the backward. Calls
    with an argument that is not :func:`_plain` are left out (this process compiles those)."""
    from cnnkit.backend import backend

    numpy_backend, calls = backend("numpy"), []

    def recorder(name: str) -> Callable[..., Any]:
        def op(*args: Any, **kwargs: Any) -> Any:
            if all(_plain(a) for a in (*args, *kwargs.values())):
                calls.append((name, args, kwargs))
            return getattr(numpy_backend.ops, name)(*args, **kwargs)
        return op

    ops = SimpleNamespace(**{name: recorder(name) for name in OPS})
    model = build().to(dataclasses.replace(numpy_backend, ops=ops), dtype)
    _step(model, batch_size, dtype, input_shape or model.input_shape)
    backward = [call for call in calls if call[0].endswith("_backward")]
    order = [call for call in calls if not call[0].endswith("_backward")][::-1] + backward[::-1]
    return sorted(order, key=lambda call: "conv" not in call[0] and "pool" not in call[0])  # (a stable sort)


# ----------------------------------------------------------------------------------------------- the helper
class _Busy(Exception):
    """The main process is compiling a kernel the helper's call needs: the helper comes back to the call later."""


def _prepare(folder: str) -> None:
    """The shared folder's contents: the lock file and a folder of markers per process."""
    for name in ("main", "helper"):
        os.mkdir(os.path.join(folder, name))
    open(os.path.join(folder, "lock"), "wb").close()


@contextlib.contextmanager
def _shared_cache(folder: str, me: str, other: str, busy: Callable[[str], None]) -> Iterator[None]:
    """Numba's cache shared by the two processes (see the module docstring): index updates (exclusive) and loads
    (shared) under a lock on ``folder/lock``; a marker file in ``folder/me`` from a load that misses (this process
    now compiles the kernel) to its save; a load of a kernel marked in ``folder/other`` calls ``busy(marker)``
    first."""
    index = caching.IndexDataCacheFile
    load, save = index.load, index.save

    def marker(cache: Any, key: Any, who: str) -> str:
        return os.path.join(folder, who, hashlib.sha1(f"{cache._index_path} {key}".encode()).hexdigest())

    def locked(mode: int, method: Callable[..., Any], *args: Any) -> Any:
        with open(os.path.join(folder, "lock"), "rb") as f:
            fcntl.flock(f, mode)
            return method(*args)

    def shared_load(cache: Any, key: Any) -> Any:
        if os.path.exists(marker(cache, key, other)):
            busy(marker(cache, key, other))
        found = locked(fcntl.LOCK_SH, load, cache, key)
        if found is None:
            open(marker(cache, key, me), "wb").close()
        return found

    def shared_save(cache: Any, key: Any, data: Any) -> None:
        locked(fcntl.LOCK_EX, save, cache, key, data)
        with contextlib.suppress(FileNotFoundError):
            os.remove(marker(cache, key, me))

    index.load, index.save = shared_load, shared_save
    try:
        yield
    finally:
        index.load, index.save = load, save


class _Helper:
    """The main process's side: the shared folder, the helper process (started once, when called, under
    ``stack``, which ends it) and :meth:`wait`."""

    def __init__(self, request: bytes, stack: contextlib.ExitStack) -> None:
        self.request, self.stack, self.started, self.process = request, stack, False, None
        self.folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="cnnkit-numba-"))
        _prepare(self.folder)
        stack.enter_context(_shared_cache(self.folder, "main", "helper", self.wait))

    def __call__(self) -> None:
        if self.started:
            return
        self.started = True
        env = {**os.environ, "NUMBA_NUM_THREADS": "1"}  # it compiles; the kernels it runs on the side are tiny
        try:
            self.process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        except OSError as exc:  # this process compiles everything, as without a helper
            logger.debug("no helper process: %s", exc)
            return
        self.stack.callback(_end, self.process)
        with contextlib.suppress(BrokenPipeError):  # a helper that died at once helps nobody, and harms nothing
            self.process.stdin.write(self.request + pickle.dumps(self.folder))
            self.process.stdin.close()

    def wait(self, marker: str) -> None:
        """The helper is compiling a kernel this process needs: wait until it has saved it (then this process
        loads it) rather than compile it too; at most WAIT_LIMIT seconds, and not after the helper has ended."""
        deadline = time.monotonic() + WAIT_LIMIT
        while (os.path.exists(marker) and self.process is not None and self.process.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.01)


def _end(process: subprocess.Popen) -> None:
    """Stop the helper if it is still at work (this process has every kernel by now) and reap it."""
    if process.poll() is None:
        process.terminate()
    process.wait()


def _helper_request(build: Callable[[], Any], batch_size: int, dtype: str,
                    input_shape: Sequence[int] | None) -> bytes | None:
    """What the helper needs (pickled), or None when no helper can help: ``build`` does not pickle (a lambda), no
    ``fcntl``, or one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if fcntl is None or cores < 2:
        return None
    try:
        return pickle.dumps((build, batch_size, dtype, input_shape))
    except (pickle.PicklingError, AttributeError, TypeError):
        return None


def precompile(build: Callable[[], Any], batch_size: int, dtype: str = "float32",
               input_shape: Sequence[int] | None = None) -> float:
    """Compile (or load from numba's cache) the kernels that training the model ``build()`` returns on this
    backend will call, with a helper process when one can help (see the module docstring); returns the seconds it
    took and logs them when anything compiled. ``build`` makes the model; the helper makes its own from a pickled
    copy, so it is a function of an importable module or a partial of one, such as
    ``functools.partial(cnnkit.models.create, "lenet5")``. ``input_shape`` is one image's (default: the model's
    ``input_shape``). The model is built under :func:`cnnkit.nn.init.fork_rng`: later models get the weights they
    would have got."""
    from cnnkit import nn

    listener, started = watch(), time.perf_counter()
    compiled = listener.count
    request = _helper_request(build, batch_size, dtype, input_shape)
    with contextlib.ExitStack() as stack:
        listener.precompiling = _Helper(request, stack) if request is not None else (lambda: None)
        if request is not None and _first_run():
            listener.precompiling()  # now: its start-up overlaps this process's, not its first compile
        try:
            with nn.init.fork_rng():
                model = build().to("numba", dtype)
            _step(model, batch_size, dtype, input_shape or model.input_shape)
        finally:
            listener.precompiling = None
    seconds = time.perf_counter() - started
    if listener.count > compiled:
        listener.noticed = True
        logger.warning("%s: %.1f s", NOTICE, seconds)
    return seconds


def _first_run() -> bool:
    """Whether numba's cache holds no compiled ``act_run`` (every conv epilogue calls it): then no model has been
    compiled here yet, and the helper can start before the step's first compile. Otherwise it starts at the first
    compile, if any (a warm cache starts no process)."""
    from .activation import act_run

    try:
        return not os.path.exists(act_run._cache._cache_file._index_path)
    except AttributeError:  # another numba's cache layout: start at the first compile
        return False


def _helper_main() -> None:
    """The helper process: read the request, record the step on NumPy, make its calls here (:func:`_replay`)."""
    from cnnkit.backend import backend

    build, batch_size, dtype, input_shape = pickle.load(sys.stdin.buffer)
    folder = pickle.load(sys.stdin.buffer)
    calls = _record(build, batch_size, dtype, input_shape)
    with _shared_cache(folder, "helper", "main", _give_up):
        _replay(calls, backend("numba").ops, os.path.join(folder, "helper"))


def _give_up(marker: str) -> None:
    raise _Busy(marker)


def _replay(calls: list[Call], ops: SimpleNamespace, markers: str) -> None:
    """Make ``calls`` in order. A call that needs a kernel the main process is compiling is given up (numba
    propagates :class:`_Busy` out of the compile, caching no failure) and goes to the back of the queue until
    that kernel is saved; when every call left waits so, the helper waits a moment. A call that fails otherwise is
    left to the main process, which reports the error."""
    queue: collections.deque[tuple[Call, str | None]] = collections.deque((call, None) for call in calls)
    while queue:
        call, blocker = queue.popleft()
        if blocker is not None and os.path.exists(blocker):
            queue.append((call, blocker))
            if all(b is not None and os.path.exists(b) for _, b in queue):
                time.sleep(0.05)
            continue
        name, args, kwargs = call
        try:
            getattr(ops, name)(*args, **kwargs)
        except Exception as exc:
            for marker in os.listdir(markers):  # the compiles it gave up will not be saved
                os.remove(os.path.join(markers, marker))
            if isinstance(exc, _Busy):
                queue.append((call, exc.args[0]))


if __name__ == "__main__":
    _helper_main()
