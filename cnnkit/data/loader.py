"""``DataLoader``: seeded, deterministic mini-batches on a backend; ``split``: a reproducible train/val/test split.

Batches are assembled and augmented on the host in NumPy, then moved to the backend in one transfer per array.
uint8 images are scaled to [0, 1] as they are converted to float; float images are used as they are.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cnnkit.backend import backend as get_named_backend
from cnnkit.backend import get_backend
from cnnkit.backends import Backend
from cnnkit.data.dataset import Dataset
from cnnkit.data.transforms import Transform
from cnnkit.distributed import GlobalBatch
from cnnkit.validate import nonneg_int

_DTYPES = ("float32", "float64")


def _arrays(data: Dataset | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a Dataset or an (images, labels) pair, validated."""
    if isinstance(data, Dataset):
        return data.images, data.labels
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"DataLoader needs a Dataset or an (images, labels) pair; got {type(data).__name__}")
    images, labels = (np.asarray(a) for a in data)
    if images.ndim != 4 or not (images.dtype == np.uint8 or images.dtype.kind == "f"):
        raise ValueError(f"DataLoader: images must be uint8 or float, shaped (N, C, H, W); "
                         f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise ValueError(f"DataLoader: labels must be integers shaped ({len(images)},); got {labels.dtype} "
                         f"{labels.shape}")
    return images, labels.astype(np.int64, copy=False)


class DataLoader:
    """Iterate ``(x, y)`` batches: x float (B, C, H, W) and y int64 (B,), both arrays of ``backend``.

    Epoch ``e`` draws everything (the shuffle permutation, then the transform's randomness, batch by batch) from
    ``np.random.default_rng((seed, e))``, so a run is reproducible and each epoch differs. Each ``iter()`` uses
    the current epoch and then advances it; ``set_epoch(e)`` chooses it explicitly. ``backend=None`` means the
    current backend at iteration time (``cnnkit.get_backend()``).

    ``shard=comm`` (a :class:`cnnkit.distributed.Communicator`): every rank draws the same permutation and takes
    its slice (``numpy.array_split`` in rank order) of each global batch of ``batch_size * comm.size``, so every
    rank runs the same number of steps and N ranks see what one process at batch N * batch_size sees, every
    sample included: in a last global batch with fewer samples than ranks, the last ranks' batches are empty
    (x of shape (0, C, H, W), y of shape (0,)), and they still take part in each step's collectives (``fit``
    and ``evaluate`` skip their forward). ``drop_last`` drops a partial last global batch on every rank, as one
    process at batch N * batch_size does. Augmentation draws from ``(seed, epoch, rank)``. ``global_batch`` (a
    :class:`cnnkit.distributed.GlobalBatch`) says where the batch yielded last sits in its global batch (fit
    gives Dropout layers its offset).
    """

    def __init__(self, data: Dataset | Sequence[np.ndarray], batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, transform: Transform | None = None, backend: str | Backend | None = None,
                 dtype: str = "float32", shard: Any = None):
        self.images, self.labels = _arrays(data)
        if nonneg_int(batch_size, "batch_size") == 0:
            raise ValueError("batch_size must be at least 1; got 0")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable(batch, rng) or None; got {transform!r}")
        if str(dtype) not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = nonneg_int(seed, "seed")
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.backend = None if backend is None else get_named_backend(backend)
        self.dtype = np.dtype(str(dtype))
        self.epoch = 0
        self.shard = shard
        self._ranks = 1 if shard is None else int(shard.size)
        self._rank = 0 if shard is None else int(shard.rank)
        self.global_batch: GlobalBatch | None = None

    def __len__(self) -> int:
        """Number of batches per epoch (of this rank, when sharded: the same on every rank)."""
        full, rest = divmod(len(self.labels), self.batch_size * self._ranks)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (its shuffle order and augmentation draws)."""
        self.epoch = nonneg_int(epoch, "epoch")

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._batches(epoch, self.backend or get_backend())

    def _batches(self, epoch: int, be: Backend) -> Iterator[tuple[Any, Any]]:
        rng = np.random.default_rng((self.seed, epoch))
        n = len(self.labels)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        width = self.batch_size * self._ranks
        if self.shard is not None:
            rng = np.random.default_rng((self.seed, epoch, self._rank))
        for b in range(len(self)):
            parts = np.array_split(order[b * width:(b + 1) * width], self._ranks)
            idx = parts[self._rank]
            self.global_batch = GlobalBatch(tuple(len(part) for part in parts), self._rank)
            x = self.images[idx].astype(self.dtype)
            if self.images.dtype == np.uint8:
                x *= self.dtype.type(1 / 255)
            if self.transform is not None and len(idx):
                x = self.transform(x, rng)
            yield be.asarray(np.ascontiguousarray(x, dtype=self.dtype)), be.asarray(self.labels[idx])


def split(dataset: Dataset, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
          stratify: bool = True) -> tuple[Dataset, ...]:
    """Split ``dataset`` into disjoint parts of the given fractions (summing to 1) that together hold every sample.

    Sizes are ``round(cumsum(fractions) * N)`` differences, exactly. With ``stratify`` (default) every part keeps
    the class proportions (each class's count within 2 of its exact share); without it the parts are cut from one random
    permutation. Each part keeps the original sample order; the result depends only on ``seed``.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"split needs a Dataset; got {type(dataset).__name__}")
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or len(fr) < 2 or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be 2 or more non-negative numbers summing to 1; got {fractions!r}")
    n = len(dataset)
    perm = np.random.default_rng(nonneg_int(seed, "seed")).permutation(n)
    if stratify:
        # Rank each sample within its class (in permuted order), spread every class evenly over [0, 1), and
        # sort by that position: any contiguous cut of the result has near-equal class proportions.
        labels = dataset.labels[perm]
        by_class = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=len(dataset.classes))
        rank = np.empty(n)
        rank[by_class] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
        perm = perm[np.argsort((rank + 0.5) / counts[labels], kind="stable")]
    cuts = np.round(np.cumsum(fr)[:-1] * n).astype(int)
    return tuple(dataset.subset(np.sort(part)) for part in np.split(perm, cuts))
