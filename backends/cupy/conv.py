"""Convolution launchers for kernels/conv.cu: forward with a fused bias + activation epilogue, backward data and
backward weight, each on a direct or a shared-memory tiled implicit-GEMM path (see :func:`conv_path`)."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from cnnkit.backends import LEAKY_SLOPE, conv_output_size, implements

from ._module import (
    ACT_CODES,
    THREADS,
    array_module,
    as_f32,
    blocks,
    ceil_div,
    check_elements,
    f32,
    i32,
    launch,
    reduction_threads,
    splits_for,
)
from .activation import add_forward
from .norm import channel_sums

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]

TILE_N, TILE_K = 64, 16
"""Column and reduction tile of conv.cu's 16 TM x 64 tiles, TM in TMS."""
TMS = (1, 2, 4)
"""The rows per thread that conv.cu has 16 TM x 64 tiles for (``conv2d_*_gemm_tm<TM>``; TM = 1 for the weight
gradient only)."""
WIDE_N = 256
"""Columns of conv.cu's wide 16-row tile (``conv2d_*_gemm_wide``), which takes the GEMMs of 16 to 31 rows
(ResNet's 16-channel layers) instead of TM = 1: always in the forward and data gradient, and in the weight
gradient where the columns are more than TILE_N."""
TARGET_BLOCKS = 2048
"""The tiled weight gradient splits its reduction until about this many blocks run: 8 resident 256-thread blocks
on each of an H100's or H200's 132 SMs, twice over (512 left such a GPU mostly idle: bench/NOTES.md)."""
MIN_SPLIT_ITEMS = 64
"""The tiled weight gradient's shortest reduction chunk (unless that leaves fewer than MIN_SPLITS chunks) ..."""
MIN_DIRECT_SPLIT_ITEMS = 8 * THREADS
"""... and the direct one's: every thread of a chunk's block sums at least 8 products."""
MAX_SPLITS = 1024
"""At most this many chunks of a weight gradient's reduction."""
MIN_SPLITS = 16
"""A short weight-gradient reduction (a linear layer's batch) may still be cut into this many chunks: its few
output tiles would otherwise leave all but a handful of SMs idle."""
SMALL_GEMM_BLOCKS = 1024
"""The forward and data-gradient GEMMs split their reduction (split-K) until about this many blocks run, where
their output tiles are fewer (a linear layer of a small batch: LeNet-5's C5 forward is 8 tiles of 64 x 64 and a
400-long reduction)."""
WEIGHT_TILE_MIN = 128
"""The weights per group from which the weight gradient takes the tiled path (see :func:`conv_path`)."""
MAX_GRID_YZ = 65535


def conv_path(w_shape: tuple[int, ...], groups: int, weight_gradient: bool = False) -> str:
    """Which kernels a layer uses: ``"tiled"`` (shared-memory implicit GEMM) when each group's GEMM reduces over
    at least one 16-deep slice, ``(in_channels / groups) * R * S >= 16`` (a 3-channel 3x3 stem's 27, a 1x1
    projection of 16 channels), and either fills a 16-row tile,
    ``out_channels / groups >= 16`` (ResNet's 3x3 stages, LeNet-5's C3 and C5), or has a 1x1 kernel (a linear
    layer's few outputs: the direct weight gradient would run a block per weight); otherwise ``"direct"``
    (LeNet C1, depthwise and other narrow layers, where tiles would be mostly empty). The
    ``weight_gradient``'s GEMM reduces over (n, oh, ow), so it is tiled wherever a group has at least
    WEIGHT_TILE_MIN weights (LeNet-5's C1 with 150, a 3-channel stem, 1x1 projections of 16 channels: the direct
    path spends a block on each weight and divides to find each product's pixel); a depthwise 3x3 layer's 9 stay
    direct."""
    k, cg, r, s = w_shape
    if weight_gradient:
        return "tiled" if k // groups * cg * r * s >= WEIGHT_TILE_MIN else "direct"
    return "tiled" if cg * r * s >= TILE_K and (k // groups >= 16 or r * s == 1) else "direct"


UNIT, NO_PADS = (1, 1), (0, 0, 0, 0)
"""Stride or dilation 1, and no padding: a 1x1 conv's geometry."""


def _fully_connected(x_shape, w_shape, padding: Pads, dilation: Pair, groups: int) -> bool:
    """Whether the kernel covers the whole unpadded input (LeNet-5's C5): then the conv is a 1x1 conv of
    (N, C*H*W, 1, 1) images, with the same products in the same order and none of the 1-in-R*S masked taps
    that the backward data pass would otherwise scan."""
    return (groups == 1 and tuple(x_shape[2:]) == tuple(w_shape[2:]) != (1, 1) and not any(padding)
            and tuple(dilation) == UNIT)


def _pixels(a: Any) -> Any:
    """(N, C, H, W) as (N, C*H*W, 1, 1)."""
    return a.reshape(a.shape[0], -1, 1, 1)


def _kernel_params(x_shape, w_shape, stride: Pair, padding: Pads, dilation: Pair, groups: int) -> tuple[int, ...]:
    """The CONV_PARAMS ints of conv.cu: N C H W K OH OW R S stride_h stride_w pad_t pad_l dil_h dil_w groups."""
    n, c, h, w = x_shape
    k, _, r, s = w_shape
    oh = conv_output_size(h, r, stride[0], padding[0], padding[1], dilation[0])
    ow = conv_output_size(w, s, stride[1], padding[2], padding[3], dilation[1])
    check_elements(n * k * oh * ow, "the conv output")
    return (n, c, h, w, k, oh, ow, r, s, stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1],
            groups)


def _tm(rows: int) -> int:
    """Rows per thread of the GEMM tile (tiles of 16 TM rows): the largest of TMS whose tile the GEMM's rows
    fill, so a gathered B element serves as many rows as it can."""
    return max(tm for tm in TMS if tm == 1 or rows >= 16 * tm)


def _tile(rows: int) -> tuple[str, int, int]:
    """(kernel suffix, BM, BN) of the forward or data-gradient GEMM tile for a GEMM of ``rows`` rows: conv.cu's
    wide 16 x WIDE_N tile where 16-row tiles are the largest the rows fill, else 16 TM x TILE_N."""
    tm = _tm(rows)
    return ("wide", 16, WIDE_N) if tm == 1 else (f"tm{tm}", 16 * tm, TILE_N)


def _weight_tile(rows: int, cols: int) -> tuple[str, int, int]:
    """(kernel suffix, BM, BN) of the weight-gradient GEMM tile (``cols`` = (in_channels / groups) R S): 16 TM x
    TILE_N, or the wide 16 x WIDE_N tile where 16-row tiles are the largest the rows fill and the columns are
    more than TILE_N (a 16-channel 3x3 layer's 144: one wide tile instead of three 16 x 64 ones, each gathered
    element serving 4 rows of a thread instead of 1)."""
    tm = _tm(rows)
    return ("wide", 16, WIDE_N) if tm == 1 and cols > TILE_N else (f"tm{tm}", 16 * tm, TILE_N)


def _gemm_grid(rows: int, cols: int, bm: int, bn: int, z: int) -> tuple[int, int, int]:
    grid = (ceil_div(cols, bn), ceil_div(rows, bm), z)
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise ValueError(f"conv too large for the tiled kernels' grid {grid}: reduce groups or channels")
    return grid


def weight_splits(reduction: int, tiles: int, tiled: bool) -> tuple[int, int]:
    """(splits, chunk) of the weight gradient's (n, oh, ow) reduction over ``tiles`` blocks (tiled: output tiles;
    direct: weight elements): enough splits to run about TARGET_BLOCKS blocks, at most MAX_SPLITS, each chunk a
    multiple of TILE_K and at least MIN_SPLIT_ITEMS long (tiled; shorter where that leaves fewer than MIN_SPLITS
    chunks) or MIN_DIRECT_SPLIT_ITEMS (direct)."""
    min_items = min(MIN_SPLIT_ITEMS, max(TILE_K, reduction // MIN_SPLITS)) if tiled else MIN_DIRECT_SPLIT_ITEMS
    want = max(1, min(MAX_SPLITS, TARGET_BLOCKS // tiles, reduction // min_items))
    return splits_for(reduction, want, TILE_K)


def gemm_splits(reduction: int, tiles: int) -> tuple[int, int]:
    """(splits, chunk) of a forward or data-gradient GEMM's reduction over ``tiles`` output tiles (groups
    included, so the grid's z stays at most SMALL_GEMM_BLOCKS): one chunk where the tiles fill SMALL_GEMM_BLOCKS,
    else enough TILE_K-multiple chunks to run about that many blocks."""
    return splits_for(reduction, max(1, min(SMALL_GEMM_BLOCKS // tiles, reduction // TILE_K)), TILE_K)


def _split_gemm(gemm: Callable[[tuple, Any, np.int32], None], grid: tuple[int, int, int], reduction: int, out: Any,
                epilogue: tuple = (None, 0, 1)) -> None:
    """Run a forward or data-gradient GEMM, ``gemm(grid, target, chunk)``, into ``out``: split-K where its grid is
    small, into the chunks' partial outputs (the kernel applies no epilogue to a part), then sum_splits with the
    ``epilogue`` (bias or None, activation code, channels) into ``out``."""
    splits, chunk = gemm_splits(reduction, grid[0] * grid[1] * grid[2])
    if splits == 1:
        gemm(grid, out, np.int32(chunk))
        return
    check_elements(splits * out.size, "the split conv GEMM's buffer")
    partial = array_module().empty((splits, *out.shape), dtype=np.float32)
    gemm((grid[0], grid[1], grid[2] * splits), partial, np.int32(chunk))
    _sum_splits(partial, out, *epilogue)


def _sum_splits(partial: Any, out: Any, bias: Any | None = None, act: int = 0, channels: int = 1) -> None:
    """out = act(sum of ``partial``'s leading axis + bias), ``out`` an (N, channels, ...) array."""
    launch("conv", "sum_splits", blocks(out.size), THREADS, partial, *i32(partial.shape[0], out.size),
           partial if bias is None else bias, *i32(bias is not None, act), f32(LEAKY_SLOPE),
           *i32(channels, out.size // (out.shape[0] * channels)), out)


@implements("cupy")
def conv2d_forward(x: Any, w: Any, b: Any | None, stride: Pair, padding: Pads, dilation: Pair, groups: int,
                   activation: str | None = None, residual: Any | None = None) -> Any:
    """y = act(conv(x, w) + b) in one kernel launch; with a ``residual``, the conv and bias in one and
    add_forward's kernel for the sum and the activation."""
    if residual is not None:
        return add_forward(conv2d_forward(x, w, b, stride, padding, dilation, groups), residual, activation)
    if _fully_connected(x.shape, w.shape, padding, dilation, groups):
        return conv2d_forward(_pixels(x), _pixels(w), b, UNIT, NO_PADS, UNIT, 1, activation)
    xp = array_module()
    x, w = as_f32(x, "x"), as_f32(w, "w")
    bias = None if b is None else as_f32(b, "b")
    geom = _kernel_params(x.shape, w.shape, stride, padding, dilation, groups)
    n, k, oh, ow = geom[0], geom[4], geom[5], geom[6]
    y = xp.empty((n, k, oh, ow), dtype=np.float32)
    act = ACT_CODES[activation]
    head = (x, w, w if bias is None else bias, *i32(bias is not None, act), f32(LEAKY_SLOPE))
    if conv_path(w.shape, groups) == "tiled":
        tile, bm, bn = _tile(k // groups)
        grid = _gemm_grid(k // groups, n * oh * ow, bm, bn, groups)
        _split_gemm(lambda grid, out, chunk: launch("conv", f"conv2d_fwd_gemm_{tile}", grid, THREADS, *head, out,
                                                    chunk, *i32(*geom)),
                    grid, math.prod(w.shape[1:]), y, (bias, act, k))
    else:
        launch("conv", "conv2d_fwd_direct", blocks(y.size), THREADS, *head, y, *i32(*geom))
    return y


@implements("cupy")
def conv2d_backward(dy: Any, x: Any, w: Any, stride: Pair, padding: Pads, dilation: Pair, groups: int,
                    need_dx: bool = True, need_db: bool = True,
                    need_dw: bool = True) -> tuple[Any | None, Any | None, Any | None]:
    """(dx, dw, db) of the pre-activation conv output's gradient dy; each is None when not needed."""
    if _fully_connected(x.shape, w.shape, padding, dilation, groups):
        dx, dw, db = conv2d_backward(dy, _pixels(x), _pixels(w), UNIT, NO_PADS, UNIT, 1, need_dx, need_db, need_dw)
        return (None if dx is None else dx.reshape(x.shape), None if dw is None else dw.reshape(w.shape), db)
    dy, x, w = as_f32(dy, "dy"), as_f32(x, "x"), as_f32(w, "w")
    geom = _kernel_params(x.shape, w.shape, stride, padding, dilation, groups)
    tiled = conv_path(w.shape, groups) == "tiled"
    dx = _backward_data(dy, w, x.shape, geom, tiled) if need_dx else None
    dw = _backward_weight(dy, x, w.shape, geom, conv_path(w.shape, groups, True) == "tiled") if need_dw else None
    db = channel_sums(dy) if need_db else None
    return dx, dw, db


def _backward_data(dy, w, x_shape, geom, tiled: bool):
    xp = array_module()
    n, c, h, wd = x_shape
    k, _, r, s = w.shape
    groups, stride, dilation = geom[-1], geom[9:11], geom[13:15]
    dx = xp.empty(x_shape, dtype=np.float32)
    tile, bm, bn = _tile(c // groups)
    if tiled and stride != UNIT and dilation == UNIT:  # the taps that meet an output pixel, phase by phase
        sh, sw = stride
        grid = _gemm_grid(c // groups, n * ceil_div(h, sh) * ceil_div(wd, sw), bm, bn, groups * sh * sw)
        _split_gemm(lambda grid, out, chunk: launch("conv", f"conv2d_bwd_data_phase_{tile}", grid, THREADS, dy, w,
                                                    out, chunk, *i32(*geom)),
                    grid, k // groups * ceil_div(r, sh) * ceil_div(s, sw), dx)  # phase (0, 0)'s, the largest
    elif tiled:
        grid = _gemm_grid(c // groups, n * h * wd, bm, bn, groups)
        _split_gemm(lambda grid, out, chunk: launch("conv", f"conv2d_bwd_data_gemm_{tile}", grid, THREADS, dy, w, out,
                                                    chunk, *i32(*geom)),
                    grid, k // groups * r * s, dx)
    else:
        launch("conv", "conv2d_bwd_data_direct", blocks(dx.size), THREADS, dy, w, dx, *i32(*geom))
    return dx


def _backward_weight(dy, x, w_shape, geom, tiled: bool):
    xp = array_module()
    dw = xp.empty(w_shape, dtype=np.float32)
    k, cg, r, s = w_shape
    n, oh, ow, groups = geom[0], geom[5], geom[6], geom[-1]
    wtile, bm, bn = _weight_tile(k // groups, cg * r * s)
    tiles = ceil_div(cg * r * s, bn) * ceil_div(k // groups, bm) * groups if tiled else dw.size
    splits, chunk = weight_splits(n * oh * ow, tiles, tiled)
    check_elements(splits * dw.size, "the split weight-gradient buffer")
    out = dw if splits == 1 else xp.empty((splits, *w_shape), dtype=np.float32)
    if tiled:
        grid = _gemm_grid(k // groups, cg * r * s, bm, bn, groups * splits)
        launch("conv", f"conv2d_bwd_weight_gemm_{wtile}", grid, THREADS, dy, x, out, np.int32(chunk), *i32(*geom))
    else:
        launch("conv", "conv2d_bwd_weight_direct", (dw.size, splits), reduction_threads(chunk), dy, x, out,
               np.int32(chunk), *i32(*geom))  # a short reduction (a linear layer's batch) gets a small block
    if splits > 1:
        _sum_splits(out, dw)
    return dw
