"""The official CIFAR-10 files: python pickle batches (cifar-10-batches-py) and binary batches (cifar-10-batches-bin).

Pickle batches: ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` (dicts with b"data", a 10000 x 3072 uint8
array, R then G then B planes of 32 x 32, and b"labels"), class names in ``batches.meta``. They are unpickled with
an allow-list (NumPy array reconstruction only), so a tampered file cannot run code.
Binary batches: ``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``: records of 1 label byte + 3072
pixel bytes (same plane order), class names in ``batches.meta.txt``.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.data.dataset import DataFormatError, Dataset

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_PIXELS = 3 * 32 * 32
_RECORD = 1 + _PIXELS
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((f"numpy.{core}.multiarray", fn) for core in ("core", "_core") for fn in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only NumPy arrays are expected)")
        return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    try:
        return _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataFormatError(f"{path}: not a readable CIFAR-10 pickle batch (truncated or corrupt?): {exc}") from exc


def _get(d: dict, key: str) -> Any:
    return d[key.encode()] if key.encode() in d else d.get(key)


def _read_pickle_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data = _get(batch, "data") if isinstance(batch, dict) else None
    labels = _get(batch, "labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DataFormatError(f"{path}: expected a dict with b'data', a uint8 array (N, {_PIXELS}); got "
                              f"{type(batch).__name__} with data {getattr(data, 'dtype', None)} "
                              f"{getattr(data, 'shape', None)}")
    if labels is None or len(labels) != len(data):
        raise DataFormatError(f"{path}: b'labels' must hold one label per image ({len(data)}); "
                              f"got {None if labels is None else len(labels)}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise DataFormatError(f"{path}: {raw.size} bytes is not a whole number of {_RECORD}-byte CIFAR-10 records "
                              f"(1 label byte + {_PIXELS} pixel bytes); truncated or corrupt")
    records = raw.reshape(-1, _RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def cifar10_format(folder: Path, split: str) -> str | None:
    """"pickle" or "binary" when ``folder`` holds every batch of ``split`` in that format, else None."""
    for fmt, suffix in (("pickle", ""), ("binary", ".bin")):
        if all((folder / (b + suffix)).is_file() for b in BATCHES[split]):
            return fmt
    return None


def _class_names(folder: Path, fmt: str) -> list[str]:
    """Class names from batches.meta(.txt) when present, else CIFAR-10's published order."""
    if fmt == "pickle" and (folder / "batches.meta").is_file():
        meta = _unpickle(folder / "batches.meta")
        names = (_get(meta, "label_names") if isinstance(meta, dict) else None) or []
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names] or CLASSES
    if fmt == "binary" and (folder / "batches.meta.txt").is_file():
        names = [line.strip() for line in (folder / "batches.meta.txt").read_text().splitlines()]
        return [n for n in names if n] or CLASSES
    return CLASSES


def read_cifar10(folder: str | os.PathLike, split: str = "train", name: str = "cifar10") -> Dataset:
    """CIFAR-10 ``split`` ("train": 5 batches, "test": 1) from a folder of pickle or binary batches."""
    folder = Path(folder)
    if split not in BATCHES:
        raise ValueError(f"split must be one of {', '.join(BATCHES)} for {name}; got {split!r}")
    fmt = cifar10_format(folder, split)
    if fmt is None:
        raise FileNotFoundError(f"{folder}: no CIFAR-10 {split} batches ({', '.join(BATCHES[split])}, "
                                f"pickle or .bin)")
    suffix, reader = ("", _read_pickle_batch) if fmt == "pickle" else (".bin", _read_binary_batch)
    parts = [reader(folder / (b + suffix)) for b in BATCHES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    classes = _class_names(folder, fmt)
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DataFormatError(f"{folder}: CIFAR-10 labels span [{labels.min()}, {labels.max()}], "
                              f"outside the {len(classes)} classes")
    return Dataset(images, labels, classes, name, str(folder))
