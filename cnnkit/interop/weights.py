"""Weights in and out of PyTorch: :func:`from_torch` and :func:`to_torch`, by key, by a key map, or by order.

Neither needs torch to be imported for reading (anything with ``.detach()`` converts, plain arrays too);
``to_torch`` imports torch to build tensors. Three ways to pair PyTorch keys with cnnkit's:

- ``key_map=None``: the keys are the same (cnnkit's models are ``nn.Sequential`` trees with PyTorch's names).
- ``key_map={...}``: PyTorch key or module prefix -> cnnkit key or prefix, e.g. ``{"conv1": "0", "fc1": "9"}``
  renames ``conv1.weight`` to ``0.weight``; a full key (``"conv1.weight": "0.weight"``) wins over a prefix, the
  longest prefix over a shorter one. A callable ``torch_key -> cnnkit_key`` works too. The same map serves
  both directions.
- ``key_map="order"``: the i-th PyTorch entry goes to the i-th cnnkit entry (parameters then buffers of each
  layer, layers in definition order, as PyTorch orders a state dict), and every pair must have the same shape;
  an error names both keys and shapes.

Shapes must always match exactly; missing or unexpected keys are a KeyError listing them (unless
``strict=False``). PyTorch-only buffers (``num_batches_tracked``) are dropped when the model has no such entry.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cnnkit.nn.base import Layer, Parameter

TORCH_ONLY_BUFFERS = ("num_batches_tracked",)
"""Buffer names PyTorch keeps that cnnkit layers may lack; dropped by from_torch unless the model has them."""

KeyMap = Mapping[str, str] | Callable[[str], str] | str | None

__all__ = ["from_torch", "to_torch", "ordered_keys", "TORCH_ONLY_BUFFERS"]


def ordered_keys(model: Layer) -> list[str]:
    """``model``'s state-dict keys in PyTorch's order: each layer's parameters, then its buffers, layer by layer."""
    keys = []
    for path, layer in model.modules():
        names = [n for n, v in vars(layer).items() if isinstance(v, Parameter)] + list(layer._buffers)
        keys += [f"{path}.{n}" if path else n for n in names]
    return keys


def from_torch(source: Any, model: Layer, key_map: KeyMap = None, strict: bool = True) -> dict[str, str]:
    """Copy the weights of a PyTorch module or state dict ``source`` into the cnnkit ``model``.

    ``key_map`` pairs the keys (see the module docstring: None, a dict or callable, or "order"). The older
    argument order ``from_torch(model, state_dict)`` is accepted too. Returns the pairing used, PyTorch key ->
    cnnkit key.
    """
    if isinstance(source, Layer) and not isinstance(model, Layer):
        source, model = model, source
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a cnnkit Layer, got {type(model).__name__}")
    state = {key: _to_numpy(value) for key, value in _state_dict(source).items()}
    own = model.state_dict()
    if key_map == "order":
        pairs = _pair_by_order(list(state), ordered_keys(model), state, own, "PyTorch", "cnnkit")
    else:
        pairs = {key: _rename(key, key_map) for key in state}
    pairs = {t: c for t, c in pairs.items() if c in own or not _torch_only(t)}
    load_named(model, {c: state[t] for t, c in pairs.items()}, strict, "the PyTorch state dict")
    return pairs


def to_torch(model: Layer, target: Any = None, key_map: KeyMap = None) -> Any:
    """``model``'s weights for PyTorch: into the module ``target`` (loaded strictly, returned), or as a state
    dict of CPU tensors when ``target`` is None or a state dict (whose keys and shapes it then follows).

    ``key_map`` as for :func:`from_torch`, in the same direction (PyTorch key -> cnnkit key), so one map serves
    both ways; "order" and a callable need ``target`` to know PyTorch's keys.
    """
    import torch

    own = model.state_dict()
    if target is None:
        if key_map == "order" or callable(key_map):
            raise TypeError("to_torch with key_map='order' or a callable needs target (a torch module or state dict)")
        inverse = None if key_map is None else {v: k for k, v in key_map.items()}
        pairs = {_rename(c, inverse): c for c in own}
        return {t: torch.from_numpy(own[c]) for t, c in pairs.items()}
    theirs = {key: _to_numpy(value) for key, value in _state_dict(target).items()}
    if key_map == "order":
        pairs = _pair_by_order(list(theirs), ordered_keys(model), theirs, own, "PyTorch", "cnnkit")
    else:
        pairs = {t: _rename(t, key_map) for t in theirs}
        pairs = {t: c for t, c in pairs.items() if c in own or not _torch_only(t)}  # PyTorch keeps its value
    missing = sorted(c for c in own if c not in set(pairs.values()))
    unknown = sorted(t for t, c in pairs.items() if c not in own)
    if missing or unknown:
        raise KeyError(f"to_torch: cnnkit keys with no PyTorch key {missing}, PyTorch keys with no cnnkit key "
                       f"{unknown}")
    _check_shapes(pairs, theirs, own)
    state = {t: torch.from_numpy(own[c].astype(theirs[t].dtype, copy=False)) for t, c in pairs.items()}
    if hasattr(target, "load_state_dict"):
        target.load_state_dict({**target.state_dict(), **state}, strict=True)
        return target
    return state


def _torch_only(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in TORCH_ONLY_BUFFERS


def _rename(key: str, key_map: KeyMap) -> str:
    """``key`` under ``key_map``: a full-key entry, else the longest matching module prefix, else unchanged."""
    if key_map is None:
        return key
    if callable(key_map):
        return str(key_map(key))
    if not isinstance(key_map, Mapping):
        raise TypeError(f"key_map must be None, 'order', a dict or a callable, got {key_map!r}")
    if key in key_map:
        return key_map[key]
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in key_map:
            new = key_map[prefix]
            return ".".join([new, *parts[cut:]]) if new else ".".join(parts[cut:])
    return key


def _pair_by_order(source_keys: list[str], target_keys: list[str], source: Mapping[str, np.ndarray],
                   target: Mapping[str, np.ndarray], source_name: str, target_name: str) -> dict[str, str]:
    """source key -> target key, i-th to i-th, each pair of the same shape; a clear error otherwise."""
    if not any(_torch_only(k) for k in target_keys):
        source_keys = [k for k in source_keys if not _torch_only(k)]
    if len(source_keys) != len(target_keys):
        raise KeyError(f"pairing by order: the {source_name} side has {len(source_keys)} entries, the "
                       f"{target_name} side {len(target_keys)}")
    pairs = dict(zip(source_keys, target_keys))
    for s, t in pairs.items():
        if tuple(np.shape(source[s])) != tuple(np.shape(target[t])):
            raise ValueError(f"pairing by order: {source_name} {s!r} {tuple(np.shape(source[s]))} would go to "
                             f"{target_name} {t!r} {tuple(np.shape(target[t]))}; the shapes differ (use a key_map)")
    return pairs


def _check_shapes(pairs: Mapping[str, str], theirs: Mapping[str, np.ndarray], own: Mapping[str, np.ndarray]) -> None:
    for t, c in pairs.items():
        if tuple(theirs[t].shape) != tuple(own[c].shape):
            raise ValueError(f"shape mismatch: PyTorch {t!r} has {tuple(theirs[t].shape)}, cnnkit {c!r} has "
                             f"{tuple(own[c].shape)}")


def _state_dict(source: Any) -> Mapping[str, Any]:
    if hasattr(source, "state_dict") and callable(source.state_dict):
        return source.state_dict()
    if isinstance(source, Mapping):
        return source
    raise TypeError(f"expected a torch module or a state dict (mapping), got {type(source).__name__}")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_named(model: Layer, state: dict[str, np.ndarray], strict: bool, source: str) -> None:
    """model.load_state_dict with errors that name where the weights came from."""
    try:
        model.load_state_dict(state, strict=strict)
    except KeyError as exc:
        raise KeyError(f"{source}: {exc.args[0] if exc.args else exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc
