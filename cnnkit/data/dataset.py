"""The in-memory dataset every reader returns: uint8 images in NCHW order, int64 labels, class names."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataFormatError(ValueError):
    """A data file is truncated, corrupt or not in the expected format; the message names the file."""


@dataclass
class Dataset:
    """Images (N, C, H, W) uint8, labels (N,) int64 in [0, len(classes)), class names, a name and its source.

    Images are kept as uint8 (a quarter of float32's memory); ``DataLoader`` converts each batch to float.
    ``source`` says where the data was read from (a folder, an archive, or the bundled sample).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"Dataset.images must be a uint8 array (N, C, H, W); got "
                             f"{getattr(self.images, 'dtype', type(self.images))} {getattr(self.images, 'shape', '')}")
        if not isinstance(self.labels, np.ndarray) or self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise ValueError(f"Dataset.labels must be an int64 array (N,); got "
                             f"{getattr(self.labels, 'dtype', type(self.labels))} {getattr(self.labels, 'shape', '')}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"Dataset has {len(self.images)} images but {len(self.labels)} labels")
        self.classes = [str(c) for c in self.classes]
        if not self.classes:
            raise ValueError("Dataset.classes must name at least one class")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"Dataset.labels must lie in [0, {len(self.classes)}) (one per class name); "
                             f"got [{self.labels.min()}, {self.labels.max()}]")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.images.shape[1:])
        return (f"Dataset(name={self.name!r}, n={len(self)}, image={shape}, classes={len(self.classes)}, "
                f"source={self.source!r})")

    def subset(self, indices: np.ndarray, name: str | None = None) -> Dataset:
        """The samples at ``indices`` (copied), with the same class names."""
        indices = np.asarray(indices, dtype=np.intp)
        return Dataset(self.images[indices], self.labels[indices], list(self.classes),
                       self.name if name is None else name, self.source)
