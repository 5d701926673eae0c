"""``load(name, split, root)``: find a named dataset on this machine and read it.

Search order, first hit wins: the ``root=`` argument (the dataset's own folder or archive, or a folder holding it;
when given, it is the only place looked at, and a dataset not there is an error), each folder in ``$CNNKIT_DATA``
(``os.pathsep``-separated; the dataset in a sub-folder named after it), the Debian
datasets folder ``/usr/share/datasets/<name>``, each folder in ``SEARCH_PATHS`` (like ``$CNNKIT_DATA``), and for
Fashion-MNIST finally the sample bundled with cnnkit (with a warning, since it is a 4000/1000 subset). When nothing
is found, ``DataNotFoundError`` lists every place looked at and how to get the data. The returned dataset's
``source`` says where it was found.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cnnkit.data import cifar, idx
from cnnkit.data.dataset import Dataset
from cnnkit.data.imagefolder import read_image_folder

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
MNIST_CLASSES = [str(d) for d in range(10)]
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE_NAME = "fashion-mnist-sample"
DEBIAN_DATASETS = Path("/usr/share/datasets")
# Extra folders searched after $CNNKIT_DATA and the Debian folder; relative paths are taken from the current
# directory at load time. Extend it in place: ``cnnkit.data.SEARCH_PATHS.append("/data")``.
SEARCH_PATHS: list[str | os.PathLike] = ["shared/data", "../shared/data"]


class DataNotFoundError(FileNotFoundError):
    """A named dataset is in none of the places searched; the message lists them and how to get the data."""


@dataclass(frozen=True)
class _Spec:
    """How to recognise and read one named dataset in a candidate folder or file."""

    subpaths: tuple[str, ...]  # where it sits inside a search folder
    present: Callable[[Path, str], bool]
    read: Callable[[Path, str, str, bool], Dataset]  # (path, split, name, cache)
    how_to_get: str


def _idx_spec(subpaths: tuple[str, ...], classes: list[str], how: str) -> _Spec:
    return _Spec(subpaths, lambda p, s: p.is_dir() and idx.has_idx_split(p, s),
                 lambda p, s, n, c: idx.read_idx_dataset(p, s, n, classes), how)


_ARCHIVES = tuple(f"cifar10-jpeg{ext}" for ext in (".tar.xz", ".tar.gz", ".tar", ".zip", ""))
SPECS: dict[str, _Spec] = {
    "mnist": _idx_spec(("mnist", "MNIST/raw"), MNIST_CLASSES,
                       "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
                       "and t10k-labels-idx1-ubyte.gz (https://ossci-datasets.s3.amazonaws.com/mnist/, a mirror of "
                       "http://yann.lecun.com/exdb/mnist/) into a folder and pass root=<folder>"),
    "fashion-mnist": _idx_spec(("fashion-mnist", "FashionMNIST/raw"), FASHION_MNIST_CLASSES,
                               "apt-get install dataset-fashion-mnist (Debian/Ubuntu), or download the four IDX "
                               "files from https://github.com/zalandoresearch/fashion-mnist and pass root=<folder>"),
    "cifar10": _Spec(("cifar10", "cifar-10-batches-py", "cifar-10-batches-bin", "cifar10/cifar-10-batches-py",
                      "cifar10/cifar-10-batches-bin"),
                     lambda p, s: p.is_dir() and cifar.cifar10_format(p, s) is not None,
                     lambda p, s, n, c: cifar.read_cifar10(p, s, n),
                     "download cifar-10-python.tar.gz or cifar-10-binary.tar.gz from "
                     "https://www.cs.toronto.edu/~kriz/cifar.html, extract it and pass root=<extracted folder>"
                     " (a JPEG copy, not bit-exact, loads as 'cifar10-jpeg')"),
    "cifar10-jpeg": _Spec(_ARCHIVES, lambda p, s: p.is_file() or (p / s).is_dir(),
                          lambda p, s, n, c: read_image_folder(p, s, n, c),
                          "pass root=<path of cifar10-jpeg.tar.xz or of a folder holding it>"),
}
NAMES = (*SPECS, SAMPLE_NAME)


def _candidates(name: str, root: str | os.PathLike | None) -> list[tuple[str, list[Path]]]:
    """(where, paths) in search order; each path is a possible location of the dataset itself."""
    def under(base: str | os.PathLike) -> list[Path]:
        return [Path(base) / sub for sub in SPECS[name].subpaths]

    places = []
    if root is not None:
        places.append(("root= argument", [Path(root), *under(root)]))
    env = os.environ.get("CNNKIT_DATA")
    places.append(("$CNNKIT_DATA", [p for base in env.split(os.pathsep) if base for p in under(base)] if env else []))
    places.append(("Debian datasets folder", [DEBIAN_DATASETS / name]))
    places.append(("cnnkit.data.SEARCH_PATHS", [p for base in SEARCH_PATHS for p in under(base)]))
    return places


def _not_found(name: str, split: str, places: list[tuple[str, list[Path]]], where: str = "") -> DataNotFoundError:
    lines = [f"dataset {name!r} (split {split!r}) not found{where}. Looked in:"]
    for where, paths in places:
        if not paths:
            lines.append(f"  {where}: not set")
        for p in paths:
            lines.append(f"  {where}: {os.path.abspath(p)}")
    lines.append(f"To get it: {SPECS[name].how_to_get}; or put it in <folder>/{SPECS[name].subpaths[0]} and set "
                 f"CNNKIT_DATA=<folder>.")
    return DataNotFoundError("\n".join(lines))


def load_sample(split: str = "train") -> Dataset:
    """The Fashion-MNIST sample bundled with cnnkit (train 4000, test 1000 images, 28x28, class-balanced)."""
    return idx.read_idx_dataset(SAMPLE_DIR, split, SAMPLE_NAME, FASHION_MNIST_CLASSES)


def load(name: str | os.PathLike, split: str | None = "train", root: str | os.PathLike | None = None,
         cache: bool = True) -> Dataset:
    """Dataset ``name`` ("mnist", "fashion-mnist", "cifar10", "cifar10-jpeg", "fashion-mnist-sample", or the
    path of an image folder / .zip / .tar archive), split "train" or "test" (image folders: any split folder, or
    None for a ``<class>/<image>`` tree). Images are uint8 (N, C, H, W), labels int64. ``cache``: keep decoded
    image folders in ``cache_dir()`` so the next load is fast. Raises ``DataNotFoundError`` listing where it looked.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be a dataset name or a path; got {type(name).__name__}")
    key = str(name).lower() if isinstance(name, str) else None
    if key == SAMPLE_NAME:
        return load_sample(split)
    if key not in SPECS:
        if Path(name).exists():
            return read_image_folder(name, split, cache=cache)
        raise ValueError(f"unknown dataset {str(name)!r}: expected one of {', '.join(NAMES)}, or the path of an "
                         f"image folder, .zip or .tar archive (no such path exists)")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for {key}; got {split!r}")
    spec = SPECS[key]
    places = _candidates(key, root)
    if root is not None:  # an explicit root is used or fails, never skipped
        places = places[:1]
    for _, paths in places:
        for path in paths:
            if spec.present(path, split):
                dataset = spec.read(Path(os.path.abspath(path)), split, key, cache)
                dataset.source = dataset.source or os.path.abspath(path)
                return dataset
    if root is not None:
        raise _not_found(key, split, places, f" under root={os.fspath(root)!r} (an explicit root is not skipped)")
    if key == "fashion-mnist":
        warnings.warn(f"full Fashion-MNIST not found; using the bundled sample ({SAMPLE_DIR}): 4000 train / 1000 "
                      f"test images. {SPECS[key].how_to_get}", stacklevel=2)
        return load_sample(split)
    raise _not_found(key, split, places)
