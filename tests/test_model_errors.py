"""Errors that arrive where the mistake is made and name it: an unsupported dtype at ``.to``, a gradient of the
wrong shape at ``backward`` (the layer and both shapes), a wrong input size (the layer and the model's expected
input shape)."""
from __future__ import annotations

import numpy as np
import pytest

from cnnkit import models, nn


@pytest.mark.parametrize("dtype", ["float16", "int32", np.int64, "bfloat16-ish"])
def test_to_rejects_unsupported_dtype_at_to(dtype):
    model = models.lenet5()
    before = model.state_dict()
    with pytest.raises(TypeError, match="float32 or float64"):
        model.to("numpy", dtype)
    after = model.state_dict()
    assert all(after[k].dtype == before[k].dtype for k in before), "nothing moves when the dtype is refused"


def test_to_float64_still_works():
    model = models.lenet5().to("numpy", "float64")
    assert model(np.zeros((1, 1, 32, 32))).dtype == np.float64


def test_backward_with_wrong_batch_size_names_layer_and_shapes():
    model = models.lenet5()
    model(np.zeros((4, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"layer 11 \(Linear.*\(3, 10\).*\(4, 10\)"):
        model.backward(np.zeros((3, 10), np.float32))


def test_backward_wrong_shape_inside_nested_model():
    model = models.resnet20()
    model(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(5, 10\).*\(2, 10\)"):
        model.backward(np.zeros((5, 10), np.float32))


def test_linear_backward_checks_its_gradient():
    layer = nn.Linear(4, 3)
    layer(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"Linear\(4, 3\).*\(5, 3\).*\(2, 3\)"):
        layer.backward(np.zeros((5, 3), np.float32))


def test_wrong_input_size_names_layer_and_expected_shape():
    with pytest.raises(ValueError, match=r"layer 6 \(Conv2d.*\(2, 16, 4, 4\).*expects input of shape "
                                         r"\(N, 1, 32, 32\)"):
        models.lenet5()(np.zeros((2, 1, 28, 28), np.float32))


@pytest.mark.parametrize("name, shape", [("lenet1", (1, 32, 32)), ("resnet20", (1, 32, 32)),
                                         ("lenet300-100", (1, 32, 32))])
def test_wrong_input_names_the_models_input_shape(name, shape):
    model = models.create(name)
    expected = ", ".join(map(str, model.input_shape))
    with pytest.raises(ValueError, match=rf"layer [0-9.]+ \(.*expects input of shape \(N, {expected}\)") as info:
        model(np.zeros((2, *shape), np.float32))
    assert isinstance(info.value, nn.ShapeError)


def test_nested_layer_path_is_dotted():
    inner = nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"layer 1\.1 \(Linear"):
        nn.Sequential(nn.Flatten(), inner)(np.zeros((2, 3), np.float32))


def test_shape_error_pickles_with_its_message():
    import pickle

    with pytest.raises(nn.ShapeError) as info:
        models.lenet5()(np.zeros((1, 1, 28, 28), np.float32))
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.path == ["6"]
