"""cnnkit.nn layers: finite-difference gradient checks in float64 for every layer (input and every parameter),
plus the layer machinery: conv+activation fusion, connection masks, true convolution, train/eval, freezing,
backend/dtype moves and state dicts."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from gradcheck import check_grad
from tolerances import assert_close_f32, assert_close_f64

from cnnkit import functional as F
from cnnkit import nn
from cnnkit.backends import ACTIVATIONS


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def f64(layer: nn.Layer) -> nn.Layer:
    return layer.to("numpy", dtype="float64")


def gradcheck_layer(layer: nn.Layer, x: np.ndarray, what: str, before=lambda: None) -> dict[str, np.ndarray]:
    """Check dx and every parameter grad of ``layer`` at ``x`` against finite differences of sum(layer(x) * r).
    ``before`` runs ahead of every forward (e.g. to replay a dropout mask). Returns the analytic grads."""
    before()
    y = layer(x)
    r = _rng("projection", what).standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(r)
    params, grads = {"x": x}, {"x": dx}
    for name, p in layer.named_parameters():
        assert p.grad is not None, f"{what}: {name} got no gradient"
        params[name], grads[name] = p.data, p.grad

    def loss() -> float:
        before()
        return float((layer(x) * r).sum())

    check_grad(loss, params, grads, what=what)
    return grads


# ----------------------------------------------------------------------------------------------- conv
CONV_CASES = {
    # name: (x shape, constructor kwargs)
    "plain": ((2, 3, 6, 6), dict(in_channels=3, out_channels=4, kernel_size=3)),
    "stride2_pad1_dil2": ((2, 2, 7, 7), dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1,
                                              dilation=2)),
    "same_even_kernel": ((1, 2, 5, 6), dict(in_channels=2, out_channels=2, kernel_size=(2, 4), padding="same")),
    "groups2_no_bias": ((2, 4, 5, 5), dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, bias=False)),
    "flip_kernel": ((2, 2, 6, 5), dict(in_channels=2, out_channels=3, kernel_size=(3, 2), padding=1,
                                        flip_kernel=True)),
    "masked": ((2, 3, 6, 6), dict(in_channels=3, out_channels=4, kernel_size=3,
                                   connections=[[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]])),
    "masked_flipped_strided": ((1, 3, 7, 7), dict(in_channels=3, out_channels=2, kernel_size=3, stride=2,
                                                   connections=[[1, 0, 1], [0, 1, 0]], flip_kernel=True)),
}


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv2d_gradients(name):
    shape, kwargs = CONV_CASES[name]
    conv = nn.Conv2d(**kwargs, dtype="float64")
    grads = gradcheck_layer(conv, _rng("conv", name).standard_normal(shape), name)
    if conv.connections is not None:
        off = ~conv.connections
        assert np.all(grads["weight"][off] == 0), "disconnected weights must get zero gradient"
        assert np.all(conv.weight.data[off] == 0), "disconnected weights must start at zero"
        assert np.any(grads["weight"][conv.connections] != 0)


def test_masked_conv_ignores_disconnected_weights_and_counts_connected_ones():
    table = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    conv = nn.Conv2d(2, 3, 3, connections=table, dtype="float64")
    x = _rng("mask").standard_normal((1, 2, 5, 5))
    y = conv(x)
    conv.weight.data[~table] = 123.0          # e.g. loaded from a state dict: still disconnected
    np.testing.assert_array_equal(conv(x), y)
    assert conv.num_parameters() == 3 * 2 * 9 + 3
    assert conv.num_effective_parameters() == 4 * 9 + 3
    assert "connections=4/6" in repr(conv)


def test_flip_kernel_is_true_convolution():
    """y[i, j] = sum_{u,v} x[i + u, j + v] * w[R-1-u, S-1-v] (the kernel flipped), written as plain loops."""
    rng = _rng("flip")
    x, conv = rng.standard_normal((1, 1, 5, 6)), nn.Conv2d(1, 1, (2, 3), bias=False, flip_kernel=True,
                                                           dtype="float64")
    w = conv.weight.data[0, 0]
    expected = np.array([[sum(x[0, 0, i + u, j + v] * w[1 - u, 2 - v] for u in range(2) for v in range(3))
                          for j in range(4)] for i in range(4)])
    assert_close_f64(conv(x)[0, 0], expected, "true convolution")
    plain = nn.Conv2d(1, 1, (2, 3), bias=False, dtype="float64")
    plain.weight.data[...] = w
    assert not np.allclose(plain(x)[0, 0], expected), "cross-correlation must differ for a non-symmetric kernel"


def test_conv2d_construction_errors():
    with pytest.raises(ValueError, match="connections must be a boolean"):
        nn.Conv2d(2, 3, 3, connections=np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="connections needs groups=1"):
        nn.Conv2d(2, 2, 3, groups=2, connections=np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="no input"):
        nn.Conv2d(2, 2, 3, connections=[[1, 1], [0, 0]])
    with pytest.raises(ValueError, match="in_channels"):
        nn.Conv2d(0, 2, 3)
    with pytest.raises(ValueError, match="groups=2 must divide"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2d(1, 1, 0)
    with pytest.raises(ValueError, match="padding='same' needs stride=1"):
        nn.Conv2d(1, 1, 3, stride=2, padding="same")
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        nn.Conv2d(1, 1, 3, dtype="int32")


# ----------------------------------------------------------------------------------------------- pooling
POOL_CASES = {
    "max": lambda: nn.MaxPool2d(2),
    "max_pad_dil_ceil": lambda: nn.MaxPool2d(3, stride=2, padding=1, dilation=(1, 2), ceil_mode=True),
    "avg": lambda: nn.AvgPool2d(2),
    "avg_pad_ceil_exclude": lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    "lp2": lambda: nn.LPPool2d(2, 2),
    "lp3_pad_stride": lambda: nn.LPPool2d(3, 3, stride=2, padding=1),
    "feature_pool": lambda: nn.FeaturePool(2),
    "global_avg": lambda: nn.GlobalAvgPool2d(),
    "subsampling": lambda: f64(nn.Subsampling(4)),
    "subsampling_3x3_stride2": lambda: nn.Subsampling(4, kernel_size=3, stride=2, dtype="float64"),
}


@pytest.mark.parametrize("name", sorted(POOL_CASES))
def test_pooling_gradients(name):
    gradcheck_layer(POOL_CASES[name](), _rng("pool", name).standard_normal((2, 4, 7, 6)), name)


def test_subsampling_is_coefficient_times_window_sum_plus_bias():
    layer = nn.Subsampling(3, dtype="float64")
    x = _rng("sub").standard_normal((2, 3, 4, 6))
    sums = x.reshape(2, 3, 2, 2, 3, 2).sum(axis=(3, 5))
    expected = sums * layer.weight.data[:, None, None] + layer.bias.data[:, None, None]
    assert_close_f64(layer(x), expected, "subsampling")
    assert layer.num_parameters() == 6
    with pytest.raises(ValueError, match=r"Subsampling\(3\) needs \(N, 3, H, W\)"):
        layer(x[:, :2])


# ----------------------------------------------------------------------------------------------- activations
ACTIVATION_LAYERS = {
    "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "scaled_tanh": nn.ScaledTanh,
    "leaky_relu": nn.LeakyReLU, "leaky_relu_0.2": lambda: nn.LeakyReLU(0.2),
}


@pytest.mark.parametrize("name", sorted(ACTIVATION_LAYERS))
def test_activation_gradients(name):
    gradcheck_layer(ACTIVATION_LAYERS[name](), 2 * _rng("act", name).standard_normal((2, 3, 4, 4)), name)


@pytest.mark.parametrize("layer", [nn.Softmax, nn.LogSoftmax])
def test_softmax_layer_gradients(layer):
    x = 3 * _rng("softmax", layer.__name__).standard_normal((3, 5))
    gradcheck_layer(layer(), x, layer.__name__)


def test_scaled_tanh_values():
    x = np.array([-1.0, 0.0, 1.0, 30.0])
    np.testing.assert_allclose(nn.ScaledTanh()(x), 1.7159 * np.tanh(2 * x / 3), rtol=1e-15)
    np.testing.assert_allclose(nn.ScaledTanh()(np.array([1.0])), [1.0], atol=1e-4)  # LeCun: f(1) ~ 1


def test_fusable_kinds_follow_the_contract():
    for name, factory in ACTIVATION_LAYERS.items():
        kind = factory().fusable_kind
        assert kind is None or kind in ACTIVATIONS, name
    assert nn.LeakyReLU().fusable_kind == "leaky_relu"
    assert nn.LeakyReLU(0.2).fusable_kind is None      # the fused epilogue only knows slope 0.01
    with pytest.raises(ValueError, match="negative_slope"):
        nn.LeakyReLU(-0.1)


# ----------------------------------------------------------------------------------------------- fusion
@pytest.mark.parametrize("name", sorted(ACTIVATION_LAYERS))
def test_fused_sequential_matches_unfused(name, monkeypatch):
    rng = _rng("fuse", name)
    conv = nn.Conv2d(2, 3, 3, padding=1, dtype="float64")
    act = ACTIVATION_LAYERS[name]()
    fused_calls = []
    monkeypatch.setattr(conv, "fuse_activation",
                        lambda x, kind, _f=conv.fuse_activation: fused_calls.append(kind) or _f(x, kind))
    x = rng.standard_normal((2, 2, 5, 5))
    y = nn.Sequential(conv, act)(x)
    assert fused_calls == ([act.fusable_kind] if act.fusable_kind else [])
    dy = rng.standard_normal(y.shape)
    conv.zero_grad()
    dx = nn.Sequential(conv, act).backward(dy)
    fused_grads = (conv.weight.grad, conv.bias.grad)

    y_ref = act.forward(conv.forward(x))    # the two layers one after the other, never fused
    conv.zero_grad()
    dx_ref = conv.backward(act.backward(dy))
    assert_close_f64(y, y_ref, "forward")
    assert_close_f64(dx, dx_ref, "dx")
    assert_close_f64(fused_grads[0], conv.weight.grad, "dweight")
    assert_close_f64(fused_grads[1], conv.bias.grad, "dbias")


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("numba", "float32"), ("numba", "float64"),
                                            pytest.param("cudasim", "float32", marks=pytest.mark.cudasim)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_fused_with_the_relu_after_it(backend, dtype, training, monkeypatch):
    """Sequential runs BatchNorm2d + ReLU as one batch-norm call whose backward applies the ReLU's derivative
    (the ReLU layer's own backward is skipped); outputs equal the two layers run one by one bit for bit, and
    gradients to the dtype's tolerance: the backward's sums are reassociated vector reductions, whose order LLVM
    picks per loop and per CPU (the fused loop masks dy; on an AMD EPYC they differed in the last bit of float64).
    Activations batch norm cannot fuse (tanh) stay separate layers, and SyncBatchNorm2d never fuses."""
    rng = _rng("bn-relu", backend, dtype, training)
    norm, act = nn.BatchNorm2d(3, dtype=dtype), nn.ReLU()
    norm.weight.data[:] = [1.5, -0.7, 0.3]
    norm.bias.data[:] = [0.2, 0.1, -0.3]
    model = nn.Sequential(norm, act).to(backend).train(training)
    norm, act = model[0], model[1]
    fused = []
    monkeypatch.setattr(norm, "fuse_activation", lambda x, kind, _f=norm.fuse_activation: fused.append(kind) or
                        _f(x, kind))
    monkeypatch.setattr(act, "backward", lambda dy: pytest.fail("the fused batch norm applies the ReLU's backward"))
    be = norm.backend
    x, dy = (be.asarray(rng.standard_normal((4, 3, 5, 5)), dtype=dtype) for _ in range(2))
    stats = (norm.running_mean.copy(), norm.running_var.copy())
    y = model(x)
    dx = model.backward(dy)
    assert fused == ["relu"]
    grads = (norm.weight.grad, norm.bias.grad)
    norm.running_mean[:], norm.running_var[:] = stats
    norm.zero_grad()
    monkeypatch.undo()
    y_ref = act.forward(norm.forward(x))  # never fused
    dx_ref = norm.backward(act.backward(dy))
    np.testing.assert_array_equal(be.to_numpy(y), be.to_numpy(y_ref), err_msg="y")
    close = assert_close_f64 if dtype == "float64" else assert_close_f32
    for what, got, ref in (("dx", dx, dx_ref), ("dweight", grads[0], norm.weight.grad),
                           ("dbias", grads[1], norm.bias.grad)):
        close(be.to_numpy(got), be.to_numpy(ref), what)
    assert nn.Tanh().fusable_kind not in nn.BatchNorm2d.fusable_activations
    assert nn.SyncBatchNorm2d.fuse_activation is None


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("numba", "float32"), ("numba", "float64"),
                                            pytest.param("cudasim", "float32", marks=pytest.mark.cudasim)])
@pytest.mark.parametrize("name", sorted(ACTIVATION_LAYERS))
def test_average_pool_runs_the_activation_backward_before_it(backend, dtype, name, monkeypatch):
    """Sequential(conv, activation, AvgPool2d): the pool's backward runs the activation's too (its own backward is
    skipped); the gradients equal the layers' backward passes one by one, exactly. Not when a batch norm has
    absorbed the activation's backward (BatchNorm2d + ReLU + pool), nor for a max pool."""
    rng = _rng("pool-through", backend, dtype, name)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), ACTIVATION_LAYERS[name](), nn.AvgPool2d(2))
    model = model.to(backend, dtype=dtype)
    conv, act, pool = model
    be = conv.backend
    x = be.asarray(rng.standard_normal((2, 2, 6, 5)), dtype=dtype)
    y = model(x)
    dy = be.asarray(rng.standard_normal(y.shape), dtype=dtype)
    monkeypatch.setattr(act, "backward", lambda dy: pytest.fail("the pool runs the activation's backward"))
    model.zero_grad()
    dx = model.backward(dy)
    grads = (conv.weight.grad, conv.bias.grad)
    monkeypatch.undo()
    conv.zero_grad()
    dx_ref = conv.backward(act.backward(pool.backward(dy)))  # one by one
    for what, got, ref in (("dx", dx, dx_ref), ("dweight", grads[0], conv.weight.grad),
                           ("dbias", grads[1], conv.bias.grad)):
        np.testing.assert_array_equal(be.to_numpy(got), be.to_numpy(ref), err_msg=what)


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("numba", "float32"), ("numba", "float64"),
                                            pytest.param("cudasim", "float32", marks=pytest.mark.cudasim)])
@pytest.mark.parametrize("training", [True, False])
def test_conv_activation_and_subsampling_run_as_one_call(backend, dtype, training, monkeypatch):
    """Sequential(conv, activation, AvgPool2d(2)) forwards as one conv2d_pool_forward call that keeps the conv's
    output only in training (in eval mode a backward first re-runs the three layers unfused); outputs and
    gradients equal the layers run one by one, exactly. A pool of another geometry is not fused."""
    def model():
        nn.init.manual_seed(3)
        return nn.Sequential(nn.Conv2d(2, 16, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(16, 4, 2), nn.ReLU(),
                             nn.AvgPool2d(2, stride=1), nn.Conv2d(4, 2, 1), nn.Sigmoid(),
                             nn.AvgPool2d(2)).to(backend, dtype=dtype).train(training)

    rng = _rng("conv-pool", backend, dtype, training)
    fused, plain = model(), model()
    kept = []
    for i in (0, 3, 6):
        monkeypatch.setattr(fused[i], "fuse_activation_pool", lambda x, kind, keep, _i=i,
                            _f=fused[i].fuse_activation_pool: kept.append((_i, keep)) or _f(x, kind, keep))
    conv, be = fused[0], fused[0].backend
    x = be.asarray(rng.standard_normal((2, 2, 11, 10)), dtype=dtype)  # conv outputs 9x8, 3x3 and 2x2
    y = fused(x)
    assert kept == [(0, training), (6, training)]
    dy = be.asarray(rng.standard_normal(y.shape), dtype=dtype)
    dx = fused.backward(dy)
    y_ref = x
    for layer in plain:
        y_ref = layer.forward(y_ref)
    dx_ref = dy
    for layer in reversed(plain.layers):
        dx_ref = layer.backward(dx_ref)
    for what, got, ref in (("y", y, y_ref), ("dx", dx, dx_ref), ("dweight", conv.weight.grad, plain[0].weight.grad),
                           ("dbias", conv.bias.grad, plain[0].bias.grad)):
        np.testing.assert_array_equal(be.to_numpy(got), be.to_numpy(ref), err_msg=what)


def test_average_pool_leaves_an_activation_a_batch_norm_absorbed(monkeypatch):
    """BatchNorm2d + ReLU + AvgPool2d: the batch norm applies the ReLU's derivative, so the pool does not run it
    again; the gradients agree with finite differences."""
    model = nn.Sequential(f64(nn.BatchNorm2d(3)), nn.ReLU(), nn.AvgPool2d(2))
    monkeypatch.setattr(model[2], "backward_through", lambda *args: pytest.fail("the ReLU's backward runs twice"))
    gradcheck_layer(model, _rng("pool-through-bn").standard_normal((2, 3, 4, 4)), "bn-relu-avgpool")


def test_sequential_with_fusion_gradients():
    model = f64(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Subsampling(2), nn.ScaledTanh(),
                              nn.Conv2d(2, 3, 2, connections=[[1, 0], [1, 1], [0, 1]]), nn.ReLU(),
                              nn.Flatten(), nn.Linear(12, 3), nn.Sigmoid()))
    gradcheck_layer(model, _rng("seq").standard_normal((2, 1, 8, 8)), "sequential")


def _residual_block(backend: str = "numpy", dtype: str = "float64", projection: bool = False) -> nn.Sequential:
    """A ResNet basic block with its closing ReLU: Sequential(Residual(body, projection), ReLU())."""
    nn.init.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(2, 4 if projection else 2, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4 if projection else 2, 4 if projection else 2, 3, padding=1))
    shortcut = nn.Conv2d(2, 4, 1) if projection else None
    return nn.Sequential(nn.Residual(body, shortcut), nn.ReLU()).to(backend, dtype=dtype)


@pytest.mark.parametrize("projection", [False, True])
def test_residual_sum_fused_with_the_relu_after_it(projection, monkeypatch):
    model = _residual_block(projection=projection)
    block, act = model[0], model[1]
    fused = []
    monkeypatch.setattr(block, "fuse_activation", lambda x, kind, _f=block.fuse_activation:
                        fused.append(kind) or _f(x, kind))
    rng = _rng("residual-fuse", projection)
    x = rng.standard_normal((2, 2, 5, 5))
    y = model(x)
    assert fused == ["relu"]
    dy = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(dy)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}

    y_ref = act.forward(block.forward(x))           # the two layers one after the other, never fused
    model.zero_grad()
    dx_ref = block.backward(act.backward(dy))
    assert_close_f64(y, y_ref, "forward")
    assert_close_f64(dx, dx_ref, "dx")
    for name, p in model.named_parameters():
        assert_close_f64(grads[name], p.grad, name)
    gradcheck_layer(model, x, f"residual-relu-{projection}")


@pytest.mark.parametrize("backend", ["numba", pytest.param("cudasim", marks=pytest.mark.cudasim)])
def test_residual_fusion_float32_on_backend(backend):
    from cnnkit.backend import backend as get_backend

    be = get_backend(backend)
    x = _rng("residual32").standard_normal((2, 2, 5, 5))
    model, ref = _residual_block(backend, "float32", projection=True), _residual_block(projection=True)
    y = model(be.asarray(x.astype(np.float32)))
    assert_close_f32(be.to_numpy(y), ref(x), f"{backend} residual forward")
    dy = _rng("residual32-dy").standard_normal(y.shape)
    assert_close_f32(be.to_numpy(model.backward(be.asarray(dy.astype(np.float32)))), ref.backward(dy),
                     f"{backend} residual dx")


def _bn_residual_block(backend: str = "numpy", dtype: str = "float64", projection: bool = False) -> nn.Sequential:
    """A ResNet basic block with batch norm, Sequential(Residual(conv-BN-ReLU-conv-BN, projection), ReLU()), in
    eval mode with running statistics and affine parameters away from 0 and 1 (the same on every backend)."""
    nn.init.manual_seed(0)
    out = 4 if projection else 2
    body = nn.Sequential(nn.Conv2d(2, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                         nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out))
    shortcut = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4)) if projection else None
    model = nn.Sequential(nn.Residual(body, shortcut), nn.ReLU()).to(backend, dtype=dtype)
    rng = _rng("bn-residual", projection)
    for _, layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            c = layer.num_features
            layer.running_mean[...] = layer.backend.asarray(rng.standard_normal(c), dtype=dtype)
            layer.running_var[...] = layer.backend.asarray(rng.uniform(0.5, 2.0, c), dtype=dtype)
            layer.weight.data[...] = layer.backend.asarray(rng.uniform(-2, 2, c), dtype=dtype)
            layer.bias.data[...] = layer.backend.asarray(rng.standard_normal(c), dtype=dtype)
    return model.eval()


@pytest.mark.parametrize("projection", [False, True])
def test_eval_residual_sum_runs_in_the_last_convs_epilogue(projection, monkeypatch):
    """In eval mode the body's last conv (its batch norm folded in) adds the shortcut and applies the ReLU after
    the block; outputs and gradients equal the unfused layers'."""
    model = _bn_residual_block(projection=projection)
    block, act = model[0], model[1]
    last = block.body[3]
    residuals = []
    monkeypatch.setattr(last, "fold_batchnorm", lambda x, bn, kind, residual=None, _f=last.fold_batchnorm:
                        residuals.append((kind, residual is not None)) or _f(x, bn, kind, residual))
    rng = _rng("bn-residual-input", projection)
    x = rng.standard_normal((3, 2, 6, 6))
    y = model(x)
    assert residuals == [("relu", True)]
    dy = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(dy)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}

    shortcut = x if block.projection is None else block.projection.forward(x)
    y_ref = act.forward(F.add(block.body.forward(x), shortcut, backend="numpy"))  # the sum after the body
    model.zero_grad()
    g = act.backward(dy)
    dx_ref = block.body.backward(g) + (g if block.projection is None else block.projection.backward(g))
    assert_close_f64(y, y_ref, "forward")
    assert_close_f64(dx, dx_ref, "dx")
    for name, p in model.named_parameters():
        assert_close_f64(grads[name], p.grad, name)


@pytest.mark.parametrize("backend", ["numba", pytest.param("cudasim", marks=pytest.mark.cudasim)])
def test_eval_residual_fusion_float32_on_backend(backend):
    from cnnkit.backend import backend as get_backend

    be = get_backend(backend)
    x = _rng("bn-residual32").standard_normal((2, 2, 6, 6))
    y = _bn_residual_block(backend, "float32", projection=True)(be.asarray(x.astype(np.float32)))
    assert_close_f32(be.to_numpy(y), _bn_residual_block(projection=True)(x), f"{backend} fused residual forward")


FOLD_CASES = {  # (conv kwargs, batch-norm affine, activation after the norm)
    "bias-relu": ({"bias": True}, True, nn.ReLU),
    "no-bias-relu": ({"bias": False}, True, nn.ReLU),
    "no-affine-tanh": ({"bias": True}, False, nn.Tanh),
    "grouped-strided-none": ({"groups": 2, "stride": 2}, True, None),
    "leaky-0.2-not-fusable": ({"bias": False}, True, lambda: nn.LeakyReLU(0.2)),
}


def _fold_model(case: str, backend: str = "numpy", dtype: str = "float64") -> nn.Sequential:
    """conv -> batch norm (-> activation) with running statistics away from 0 and 1, in eval mode."""
    conv_kwargs, affine, act = FOLD_CASES[case]
    rng = _rng("fold", case)
    nn.init.manual_seed(0)  # the same weights on every backend
    norm = nn.BatchNorm2d(4, affine=affine)
    layers = [nn.Conv2d(2, 4, 3, padding=1, **conv_kwargs), norm] + ([act()] if act else [])
    model = nn.Sequential(*layers).to(backend, dtype=dtype)
    norm.running_mean[...] = norm.backend.asarray(rng.standard_normal(4), dtype=dtype)
    norm.running_var[...] = norm.backend.asarray(rng.uniform(0.5, 2.0, 4), dtype=dtype)
    if affine:
        norm.weight.data[...] = norm.backend.asarray(rng.uniform(-2, 2, 4), dtype=dtype)
        norm.bias.data[...] = norm.backend.asarray(rng.standard_normal(4), dtype=dtype)
    return model.eval()


@pytest.mark.parametrize("case", sorted(FOLD_CASES))
def test_eval_batchnorm_folding_matches_unfused(case, monkeypatch):
    model = _fold_model(case)
    conv, norm = model[0], model[1]
    folded = []
    monkeypatch.setattr(conv, "fold_batchnorm", lambda x, bn, kind, _f=conv.fold_batchnorm:
                        folded.append(kind) or _f(x, bn, kind))
    rng = _rng("fold-input", case)
    x = rng.standard_normal((3, 2, 7, 7))
    y = model(x)
    act = model[2] if len(model) == 3 else None
    assert folded == [None if act is None else act.fusable_kind]
    dy = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(dy)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}

    h = norm.forward(conv.forward(x))               # the same layers one after the other, never folded
    y_ref = h if act is None else act.forward(h)
    model.zero_grad()
    dx_ref = conv.backward(norm.backward(dy if act is None else act.backward(dy)))
    assert_close_f64(y, y_ref, "forward")
    assert_close_f64(dx, dx_ref, "dx")
    for name, p in model.named_parameters():
        assert_close_f64(grads[name], p.grad, name)


def test_batchnorm_is_not_folded_in_training():
    model = _fold_model("bias-relu").train()
    model[0].fold_batchnorm = lambda *args: pytest.fail("folded in training mode")
    model(_rng("fold-train").standard_normal((2, 2, 5, 5)))


@pytest.mark.parametrize("backend", ["numba", pytest.param("cudasim", marks=pytest.mark.cudasim)])
@pytest.mark.parametrize("case", ["bias-relu", "grouped-strided-none"])
def test_eval_batchnorm_folding_float32_on_backend(backend, case):
    from cnnkit.backend import backend as get_backend
    from cnnkit.backend import unavailable_reason

    if unavailable_reason(backend) is not None:
        pytest.fail(f"backend {backend} cannot run here: {unavailable_reason(backend)}")
    be = get_backend(backend)
    x = _rng("fold32", case).standard_normal((2, 2, 6, 6))
    y = _fold_model(case, backend, "float32")(be.asarray(x.astype(np.float32)))
    assert_close_f32(be.to_numpy(y), _fold_model(case)(x), f"{backend} folded forward")


# ------------------------------------------------------------------------------------------ linear, flatten, dropout
def test_linear_gradients():
    gradcheck_layer(nn.Linear(5, 3, dtype="float64"), _rng("linear").standard_normal((4, 5)), "linear")
    gradcheck_layer(nn.Linear(5, 3, bias=False, dtype="float64"), _rng("linear2").standard_normal((4, 5)),
                    "linear_no_bias")


def test_flatten_gradients():
    gradcheck_layer(nn.Flatten(), _rng("flatten").standard_normal((2, 3, 2, 2)), "flatten")


def test_dropout_gradient_with_fixed_mask():
    layer = nn.Dropout(0.3, seed=5)
    gradcheck_layer(layer, _rng("dropout").standard_normal((4, 3, 5, 5)), "dropout", before=layer.reset_counter)


def test_dropout_behaviour():
    x = _rng("drop").standard_normal((50, 40))
    a, b = nn.Dropout(0.25, seed=1), nn.Dropout(0.25, seed=1)
    ya, yb = a(x), b(x)
    np.testing.assert_array_equal(ya, yb)                       # same seed, same call index: same mask
    kept = ya != 0
    assert 0.2 < 1 - kept.mean() < 0.3
    np.testing.assert_allclose(ya[kept], x[kept] / 0.75)
    assert not np.array_equal(a(x) != 0, kept)                  # the next call draws a new mask
    assert not np.array_equal(nn.Dropout(0.25, seed=2)(x) != 0, kept)
    a.eval()
    assert a(x) is x and a.backward(x) is x
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        nn.Dropout(1.0)


# ----------------------------------------------------------------------------------------------- batch norm
def _bn_eval(affine: bool) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(3, affine=affine, dtype="float64").eval()
    rng = _rng("bn-stats", affine)
    bn.running_mean[...] = rng.standard_normal(3)
    bn.running_var[...] = rng.uniform(0.5, 2.0, 3)
    return bn


BN_CASES = {
    "train": lambda: nn.BatchNorm2d(3, dtype="float64"),
    "train_no_affine": lambda: nn.BatchNorm2d(3, affine=False, dtype="float64"),
    "eval": lambda: _bn_eval(True),
    "eval_no_affine": lambda: _bn_eval(False),
}


@pytest.mark.parametrize("name", sorted(BN_CASES))
def test_batch_norm_gradients(name):
    bn = BN_CASES[name]()
    if bn.affine:   # non-trivial gamma and beta
        rng = _rng("bn-affine", name)
        bn.weight.data[...], bn.bias.data[...] = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    gradcheck_layer(bn, 2 + 3 * _rng("bn", name).standard_normal((4, 3, 3, 2)), name)


def test_batch_norm_statistics():
    bn = nn.BatchNorm2d(2, momentum=0.2, dtype="float64")
    x = 1 + 2 * _rng("bn-run").standard_normal((5, 2, 3, 3))
    y = bn(x)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    assert_close_f64(y, (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5), "train output")
    assert_close_f64(bn.running_mean, 0.2 * mean, "running_mean")
    assert_close_f64(bn.running_var, 0.8 + 0.2 * x.var(axis=(0, 2, 3), ddof=1), "running_var (unbiased)")
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    y = bn(x)
    assert int(bn.num_batches_tracked) == 1
    rm, rv = bn.running_mean[:, None, None], bn.running_var[:, None, None]
    assert_close_f64(y, (x - rm) / np.sqrt(rv + 1e-5), "eval output")
    with pytest.raises(ValueError, match=r"BatchNorm2d\(2\) needs"):
        bn(x[:, :1])


# ----------------------------------------------------------------------------------------------- residual
def _body(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1))


def test_residual_identity_gradients():
    block = f64(nn.Residual(_body(2, 2, 1)))
    gradcheck_layer(block, _rng("res").standard_normal((2, 2, 4, 4)), "residual identity")


def test_residual_projection_gradients():
    projection = nn.Sequential(nn.Conv2d(2, 3, 1, stride=2, bias=False), nn.BatchNorm2d(3))
    block = f64(nn.Residual(_body(2, 3, 2), projection))
    assert [name for name, _ in block.named_parameters()][-3:] == ["projection.0.weight", "projection.1.weight",
                                                                    "projection.1.bias"]
    gradcheck_layer(block, _rng("res-proj").standard_normal((2, 2, 5, 5)), "residual projection")


def test_residual_shape_mismatch_error():
    with pytest.raises(ValueError, match="add a projection"):
        nn.Residual(_body(2, 3, 2))(np.zeros((1, 2, 4, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="body must be a cnnkit Layer"):
        nn.Residual(lambda x: x)


# ----------------------------------------------------------------------------------------------- machinery
def _small_model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 4, 3, connections=np.eye(4, 2, dtype=bool) | np.eye(4, 2, -2, dtype=bool)),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))


def test_trainable_false_leaves_grads_none_but_passes_dx():
    nn.init.manual_seed(3)
    model = _small_model()
    nn.init.manual_seed(3)
    frozen = _small_model()
    frozen.trainable = False
    x = _rng("frozen").standard_normal((2, 2, 4, 4)).astype(np.float32)
    dy = np.ones((2, 3), dtype=np.float32)
    model(x)
    frozen(x)
    np.testing.assert_array_equal(frozen.backward(dy), model.backward(dy))
    assert all(p.grad is None for p in frozen.parameters())
    assert all(p.grad is not None for p in model.parameters())


def test_frozen_conv_does_not_compute_its_weight_gradient(monkeypatch):
    """trainable=False reaches the kernel as need_dw=False (the weight gradient is skipped, not discarded)."""
    from cnnkit.backend import backend as resolve
    ops, calls = resolve("numpy").ops, []
    original = ops.conv2d_backward

    def spy(*args, **kwargs):
        calls.append(kwargs["need_dw"])
        return original(*args, **kwargs)
    monkeypatch.setattr(ops, "conv2d_backward", spy)
    conv = nn.Conv2d(2, 4, 3)
    x = _rng("frozen-conv").standard_normal((2, 2, 5, 5)).astype(np.float32)
    for trainable in (True, False):
        conv.trainable = trainable
        conv.backward(np.ones(conv(x).shape, dtype=np.float32))
    assert calls == [True, False]


def test_manual_seed_makes_models_reproducible():
    nn.init.manual_seed(11)
    a = _small_model().state_dict()
    b = _small_model().state_dict()
    nn.init.manual_seed(11)
    c = _small_model().state_dict()
    assert all(np.array_equal(a[k], c[k]) for k in a)
    assert not np.array_equal(a["0.weight"], b["0.weight"])


def test_to_float64_moves_parameters_buffers_and_mask():
    model = _small_model()
    x = _rng("to").standard_normal((2, 2, 4, 4))
    y32 = model(x.astype(np.float32))
    model.to("numpy", dtype="float64")
    assert all(p.data.dtype == np.float64 for p in model.parameters())
    assert model[1].running_mean.dtype == np.float64 and model[1].num_batches_tracked.dtype == np.int64
    assert model[0]._mask.dtype == np.float64
    model[1].running_mean[...] = 0   # undo the first call's update so both calls see the same statistics
    model[1].running_var[...] = 1
    assert_close_f32(y32, model(x), "float32 vs float64 model")


def test_to_other_backend_keeps_mask_and_results():
    model = _small_model().eval()
    x = _rng("to-numba").standard_normal((2, 2, 4, 4)).astype(np.float32)
    y = model(x)
    model.to("numba")
    assert all(layer.backend.name == "numba" for _, layer in model.modules())
    assert model[0]._mask is not None
    assert_close_f32(model(x), y, "numba vs numpy")


def test_state_dict_round_trip():
    nn.init.manual_seed(1)
    a = _small_model()
    x = _rng("sd").standard_normal((3, 2, 4, 4)).astype(np.float32)
    a(x)                                  # moves the running statistics away from their initial values
    state = a.state_dict()
    assert sorted(state) == sorted(["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                    "1.running_var", "1.num_batches_tracked", "4.weight", "4.bias"])
    state["0.weight"][...] = 0            # a copy: the model is unchanged
    assert np.any(a[0].weight.data != 0)
    state = a.state_dict()
    nn.init.manual_seed(2)
    b = _small_model()
    b.load_state_dict(state)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))
    assert int(b[1].num_batches_tracked) == 1


def test_load_state_dict_errors():
    model = _small_model()
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "4.bias"}
    with pytest.raises(KeyError, match=r"missing keys \['4.bias'\]"):
        model.load_state_dict(missing)
    with pytest.raises(KeyError, match=r"unexpected keys \['5.weight'\]"):
        model.load_state_dict({**state, "5.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"shape mismatch for '4.weight'"):
        model.load_state_dict({**state, "4.weight": np.zeros((3, 15))})
    model.load_state_dict(missing, strict=False)   # partial loads are allowed when not strict


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="Linear.backward was called before its forward"):
        nn.Linear(2, 2).backward(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(RuntimeError, match="ReLU.backward was called before its forward"):
        nn.ReLU().backward(np.zeros((1, 2), dtype=np.float32))


def test_layers_default_to_float32():
    for layer in (nn.Conv2d(1, 2, 3), nn.Linear(3, 2), nn.BatchNorm2d(2), nn.Subsampling(2)):
        assert {p.data.dtype for p in layer.parameters()} == {np.dtype(np.float32)}, type(layer).__name__


def test_input_grad_skipped_gives_same_parameter_grads_and_no_dx():
    """Skipping the first conv's dx (as training does) changes no parameter gradient, and is restored after."""
    from cnnkit import models

    model = models.lenet5().to("numpy", dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32))
    dy = np.random.default_rng(1).standard_normal((2, 10))
    model(x)
    full_dx = model.backward(dy)
    full = {k: p.grad.copy() for k, p in model.named_parameters()}
    model.zero_grad()
    model(x)
    with model.input_grad_skipped():
        assert model.backward(dy) is None
    for k, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, full[k], err_msg=k)
    assert model.first_layer().requires_input_grad
    assert full_dx.shape == x.shape
