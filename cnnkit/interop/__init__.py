"""Exchange with other frameworks.

- :mod:`cnnkit.interop.weights`: :func:`~cnnkit.interop.weights.from_torch` / :func:`~cnnkit.interop.weights.to_torch`,
  weights in and out of PyTorch by key, by a key map (``{"conv1": "0", ...}``) or by order with shape checks
  (``cnnkit.io.from_torch`` / ``cnnkit.io.to_torch`` delegate here). No torch import needed to read weights.
- :mod:`cnnkit.interop.torch`: the PyTorch twins of cnnkit's models (used by ``cnnkit bench`` and by the parity
  tests). It imports torch, so it is not imported here: load it only where PyTorch is wanted.
- :mod:`cnnkit.interop.onnx`: ``export_onnx(model, path, input_shape)`` (needs the ``onnx`` extra).

Arrays are plain NumPy (or CuPy) arrays, so ``torch.from_dlpack(y)`` / ``np.from_dlpack(t)`` exchange them with
PyTorch or JAX without a copy.
"""
