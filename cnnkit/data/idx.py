"""IDX files (MNIST, Fashion-MNIST), gzipped or not: a validating reader, a deterministic writer, split lookup.

An IDX file is a 4-byte magic ``0x0000TTDD`` (TT: element type, DD: number of dimensions), DD big-endian uint32
sizes, then the elements in C order. MNIST-style labels are ``0x00000801`` (uint8, 1-d) and images
``0x00000803`` (uint8, 3-d: N, H, W).
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from cnnkit.data.dataset import DataFormatError, Dataset

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}
LABELS_MAGIC = 0x00000801
IMAGES_MAGIC = 0x00000803
# The file-name prefix of each split in the MNIST family.
SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataFormatError(f"{path}: truncated or corrupt gzip data ({exc})") from exc


def read_idx(path: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """The array stored in IDX file ``path`` (shape from its header, native byte order).

    ``magic`` (e.g. ``LABELS_MAGIC``) makes any other magic number an error. A short, long or corrupt file raises
    ``DataFormatError`` naming the file and what is wrong.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataFormatError(f"{path}: {len(data)} bytes, too short for an IDX header (truncated?)")
    found = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[0] or data[1] or type_code not in _TYPES or ndim == 0:
        raise DataFormatError(f"{path}: not an IDX file (magic 0x{found:08x}; MNIST-style files start with "
                              f"0x{LABELS_MAGIC:08x} for labels or 0x{IMAGES_MAGIC:08x} for images)")
    if magic is not None and found != magic:
        raise DataFormatError(f"{path}: IDX magic 0x{found:08x}, expected 0x{magic:08x} "
                              f"({'labels' if magic == LABELS_MAGIC else 'images' if magic == IMAGES_MAGIC else ''})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_TYPES[type_code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = len(data) - header
    if body != expected:
        what = "truncated" if body < expected else "corrupt (trailing bytes)"
        raise DataFormatError(f"{path}: {what}: header says shape {dims} = {expected} bytes of data, "
                              f"file holds {body}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in .gz (byte-for-byte deterministic)."""
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"write_idx: array dtype {array.dtype} has no IDX type code "
                         f"(use one of {', '.join(sorted(str(d) for d in _CODES))})")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"write_idx: array must have 1 to 255 dimensions; got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    path.write_bytes(payload)


def find_idx_file(folder: Path, split: str, kind: str) -> Path | None:
    """The ``kind`` ("images" or "labels") file of ``split`` in ``folder``, under any usual spelling, or None."""
    prefix, dims = SPLIT_PREFIX[split], {"images": 3, "labels": 1}[kind]
    for stem in (f"{prefix}-{kind}-idx{dims}-ubyte", f"{prefix}-{kind}.idx{dims}-ubyte"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def has_idx_split(folder: Path, split: str) -> bool:
    """True when ``folder`` holds both the images and the labels file of ``split``."""
    return all(find_idx_file(folder, split, kind) is not None for kind in ("images", "labels"))


def read_idx_dataset(folder: str | os.PathLike, split: str, name: str, classes: list[str]) -> Dataset:
    """The MNIST-style ``split`` ("train" or "test") stored as IDX files in ``folder``, as a Dataset."""
    folder = Path(folder)
    if split not in SPLIT_PREFIX:
        raise ValueError(f"split must be one of {', '.join(SPLIT_PREFIX)} for {name}; got {split!r}")
    paths = {kind: find_idx_file(folder, split, kind) for kind in ("images", "labels")}
    for kind, path in paths.items():
        if path is None:
            raise FileNotFoundError(f"{folder}: no {SPLIT_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}"
                                    f"-ubyte[.gz] file for the {split} split of {name}")
    images = read_idx(paths["images"], IMAGES_MAGIC)
    labels = read_idx(paths["labels"], LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise DataFormatError(f"{paths['images']} holds {len(images)} images but {paths['labels']} holds "
                              f"{len(labels)} labels")
    if len(labels) and labels.max() >= len(classes):
        raise DataFormatError(f"{paths['labels']}: label {labels.max()} out of range for {len(classes)} classes")
    return Dataset(images[:, None], labels, classes, name, str(folder))
