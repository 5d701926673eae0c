"""Figures: each writes a decodable, non-blank PNG; confusion counts are exact; bad input and a missing
matplotlib give clear errors."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from matplotlib.image import imread

from cnnkit import models, nn, plots
from cnnkit.train import History

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width: int = 100) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(path)
    assert pixels.shape[1] >= min_width and pixels.shape[0] >= 50
    assert pixels[..., :3].std() > 0.01, "the figure is blank"
    return pixels


def history(with_val: bool = True) -> History:
    return History([{"epoch": e, "train_loss": 1 / e, "train_acc": 1 - 0.5 / e,
                     "val_loss": 1.2 / e if with_val else None, "val_acc": 1 - 0.6 / e if with_val else None,
                     "lr": 0.1, "seconds": 1.0, "images_per_s": 100.0} for e in (1, 2, 3)])


@pytest.mark.parametrize("with_val", [True, False])
def test_learning_curves(tmp_path, with_val):
    path = plots.learning_curves(history(with_val), tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    assert_png(path, min_width=500)


def test_learning_curves_accepts_a_list_of_records(tmp_path):
    assert_png(plots.learning_curves(list(history()), tmp_path / "sub" / "c.png"))
    with pytest.raises(ValueError, match="empty"):
        plots.learning_curves(History(), tmp_path / "e.png")


def test_confusion_counts_are_exact():
    labels = [0, 0, 1, 2, 2, 2]
    preds = [0, 1, 1, 2, 0, 2]
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(plots.confusion_counts(labels, preds, 3), expected)
    with pytest.raises(ValueError, match=r"preds must lie in \[0, 3\)"):
        plots.confusion_counts([0, 1], [0, 3], 3)
    with pytest.raises(ValueError, match="equal length"):
        plots.confusion_counts([0, 1], [0], 3)


def test_confusion_matrix_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    preds = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 10, 200))
    assert_png(plots.confusion_matrix(labels, preds, [f"class {i}" for i in range(10)], tmp_path / "cm.png"))


@pytest.mark.parametrize("name, channels", [("lenet5-classic", 1), ("resnet20", 3)])
def test_first_layer_filters(tmp_path, name, channels):
    model = models.create(name)
    assert model.input_shape[0] == channels
    assert_png(plots.first_layer_filters(model, tmp_path / f"{name}.png"))


def test_training_plots_writes_the_three_figures_of_cnnkit_train(tmp_path):
    images = np.random.default_rng(0).standard_normal((20, 1, 28, 28)).astype("float32")
    loader = [(images, np.arange(20) % 10)]
    paths = plots.training_plots(models.lenet1(), history(), loader, [str(i) for i in range(10)], tmp_path)
    assert [p.name for p in paths] == ["learning_curves.png", "confusion_matrix.png", "filters.png"]
    for path in paths:
        assert_png(path)


def test_first_layer_filters_needs_a_conv(tmp_path):
    with pytest.raises(ValueError, match="no Conv2d"):
        plots.first_layer_filters(models.lenet300_100(), tmp_path / "f.png")


def test_feature_maps(tmp_path):
    model = models.lenet5()
    image = np.random.default_rng(0).standard_normal((1, 32, 32))
    assert_png(plots.feature_maps(model, image, tmp_path / "fm.png"))
    assert model.training, "feature_maps must restore training mode"
    with pytest.raises(ValueError, match=r"image must be \(C, H, W\)"):
        plots.feature_maps(model, np.zeros((2, 1, 32, 32)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no leading conv"):
        plots.feature_maps(models.lenet300_100(), np.zeros((1, 28, 28)), tmp_path / "mlp.png")


def test_feature_maps_counts_layers(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Flatten())
    one = imread(plots.feature_maps(model, np.ones((1, 12, 12)), tmp_path / "one.png", max_layers=1))
    four = imread(plots.feature_maps(model, np.ones((1, 12, 12)), tmp_path / "four.png", max_layers=4))
    assert four.shape[0] > 2 * one.shape[0], "four layers of maps should make a taller figure than one"


def test_path_must_be_png(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        plots.learning_curves(history(), tmp_path / "curves.jpg")


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'cnnkit\[plot\]'"):
        plots.learning_curves(history(), tmp_path / "c.png")
