"""ONNX export: ``export_onnx(model, path, input_shape)`` writes an inference graph of a cnnkit model.

Needs the ``onnx`` package (``pip install 'cnnkit[onnx]'``; onnxruntime runs the result). The graph is the
model in eval mode: batch norm uses its running statistics, dropout is the identity. Every layer the models use
is covered: Conv2d (groups, dilation, explicit/"same" padding; a connection table is baked in as zeros of the
weight, ``flip_kernel`` as the flipped kernel), MaxPool2d, AvgPool2d, LPPool2d, FeaturePool, GlobalAvgPool2d,
Subsampling, BatchNorm2d, Linear, Flatten, Dropout, the activations (ScaledTanh as Mul-Tanh-Mul), Softmax,
LogSoftmax, Residual (Add) and ZeroPadShortcut (strided Slice + Pad). Another layer is a NotImplementedError
naming it.

Shapes are found by running the model once on zeros of ``input_shape`` while the graph is written, so each
node knows its input's shape.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnnkit import backends as _contract
from cnnkit import functional as F
from cnnkit import nn

OPSET = 17
"""The ONNX opset written (onnxruntime >= 1.14 runs it)."""

__all__ = ["export_onnx", "OPSET"]


class _Graph:
    """The nodes and initializers being written, with fresh tensor names."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: Any, hint: str, dtype: Any = None) -> str:
        name = self.name(hint)
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def export_onnx(model: nn.Layer, path: str | os.PathLike, input_shape: tuple[int, ...],
                dtype: str = "float32") -> Path:
    """Write ``model`` as an ONNX graph to ``path`` and return the path.

    ``input_shape`` is (C, H, W) (the batch axis is then dynamic, named "N") or (N, C, H, W) (fixed); the
    graph's input is "input", its output "output". ``dtype`` is the graph's float type, whatever the model's:
    float32 (the default; onnxruntime's CPU provider has no float64 convolution) or float64.
    """
    if not isinstance(model, nn.Layer):
        raise TypeError(f"model must be a cnnkit Layer, got {type(model).__name__}")
    shape = tuple(input_shape)
    if len(shape) not in (3, 4) or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape):
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W) of positive ints, got {input_shape!r}")
    if str(np.dtype(dtype)) not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    dtype = np.dtype(dtype)
    params = model.parameters()
    model_dtype = np.dtype(params[0].data.dtype) if params else dtype
    was_training = model.training
    model.eval()
    try:
        graph = _Graph(dtype)
        x = model.backend.asarray(np.zeros(shape if len(shape) == 4 else (1, *shape), dtype=model_dtype))
        out, y = _emit(model, graph, "input", x)
    finally:
        model.train(was_training)
    graph.nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    batch = shape[0] if len(shape) == 4 else "N"
    proto = helper.make_graph(graph.nodes, type(model).__name__, [
        helper.make_tensor_value_info("input", elem, [batch, *shape[-3:]])], [
        helper.make_tensor_value_info("output", elem, [batch, *y.shape[1:]])], graph.initializers)
    onnx_model = helper.make_model(proto, producer_name="cnnkit", opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(onnx_model)
    path = Path(path)
    onnx.save(onnx_model, os.fspath(path))
    return path


def _host(layer: nn.Layer, array: Any) -> np.ndarray:
    return np.array(layer.backend.to_numpy(array))


def _emit(layer: nn.Layer, g: _Graph, x_name: str, x: Any) -> tuple[str, Any]:
    """Write ``layer`` applied to tensor ``x_name`` (whose sample value is ``x``); the output's name and value."""
    if isinstance(layer, nn.Sequential):
        for child in layer:
            x_name, x = _emit(child, g, x_name, x)
        return x_name, x
    if isinstance(layer, nn.Residual):
        body_name, y = _emit(layer.body, g, x_name, x)
        short_name = x_name if layer.projection is None else _emit(layer.projection, g, x_name, x)[0]
        return g.node("Add", [body_name, short_name], "residual"), y
    y = layer.forward(x)
    for kinds, writer in _WRITERS:
        if isinstance(layer, kinds):
            return writer(layer, g, x_name, tuple(x.shape)), y
    raise NotImplementedError(f"export_onnx has no ONNX form for {type(layer).__name__}({layer.extra_repr()})")


def _conv(m: nn.Conv2d, g: _Graph, x: str, shape: tuple[int, ...]) -> str:
    top, bottom, left, right = F.conv_padding(m.padding, m.kernel_size, m.dilation, m.stride)
    inputs = [x, g.const(_host(m, m.effective_weight()), "conv_w")]
    if m.bias is not None:
        inputs.append(g.const(_host(m, m.bias.data), "conv_b"))
    return g.node("Conv", inputs, "conv", kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=[top, left, bottom, right], dilations=list(m.dilation), group=m.groups)


def _linear(m: nn.Linear, g: _Graph, x: str, shape: tuple[int, ...]) -> str:
    inputs = [x, g.const(_host(m, m.weight.data), "fc_w")]
    if m.bias is not None:
        inputs.append(g.const(_host(m, m.bias.data), "fc_b"))
    return g.node("Gemm", inputs, "fc", transB=1)


def _batch_norm(m: nn.BatchNorm2d, g: _Graph, x: str, shape: tuple[int, ...]) -> str:
    gamma, beta = (_host(m, a) for a in m._gamma_beta())
    inputs = [x, g.const(gamma, "bn_scale"), g.const(beta, "bn_bias"), g.const(_host(m, m.running_mean), "bn_mean"),
              g.const(_host(m, m.running_var), "bn_var")]
    return g.node("BatchNormalization", inputs, "bn", epsilon=m.eps)


def _pads(padding: tuple[int, int]) -> list[int]:
    return [padding[0], padding[1], padding[0], padding[1]]


def _max_pool(m: nn.MaxPool2d, g: _Graph, x: str, shape: tuple[int, ...]) -> str:
    return g.node("MaxPool", [x], "maxpool", kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=_pads(m.padding), dilations=list(m.dilation), ceil_mode=int(m.ceil_mode))


def _avg_pool(m: nn.AvgPool2d, g: _Graph, x: str, shape: tuple[int, ...]) -> str:
    return g.node("AveragePool", [x], "avgpool", kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=_pads(m.padding), ceil_mode=int(m.ceil_mode), count_include_pad=int(m.count_include_pad))


def _lp_pool(m: nn.LPPool2d, g: _Graph, x: str, shape: tuple[int, ...]) -> str:
    if m.norm_type != int(m.norm_type) or m.ceil_mode:
        raise NotImplementedError(f"export_onnx: ONNX LpPool (opset {OPSET}) needs an integer norm_type and no "
                                  f"ceil_mode, got {m!r}")
    return g.node("LpPool", [x], "lppool", kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=_pads(m.padding), p=int(m.norm_type))


def _feature_pool(m: nn.FeaturePool, g: _Graph, x: str, shape: tuple[int, ...]) -> str:
    n, c, h, w = shape
    grouped = g.node("Reshape", [x, g.const([0, c // m.group_size, m.group_size, h, w], "shape", np.int64)],
                     "group")
    return g.node("ReduceL2", [grouped], "featurepool", axes=[2], keepdims=0)


def _global_avg_pool(m: nn.GlobalAvgPool2d, g: _Graph, x: str, shape: tuple[int, ...]) -> str:
    return g.node("Flatten", [g.node("GlobalAveragePool", [x], "gap")], "flatten", axis=1)


def _subsampling(m: nn.Subsampling, g: _Graph, x: str, shape: tuple[int, ...]) -> str:
    window = m.kernel_size[0] * m.kernel_size[1]
    mean = g.node("AveragePool", [x], "subsample", kernel_shape=list(m.kernel_size), strides=list(m.stride))
    scale = g.const(_host(m, m.weight.data)[:, None, None] * window, "subsample_w")
    return g.node("Add", [g.node("Mul", [mean, scale], "scaled"), g.const(_host(m, m.bias.data)[:, None, None],
                                                                           "subsample_b")], "subsampled")


def _zero_pad(m: nn.ZeroPadShortcut, g: _Graph, x: str, shape: tuple[int, ...]) -> str:
    big = np.iinfo(np.int64).max
    sliced = g.node("Slice", [x, g.const([0, 0], "starts", np.int64), g.const([big, big], "ends", np.int64),
                              g.const([2, 3], "axes", np.int64), g.const([m.stride] * 2, "steps", np.int64)], "sub")
    pads = g.const([0, m.pad, 0, 0, 0, m.pad, 0, 0], "pads", np.int64)
    return g.node("Pad", [sliced, pads], "zeropad", mode="constant")


def _scaled_tanh(m: nn.ScaledTanh, g: _Graph, x: str, shape: tuple[int, ...]) -> str:
    inner = g.node("Mul", [x, g.const(_contract.SCALED_TANH_S, "tanh_s")], "tanh_in")
    return g.node("Mul", [g.node("Tanh", [inner], "tanh"), g.const(_contract.SCALED_TANH_A, "tanh_a")], "stanh")


def _simple(op: str, **attrs: Any):
    return lambda m, g, x, shape: g.node(op, [x], op.lower(), **attrs)


_WRITERS = (
    (nn.Conv2d, _conv), (nn.Linear, _linear), (nn.BatchNorm2d, _batch_norm), (nn.MaxPool2d, _max_pool),
    (nn.AvgPool2d, _avg_pool), (nn.LPPool2d, _lp_pool), (nn.FeaturePool, _feature_pool),
    (nn.GlobalAvgPool2d, _global_avg_pool), (nn.Subsampling, _subsampling), (nn.ZeroPadShortcut, _zero_pad),
    (nn.ScaledTanh, _scaled_tanh), (nn.Flatten, _simple("Flatten", axis=1)), (nn.Dropout, _simple("Identity")),
    (nn.ReLU, _simple("Relu")), (nn.Tanh, _simple("Tanh")), (nn.Sigmoid, _simple("Sigmoid")),
    (nn.Softmax, _simple("Softmax", axis=1)), (nn.LogSoftmax, _simple("LogSoftmax", axis=1)),
    (nn.LeakyReLU, lambda m, g, x, shape: g.node("LeakyRelu", [x], "leakyrelu", alpha=m.negative_slope)),
)
