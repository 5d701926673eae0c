"""Figures for training runs: learning curves, a confusion matrix, first-layer filters and feature maps.

Needs matplotlib (``pip install 'cnnkit[plot]'``). Figures are drawn with matplotlib's object API on the Agg
canvas, never through pyplot, so plotting works without a display and leaves the caller's pyplot state alone.
Each function writes one PNG (atomically) and returns its path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from cnnkit import io as ckio
from cnnkit.nn.activation import Activation
from cnnkit.nn.base import Layer
from cnnkit.nn.conv import Conv2d
from cnnkit.nn.sequential import Sequential
from cnnkit.train import eval_mode, predict


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'cnnkit[plot]'") from exc
    return Figure(figsize=(width, height), dpi=100)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with ckio.atomic_write(path) as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    return path


def learning_curves(history: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train and (when recorded) validation, from a :class:`cnnkit.train.History`
    or any list of its per-epoch dicts."""
    records = list(history)
    if not records:
        raise ValueError("history is empty: nothing to plot")
    epochs = [r["epoch"] for r in records]
    fig = _figure(10, 4)
    for ax, metric, title in zip(fig.subplots(1, 2), ("loss", "acc"), ("loss", "accuracy")):
        for split in ("train", "val"):
            values = [r.get(f"{split}_{metric}") for r in records]
            if all(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def confusion_counts(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: row = true class, column = predicted class."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels and preds must be 1-D and of equal length, got {labels.shape} and {preds.shape}")
    for name, values in (("labels", labels), ("preds", preds)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{values.min()}, {values.max()}]")
    return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], classes: Sequence[str], path: str | Path) -> Path:
    """Counts of (true, predicted) class pairs as a heat map, each cell annotated with its count."""
    counts = confusion_counts(labels, preds, len(classes))
    size = max(4.0, 0.6 * len(classes) + 2)
    fig = _figure(size, size)
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = counts.max() / 2
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                color="white" if value > threshold else "black")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"confusion matrix (accuracy {accuracy:.1%}, n={counts.sum()})")
    return _save(fig, path)


def training_plots(model: Layer, history: Iterable[dict[str, Any]], loader: Iterable, classes: Sequence[str],
                   out: str | Path) -> list[Path]:
    """The figures of ``cnnkit train --plots`` in the folder ``out``: learning curves, the confusion matrix of
    ``model`` on ``loader`` and the first layer's filters; their paths."""
    preds, labels = predict(model, loader)
    return [learning_curves(history, Path(out) / "learning_curves.png"),
            confusion_matrix(labels, preds, classes, Path(out) / "confusion_matrix.png"),
            first_layer_filters(model, Path(out) / "filters.png")]


def _grid(fig: Any, tiles: list[np.ndarray], title: str, columns: int = 8, cmap: str | None = "gray") -> None:
    """Tiles (2-D, or H x W x 3 for colour) in a grid of ``columns`` per row, without axes."""
    rows = -(-len(tiles) // columns)
    axes = np.atleast_1d(fig.subplots(rows, min(columns, len(tiles)), squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, tile in zip(axes, tiles):
        ax.imshow(tile, cmap=None if tile.ndim == 3 else cmap)
    fig.suptitle(title)


def _rescale(a: np.ndarray) -> np.ndarray:
    """Map to [0, 1] (constant arrays become 0.5), for showing signed weights as an image."""
    lo, hi = float(a.min()), float(a.max())
    return np.full_like(a, 0.5) if hi == lo else (a - lo) / (hi - lo)


def first_layer_filters(model: Layer, path: str | Path) -> Path:
    """The kernels of the model's first Conv2d: one colour tile per filter for 3 input channels, otherwise one
    grey tile per (filter, input channel)."""
    conv = next((layer for _, layer in model.modules() if isinstance(layer, Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer: no filters to plot")
    weight = np.asarray(conv.backend.to_numpy(conv.effective_weight()), dtype=np.float64)
    k, c = weight.shape[:2]
    if c == 3:
        tiles = [_rescale(w.transpose(1, 2, 0)) for w in weight]
    else:
        tiles = [w for kernel in weight for w in kernel]
    fig = _figure(8, max(2.0, len(tiles) / 8 + 1))
    _grid(fig, tiles, f"first conv layer: {k} filters x {c} input channel{'s' if c > 1 else ''}",
          columns=c if c not in (1, 3) and c <= 16 else 8)
    return _save(fig, path)


def _leading_layers(model: Layer) -> Iterable[tuple[str, Layer]]:
    """The layers a Sequential model runs, nested Sequentials expanded, with their dotted names."""
    if not isinstance(model, Sequential):
        yield type(model).__name__, model
        return
    for name, layer in model.children():
        if isinstance(layer, Sequential):
            yield from ((f"{name}.{sub}", inner) for sub, inner in _leading_layers(layer))
        else:
            yield name, layer


def feature_maps(model: Layer, image: np.ndarray, path: str | Path, max_layers: int = 4,
                 max_maps: int = 16) -> Path:
    """Activations of one image after each of the first ``max_layers`` conv and activation layers of a
    Sequential model (at most ``max_maps`` maps per layer). ``image`` is (C, H, W) or (1, C, H, W), already
    preprocessed as the model expects."""
    x = np.asarray(image)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got shape {np.shape(image)}")
    be = model.backend
    dtype = next(iter(model.parameters())).data.dtype
    out = be.asarray(x, dtype=dtype)
    shown: list[tuple[str, np.ndarray]] = []
    with eval_mode(model):
        for name, layer in _leading_layers(model):
            out = layer.forward(out)
            if out.ndim != 4:
                break
            if isinstance(layer, (Conv2d, Activation)):
                shown.append((f"{name}: {type(layer).__name__}", be.to_numpy(out)[0, :max_maps]))
                if len(shown) == max_layers:
                    break
    if not shown:
        raise ValueError(f"{type(model).__name__} has no leading conv or activation layer with 4-D output")
    columns = max(len(maps) for _, maps in shown)
    fig = _figure(max(6.0, 1.2 * columns), 1.6 * len(shown) + 0.5)
    axes = fig.subplots(len(shown), columns, squeeze=False)
    for row, (title, maps) in zip(axes, shown):
        for ax in row:
            ax.axis("off")
        for ax, fmap in zip(row, maps):
            ax.imshow(fmap, cmap="viridis")
        row[0].set_title(title, loc="left", fontsize=9)
    fig.suptitle("feature maps")
    return _save(fig, path)
