"""Image-folder datasets: ``root/<split>/<class>/<image>`` or ``root/<class>/<image>``, as a directory, a .zip or
a .tar / .tar.gz / .tar.xz archive, decoded with Pillow (the ``image`` extra) and cached as .npz.

Labels are class indices in alphabetical order of the class folder names (taken over all splits, so train and
test agree). Images are returned in (class, path) order. All images must share one size; grayscale images give
one channel, and any colour image makes the whole set RGB (grayscale ones are replicated).
"""
from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from cnnkit.data.cache import cache_path, load_cached, store_cached
from cnnkit.data.dataset import DataFormatError, Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.xz", ".tar.bz2", ".tgz", ".txz", ".tar", ".zip")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("reading image folders needs Pillow: pip install 'cnnkit[image]' "
                          "(or pip install pillow)") from exc
    return Image


def _is_image(name: str) -> bool:
    parts = PurePosixPath(name).parts
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return not hidden and name.lower().endswith(IMAGE_SUFFIXES)


def dataset_name(path: str | os.PathLike) -> str:
    """The dataset name a path stands for: its last component without an archive suffix."""
    name = Path(path).name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class _Source:
    """Lists and reads the image files of a directory, a zip or a tar archive by relative posix path."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            self.kind = "dir"
        elif zipfile.is_zipfile(path):
            self.kind = "zip"
        elif tarfile.is_tarfile(path):
            self.kind = "tar"
        else:
            raise DataFormatError(f"{path}: not a directory, a .zip or a .tar(.gz/.xz/.bz2) archive")

    def stamp(self) -> object:
        """What identifies this content for the cache: path, size and mtime (of every file, for a directory)."""
        if self.kind != "dir":
            st = self.path.stat()
            return (str(self.path.resolve()), st.st_size, st.st_mtime_ns)
        files = []
        for dirpath, _, names in os.walk(self.path):
            for n in names:
                st = os.stat(os.path.join(dirpath, n))
                files.append((os.path.relpath(os.path.join(dirpath, n), self.path), st.st_size, st.st_mtime_ns))
        return (str(self.path.resolve()), tuple(sorted(files)))

    def names(self) -> list[str]:
        if self.kind == "dir":
            found = [Path(d, n).relative_to(self.path).as_posix() for d, _, ns in os.walk(self.path) for n in ns]
        elif self.kind == "zip":
            with zipfile.ZipFile(self.path) as zf:
                found = [i.filename for i in zf.infolist() if not i.is_dir()]
        else:
            with tarfile.open(self.path) as tf:
                found = [m.name for m in tf.getmembers() if m.isfile()]
        return [n for n in found if _is_image(n)]

    def read(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
        """(name, bytes) of the ``wanted`` files, in the archive's own order (sequential for compressed tars)."""
        if self.kind == "dir":
            for n in sorted(wanted):
                yield n, (self.path / n).read_bytes()
        elif self.kind == "zip":
            with zipfile.ZipFile(self.path) as zf:
                for n in sorted(wanted):
                    yield n, zf.read(n)
        else:
            with tarfile.open(self.path) as tf:
                for m in tf:
                    if m.name in wanted and m.isfile():
                        yield m.name, tf.extractfile(m).read()


def _layout(names: list[str], split: str | None, where: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, class) of the images of ``split`` and the sorted class list, from the paths' folder structure."""
    if not names:
        raise DataFormatError(f"{where}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    parts = {n: PurePosixPath(n).parts[:-1] for n in names}
    depths = {len(p) for p in parts.values()}
    if len(depths) != 1 or 0 in depths:
        shallow, deep = min(names, key=lambda n: len(parts[n])), max(names, key=lambda n: len(parts[n]))
        raise DataFormatError(f"{where}: expected <split>/<class>/<image> or <class>/<image> at one depth; "
                              f"found e.g. {shallow!r} and {deep!r}")
    depth = depths.pop()
    group = depth - 1 if split is None else depth - 2  # number of leading folders that must be common
    if group < 0:
        raise DataFormatError(f"{where}: images sit directly in class folders (no <split>/ level); "
                              f"pass split=None to read them all")
    prefixes = {p[:group] for p in parts.values()}
    if len(prefixes) > 1:
        raise DataFormatError(f"{where}: several top folders {sorted('/'.join(p) for p in prefixes)}; "
                              f"pass split= to pick one")
    classes = sorted({p[-1] for p in parts.values()})
    if split is None:
        chosen = names
    else:
        splits = sorted({p[-2] for p in parts.values()})
        if split not in splits:
            raise DataFormatError(f"{where}: no split folder {split!r}; found {splits} (pass split=None if these "
                                  f"are class folders)")
        chosen = [n for n in names if parts[n][-2] == split]
    return sorted(((n, parts[n][-1]) for n in chosen), key=lambda nc: (nc[1], nc[0])), classes


def _decode(items: list[tuple[str, bytes]], where: Path) -> np.ndarray:
    """Decode image bytes into one uint8 array (N, C, H, W); mismatched sizes are an error naming the file."""
    image_module = _pillow()
    arrays = []
    for name, data in items:
        try:
            with image_module.open(io.BytesIO(data)) as im:
                arrays.append(np.asarray(im.convert("L" if im.mode in _GRAY_MODES else "RGB")))
        except (OSError, ValueError, image_module.DecompressionBombError) as exc:
            raise DataFormatError(f"{where}: cannot decode {name}: {exc}") from exc
        if arrays[-1].shape[:2] != arrays[0].shape[:2]:
            raise DataFormatError(f"{where}: {name} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]} but {items[0][0]} "
                                  f"is {arrays[0].shape[1]}x{arrays[0].shape[0]}; all images must share one size")
    channels = 3 if any(a.ndim == 3 for a in arrays) else 1
    out = np.empty((len(arrays), channels, *arrays[0].shape[:2]), dtype=np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a.transpose(2, 0, 1) if a.ndim == 3 else a
    return out


def read_image_folder(path: str | os.PathLike, split: str | None = "train", name: str | None = None,
                      cache: bool = True) -> Dataset:
    """The ``split`` of the image folder or archive at ``path`` (``split=None``: a ``<class>/<image>`` tree).

    With ``cache`` the decoded arrays are kept in the cache folder (``cnnkit.data.cache_dir()``), keyed by the
    path, size and mtime, so the second load skips decoding.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image folder or archive {path} does not exist")
    if split is not None and (not isinstance(split, str) or not split):
        raise ValueError(f"split must be a folder name or None; got {split!r}")
    name = name or dataset_name(path)
    source = _Source(path)
    cached_at = cache_path(f"{name}-{split or 'all'}", (source.stamp(), split)) if cache else None
    if cached_at is not None and (hit := load_cached(cached_at, name, str(path))) is not None:
        return hit
    selected, classes = _layout(source.names(), split, path)
    by_name = dict(source.read({n for n, _ in selected}))
    images = _decode([(n, by_name[n]) for n, _ in selected], path)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for _, c in selected], dtype=np.int64)
    dataset = Dataset(images, labels, classes, name, str(path))
    if cached_at is not None:
        store_cached(cached_at, dataset)
    return dataset
