"""cnnkit.models: parameter counts against the papers, layouts, output shapes, builders by name and errors."""
from __future__ import annotations

import numpy as np
import pytest

from cnnkit import models, nn

# LeCun et al. 1998, Table I: rows are S2 maps 0-5, columns C3 maps 0-15, X marks a connection.
PAPER_TABLE_I = [
    "X   XXX  XXXX XX",
    "XX   XXX  XXXX X",
    "XXX   XXX  X XXX",
    " XXX  XXXX  X XX",
    "  XXX  XXXX XX X",
    "   XXX  XXXX XXX",
]


def test_c3_connection_table_is_the_papers():
    table = np.array([[c == "X" for c in row] for row in PAPER_TABLE_I])   # (S2 maps, C3 maps)
    np.testing.assert_array_equal(models.C3_CONNECTIONS, table.T)         # stored as (out, in)
    assert models.C3_CONNECTIONS.sum() == 60


def test_lenet5_classic_parameter_counts():
    """LeCun et al. 1998: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164; with a 10-way linear output
    (850) instead of the RBF layer the total is 60,850 trainable parameters."""
    model = models.lenet5(classic=True)
    c1, s2, c3, s4, c5, f6, out = (model[i] for i in (0, 2, 4, 6, 8, 11, 13))
    assert [type(layer).__name__ for layer in (c1, s2, c3, s4, c5, f6, out)] == [
        "Conv2d", "Subsampling", "Conv2d", "Subsampling", "Conv2d", "Linear", "Linear"]
    assert c1.num_parameters() == 156
    assert s2.num_parameters() == 12
    assert c3.num_effective_parameters() == 1516
    assert c3.num_parameters() == 16 * 6 * 25 + 16       # the full weight array is kept (masked)
    assert s4.num_parameters() == 32
    assert c5.num_parameters() == 48120
    assert f6.num_parameters() == 10164
    assert out.num_parameters() == 850
    assert model.num_effective_parameters() == 60850
    assert all(isinstance(model[i], nn.ScaledTanh) for i in (1, 3, 5, 7, 9, 12))


def test_lenet5_modern_layout_and_count():
    model = models.lenet5()
    assert [type(layer).__name__ for layer in model] == [
        "Conv2d", "Tanh", "AvgPool2d", "Conv2d", "Tanh", "AvgPool2d", "Conv2d", "Tanh", "Flatten",
        "Linear", "Tanh", "Linear"]
    assert [name for name, _ in model.named_parameters()] == [
        "0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias", "9.weight", "9.bias",
        "11.weight", "11.bias"]
    assert model.num_parameters() == 61706 == model.num_effective_parameters()   # 156+2416+48120+10164+850


def test_small_lenets_counts():
    assert models.lenet1().num_parameters() == (4 * 25 + 4) + (12 * 4 * 25 + 12) + (192 * 10 + 10)   # 3,246
    assert models.lenet300_100().num_parameters() == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_resnet20_parameter_count():
    """He et al.'s CIFAR ResNet-20 has 269,722 parameters with option A (zero-padding shortcuts). Our option-B
    projections (1x1 conv + BN) at the two downsampling blocks add 16*32 + 2*32 + 32*64 + 2*64 = 2,752."""
    model = models.resnet20()
    option_a = (3 * 16 * 9 + 2 * 16) + 6 * (16 * 16 * 9 + 2 * 16) \
        + (16 * 32 * 9 + 5 * 32 * 32 * 9 + 6 * 2 * 32) + (32 * 64 * 9 + 5 * 64 * 64 * 9 + 6 * 2 * 64) + 64 * 10 + 10
    assert option_a == 269722
    assert model.num_parameters() == option_a + 2752 == 272474
    projections = [name for name, _ in model.named_parameters() if ".projection." in name]
    assert projections == ["4.0.0.projection.0.weight", "4.0.0.projection.1.weight", "4.0.0.projection.1.bias",
                           "5.0.0.projection.0.weight", "5.0.0.projection.1.weight", "5.0.0.projection.1.bias"]


def test_resnet20_option_a_has_the_papers_parameter_count():
    """shortcut="A" (zero-padded identity) has no shortcut parameters: 269,722, He et al.'s 0.27M."""
    model = models.resnet20(shortcut="A")
    assert model.num_parameters() == 269722
    assert not [name for name, _ in model.named_parameters() if ".projection." in name]
    assert [type(block[0].projection).__name__ for block in (model[4][0], model[5][0])] == ["ZeroPadShortcut"] * 2
    assert models.resnet(20).num_parameters() == models.resnet(20, shortcut="B").num_parameters() == 272474


def test_resnet_rejects_unknown_shortcut():
    with pytest.raises(ValueError, match="shortcut must be 'A'"):
        models.resnet(20, shortcut="C")


def test_zero_pad_shortcut_forward_backward():
    layer = nn.ZeroPadShortcut(2, 6, stride=2)
    x = np.arange(2 * 2 * 5 * 5, dtype=np.float32).reshape(2, 2, 5, 5)
    y = layer(x)
    assert y.shape == (2, 6, 3, 3)
    np.testing.assert_array_equal(y[:, 2:4], x[:, :, ::2, ::2])
    assert not y[:, :2].any() and not y[:, 4:].any()
    dy = np.random.default_rng(0).standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    assert float((dx * x).sum()) == pytest.approx(float((dy * y).sum()), rel=1e-5)   # adjoint of a linear map
    with pytest.raises(ValueError, match="even"):
        nn.ZeroPadShortcut(16, 33)


def _option_a_count(n: int) -> int:
    """Parameters of the paper's CIFAR ResNet-(6n+2) with parameter-free (option A) shortcuts."""
    conv_bn = lambda cin, cout: cin * cout * 9 + 2 * cout   # noqa: E731  conv3x3 without bias, then BN
    stages = sum(conv_bn(cin, cout) + (2 * n - 1) * conv_bn(cout, cout) for cin, cout in ((16, 16), (16, 32),
                                                                                           (32, 64)))
    return conv_bn(3, 16) + stages + 64 * 10 + 10


@pytest.mark.parametrize("depth, millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_resnets_match_the_papers_sizes(depth, millions):
    """He et al. Table 6 sizes (option A) are met by the formula; ours adds the 2,752 projection parameters."""
    option_a = _option_a_count((depth - 2) // 6)
    assert round(option_a / 1e6, 2 if depth < 110 else 1) == millions
    assert models.resnet(depth).num_parameters() == option_a + 2752
    assert models.resnet(depth, shortcut="A").num_parameters() == option_a


def test_resnet_structure():
    model = models.resnet(20, num_classes=7)
    assert model.input_shape == (3, 32, 32)
    stages = [model[i] for i in (3, 4, 5)]
    assert [len(stage) for stage in stages] == [3, 3, 3]
    for stage, channels in zip(stages, (16, 32, 64)):
        residual = stage[0][0]
        assert isinstance(residual, nn.Residual) and isinstance(stage[0][1], nn.ReLU)
        assert residual.body[0].out_channels == channels
        assert all(conv.bias is None for _, conv in stage.modules() if isinstance(conv, nn.Conv2d))
    assert stages[0][0][0].projection is None and stages[1][1][0].projection is None
    assert stages[1][0][0].body[0].stride == (2, 2) and stages[1][0][0].projection[0].stride == (2, 2)
    assert model[-1].out_features == 7
    state = model.state_dict()
    assert {"3.0.0.body.1.running_mean", "3.0.0.body.1.num_batches_tracked", "5.2.0.body.4.bias"} <= set(state)


@pytest.mark.parametrize("name", models.names())
def test_output_shapes_and_backward(name):
    nn.init.manual_seed(0)
    model = models.create(name, num_classes=5)
    x = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
    y = model(x)
    assert y.shape == (2, 5) and y.dtype == np.float32 and np.all(np.isfinite(y))
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_input_shapes():
    assert models.create("lenet5").input_shape == (1, 32, 32)
    assert models.create("lenet5-classic").input_shape == (1, 32, 32)
    assert models.create("lenet1").input_shape == (1, 28, 28)
    assert models.create("lenet300-100").input_shape == (1, 28, 28)


def test_names_and_unknown_name():
    assert models.names() == ["lenet5", "lenet5-classic", "lenet1", "lenet300-100", "resnet20", "resnet32",
                              "resnet44", "resnet56", "resnet110"]
    with pytest.raises(ValueError, match="unknown model 'lenet6'; valid names: lenet5, lenet5-classic"):
        models.create("lenet6")


@pytest.mark.parametrize("depth", [21, 2, 0, 19, "20"])
def test_invalid_resnet_depth(depth):
    with pytest.raises(ValueError, match=r"depth must be 6n \+ 2 with n >= 1 \(e.g. 20, 32, 44, 56, 110\)"):
        models.resnet(depth)


def test_invalid_num_classes():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        models.lenet5(num_classes=1)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        models.resnet20(num_classes=0)


def test_models_are_reproducible_from_the_seed():
    nn.init.manual_seed(4)
    a = models.lenet5(classic=True).state_dict()
    nn.init.manual_seed(4)
    b = models.lenet5(classic=True).state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.all(a["4.weight"][~models.C3_CONNECTIONS] == 0)
