"""Datasets and batches: readers (IDX, CIFAR-10 pickle/binary, image folders and archives), ``load`` by name,
a bundled Fashion-MNIST sample, ``DataLoader`` with seeded shuffling and vectorised augmentation, ``split``, and
the standard input pipeline (``channel_stats``, ``prepare``) that the CLI and the examples share.

Every reader returns a ``Dataset``: images uint8 (N, C, H, W), labels int64 (N,), class names.
"""
from __future__ import annotations

from cnnkit.data.cache import cache_dir
from cnnkit.data.cifar import read_cifar10
from cnnkit.data.dataset import DataFormatError, Dataset
from cnnkit.data.idx import read_idx, read_idx_dataset, write_idx
from cnnkit.data.imagefolder import read_image_folder
from cnnkit.data.loader import DataLoader, split
from cnnkit.data.pipeline import channel_stats, prepare
from cnnkit.data.registry import NAMES, SEARCH_PATHS, DataNotFoundError, load, load_sample
from cnnkit.data.synthetic import synthetic_digits
from cnnkit.data.transforms import Compose, normalize, pad, random_crop, random_hflip, random_rotation

__all__ = [
    "Dataset", "DataFormatError", "DataNotFoundError", "load", "load_sample", "NAMES", "SEARCH_PATHS", "cache_dir",
    "read_idx", "write_idx", "read_idx_dataset", "read_cifar10", "read_image_folder",
    "DataLoader", "split", "Compose", "normalize", "pad", "random_crop", "random_hflip", "random_rotation",
    "synthetic_digits", "channel_stats", "prepare",
]
