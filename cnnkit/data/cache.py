"""On-disk cache of decoded datasets: one .npz per (source, stamp, split), written atomically.

The folder is ``$CNNKIT_CACHE``, else ``$XDG_CACHE_HOME/cnnkit``, else ``~/.cache/cnnkit``. A cache file that
cannot be written or read is reported with a warning and the data is decoded again; it is never an error.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from cnnkit.data.dataset import Dataset

# Bump when the decoded layout changes so that stale cache files are not reused.
CACHE_VERSION = 1


def cache_dir() -> Path:
    """The folder where decoded datasets are cached (not created here)."""
    if os.environ.get("CNNKIT_CACHE"):
        return Path(os.environ["CNNKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnkit"


def cache_path(label: str, key: object) -> Path:
    """The cache file for ``key`` (any repr-able stamp of the source); ``label`` keeps the name readable."""
    digest = hashlib.sha256(repr((CACHE_VERSION, key)).encode()).hexdigest()[:24]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return cache_dir() / f"{safe}-{digest}.npz"


def load_cached(path: Path, name: str, source: str) -> Dataset | None:
    """The Dataset stored at ``path``, or None when it is missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return Dataset(z["images"], z["labels"], z["classes"].tolist(), name, source)
    except (OSError, ValueError, KeyError) as exc:
        warnings.warn(f"ignoring unreadable cache file {path} ({exc}); decoding again", stacklevel=3)
        return None


def store_cached(path: Path, dataset: Dataset) -> None:
    """Write ``dataset`` to ``path`` via a temporary file and os.replace, so readers never see half a file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=dataset.images, labels=dataset.labels, classes=np.array(dataset.classes, dtype=str))
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write cache file {path} ({exc}); the next load decodes again", stacklevel=3)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
