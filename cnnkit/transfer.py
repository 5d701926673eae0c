"""Transfer learning: swap a model's classifier head (re-exported by :mod:`cnnkit.train`)."""
from __future__ import annotations

from cnnkit.nn.linear import Linear
from cnnkit.nn.sequential import Sequential


def replace_head(model: Sequential, num_classes: int) -> Linear:
    """Swap the final Linear of a Sequential model for a freshly initialised one with ``num_classes`` outputs
    (same backend and dtype) and return it; freeze the rest with ``layer.trainable = False`` to fine-tune only
    the new head."""
    if not isinstance(model, Sequential) or not len(model) or not isinstance(model[-1], Linear):
        raise TypeError(f"replace_head needs a Sequential whose last layer is Linear, got {type(model).__name__}"
                        + (f" ending in {type(model[-1]).__name__}" if isinstance(model, Sequential) and len(model)
                           else ""))
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    old = model[-1]
    head = Linear(old.in_features, num_classes, bias=old.bias is not None, dtype=str(old.weight.data.dtype))
    head.to(model.backend)
    head.train(model.training)
    model.layers[-1] = head
    return head
