"""The standard input pipeline: how a dataset's uint8 images become a model's input batches.

One policy shared by the ``cnnkit`` command (train, eval, demo) and the examples: normalise with per-channel
statistics of the training images (:func:`channel_stats`), pad smaller images to the model's input size, and, when
augmenting, random shifts plus mirroring for colour images (:func:`prepare`). A checkpoint stores the statistics,
so evaluation rebuilds the same transform.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnkit.data.dataset import Dataset
from cnnkit.data.transforms import Compose, Transform, normalize, pad, random_crop, random_hflip


def channel_stats(dataset: Dataset) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of the images scaled to [0, 1] (the normalisation constants);
    a channel with no variation gets std 1 so that normalising never divides by zero."""
    x = dataset.images.astype(np.float64) / 255.0
    std = x.std(axis=(0, 2, 3))
    return x.mean(axis=(0, 2, 3)).tolist(), np.where(std > 0, std, 1.0).tolist()


def prepare(dataset: Dataset, input_shape: Sequence[int], mean: float | Sequence[float],
            std: float | Sequence[float], augment: bool = False) -> Compose:
    """The batch transform that turns ``dataset``'s images into input of shape ``input_shape`` (C, H, W, e.g. a
    model's ``input_shape``): pad to that size if smaller, optional augmentation (random shifts of up to an eighth
    of the size, at least 2 pixels; mirror images for colour datasets), then normalise with ``mean`` and ``std``
    (those of the training images, see :func:`channel_stats`).

    A dataset with another channel count or larger images is a ValueError naming both shapes.
    """
    c, h, w = dataset.images.shape[1:]
    mc, mh, mw = input_shape
    if c != mc:
        raise ValueError(f"the model takes {mc}-channel images but dataset {dataset.name!r} has {c} channels")
    if h > mh or w > mw:
        raise ValueError(f"the model takes {mh}x{mw} images but dataset {dataset.name!r} has larger {h}x{w} ones")
    steps: list[Transform] = [pad((mh, mw))] if (h, w) != (mh, mw) else []
    if augment:
        steps.append(random_crop(padding=max(2, mh // 8)))
        if c == 3:
            steps.append(random_hflip())
    steps.append(normalize(mean, std))
    return Compose(steps)
