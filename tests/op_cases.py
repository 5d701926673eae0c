"""Every op's case grid, written once, and the one data helper (tolerances in tests/tolerances.py).

tests/test_ops.py runs every case below, forward and backward, on every backend against the NumPy float64
reference; test_gradcheck_ops.py (finite differences), test_torch_parity_ops.py (PyTorch as the oracle),
test_numba_ops.py (forced conv paths) and test_cuda_launchers.py (CUDA launcher specifics) read their cases from
here too. A case is a small frozen dataclass with a readable ``id``; ``*_CASES`` lists are the union of the
grids the per-backend test files used to carry, exact duplicates dropped (:func:`unique`).

Inputs: :func:`data` draws float32 normals seeded from the shape and a key; the reference sees the same numbers
cast to float64. Non-contiguous inputs (``layout``) are views cut from a larger or permuted base array, cut
*after* the base is converted to the backend's array (``view(be.asarray(base), layout)``) so device backends get
non-contiguous device arrays too. Non-finite inputs (``special``) are planted into the base by :func:`plant`;
NaN and +-inf must then come out where PyTorch puts them (tests/tolerances.py, split_nonfinite).

Size: the cudasim backend runs one OS thread per CUDA thread, so every array of a case stays under
MAX_CASE_ELEMENTS elements except the few cases in LARGE_CASES that need size (split reductions).
"""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np
import pytest

import cnnkit.functional as F
from cnnkit.backends import ACTIVATIONS, pool_output_size

Shape = tuple[int, ...]
IntPair = int | tuple[int, int]

MAX_CASE_ELEMENTS = 5000
"""Elements per input or output array of one case (keeps the cudasim run fast) ..."""
LARGE_CASES = frozenset({"conv-split-k", "bn-split-reduction-train", "bn-split-reduction-eval"})
"""... except these, which need size: the tiled conv's split-K weight gradient and batch norm's split
per-channel reduction (more than norm.SPLIT_ITEMS values per channel)."""


# ----------------------------------------------------------------------------------------------- data
def data(shape: Sequence[int], *key: Any, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """float32 normals ``scale * N(0, 1) + shift`` seeded from ``(shape, key)`` (crc32, reproducible across runs);
    the float64 reference takes ``.astype(np.float64)`` of the same array, so both precisions see the same
    numbers."""
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(zlib.crc32(repr((shape, key)).encode()))
    return (scale * rng.standard_normal(shape) + shift).astype(np.float32)


def labels(n: int, classes: int, *key: Any, dtype: Any = np.int64) -> np.ndarray:
    """n integer class labels in [0, classes), seeded from the key."""
    rng = np.random.default_rng(zlib.crc32(repr(("labels", n, classes, key)).encode()))
    return rng.integers(0, classes, n).astype(dtype)


LAYOUTS = ("contiguous", "strided", "transposed", "flipped")
"""How an input of 2 or more dimensions is laid out: C-contiguous; every other row and column of a base twice as
high and wide; the last two axes of a base swapped; the last axis reversed (negative strides)."""


def base_shape(shape: Sequence[int], layout: str) -> Shape:
    """The shape of the array that :func:`view` cuts an input of ``shape`` from."""
    shape = tuple(shape)
    if layout == "contiguous" or len(shape) < 2 or layout == "flipped":
        return shape
    if layout == "strided":
        return shape[:-2] + (2 * shape[-2], 2 * shape[-1])
    if layout == "transposed":
        return shape[:-2] + (shape[-1], shape[-2])
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def view(a: Any, layout: str) -> Any:
    """The input laid out as ``layout``, a view of ``a`` (a numpy or cupy array of :func:`base_shape`)."""
    if layout == "contiguous" or a.ndim < 2:
        return a
    if layout == "strided":
        return a[..., ::2, ::2]
    if layout == "transposed":
        return a.swapaxes(-1, -2)
    if layout == "flipped":
        return a[..., ::-1]
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


SPECIALS = (None, "nan", "inf", "nan+inf", "-inf-block")
"""Non-finite values planted in an input: two NaNs; one +inf and one -inf; one of each; a block of -inf (the
top-left 3x3 of the first plane of an NCHW array, the whole first row of an (N, C) array)."""


def plant(a: np.ndarray, special: str | None, *key: Any) -> np.ndarray:
    """Write the non-finite values ``special`` names into ``a`` (in place, through a view too) at positions seeded
    from the key; returns ``a``."""
    if special is None:
        return a
    if special == "-inf-block":
        a[(0,) * (a.ndim - 2) + (slice(0, 3), slice(0, 3)) if a.ndim > 2 else 0] = -np.inf
        return a
    values = {"nan": (np.nan, np.nan), "inf": (np.inf, -np.inf), "nan+inf": (np.nan, np.inf, -np.inf)}[special]
    rng = np.random.default_rng(zlib.crc32(repr(("special", a.shape, special, key)).encode()))
    for flat, value in zip(rng.choice(a.size, len(values), replace=False), values):
        a[np.unravel_index(flat, a.shape)] = value
    return a


@dataclass(frozen=True)
class Arg:
    """One float input of a case: a float32 base array and the layout its view takes."""

    base: np.ndarray
    layout: str = "contiguous"

    @property
    def ref(self) -> np.ndarray:
        """The input as the float64 reference sees it (same numbers, same layout)."""
        return view(self.base.astype(np.float64), self.layout)

    def on(self, be: Any, dtype: Any = np.float32) -> Any:
        """The input as backend ``be``'s array of ``dtype`` (a copy: ops must leave it as it was), laid out as the
        case says."""
        return view(be.asarray(self.base.astype(dtype)), self.layout)


def arg(shape: Sequence[int], *key: Any, layout: str = "contiguous", special: str | None = None,
        scale: float = 1.0, shift: float = 0.0) -> Arg:
    """An input of ``shape`` laid out as ``layout``, with ``special`` values planted in the view."""
    base = data(base_shape(shape, layout), *key, scale=scale, shift=shift)
    plant(view(base, layout), special, *key)
    return Arg(base, layout)


def unique(cases: Sequence[Any]) -> list[Any]:
    """``cases`` with exact duplicates (every field but the id equal) dropped, first kept; ids must be unique."""
    seen: dict[tuple, str] = {}
    out = []
    for case in cases:
        key = tuple(getattr(case, f.name) for f in fields(case) if f.name != "id")
        if key not in seen:
            seen[key] = case.id
            out.append(case)
    ids = [c.id for c in out]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"case ids must be unique, repeated: {duplicated}")
    return out


def by_id(cases: Sequence[Any], case_id: str) -> Any:
    """The case of ``cases`` named ``case_id``."""
    for case in cases:
        if case.id == case_id:
            return case
    raise KeyError(case_id)


def _t(v: Any) -> str:
    """A geometry value for an id: 3, 3x2, 0-1-2-0."""
    if isinstance(v, (tuple, list)):
        return ("x" if len(v) == 2 else "-").join(str(i) for i in v)
    return str(v)


def _shape_id(shape: Shape) -> str:
    return "x" + "x".join(str(s) for s in shape)


# ----------------------------------------------------------------------------------------------- convolution
@dataclass(frozen=True)
class ConvCase:
    """conv2d(x, w, b, stride, padding, dilation, groups, activation); padding is an int, a pair, a 4-tuple
    (top, bottom, left, right) or "same"/"valid". ``layout`` applies to x, w and dy; ``special`` is planted in
    the input ``special_in`` names (x, w or dy)."""

    id: str
    x: Shape
    w: Shape
    stride: IntPair = 1
    padding: Any = 0
    dilation: IntPair = 1
    groups: int = 1
    bias: bool = True
    activation: str | None = None
    layout: str = "contiguous"
    special: str | None = None
    special_in: str = "x"

    @property
    def geometry(self) -> tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int], int]:
        """(stride, (top, bottom, left, right), dilation, groups), normalised as cnnkit.functional does."""
        stride, dilation = F.pair(self.stride, "stride"), F.pair(self.dilation, "dilation")
        return stride, F.conv_padding(self.padding, self.w[2:], dilation, stride), dilation, self.groups

    @property
    def kwargs(self) -> dict:
        """The geometry as cnnkit.functional.conv2d's keyword arguments (as written, not normalised)."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    @property
    def y_shape(self) -> Shape:
        return F.conv2d_output_shape(self.x, self.w, *self.geometry)

    def inputs(self) -> tuple[Arg, Arg, Arg | None, Arg]:
        """(x, w, b or None, dy): dy is the gradient of the pre-activation output."""
        key = (self.x, self.w, self.stride, self.padding, self.dilation, self.groups)

        def special(name: str) -> str | None:
            return self.special if self.special_in == name else None

        return (arg(self.x, "x", *key, layout=self.layout, special=special("x")),
                arg(self.w, "w", *key, layout=self.layout, scale=0.3, special=special("w")),
                arg((self.w[0],), "b", *key) if self.bias else None,
                arg(self.y_shape, "dy", *key, layout=self.layout, special=special("dy")))

    @property
    def shapes(self) -> list[Shape]:
        return [self.x, self.w, self.y_shape]


def _conv(id: str, x: Shape, w: Shape, stride: IntPair = 1, padding: Any = 0, dilation: IntPair = 1,
          groups: int = 1, activation: str | None = None, bias: bool = True, **kw: Any) -> ConvCase:
    return ConvCase(id, x, w, stride, padding, dilation, groups, bias, activation, **kw)


# The Numba grid (test_numba_ops.AUTOMATIC_PATHS names the paths each takes). Two are smaller than they were, for
# the simulator, whose direct conv runs one 256-thread block per weight: LeNet C5-like (2, 16, 5, 5) * (12, 16, 5, 5)
# is now 4 -> 8 channels, and the im2row case has 16 filters instead of 8, so that CUDA takes the tiled path.
_NUMBA_CONV = [
    _conv("lenet-c1-like-tanh", (2, 1, 12, 12), (6, 1, 5, 5), activation="tanh"),
    _conv("lenet-c3-scaled-tanh", (2, 6, 14, 14), (16, 6, 5, 5), activation="scaled_tanh"),
    _conv("lenet-c5-1x1-output", (2, 4, 5, 5), (8, 4, 5, 5)),
    _conv("resnet-3x3-relu", (2, 8, 8, 8), (8, 8, 3, 3), padding=1, activation="relu"),
    _conv("stride2-downsample", (2, 4, 9, 9), (8, 4, 3, 3), stride=2, padding=1),
    _conv("stride3x2-asym-pad-sigmoid", (1, 3, 11, 10), (4, 3, 3, 2), stride=(3, 2), padding=(0, 2, 1, 0),
          activation="sigmoid"),
    _conv("dilation2-leaky-relu", (2, 3, 11, 11), (4, 3, 3, 3), padding=2, dilation=2, activation="leaky_relu"),
    _conv("groups2-asym-pad-dil2x1", (2, 4, 7, 8), (8, 2, 3, 3), padding=(1, 0, 2, 1), dilation=(2, 1), groups=2),
    _conv("depthwise-relu", (2, 6, 7, 7), (6, 1, 3, 3), padding=1, groups=6, activation="relu"),
    _conv("depthwise-multiplier2-s2", (1, 3, 6, 6), (6, 1, 3, 3), stride=2, padding=1, groups=3),
    _conv("kernel-1x1", (2, 8, 5, 5), (16, 8, 1, 1)),
    _conv("batch1-odd-sizes-tanh", (1, 5, 7, 9), (4, 5, 2, 3), padding=(1, 0, 0, 2), activation="tanh"),
    _conv("pad-beyond-kernel", (1, 2, 5, 5), (4, 2, 2, 2), padding=3),
    _conv("im2row-288-per-output-relu", (2, 32, 6, 5), (16, 32, 3, 3), padding=1, activation="relu"),
    _conv("im2row-groups-dil1x2-tanh", (2, 64, 5, 7), (8, 32, 3, 3), padding=(1, 1, 2, 2), dilation=(1, 2),
          groups=2, activation="tanh"),
    _conv("im2row-strided", (2, 8, 9, 9), (8, 8, 3, 3), stride=2, padding=1),
    _conv("dx-im2row-32-filters", (1, 4, 4, 4), (32, 4, 3, 3), padding=1),
    _conv("planar-odd-bands-tanh", (1, 2, 34, 14), (16, 2, 5, 5), activation="tanh"),  # 30 rows in bands of 15
    _conv("channels-s2-wide-rows-relu", (1, 17, 5, 19), (32, 17, 3, 3), stride=2, padding=1, activation="relu"),
    _conv("channels-groups2-dil1x2-tanh", (1, 32, 6, 7), (64, 16, 2, 2), stride=(1, 2), padding=(1, 0, 2, 1),
          dilation=(1, 2), groups=2, activation="tanh"),
    _conv("winograd-odd-sizes-relu", (2, 16, 7, 8), (32, 16, 3, 3), padding=(1, 1, 2, 1), activation="relu"),
]
# The CUDA grid: the direct path and the tiled implicit GEMM with both tile heights (TM 1 and 4) and a split-K
# weight gradient on both paths (test_cuda_launchers checks the coverage). Its LeNet C1-like case is lenet-c1-like-tanh.
_CUDA_CONV = [
    _conv("direct-stride2x3-asym-pad-dil2", (2, 3, 11, 10), (4, 3, 3, 3), stride=(2, 3), padding=(1, 2, 0, 3),
          dilation=2),
    _conv("direct-depthwise-s2", (2, 6, 9, 9), (6, 1, 3, 3), stride=2, padding=1, groups=6),
    _conv("direct-groups2-batch1", (1, 4, 8, 7), (6, 2, 3, 3), padding=(2, 2, 1, 1), dilation=(2, 1), groups=2),
    _conv("direct-1x1-s2-odd", (1, 5, 7, 9), (8, 5, 1, 1), stride=2),
    _conv("direct-1x1-groups2-pad1-s2", (2, 4, 5, 6), (6, 2, 1, 1), stride=2, padding=1, groups=2),
    _conv("direct-split-k-weight", (1, 1, 67, 65), (1, 1, 3, 3), padding=1),  # 4355 products: 2 chunks
    _conv("tiled-tm1-resnet-3x3", (2, 16, 8, 8), (16, 16, 3, 3), padding=1),
    _conv("tiled-tm2-s2-downsample", (2, 16, 9, 9), (32, 16, 3, 3), stride=2, padding=1),
    _conv("tiled-fwd-tm4-dgrad-tm1", (1, 8, 6, 6), (64, 8, 3, 3), padding=(0, 1, 2, 0)),
    _conv("tiled-tm4-1x1-batch1", (1, 64, 5, 5), (64, 64, 1, 1)),
    _conv("tiled-groups2-dil2-asym-pad", (2, 8, 7, 7), (32, 4, 3, 3), stride=(1, 2), padding=(0, 2, 1, 3),
          dilation=2, groups=2),
    _conv("conv-split-k", (3, 16, 16, 16), (16, 16, 3, 3), padding=1),
    _conv("tiled-lenet-c3-like-odd", (2, 6, 7, 5), (16, 6, 5, 5), padding=2),
]
# The finite-difference grid (small: every input element is perturbed twice).
_GRADCHECK_CONV = [
    _conv("plain", (2, 3, 5, 5), (4, 3, 3, 3)),
    _conv("stride2-pad1", (2, 2, 6, 7), (3, 2, 3, 3), stride=2, padding=1),
    _conv("stride3-asym-pad-odd", (1, 2, 7, 6), (2, 2, 3, 2), stride=3, padding=(1, 2, 0, 1)),
    _conv("stride2x3", (2, 2, 7, 8), (2, 2, 2, 3), stride=(2, 3), padding=(0, 1)),
    _conv("same-even-kernel", (2, 2, 5, 6), (3, 2, 2, 4), padding="same"),
    _conv("same-dilation2", (1, 2, 6, 5), (2, 2, 3, 2), padding="same", dilation=2),
    _conv("valid-dilation1x2", (2, 2, 7, 6), (3, 2, 4, 3), padding="valid", dilation=(1, 2)),
    _conv("dilation2-pad2", (2, 2, 7, 7), (3, 2, 3, 3), padding=2, dilation=2),
    _conv("dilation1x2-stride2", (1, 3, 6, 9), (2, 3, 2, 3), stride=2, padding=(1, 1, 2, 0), dilation=(1, 2)),
    _conv("groups2", (2, 4, 5, 5), (6, 2, 3, 3), padding=1, groups=2),
    _conv("groups2-stride2-dil2", (1, 4, 8, 7), (4, 2, 2, 3), stride=2, padding=(0, 1, 1, 1), dilation=2, groups=2),
    _conv("depthwise", (2, 3, 6, 5), (3, 1, 3, 3), padding=1, groups=3),
    _conv("depthwise-multiplier2", (1, 2, 5, 6), (4, 1, 3, 2), stride=(1, 2), padding=1, groups=2),
    _conv("batch1-no-bias", (1, 3, 4, 6), (2, 3, 3, 3), padding=(0, 2, 1, 0), bias=False),
    _conv("kernel-1x1-small", (2, 4, 3, 3), (3, 4, 1, 1)),
    _conv("kernel-fills-input", (2, 2, 3, 4), (3, 2, 3, 4)),
]
# The PyTorch-parity grid. Its LeNet C1 runs at batch 1 (it was 4: 19k outputs, too many simulator threads for
# what a fourth image adds).
_TORCH_CONV = [
    _conv("valid-3x3", (2, 3, 9, 9), (4, 3, 3, 3)),
    _conv("stride2-pad1-odd", (2, 3, 9, 8), (4, 3, 3, 3), stride=2, padding=1),
    _conv("stride3x2-asym-pad-5x5", (1, 4, 10, 11), (6, 4, 5, 5), stride=(3, 2), padding=(2, 0, 1, 3)),
    _conv("groups2-dil2-pad2", (2, 4, 12, 10), (4, 2, 3, 3), padding=2, dilation=2, groups=2),
    _conv("depthwise-s2-no-bias", (3, 6, 8, 8), (6, 1, 3, 3), stride=2, padding=1, groups=6, bias=False),
    _conv("groups3-dil2x1-asym", (2, 6, 9, 7), (9, 2, 2, 3), stride=(1, 2), padding=(0, 1, 1, 0), dilation=(2, 1),
          groups=3),
    _conv("lenet-c1", (1, 1, 32, 32), (6, 1, 5, 5)),
    _conv("resnet-downsample-no-bias", (2, 16, 8, 8), (32, 16, 3, 3), stride=2, padding=1, bias=False),
]
# Every activation fused into the epilogue: a small direct conv (also finite-differenced), the tiled path with
# 16-row and 64-row tiles (CUDA), and the geometry test_numba_ops runs on every Numba path.
_FUSED_CONV = [
    c for act in ACTIVATIONS for c in (
        _conv(f"fused-{act}-direct", (2, 2, 5, 5), (3, 2, 3, 3), stride=2, padding=1, activation=act),
        _conv(f"fused-{act}-tiled", (2, 16, 9, 9), (32, 16, 3, 3), stride=2, padding=1, activation=act),
        _conv(f"fused-{act}-tm4", (1, 8, 6, 6), (64, 8, 3, 3), padding=(0, 1, 2, 0), activation=act),
        _conv(f"fused-{act}-every-numba-path", (2, 4, 6, 7), (8, 4, 3, 3), padding=1, activation=act),
    )
]
# Non-contiguous inputs and non-finite values in x, w and dy, on each Numba path (shifted, packed, im2row, direct)
# and both CUDA paths; "relu" fused after a NaN must stay NaN (torch.relu(nan) is nan). PyTorch treats padding
# taps as zeros that multiply (a NaN weight makes every output of its filter NaN) and multiplies nothing else.
_SPECIAL_CONV = [
    _conv("strided-views", (2, 3, 7, 9), (8, 3, 3, 3), padding=1, bias=False, layout="strided"),
    _conv("transposed-views", (2, 3, 11, 10), (4, 3, 3, 3), stride=(2, 3), padding=(1, 2, 0, 3), dilation=2,
          layout="transposed"),
    _conv("flipped-views-tiled", (2, 16, 8, 8), (16, 16, 3, 3), padding=1, layout="flipped"),
    _conv("nan-shifted", (2, 8, 8, 8), (8, 8, 3, 3), padding=1, special="nan"),
    _conv("nan-inf-packed", (2, 4, 9, 9), (8, 4, 3, 3), stride=2, padding=1, special="nan+inf"),
    _conv("nan-im2row", (2, 32, 6, 5), (16, 32, 3, 3), padding=1, special="nan"),
    _conv("inf-direct-depthwise", (2, 6, 7, 7), (6, 1, 3, 3), padding=1, groups=6, special="inf"),
    _conv("nan-inf-tiled", (2, 16, 8, 8), (16, 16, 3, 3), padding=1, special="nan+inf"),
    _conv("nan-relu-direct", (2, 2, 5, 5), (3, 2, 3, 3), stride=2, padding=1, activation="relu", special="nan"),
    _conv("nan-relu-tiled", (2, 16, 9, 9), (32, 16, 3, 3), stride=2, padding=1, activation="relu",
          special="nan+inf"),
    _conv("nan-inf-leaky-relu", (2, 4, 6, 7), (8, 4, 3, 3), padding=1, activation="leaky_relu",
          special="nan+inf"),
    _conv("nan-in-w-shifted", (2, 8, 8, 8), (8, 8, 3, 3), padding=1, special="nan", special_in="w"),
    _conv("inf-in-w-direct-depthwise", (2, 6, 7, 7), (6, 1, 3, 3), padding=1, groups=6, special="nan+inf",
          special_in="w"),
    _conv("nan-in-w-tiled-s2", (2, 16, 9, 9), (32, 16, 3, 3), stride=2, padding=1, special="nan", special_in="w"),
    _conv("nan-in-w-dx-im2row", (1, 4, 4, 4), (32, 4, 3, 3), padding=1, special="nan", special_in="w"),
    _conv("nan-in-dy-direct-depthwise-s2", (2, 6, 9, 9), (6, 1, 3, 3), stride=2, padding=1, groups=6,
          special="nan+inf", special_in="dy"),
    _conv("nan-in-dy-im2row-strided", (2, 8, 9, 9), (8, 8, 3, 3), stride=2, padding=1, special="nan",
          special_in="dy"),
    _conv("nan-in-dy-tiled", (2, 16, 8, 8), (16, 16, 3, 3), padding=1, special="nan", special_in="dy"),
    _conv("nan-in-dy-pad-beyond-kernel", (1, 2, 5, 5), (4, 2, 2, 2), padding=3, special="nan", special_in="dy"),
]
CONV_CASES: list[ConvCase] = unique(_NUMBA_CONV + _CUDA_CONV + _GRADCHECK_CONV + _TORCH_CONV + _FUSED_CONV
                                    + _SPECIAL_CONV)


# ----------------------------------------------------------------------------------------------- pooling
def _pool_shape(x: Shape, kernel, stride, padding, dilation, ceil_mode: bool) -> Shape:
    """(N, C, OH, OW) of a pooling op (stride None: the kernel)."""
    k, p, d = F.pair(kernel, "kernel"), F.pair(padding, "padding", 0), F.pair(dilation, "dilation")
    s = k if stride is None else F.pair(stride, "stride")
    return x[:2] + tuple(pool_output_size(x[2 + a], k[a], s[a], p[a], d[a], ceil_mode) for a in (0, 1))


A, B = (2, 3, 9, 8), (1, 2, 10, 7)
"""The two shapes the shared pooling geometries run on (odd height and even width, and the other way round); the
per-backend grids that crossed their geometries with two shapes map onto these."""


@dataclass(frozen=True)
class MaxPoolCase:
    """max_pool2d(x, kernel, stride, padding, dilation, ceil_mode); ``ties`` rounds x to halves so many windows
    hold several maxima (argmax must name the first)."""

    id: str
    x: Shape
    kernel: IntPair
    stride: IntPair | None = None
    padding: IntPair = 0
    dilation: IntPair = 1
    ceil_mode: bool = False
    ties: bool = False
    layout: str = "contiguous"
    special: str | None = None

    @property
    def args(self) -> tuple:
        return self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode

    @property
    def y_shape(self) -> Shape:
        return _pool_shape(self.x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)

    def inputs(self) -> tuple[Arg, Arg]:
        """(x, dy)."""
        key = ("max", self.args)
        x = arg(self.x, *key, layout=self.layout)
        if self.ties:
            x.base[...] = np.round(x.base * 2) / 2
        plant(view(x.base, self.layout), self.special, *key)
        return x, arg(self.y_shape, "dy", *key)

    @property
    def shapes(self) -> list[Shape]:
        return [self.x, self.y_shape]


def _max(x: Shape, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, ties=False, prefix="",
         **kw) -> MaxPoolCase:
    id = f"{prefix}{_shape_id(x)}-k{_t(kernel)}-s{_t(stride or kernel)}-p{_t(padding)}-d{_t(dilation)}"
    return MaxPoolCase(id + ("-ceil" if ceil_mode else "") + ("-ties" if ties else ""), x, kernel,
                       stride or kernel, padding, dilation, ceil_mode, ties, **kw)


_MAX_SHARED = [  # (kernel, stride, padding, dilation, ceil_mode): the CUDA, PyTorch-parity and gradcheck grids
    (3, 2, 1, 1, False), (3, 2, 1, 1, True), (2, 2, 0, 1, False), (3, 3, 1, 2, True),
    ((3, 2), (2, 1), (1, 0), (2, 1), True), (4, 3, 2, 1, True), (2, 1, 1, 1, False),
    (2, 3, 1, 1, True), ((3, 2), (1, 2), (1, 0), 1, True), (3, 1, 1, 2, False),
    ((3, 2), (2, 3), (1, 1), (2, 3), True),
]
_MAX_GRADCHECK = [((2, 3), (2, 1), (1, 1), (2, 1), True), (3, 2, 0, 2, True)]
_MAX_NUMBA = [  # with ties, on the shapes that reach the Numba kernels' edge cases
    ((2, 3, 8, 8), 2, 2, 0, 1, False), ((2, 2, 9, 7), 3, 2, 1, 1, True),
    ((1, 3, 7, 8), (3, 2), (1, 2), (1, 0), (2, 1), False), ((2, 2, 8, 7), 3, 3, 0, 1, True),
    ((1, 1, 5, 6), (2, 3), 1, (1, 1), 1, False), ((1, 2, 7, 9), 2, 2, 0, 1, False),
    ((2, 1, 9, 7), (3, 2), (3, 2), 0, 1, False),
]
MAX_POOL_CASES: list[MaxPoolCase] = unique(
    [_max(shape, *g) for g in _MAX_SHARED for shape in (A, B)]
    + [_max(A, *g) for g in _MAX_GRADCHECK]
    + [_max(shape, *g, ties=True) for shape, *g in _MAX_NUMBA]
    + [
        # small integers: ties everywhere, overlapping windows
        _max((2, 2, 8, 8), 3, 1, 1, ties=True, prefix="integers-"),
        # dilated taps that all fall in the padding: -inf, argmax -1, no gradient (PyTorch gives -inf too, but
        # an out-of-range index whose backward writes out of bounds)
        _max((1, 1, 1, 3), (2, 1), 1, (1, 0), (2, 1), prefix="window-of-padding-only-"),
        _max(A, 3, 2, 1, prefix="nan-", special="nan"),
        _max(B, 3, 2, 1, 1, True, prefix="inf-", special="nan+inf"),
        _max(A, 2, 2, 0, prefix="neginf-window-", special="-inf-block"),
        _max(A, 3, 2, 1, 1, True, prefix="strided-", layout="strided"),
        _max(B, (3, 2), (2, 1), (1, 0), prefix="transposed-", layout="transposed"),
    ])


@dataclass(frozen=True)
class AvgPoolCase:
    """avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)."""

    id: str
    x: Shape
    kernel: IntPair
    stride: IntPair | None = None
    padding: IntPair = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    layout: str = "contiguous"
    special: str | None = None

    @property
    def args(self) -> tuple:
        return self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad

    @property
    def y_shape(self) -> Shape:
        return _pool_shape(self.x, self.kernel, self.stride, self.padding, 1, self.ceil_mode)

    def inputs(self) -> tuple[Arg, Arg]:
        """(x, dy)."""
        key = ("avg", self.args)
        return (arg(self.x, *key, layout=self.layout, special=self.special),
                arg(self.y_shape, "dy", *key, layout=self.layout))

    @property
    def shapes(self) -> list[Shape]:
        return [self.x, self.y_shape]


def _avg(x: Shape, kernel, stride=None, padding=0, ceil_mode=False, include=True, prefix="", **kw) -> AvgPoolCase:
    id = f"{prefix}{_shape_id(x)}-k{_t(kernel)}-s{_t(stride or kernel)}-p{_t(padding)}"
    id += ("-ceil" if ceil_mode else "") + ("" if include else "-exclude-pad")
    return AvgPoolCase(id, x, kernel, stride or kernel, padding, ceil_mode, include, **kw)


_AVG_SHARED = [  # (kernel, stride, padding, ceil_mode, count_include_pad): the CUDA and PyTorch-parity grids
    (3, 2, 1, False, True), (3, 2, 1, True, True), (3, 2, 1, True, False), (2, 2, 0, False, True),
    ((3, 2), (2, 3), (1, 1), True, False), (4, 3, 2, True, True), (5, 1, 2, False, False),
    (2, 2, 0, False, False), (3, 2, 1, False, False), (2, 3, 1, True, True), (2, 3, 1, True, False),
    ((3, 2), (1, 2), (1, 0), True, True), ((3, 2), (1, 2), (1, 0), True, False), (4, 3, 2, True, False),
]
_AVG_GRADCHECK = [((3, 2), (2, 1), (1, 0), True, True)]
_AVG_NUMBA = [  # each with and without count_include_pad; the last two take Numba's tiled fast path
    ((2, 3, 8, 8), 2, 2, 0, False), ((2, 2, 9, 7), 3, 2, 1, True), ((1, 3, 7, 8), (3, 2), (1, 2), (1, 0), False),
    ((2, 2, 8, 7), 3, 3, 0, True), ((1, 1, 5, 6), (2, 3), 1, (1, 1), False), ((1, 2, 7, 9), 2, 2, 0, False),
    ((2, 1, 9, 7), (3, 2), (3, 2), 0, False),
]
AVG_POOL_CASES: list[AvgPoolCase] = unique(
    [_avg(shape, *g) for g in _AVG_SHARED for shape in (A, B)]
    + [_avg(A, *g) for g in _AVG_GRADCHECK]
    + [_avg(shape, *g, include) for shape, *g in _AVG_NUMBA for include in (True, False)]
    + [
        _avg(A, 3, 2, 1, True, False, prefix="nan-", special="nan+inf"),
        _avg(B, 2, 2, 0, prefix="inf-tiled-", special="inf"),
        _avg(A, 3, 2, 1, prefix="strided-", layout="strided"),
        _avg((1, 2, 7, 9), 2, 2, 0, prefix="flipped-tiled-", layout="flipped"),
    ])


@dataclass(frozen=True)
class LpPoolCase:
    """lp_pool2d(x, p, kernel, stride, padding, ceil_mode); ``zeros`` makes the top-left 2x2 of every plane 0
    (cells with x == 0, and windows with y == 0, whose gradient the contract defines as 0)."""

    id: str
    x: Shape
    p: float
    kernel: IntPair
    stride: IntPair | None = None
    padding: IntPair = 0
    ceil_mode: bool = False
    zeros: bool = False
    layout: str = "contiguous"
    special: str | None = None

    @property
    def args(self) -> tuple:
        return self.kernel, self.stride, self.padding, self.ceil_mode

    @property
    def y_shape(self) -> Shape:
        return _pool_shape(self.x, self.kernel, self.stride, self.padding, 1, self.ceil_mode)

    def inputs(self) -> tuple[Arg, Arg]:
        """(x, dy)."""
        key = ("lp", self.p, self.args)
        x = arg(self.x, *key, layout=self.layout)
        if self.zeros:
            view(x.base, self.layout)[..., :2, :2] = 0
        plant(view(x.base, self.layout), self.special, *key)
        return x, arg(self.y_shape, "dy", *key)

    @property
    def shapes(self) -> list[Shape]:
        return [self.x, self.y_shape]


def _lp(x: Shape, p, kernel, stride=None, padding=0, ceil_mode=False, zeros=False, prefix="", **kw) -> LpPoolCase:
    id = f"{prefix}{_shape_id(x)}-p{p:g}-k{_t(kernel)}-s{_t(stride or kernel)}-pad{_t(padding)}"
    id += ("-ceil" if ceil_mode else "") + ("-zeros" if zeros else "")
    return LpPoolCase(id, x, float(p), kernel, stride or kernel, padding, ceil_mode, zeros, **kw)


_LP_CUDA = [(2.0, 2, 2, 0, False), (2.0, 3, 2, 1, True), (1.0, 3, 1, 1, False),
            (3.5, (3, 2), (2, 1), (1, 0), True), (0.7, 2, 2, 1, False)]
_LP_TORCH_GEOMETRY = [(2, 2, 0, False), (3, 2, 1, False), (3, 2, 1, True), (2, 3, 1, True),
                      ((3, 2), (1, 2), (1, 0), True), (4, 3, 2, True)]
_LP_GRADCHECK = [(2.0, 2, 2, 0, False), (2.0, 3, 2, 1, True), (3.0, 3, 2, 0, False), (1.5, 2, 1, 1, False),
                 (1.0, 3, 2, 1, True), (4.0, (2, 3), (2, 1), (1, 1), True)]
LP_POOL_CASES: list[LpPoolCase] = unique(
    [_lp(shape, *g) for g in _LP_CUDA for shape in (A, B)]
    + [_lp(A, p, *g) for p in (2.0, 3.0, 1.5) for g in _LP_TORCH_GEOMETRY]
    + [_lp(A, *g) for g in _LP_GRADCHECK]
    + [_lp(shape, p, kernel, stride, padding, ceil, zeros=True)
       for shape, kernel, stride, padding, _, ceil in _MAX_NUMBA for p in (1.0, 2.0, 3.5)]
    + [
        _lp(A, 2.0, 3, 2, 1, True, prefix="nan-", special="nan"),
        _lp(B, 1.0, 2, 2, 0, prefix="nan-", special="nan"),
        _lp(A, 3.5, 3, 2, 1, prefix="inf-", special="inf"),
        _lp(B, 0.7, 2, 2, 1, prefix="inf-", special="inf"),
        _lp(A, 2.0, 3, 2, 1, prefix="strided-", layout="strided"),
        _lp(B, 1.5, (3, 2), (2, 1), (1, 0), True, prefix="transposed-", layout="transposed"),
    ])


# ----------------------------------------------------------------------------------------------- activations
EXTREMES = (0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.5, -0.5, 5.0, -5.0, 20.0, -20.0, 40.0, -40.0, 100.0, -100.0,
            700.0, -700.0, 720.0, -720.0, 800.0, -800.0, 1000.0, -1000.0)
"""Inputs an activation must get right to its relative tolerance: the kink, tiny values, saturation, and (in
float64) exp's underflow into subnormals and to 0."""


@dataclass(frozen=True)
class ActivationCase:
    """activation(x, kind, negative_slope); ``extremes`` writes EXTREMES into the first elements of x."""

    id: str
    kind: str
    slope: float = 0.01
    x: Shape = (3, 4, 5, 6)
    extremes: bool = False
    layout: str = "contiguous"
    special: str | None = None

    def inputs(self) -> tuple[Arg, Arg]:
        """(x, dy)."""
        key = ("act", self.kind, self.slope)
        x = arg(self.x, *key, layout=self.layout, scale=3.0)
        if self.extremes:
            x.base.reshape(-1)[:len(EXTREMES)] = EXTREMES
        plant(view(x.base, self.layout), self.special, *key)
        return x, arg(self.x, "dy", *key, layout=self.layout)

    @property
    def shapes(self) -> list[Shape]:
        return [self.x]


@dataclass(frozen=True)
class AddCase:
    """add(a, b, activation): a = 3 N(0, 1), b = N(0, 1), so the sum crosses zero often."""

    id: str
    activation: str | None
    x: Shape = (3, 4, 5, 6)
    layout: str = "contiguous"
    special: str | None = None

    def inputs(self) -> tuple[Arg, Arg]:
        """(a, b)."""
        key = ("add", self.activation)
        a = arg(self.x, *key, layout=self.layout, scale=3.0)
        plant(view(a.base, self.layout), self.special, *key)
        return a, arg(self.x, "b", *key, layout=self.layout)

    @property
    def shapes(self) -> list[Shape]:
        return [self.x]


ADD_CASES: list[AddCase] = unique(
    [AddCase(f"add-{kind or 'none'}", kind) for kind in (None, *ACTIVATIONS)]
    + [AddCase(f"add-{kind or 'none'}-nan-inf", kind, special="nan+inf") for kind in (None, "relu", "tanh")]
    + [AddCase("add-relu-strided", "relu", layout="strided"), AddCase("add-none-odd", None, x=(1, 3, 7, 9)),
       AddCase("add-relu-2d-transposed", "relu", x=(5, 7), layout="transposed")])


ACTIVATION_CASES: list[ActivationCase] = unique(
    [ActivationCase(kind, kind) for kind in ACTIVATIONS]
    + [ActivationCase(f"leaky_relu-slope{s:g}", "leaky_relu", s) for s in (0.2, 0.3, 0.02, 0.0)]
    + [ActivationCase(f"{kind}-extremes", kind, extremes=True) for kind in ACTIVATIONS]
    + [ActivationCase(f"{kind}-nan-inf", kind, special="nan+inf") for kind in ACTIVATIONS]
    + [ActivationCase("leaky_relu-slope0-nan-inf", "leaky_relu", 0.0, special="nan+inf"),
       ActivationCase("tanh-strided", "tanh", layout="strided"),
       ActivationCase("sigmoid-transposed", "sigmoid", x=(2, 3, 7, 5), layout="transposed"),
       ActivationCase("relu-flipped-2d", "relu", x=(6, 10), layout="flipped")])


@dataclass(frozen=True)
class SoftmaxCase:
    """softmax or log_softmax over the rows of (N, C) scores ``scale * N(0, 1)``; ``huge`` makes the first row
    [1000] * (C // 2) + [-1000] * ..., ``offset`` adds to the first row (the max must be subtracted)."""

    id: str
    shape: Shape
    log: bool
    scale: float = 4.0
    huge: bool = False
    offset: float = 0.0
    layout: str = "contiguous"
    special: str | None = None

    def inputs(self) -> tuple[Arg, Arg]:
        """(x, dy)."""
        key = ("softmax", self.scale)
        x = arg(self.shape, *key, layout=self.layout, scale=self.scale)
        first = view(x.base, self.layout)[0]
        if self.huge:
            c = self.shape[1]
            first[...] = [1000.0] * (c // 2) + [-1000.0] * (c - c // 2)
        first += np.float32(self.offset)
        plant(view(x.base, self.layout), self.special, *key)
        return x, arg(self.shape, "dy", *key, layout=self.layout)

    @property
    def shapes(self) -> list[Shape]:
        return [self.shape]


def _softmax(log: bool) -> list[SoftmaxCase]:
    name = "log_softmax" if log else "softmax"
    return [
        SoftmaxCase(f"{name}-x7x10-huge-row", (7, 10), log, huge=True),
        SoftmaxCase(f"{name}-x6x10-offset500", (6, 10), log, scale=5.0, offset=500.0),
        SoftmaxCase(f"{name}-x5x10", (5, 10), log),
        SoftmaxCase(f"{name}-x3x1000", (3, 1000), log),
        SoftmaxCase(f"{name}-x1x1", (1, 1), log),
        SoftmaxCase(f"{name}-x300x7", (300, 7), log),
        SoftmaxCase(f"{name}-x4x6", (4, 6), log, scale=3.0),
        SoftmaxCase(f"{name}-nan", (5, 10), log, special="nan"),
        SoftmaxCase(f"{name}-inf", (6, 10), log, special="inf"),
        SoftmaxCase(f"{name}-row-of-neginf", (4, 6), log, special="-inf-block"),
        SoftmaxCase(f"{name}-transposed", (5, 10), log, layout="transposed"),
    ]


SOFTMAX_CASES: list[SoftmaxCase] = unique(_softmax(False) + _softmax(True))


@dataclass(frozen=True)
class CrossEntropyCase:
    """softmax_cross_entropy(logits (N, C) = scale * N(0, 1), labels of ``label_dtype``); ``huge`` as in
    SoftmaxCase."""

    id: str
    shape: Shape
    label_dtype: str = "int64"
    scale: float = 3.0
    huge: bool = False
    layout: str = "contiguous"
    special: str | None = None

    def inputs(self) -> tuple[Arg, np.ndarray]:
        """(logits, labels) with the labels a host array of label_dtype."""
        key = ("xent", self.scale)
        x = arg(self.shape, *key, layout=self.layout, scale=self.scale)
        if self.huge:
            c = self.shape[1]
            view(x.base, self.layout)[0] = [1000.0] * (c // 2) + [-1000.0] * (c - c // 2)
        plant(view(x.base, self.layout), self.special, *key)
        return x, labels(self.shape[0], self.shape[1], *key, dtype=self.label_dtype)

    @property
    def shapes(self) -> list[Shape]:
        return [self.shape]


CROSS_ENTROPY_CASES: list[CrossEntropyCase] = unique(
    [CrossEntropyCase("x7x10-huge-row-int32", (7, 10), "int32", scale=4.0, huge=True)]
    + [CrossEntropyCase(f"{_shape_id(s)}-{d}", s, d) for s in ((7, 10), (300, 10), (4, 1000)) for d in
       ("int64", "int32")]
    + [CrossEntropyCase(f"{_shape_id(s)}-int64", s, scale=sc) for s, sc in (((5, 4), 2.0), ((1, 2), 3.0),
                                                                            ((32, 100), 3.0))]
    + [CrossEntropyCase("nan", (7, 10), special="nan"),
       CrossEntropyCase("inf", (7, 10), special="inf"),
       CrossEntropyCase("nan-inf-int32", (6, 5), "int32", special="nan+inf"),
       CrossEntropyCase("row-of-neginf", (4, 6), special="-inf-block"),
       CrossEntropyCase("transposed", (6, 10), layout="transposed")])


# ----------------------------------------------------------------------------------------------- linear
@dataclass(frozen=True)
class LinearCase:
    """linear(x (N, C), w (K, C), b (K,) or None) and its backward from dy (N, K), all N(0, 1)."""

    id: str
    n: int
    c: int
    k: int
    bias: bool = True
    layout: str = "contiguous"
    special: str | None = None

    def inputs(self) -> tuple[Arg, Arg, Arg | None, Arg]:
        """(x, w, b, dy)."""
        key = ("linear", self.n, self.c, self.k)
        return (arg((self.n, self.c), *key, layout=self.layout, special=self.special),
                arg((self.k, self.c), "w", *key, layout=self.layout),
                arg((self.k,), "b", *key) if self.bias else None, arg((self.n, self.k), "dy", *key))

    @property
    def shapes(self) -> list[Shape]:
        return [(self.n, self.c), (self.k, self.c), (self.n, self.k)]


LINEAR_CASES: list[LinearCase] = unique([
    LinearCase("x4x6-k3", 4, 6, 3), LinearCase("batch1", 1, 5, 7), LinearCase("no-bias", 5, 8, 4, bias=False),
    LinearCase("odd-x7x33-k17", 7, 33, 17), LinearCase("lenet-f6-x9x120-k40", 9, 120, 40),
    LinearCase("one-feature", 6, 1, 1), LinearCase("transposed", 5, 9, 6, layout="transposed"),
    LinearCase("strided", 3, 10, 5, layout="strided"), LinearCase("nan-inf", 6, 7, 5, special="nan+inf"),
])


# ----------------------------------------------------------------------------------------------- batch norm
@dataclass(frozen=True)
class BatchNormCase:
    """batch_norm(x = 2 N(0, 1) + 1, gamma = 1 + 0.1 N, beta = N, running_mean = N, running_var = 0.5 + |N|,
    training, momentum, eps, activation)."""

    id: str
    x: Shape
    training: bool
    momentum: float = 0.1
    eps: float = 1e-5
    layout: str = "contiguous"
    special: str | None = None
    activation: str | None = None

    def inputs(self) -> tuple[Arg, Arg, Arg, np.ndarray, np.ndarray, Arg]:
        """(x, gamma, beta, running_mean, running_var, dy); the running statistics are float32 host arrays
        (each test converts and updates its own copies)."""
        c, key = self.x[1], ("bn", self.x)
        return (arg(self.x, *key, layout=self.layout, special=self.special, scale=2.0, shift=1.0),
                arg((c,), "gamma", *key, scale=0.1, shift=1.0), arg((c,), "beta", *key),
                data((c,), "running_mean", *key), np.abs(data((c,), "running_var", *key)) + np.float32(0.5),
                arg(self.x, "dy", *key, layout=self.layout))

    @property
    def shapes(self) -> list[Shape]:
        return [self.x]


def _bn(id: str, x: Shape, momentum: float = 0.1, eps: float = 1e-5, **kw: Any) -> list[BatchNormCase]:
    return [BatchNormCase(f"{id}-{'train' if t else 'eval'}", x, t, momentum, eps, **kw) for t in (True, False)]


BATCH_NORM_CASES: list[BatchNormCase] = unique(
    _bn("x4x3x5x6", (4, 3, 5, 6)) + _bn("x4x3x5x5", (4, 3, 5, 5)) + _bn("odd-x2x5x3x7", (2, 5, 3, 7))
    + _bn("x2x5x3x3-momentum0.5-eps1e-3", (2, 5, 3, 3), 0.5, 1e-3)
    + _bn("x8x2x1x1-momentum1", (8, 2, 1, 1), 1.0) + _bn("x3x2x3x4", (3, 2, 3, 4))
    + _bn("bn-split-reduction", (2, 2, 64, 65))
    + _bn("nan", (4, 3, 5, 6), special="nan") + _bn("inf", (2, 5, 3, 7), special="inf")
    + _bn("strided", (4, 3, 5, 6), layout="strided") + _bn("transposed", (2, 5, 3, 7), layout="transposed")
    + _bn("relu-x4x3x5x6", (4, 3, 5, 6), activation="relu") + _bn("relu-nan", (2, 5, 3, 7), special="nan",
                                                                     activation="relu"))


# ----------------------------------------------------------------------------------------------- dropout
@dataclass(frozen=True)
class DropoutCase:
    """dropout_mask(shape, p, seed, offset=offset): ``offset`` elements into the seed's sequence."""

    id: str
    shape: Shape
    p: float
    seed: int
    offset: int = 0

    @property
    def shapes(self) -> list[Shape]:
        return [self.shape]


DROPOUT_CASES: list[DropoutCase] = unique(
    [DropoutCase("x3x4x5-p0.3", (3, 4, 5), 0.3, 7), DropoutCase("x3x4x5-p0.3-at37", (3, 4, 5), 0.3, 7, 37)]
    + [DropoutCase(f"x2x8x16x16-p{p:g}", (2, 8, 16, 16), p, 1234) for p in (0.0, 0.25, 0.5, 0.9)]
    + [DropoutCase("x2x8x16x16-p0.5-row3", (2, 8, 16, 16), 0.5, 1234, 3 * 8 * 16 * 16)])


ALL_CASES: dict[str, list] = {
    "conv": CONV_CASES, "max_pool": MAX_POOL_CASES, "avg_pool": AVG_POOL_CASES, "lp_pool": LP_POOL_CASES,
    "activation": ACTIVATION_CASES, "add": ADD_CASES, "softmax": SOFTMAX_CASES,
    "cross_entropy": CROSS_ENTROPY_CASES, "batch_norm": BATCH_NORM_CASES, "dropout": DROPOUT_CASES,
    "linear": LINEAR_CASES,
}


def finite(cases: Sequence[Any]) -> list[Any]:
    """The cases without planted non-finite values."""
    return [c for c in cases if getattr(c, "special", None) is None]


def ids(cases: Sequence[Any]) -> list[str]:
    return [c.id for c in cases]


def elements(case: Any) -> int:
    """The largest array of a case, in elements."""
    return max(math.prod(s) for s in case.shapes)



def backend_under_test(name: str) -> Any:
    """Backend ``name`` for a test, which fails (never skips) when it cannot run here: CI deselects the GPU tests
    with ``-m "not gpu"`` rather than letting them skip, and the cudasim backend must always run. With
    CNNKIT_CUPY_NO_POOL=1 (bench/gpu_check.sh's sanitizer runs) CuPy's memory pool is off, so every array is its
    own allocation and compute-sanitizer sees accesses past its end."""
    from cnnkit.backend import backend, unavailable_reason

    reason = unavailable_reason(name)
    if reason is not None:
        pytest.fail(f"backend {name!r} cannot run here: {reason}")
    be = backend(name)
    if name == "cupy" and os.environ.get("CNNKIT_CUPY_NO_POOL") == "1":
        be.xp.cuda.set_allocator(None)
    return be
