"""Batch transforms for ``DataLoader``: each is called as ``t(batch, rng)`` on a float NumPy batch (N, C, H, W) and
an ``np.random.Generator``, returns a batch of the same dtype, and is vectorised over the batch (no per-image loop).

Deterministic: ``pad``, ``normalize``. Random (on-the-fly augmentation): ``random_crop`` (pad then crop: random
shifts), ``random_hflip``, ``random_rotation`` (affine resampling, nearest or bilinear). Chain them with
``Compose``. Pad before ``normalize`` so the border is black rather than the mean.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in pair):
        raise ValueError(f"{what} must be a non-negative int or a pair of them; got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_batch(batch: np.ndarray, who: str) -> None:
    if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.dtype.kind != "f":
        raise ValueError(f"{who}: batch must be a float NumPy array (N, C, H, W); got "
                         f"{getattr(batch, 'dtype', type(batch))} {getattr(batch, 'shape', '')}")


@dataclass(frozen=True)
class Compose:
    """Apply ``transforms`` in order, passing the same generator along."""

    transforms: Sequence[Transform]

    def __post_init__(self) -> None:
        bad = [t for t in self.transforms if not callable(t)]
        if bad:
            raise TypeError(f"Compose: every transform must be callable(batch, rng); got {bad!r}")

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            batch = t(batch, rng)
        return batch


@dataclass(frozen=True, eq=False)
class _Normalize:
    mean: np.ndarray
    std: np.ndarray

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch(batch, "normalize")
        if self.mean.size not in (1, batch.shape[1]):
            raise ValueError(f"normalize: {self.mean.size} mean/std values for a batch of {batch.shape[1]} channels")
        shape = (1, -1, 1, 1)
        return (batch - self.mean.reshape(shape).astype(batch.dtype)) / self.std.reshape(shape).astype(batch.dtype)


def normalize(mean: float | Sequence[float], std: float | Sequence[float]) -> Transform:
    """(x - mean) / std, with one value for all channels or one per channel."""
    mean_a, std_a = np.atleast_1d(np.asarray(mean, float)), np.atleast_1d(np.asarray(std, float))
    if mean_a.ndim != 1 or std_a.ndim != 1 or mean_a.size != std_a.size:
        raise ValueError(f"normalize: mean and std must be numbers or equal-length sequences; got {mean!r}, {std!r}")
    if not np.all(std_a > 0):
        raise ValueError(f"normalize: std must be positive; got {std!r}")
    return _Normalize(mean_a, std_a)


@dataclass(frozen=True)
class _Pad:
    size: tuple[int, int]
    value: float

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch(batch, "pad")
        (h, w), (th, tw) = batch.shape[2:], self.size
        if h > th or w > tw:
            raise ValueError(f"pad(to={self.size}): images are {h}x{w}, larger than the target")
        top, left = (th - h) // 2, (tw - w) // 2
        widths = ((0, 0), (0, 0), (top, th - h - top), (left, tw - w - left))
        return np.pad(batch, widths, constant_values=self.value)


def pad(to: int | Sequence[int] = 32, value: float = 0.0) -> Transform:
    """Pad each image to ``to`` (size or (H, W)), centred, with ``value``: 28x28 -> 32x32 for LeNet-5."""
    return _Pad(_pair(to, "pad(to=)"), float(value))


@dataclass(frozen=True)
class _RandomCrop:
    size: tuple[int, int] | None
    padding: int
    fill: float

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch(batch, "random_crop")
        n, c, h, w = batch.shape
        p = self.padding
        oh, ow = self.size or (h, w)
        if oh > h + 2 * p or ow > w + 2 * p:
            raise ValueError(f"random_crop: crop {oh}x{ow} is larger than the padded image {h + 2 * p}x{w + 2 * p}")
        padded = np.pad(batch, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=self.fill)
        dy = rng.integers(0, h + 2 * p - oh + 1, size=n)
        dx = rng.integers(0, w + 2 * p - ow + 1, size=n)
        rows = (dy[:, None] + np.arange(oh))[:, None, :, None]
        cols = (dx[:, None] + np.arange(ow))[:, None, None, :]
        return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]


def random_crop(size: int | Sequence[int] | None = None, padding: int = 4, fill: float = 0.0) -> Transform:
    """Pad by ``padding`` on every side with ``fill``, then crop ``size`` (default: the input size) at a random
    place per image: random shifts of up to ``padding`` pixels."""
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"random_crop: padding must be a non-negative int; got {padding!r}")
    return _RandomCrop(None if size is None else _pair(size, "random_crop(size=)"), int(padding), float(fill))


@dataclass(frozen=True)
class _RandomHFlip:
    p: float

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch(batch, "random_hflip")
        flip = rng.random(len(batch)) < self.p
        return np.where(flip[:, None, None, None], batch[..., ::-1], batch)


def random_hflip(p: float = 0.5) -> Transform:
    """Mirror each image left-right with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_hflip: p must be in [0, 1]; got {p!r}")
    return _RandomHFlip(float(p))


@dataclass(frozen=True)
class _RandomRotation:
    degrees: tuple[float, float]
    mode: str
    fill: float

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch(batch, "random_rotation")
        n, c, h, w = batch.shape
        theta = np.deg2rad(rng.uniform(*self.degrees, size=n))[:, None, None]
        yy, xx = np.mgrid[0:h, 0:w]
        yy, xx = yy - (h - 1) / 2, xx - (w - 1) / 2
        cos, sin = np.cos(theta), np.sin(theta)
        # Inverse map: output pixel (y, x) reads the input at the point rotated by -theta about the centre.
        sx = cos * xx - sin * yy + (w - 1) / 2
        sy = sin * xx + cos * yy + (h - 1) / 2
        images = np.arange(n)[:, None, None]

        def tap(y: np.ndarray, x: np.ndarray) -> np.ndarray:  # (N, H, W, C); outside the image reads ``fill``
            inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            values = batch[images, :, np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)]
            return np.where(inside[..., None], values, batch.dtype.type(self.fill))

        if self.mode == "nearest":
            out = tap(np.rint(sy).astype(np.intp), np.rint(sx).astype(np.intp))
        else:
            y0, x0 = np.floor(sy), np.floor(sx)
            wy, wx = (sy - y0).astype(batch.dtype)[..., None], (sx - x0).astype(batch.dtype)[..., None]
            y0, x0 = y0.astype(np.intp), x0.astype(np.intp)
            out = ((tap(y0, x0) * (1 - wx) + tap(y0, x0 + 1) * wx) * (1 - wy)
                   + (tap(y0 + 1, x0) * (1 - wx) + tap(y0 + 1, x0 + 1) * wx) * wy)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=batch.dtype)


def random_rotation(degrees: float | Sequence[float] = 10.0, mode: str = "bilinear", fill: float = 0.0) -> Transform:
    """Rotate each image about its centre by an angle drawn uniformly from [-degrees, degrees] (or the (lo, hi)
    pair), counter-clockwise as displayed for positive angles (like np.rot90); pixels from outside read ``fill``."""
    lo_hi = (-float(degrees), float(degrees)) if np.isscalar(degrees) else tuple(float(d) for d in degrees)
    if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
        raise ValueError(f"random_rotation: degrees must be a number >= 0 or a (lo, hi) pair; got {degrees!r}")
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"random_rotation: mode must be 'nearest' or 'bilinear'; got {mode!r}")
    return _RandomRotation(lo_hi, mode, float(fill))
