"""Exchange with other frameworks.

:mod:`cnnkit.interop.torch` holds the PyTorch twins of cnnkit's models (used by ``cnnkit bench`` and by the
parity tests). It imports torch, so it is not imported here: load it only where PyTorch is wanted.
Weight exchange with PyTorch state dicts is :func:`cnnkit.io.from_torch` / :func:`cnnkit.io.to_torch_state_dict`.
"""
