"""Make the Fashion-MNIST sample bundled in cnnkit/data/sample/ (deterministic: same input, same bytes).

It takes, in file order, the first ``per_class_train`` images of each class from the training set and the first
``per_class_test`` of each class from the test set (4000 + 1000 by default) and writes them as gzipped IDX files
under the original names, so the sample reads exactly like the full dataset.

    python -m cnnkit.data.make_sample [--source /usr/share/datasets/fashion-mnist] [--out cnnkit/data/sample]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from cnnkit.data import idx

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parent / "sample"


def balanced_indices(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` samples of every class, in file order."""
    classes = np.unique(labels)
    picked = [np.flatnonzero(labels == c)[:per_class] for c in classes]
    short = [int(c) for c, p in zip(classes, picked) if len(p) < per_class]
    if short:
        raise ValueError(f"classes {short} have fewer than {per_class} samples")
    return np.sort(np.concatenate(picked))


def make_sample(source: str | os.PathLike = DEFAULT_SOURCE, out: str | os.PathLike = DEFAULT_OUT,
                per_class_train: int = 400, per_class_test: int = 100) -> list[Path]:
    """Write the class-balanced sample of the IDX dataset in ``source`` to ``out``; returns the files written."""
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        paths = {kind: idx.find_idx_file(source, split, kind) for kind in ("images", "labels")}
        if None in paths.values():
            raise FileNotFoundError(f"{source}: no {split} IDX files (install dataset-fashion-mnist or pass --source)")
        images = idx.read_idx(paths["images"], idx.IMAGES_MAGIC)
        labels = idx.read_idx(paths["labels"], idx.LABELS_MAGIC)
        keep = balanced_indices(labels, per_class)
        prefix = idx.SPLIT_PREFIX[split]
        for kind, array in (("images", images[keep]), ("labels", labels[keep])):
            target = out / f"{prefix}-{kind}-idx{array.ndim}-ubyte.gz"
            idx.write_idx(target, array)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the full IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write the sample to")
    parser.add_argument("--per-class-train", type=int, default=400)
    parser.add_argument("--per-class-test", type=int, default=100)
    args = parser.parse_args(argv)
    for path in make_sample(args.source, args.out, args.per_class_train, args.per_class_test):
        print(f"{path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
