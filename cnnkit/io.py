"""Files: weights (.npz save/load), training checkpoints, PyTorch weights in and out, ONNX export, an atomic writer.

``atomic_write`` is the one way cnnkit writes a file that must never be seen half-written (weights,
training checkpoints): the data goes to a temporary file in the same directory, is flushed and fsync'ed, and
only then renamed over the target with ``os.replace`` (atomic on POSIX and Windows). If anything fails, the
previous file is untouched and the temporary file is removed.

A training checkpoint (:func:`save_checkpoint`) is a nested dict of host arrays, numbers, strings and lists in one
.npz: the structure as JSON in a ``__meta__`` entry, each array as its own entry, so loading never needs pickle.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from cnnkit.interop.weights import (  # noqa: F401  (ck.io.from_torch / to_torch / TORCH_ONLY_BUFFERS)
    TORCH_ONLY_BUFFERS,
    from_torch,
    load_named,
    to_torch,
)
from cnnkit.nn.base import Layer

PathLike = str | os.PathLike


CHECKPOINT_FORMAT = "cnnkit-checkpoint-1"
"""The ``format`` tag in a checkpoint's ``__meta__``; :func:`load_checkpoint` refuses any other."""


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """``with atomic_write(path) as f: ...`` writes ``path`` all at once or not at all.

    ``f`` is a temporary file next to ``path``; when the block ends normally it is flushed, fsync'ed and
    renamed onto ``path``. When the block raises, the temporary file is deleted and ``path`` keeps its old
    content (or stays absent).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
    except OSError as exc:  # name the file the caller asked for, not the temporary one
        raise type(exc)(exc.errno, f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has no write in flight when it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError, OverflowError):
        return True  # exists under another user, or cannot tell: leave it
    return True


def clean_stale_temp_files(directory: PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left in ``directory`` when a process died mid-write
    (``.<name>.<pid>.<8 hex>.tmp`` whose process no longer runs); returns the paths removed. Other files, and
    temporary files of processes still running, are left alone."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match and entry.is_file() and not _process_alive(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def prepare_output_dir(directory: PathLike, what: str = "output folder") -> Path:
    """Create ``directory`` (with parents), remove stale temporary files there (:func:`clean_stale_temp_files`)
    and prove it writable by writing and deleting a file in it, so a run fails before its work rather than after.
    Errors name ``what`` and the folder."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_files(directory)
        probe = directory / ".cnnkit-write-test"
        with atomic_write(probe) as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(exc.errno, f"{what} {directory} is not writable: {exc.strerror or exc}") from exc
    return directory


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable where the OS allows opening a directory (POSIX)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(model: Layer, path: PathLike) -> None:
    """Write ``model.state_dict()`` to ``path`` as an uncompressed .npz, atomically (see :func:`atomic_write`).

    The path is used exactly as given (no ".npz" is appended).
    """
    state = model.state_dict()
    with atomic_write(path) as f:
        np.savez(f, **state)


def load(model: Layer, path: PathLike, strict: bool = True) -> None:
    """Load weights saved by :func:`save` into ``model`` (moved to its backend and dtype).

    With ``strict`` (default) missing or unexpected keys raise KeyError; a shape mismatch raises ValueError;
    both name the file.
    """
    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable .npz weights file: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not a state dict (.npz) written by cnnkit.io.save")
    with data:
        state = {key: data[key] for key in data.files}
    load_named(model, state, strict, source=path)


def export_onnx(model: Layer, path: PathLike, input_shape: tuple[int, ...], dtype: str = "float32") -> Any:
    """Write ``model`` as an ONNX inference graph (needs the onnx extra): :func:`cnnkit.interop.onnx.export_onnx`."""
    from cnnkit.interop.onnx import export_onnx as export

    return export(model, path, input_shape, dtype)


def to_torch_state_dict(model: Layer) -> dict[str, Any]:
    """``model.state_dict()`` as CPU torch tensors, for ``torch_model.load_state_dict`` of the same architecture
    (``to_torch(model)``: kept under its older name)."""
    return to_torch(model)


# ------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: PathLike, state: Mapping[str, Any]) -> Path:
    """Write a nested dict of NumPy arrays, numbers, strings, None and lists as one .npz (JSON for the structure,
    no pickle), atomically; returns the path."""
    arrays: dict[str, np.ndarray] = {}
    meta = json.dumps({"format": CHECKPOINT_FORMAT, "state": _encode(state, arrays)})
    path = Path(path)
    with atomic_write(path) as f:
        np.savez(f, __meta__=np.array(meta), **arrays)
    return path


class CheckpointError(ValueError):
    """A file that is not a readable cnnkit training checkpoint; the message names the file and says what is
    wrong with it."""


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`. Every error names the file and says what is wrong:
    missing, not an .npz, truncated or damaged, a weights file of :func:`save` instead (the other format), or a
    checkpoint format this version does not read (:class:`CheckpointError`, a ValueError)."""
    path = Path(path)
    name = repr(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {name} " + ("is a folder, not a file" if path.is_dir() else
                                                         "does not exist"))
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        detail = "it is not a NumPy file" if "pickle" in str(exc) else str(exc)  # numpy's text suggests pickle
        raise CheckpointError(f"checkpoint {name} is not a readable .npz archive (truncated, damaged or another kind "
                              f"of file): {detail}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointError(f"checkpoint {name} holds a single NumPy array (.npy), not a cnnkit checkpoint (.npz)")
    with npz:
        if "__meta__" not in npz.files:
            raise CheckpointError(f"{name} is not a cnnkit checkpoint (no __meta__ entry). " + _FORMATS)
        try:
            meta = json.loads(str(npz["__meta__"]))
            fmt = meta.get("format")
            if fmt != CHECKPOINT_FORMAT:
                raise CheckpointError(f"{name} has checkpoint format {fmt!r}, expected {CHECKPOINT_FORMAT!r}")
            return _decode(meta["state"], npz)
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {name} is damaged ({type(exc).__name__}: {exc}); use another "
                                  "checkpoint, e.g. best.npz or an epoch-NNN.npz of the same run") from exc


_FORMATS = ("cnnkit writes two formats: weights files (cnnkit.io.save: the model's state dict only, read with "
            "cnnkit.io.load(model, path)) and training checkpoints (cnnkit train / cnnkit.io.save_checkpoint: the "
            "weights plus optimiser, history and the metadata that rebuild the model, e.g. DIR/best.npz); this "
            "needs a training checkpoint")


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` as JSON-able structure; each array is moved into ``arrays`` and replaced by ``{"__array__": key}``."""
    if isinstance(value, Mapping):
        return {str(k): _encode(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"save_checkpoint: cannot store a {type(value).__name__} (host NumPy arrays, numbers, "
                    "strings, None, lists and dicts only)")


def _decode(value: Any, npz: Any) -> Any:
    """The inverse of :func:`_encode`, reading the arrays from the open ``npz``."""
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return npz[value["__array__"]]
        return {k: _decode(v, npz) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, npz) for v in value]
    return value
