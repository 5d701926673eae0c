"""Model analysis: per-layer summary (output shapes, parameter counts), receptive fields and FLOP counts.

Shapes come from one forward pass, in eval mode, of a zero batch ``(batch, *input_shape)`` through the model,
with every leaf layer's ``forward`` wrapped to record its input and output shapes (conv + activation fusion is
switched off for that pass so every layer is seen). The model's training flags and fusion are restored after;
eval mode means no batch-norm statistics or dropout counters change.

Conventions
-----------
* ``input_shape`` is (C, H, W) (or (features,) for an MLP) without the batch; it defaults to the model's
  ``input_shape`` attribute, which every model of :mod:`cnnkit.models` has.
* Receptive field, per spatial axis, by the standard recurrence over the conv and pooling layers:
  ``rf += (k - 1) * dilation * jump``, ``start += ((k - 1) * dilation / 2 - pad_before) * jump``,
  ``jump *= stride``, from ``rf = 1, jump = 1, start = 0`` at the input. ``jump`` is the effective stride (input
  pixels between neighbouring outputs); ``start`` is the input coordinate of the centre of the first output's
  receptive field (input pixel i sits at coordinate i). A Residual takes the larger receptive field of its two
  branches; other containers are chains of their children in definition order.
* FLOPs count multiply-adds of the GEMM-shaped layers only (Conv2d, Linear), 1 multiply-add = 2 FLOPs:
  conv forward = 2 * (N * K * OH * OW) * (C / groups) * R * S (dense: a connection table is a mask on the
  full kernel, which the kernels compute); linear forward = 2 * N * in_features * out_features. Backward = 2 x
  forward (dx and dweight are each one GEMM of the forward's size; cnnkit computes dx for the first layer too).
  Bias additions, activations, pooling and batch norm are not counted (they are memory-bound, not GEMM work).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cnnkit import functional as F
from cnnkit.nn import (
    AvgPool2d,
    Conv2d,
    GlobalAvgPool2d,
    Layer,
    Linear,
    LPPool2d,
    MaxPool2d,
    Residual,
    Subsampling,
)

Row = dict[str, Any]


# ----------------------------------------------------------------------------------------------- summary
def summary(model: Layer, input_shape: Sequence[int] | None = None, print_table: bool = True) -> list[Row]:
    """One row per leaf layer call, in execution order: name, type, output_shape, params; then a "total" row.

    ``params`` counts the parameters that can be nonzero (a conv with a connection table counts only its
    connected weights, so classic LeNet-5 totals 60,850). The total row's output_shape is the model's output.
    """
    calls, out_shape = _trace(model, input_shape)
    rows = [{"name": name, "type": type(layer).__name__, "output_shape": y_shape, "params": layer.own_parameter_count()}
            for name, layer, _, y_shape in calls]
    total = sum(layer.own_parameter_count() for _, layer in model.modules())
    rows.append({"name": "total", "type": "", "output_shape": out_shape, "params": total})
    if print_table:
        _print(rows, ("name", "type", "output_shape", "params"))
    return rows


# ----------------------------------------------------------------------------------------------- receptive field
def receptive_field(model: Layer, input_shape: Sequence[int] | None = None,
                    print_table: bool = False) -> list[Row]:
    """One row per conv or pooling layer: name, type, kernel, stride, rf, jump, start, each an (h, w) pair.

    See the module docstring for the recurrence and the meaning of ``jump`` and ``start``.
    """
    calls, _ = _trace(model, input_shape)
    in_shapes = {id(layer): x_shape for _, layer, x_shape, _ in calls}
    rows: list[Row] = []
    _rf_walk(model, "", ((1, 1), (1, 1), (0.0, 0.0)), in_shapes, rows)
    if print_table:
        _print(rows, ("name", "type", "kernel", "stride", "rf", "jump", "start"))
    return rows


Geometry = tuple[tuple[int, int], tuple[int, int], tuple[float, float]]  # rf, jump, start


def _rf_walk(layer: Layer, name: str, geom: Geometry, in_shapes: dict[int, tuple], rows: list[Row]) -> Geometry:
    """Propagate (rf, jump, start) through ``layer``, appending a row for each conv/pool leaf it holds."""
    if isinstance(layer, Residual):
        body = _rf_walk(layer.body, _join(name, "body"), geom, in_shapes, rows)
        if layer.projection is None:
            return body
        shortcut = _rf_walk(layer.projection, _join(name, "projection"), geom, in_shapes, rows)
        return max(body, shortcut, key=lambda g: g[0][0] * g[0][1])
    kids = list(layer.children())
    if kids:
        for child_name, child in kids:
            geom = _rf_walk(child, _join(name, child_name), geom, in_shapes, rows)
        return geom
    window = _window(layer, in_shapes.get(id(layer)))
    if window is None:
        return geom
    kernel, stride, dilation, pad = window
    rf, jump, start = geom
    rf = tuple(r + (k - 1) * d * j for r, k, d, j in zip(rf, kernel, dilation, jump, strict=True))
    start = tuple(s + ((k - 1) * d / 2 - p) * j
                  for s, k, d, p, j in zip(start, kernel, dilation, pad, jump, strict=True))
    jump = tuple(j * s for j, s in zip(jump, stride, strict=True))
    rows.append({"name": name, "type": type(layer).__name__, "kernel": kernel, "stride": stride,
                 "rf": rf, "jump": jump, "start": start})
    return rf, jump, start


def _window(layer: Layer, x_shape: tuple | None):
    """(kernel, stride, dilation, padding before) of a conv/pool leaf, each an (h, w) pair; None otherwise."""
    if isinstance(layer, Conv2d):
        top, _, left, _ = F.conv_padding(layer.padding, layer.kernel_size, layer.dilation, layer.stride)
        return layer.kernel_size, layer.stride, layer.dilation, (top, left)
    if isinstance(layer, (MaxPool2d, AvgPool2d, LPPool2d)):
        return layer.kernel_size, layer.stride, getattr(layer, "dilation", (1, 1)), layer.padding
    if isinstance(layer, Subsampling):
        return layer.kernel_size, layer.stride, (1, 1), (0, 0)
    if isinstance(layer, GlobalAvgPool2d) and x_shape is not None:
        return tuple(x_shape[2:4]), (1, 1), (1, 1), (0, 0)
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ----------------------------------------------------------------------------------------------- FLOPs
def flops(model: Layer, input_shape: Sequence[int] | None = None, batch_size: int = 1,
          print_table: bool = False) -> list[Row]:
    """Forward and backward FLOPs of each Conv2d / Linear call for a batch of ``batch_size``, then a "total" row.

    Rows: name, type, output_shape, forward, backward (ints). See the module docstring for the definitions.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    calls, _ = _trace(model, input_shape, batch_size)
    rows = []
    for name, layer, _, y_shape in calls:
        if isinstance(layer, Conv2d):
            k, cg, r, s = layer.weight.shape
            forward = 2 * int(np.prod(y_shape)) * cg * r * s
        elif isinstance(layer, Linear):
            forward = 2 * y_shape[0] * layer.in_features * layer.out_features
        else:
            continue
        rows.append({"name": name, "type": type(layer).__name__, "output_shape": y_shape,
                     "forward": forward, "backward": 2 * forward})
    rows.append({"name": "total", "type": "", "output_shape": None,
                 "forward": sum(r["forward"] for r in rows), "backward": sum(r["backward"] for r in rows)})
    if print_table:
        _print(rows, ("name", "type", "output_shape", "forward", "backward"))
    return rows


# ----------------------------------------------------------------------------------------------- tracing
def _trace(model: Layer, input_shape: Sequence[int] | None, batch: int = 1):
    """Run a zero batch through ``model``; returns ([(name, layer, x_shape, y_shape) per leaf call], y_shape)."""
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a cnnkit Layer, got {type(model).__name__}")
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError("input_shape is required (C, H, W) for a model without an input_shape attribute")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape):
        raise ValueError(f"input_shape must be positive ints without the batch, e.g. (1, 32, 32); got {input_shape!r}")
    params = model.parameters()
    dtype = params[0].data.dtype if params else "float32"
    x = model.backend.xp.zeros((batch, *shape), dtype=dtype)
    calls: list[tuple[str, Layer, tuple, tuple]] = []
    with _recording(model, calls):
        y = model(x)
    return calls, tuple(y.shape)


@contextlib.contextmanager
def _recording(model: Layer, calls: list) -> Iterator[None]:
    """Eval mode, no fusion, and each leaf's forward wrapped to log its call; everything restored after."""
    modules = list(model.modules())
    training = [layer.training for _, layer in modules]
    patched: list[tuple[Layer, str, Any]] = []  # (layer, attribute, previous instance value or _ABSENT)

    def patch(layer: Layer, attr: str, value: Any) -> None:
        patched.append((layer, attr, vars(layer).get(attr, _ABSENT)))
        setattr(layer, attr, value)

    def wrap(name: str, layer: Layer):
        forward = layer.forward

        def logged(x):
            y = forward(x)
            calls.append((name, layer, tuple(x.shape), tuple(y.shape)))
            return y
        return logged

    model.eval()
    try:
        seen: set[int] = set()
        for name, layer in modules:
            if id(layer) in seen:  # a layer shared at two places is patched once
                continue
            seen.add(id(layer))
            for fusion in ("fuse_activation", "fuse_activation_pool", "fold_batchnorm"):
                if hasattr(layer, fusion):
                    patch(layer, fusion, None)
            if not list(layer.children()):
                patch(layer, "forward", wrap(name or type(layer).__name__, layer))
        yield
    finally:
        for layer, attr, previous in reversed(patched):
            if previous is _ABSENT:
                delattr(layer, attr)
            else:
                setattr(layer, attr, previous)
        for (_, layer), mode in zip(modules, training, strict=True):
            layer.training = mode


_ABSENT = object()


def _print(rows: list[Row], columns: tuple[str, ...]) -> None:
    """A plain aligned text table; ints are right-aligned with thousands separators."""
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    cells = [[(f"{v:,}" if is_int(v) else "" if v is None else str(v), is_int(v)) for v in map(r.get, columns)]
             for r in rows]
    widths = [max(len(c), *(len(row[i][0]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in cells:
        line = (text.rjust(w) if right else text.ljust(w) for (text, right), w in zip(row, widths, strict=True))
        print("  ".join(line).rstrip())
