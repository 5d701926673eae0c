"""PyTorch interop: weights in and out by a key map or by order (cnnkit.interop.weights), and DLPack exchange of
the plain NumPy arrays cnnkit returns."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch interop tests need torch (pip install 'cnnkit[torch]')")

from tolerances import MODEL_REL_F32, max_rel_err  # noqa: E402

from cnnkit import models  # noqa: E402
from cnnkit.interop.torch import torch_resnet20  # noqa: E402
from cnnkit.interop.weights import from_torch, ordered_keys, to_torch  # noqa: E402

KEY_MAP = {"conv1": "0", "conv2": "3", "conv3": "6", "fc1": "9", "fc2": "11"}


class NamedLeNet5(torch.nn.Module):
    """LeNet-5 (modern) as people write it in PyTorch: named layers, functional activations and pooling."""

    def __init__(self, first_kernel: int = 5):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 6, first_kernel)
        self.conv2 = torch.nn.Conv2d(6, 16, 5)
        self.conv3 = torch.nn.Conv2d(16, 120, 5)
        self.fc1 = torch.nn.Linear(120, 84)
        self.fc2 = torch.nn.Linear(84, 10)

    def forward(self, x):
        f = torch.nn.functional
        x = f.avg_pool2d(torch.tanh(self.conv1(x)), 2)
        x = f.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        x = torch.tanh(self.conv3(x)).flatten(1)
        return self.fc2(torch.tanh(self.fc1(x)))


def _x(shape=(1, 32, 32), n=3):
    return np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)


def _assert_same_forward(ours, theirs, x):
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    err = max_rel_err(ours(x), expected)
    assert err <= MODEL_REL_F32, f"max relative error {err:.3g}"


@pytest.mark.parametrize("key_map", [KEY_MAP, "order", {f"{k}.{p}": f"{v}.{p}" for k, v in KEY_MAP.items()
                                                        for p in ("weight", "bias")}])
def test_from_torch_named_lenet(key_map):
    torch.manual_seed(0)
    theirs, ours = NamedLeNet5().eval(), models.lenet5().eval()
    pairs = from_torch(theirs, ours, key_map=key_map)
    assert pairs["conv1.weight"] == "0.weight" and pairs["fc2.bias"] == "11.bias"
    _assert_same_forward(ours, theirs, _x())


def test_from_torch_accepts_a_callable_key_map_and_a_state_dict():
    torch.manual_seed(0)
    theirs, ours = NamedLeNet5().eval(), models.lenet5().eval()
    from_torch(theirs.state_dict(), ours, key_map=lambda k: KEY_MAP[k.split(".")[0]] + "." + k.split(".")[1])
    _assert_same_forward(ours, theirs, _x())


def test_from_torch_old_argument_order_still_works():
    torch.manual_seed(0)
    theirs, ours = NamedLeNet5().eval(), models.lenet5().eval()
    from_torch(ours, theirs.state_dict(), key_map=KEY_MAP)
    _assert_same_forward(ours, theirs, _x())


def test_from_torch_by_order_checks_shapes_and_counts():
    with pytest.raises(ValueError, match=r"PyTorch 'conv1\.weight' \(6, 1, 3, 3\) would go to cnnkit '0\.weight' "
                                         r"\(6, 1, 5, 5\)"):
        from_torch(NamedLeNet5(first_kernel=3), models.lenet5(), key_map="order")
    with pytest.raises(KeyError, match="PyTorch side has 10 entries, the cnnkit side 14"):
        from_torch(NamedLeNet5(), models.lenet5(classic=True), key_map="order")


def test_from_torch_key_map_with_unmapped_key_is_a_clear_error():
    partial = {k: v for k, v in KEY_MAP.items() if k != "fc2"}
    with pytest.raises(KeyError, match=r"missing keys \['11\.bias', '11\.weight'\].*unexpected keys "
                                       r"\['fc2\.bias', 'fc2\.weight'\]"):
        from_torch(NamedLeNet5(), models.lenet5(), key_map=partial)


@pytest.mark.parametrize("key_map", [KEY_MAP, "order"])
def test_to_torch_into_named_lenet(key_map):
    ours = models.lenet5().eval()
    theirs = to_torch(ours, NamedLeNet5(), key_map=key_map).eval()
    _assert_same_forward(ours, theirs, _x())


def test_to_torch_state_dict_with_key_map_and_errors():
    ours = models.lenet5()
    state = to_torch(ours, key_map=KEY_MAP)
    assert sorted(state) == sorted(NamedLeNet5().state_dict())
    assert isinstance(state["conv1.weight"], torch.Tensor)
    with pytest.raises(TypeError, match="needs target"):
        to_torch(ours, key_map="order")
    with pytest.raises(ValueError, match="would go to"):
        to_torch(ours, NamedLeNet5(first_kernel=3), key_map="order")
    with pytest.raises(KeyError, match=r"cnnkit keys with no PyTorch key \['0\.bias', '0\.weight'"):
        to_torch(ours, NamedLeNet5())


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet20_by_order_round_trip(shortcut):
    """Batch norm's buffers (num_batches_tracked included) pair by order as PyTorch orders its state dict."""
    torch.manual_seed(1)
    theirs = torch_resnet20(shortcut).eval()
    ours = models.resnet20(shortcut=shortcut).eval()
    assert ordered_keys(ours) == list(theirs.state_dict())
    from_torch(theirs, ours, key_map="order")
    _assert_same_forward(ours, theirs, _x((3, 32, 32), 2))
    back = to_torch(ours, torch_resnet20(shortcut), key_map="order").eval()
    _assert_same_forward(ours, back, _x((3, 32, 32), 2))


def test_dlpack_numpy_output_to_torch_and_back():
    """cnnkit's outputs are plain NumPy (CuPy on the GPU) arrays: torch.from_dlpack shares them, no copy."""
    model = models.lenet5().eval()
    logits = model(_x())
    tensor = torch.from_dlpack(logits)
    assert tensor.shape == logits.shape and tensor.dtype == torch.float32
    assert tensor.data_ptr() == logits.__array_interface__["data"][0]  # the same memory
    np.testing.assert_array_equal(tensor.numpy(), logits)
    back = np.from_dlpack(torch.nn.functional.softmax(tensor, dim=1))
    np.testing.assert_allclose(back.sum(axis=1), 1.0, rtol=1e-6)
    assert model(np.from_dlpack(torch.from_numpy(_x()))).shape == (3, 10)
