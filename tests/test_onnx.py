"""ONNX export (cnnkit.interop.onnx): the exported LeNet-5 (modern and classic), ResNet-20 (both shortcut options)
and a model of every other exportable layer run in onnxruntime and agree with our forward.

Needs the ``onnx`` extra (pip install 'cnnkit[onnx]': onnx and onnxruntime); skipped, with that reason shown,
where it is absent.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx", reason="ONNX export tests need the onnx extra: pip install 'cnnkit[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need the onnx extra: pip install 'cnnkit[onnx]'")

from tolerances import MODEL_REL_F32, max_rel_err  # noqa: E402

from cnnkit import models, nn  # noqa: E402
from cnnkit.interop.onnx import export_onnx  # noqa: E402


def _run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


def _randomise_batch_norm(model: nn.Layer, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _, layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            c = layer.num_features
            layer.running_mean = rng.uniform(-0.5, 0.5, c).astype(np.float32)
            layer.running_var = rng.uniform(0.5, 2.0, c).astype(np.float32)
            layer.weight.data = rng.uniform(0.5, 1.5, c).astype(np.float32)
            layer.bias.data = rng.uniform(-0.2, 0.2, c).astype(np.float32)


def _check(model: nn.Layer, tmp_path, batch: int = 3) -> None:
    model.eval()
    x = np.random.default_rng(1).standard_normal((batch, *model.input_shape)).astype(np.float32)
    path = export_onnx(model, tmp_path / "model.onnx", model.input_shape)
    expected = model(x)
    got = _run(path, x)
    assert got.shape == expected.shape
    err = max_rel_err(got, expected)
    assert err <= MODEL_REL_F32, f"onnxruntime vs cnnkit: max relative error {err:.3g}"


@pytest.mark.parametrize("name, kwargs", [("lenet5", {}), ("lenet5-classic", {}), ("resnet20", {}),
                                          ("resnet20", {"shortcut": "A"}), ("lenet1", {}), ("lenet300-100", {})])
def test_exported_model_runs_in_onnxruntime_like_our_forward(name, kwargs, tmp_path):
    model = models.create(name, **kwargs)
    _randomise_batch_norm(model, 0)
    _check(model, tmp_path)


def test_classic_lenet5_connection_table_is_baked_in(tmp_path):
    import onnx
    from onnx import numpy_helper

    model = models.lenet5(classic=True)
    model[4].weight.data[:] = 1.0  # disconnected weights too: the export must mask them
    path = export_onnx(model, tmp_path / "c.onnx", (1, 32, 32))
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.dims[:2] == [16, 6]]
    assert len(weights) == 1 and int((weights[0] != 0).sum()) == 60 * 25
    _check(model, tmp_path)


def test_every_other_layer_kind(tmp_path):
    """Groups, dilation, 'same' and asymmetric padding, flipped kernels, max/Lp/feature pooling, the other
    activations, a projection residual and dropout, in one model."""
    body = nn.Sequential(nn.Conv2d(8, 8, 3, padding="same", groups=2), nn.BatchNorm2d(8, affine=False), nn.ReLU())
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=(1, 0, 2, 1), dilation=2, flip_kernel=True), nn.LeakyReLU(0.2),
        nn.MaxPool2d(3, 2, padding=1, dilation=1), nn.Residual(body, nn.Conv2d(8, 8, 1)), nn.Sigmoid(),
        nn.LPPool2d(2, 2), nn.FeaturePool(2), nn.Dropout(0.3), nn.ZeroPadShortcut(4, 8, 2), nn.Tanh(),
        nn.AvgPool2d(2, padding=1, count_include_pad=False), nn.Flatten(), nn.Linear(32, 5), nn.LogSoftmax())
    model.input_shape = (2, 17, 15)
    model(np.zeros((1, *model.input_shape), np.float32))  # the Linear's size is right
    _check(model, tmp_path)
    model.layers[-1] = nn.Softmax()
    _check(model, tmp_path)


def test_fixed_batch_float64_model_and_training_mode_kept(tmp_path):
    import onnx

    model = models.resnet20().to("numpy", "float64").train()
    path = export_onnx(model, tmp_path / "m.onnx", (2, 3, 32, 32))
    assert model.training, "export must restore the training mode"
    graph = onnx.load(str(path)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [2, 3, 32, 32]
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    err = max_rel_err(_run(path, x.astype(np.float32)), model.eval()(x))
    assert err <= MODEL_REL_F32
    with pytest.raises(ValueError, match="float32 or float64"):
        export_onnx(model, tmp_path / "h.onnx", (3, 32, 32), dtype="float16")


def test_export_errors(tmp_path):
    class Odd(nn.Layer):
        def forward(self, x):
            return x

    with pytest.raises(NotImplementedError, match="no ONNX form for Odd"):
        export_onnx(nn.Sequential(Odd()), tmp_path / "x.onnx", (1, 4, 4))
    with pytest.raises(ValueError, match="input_shape"):
        export_onnx(models.lenet5(), tmp_path / "x.onnx", (32, 32))
