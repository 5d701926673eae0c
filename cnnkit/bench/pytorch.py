"""The PyTorch engines of ``cnnkit bench``: eager and, when it works here, ``torch.compile``.

They run the PyTorch twin of the cnnkit model (:func:`cnnkit.interop.torch.torch_mirror`) with the same weights,
batch and SGD settings. On CPU PyTorch gets the same thread count as the CPU backends; on GPU, cuDNN autotuning
with TF32 off (cnnkit's kernels compute in full float32). PyTorch is optional: when it is missing, or lacks a
layer or a device, the engine has no step and a note saying why.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit.bench.steps import LR, MOMENTUM, Step
from cnnkit.bench.timing import Engine


def import_torch_first() -> None:
    """Load PyTorch (when installed) before any numba kernel runs.

    Otherwise torch shares the OpenMP runtime that numba's threading layer loaded, and its CPU ops run several
    times slower, which would flatter every ratio to PyTorch (measurements: bench/NOTES.md).
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        pass


def torch_step(net: Any, x: np.ndarray, labels: np.ndarray, mode: str, device: str) -> Step:
    """One synchronised PyTorch step, the same work as :func:`cnnkit.bench.steps.cnnkit_step`."""
    import torch

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
    net = net.to(dev)
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(labels).to(dev)
    if mode == "infer":
        net.eval()

        def infer() -> None:
            with torch.inference_mode():
                net(xt)
            sync()
        return infer

    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
        sync()
    return train


def _configure(torch: Any, device: str, threads: int) -> str | None:
    """Set PyTorch up for a fair comparison on ``device``; the reason it cannot run there, else None."""
    if device == "gpu":
        if not torch.cuda.is_available():
            return "PyTorch sees no CUDA device"
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(threads)
    return None


def _compiled_engine(torch: Any, net: Any, x: np.ndarray, labels: np.ndarray, mode: str, device: str) -> Engine:
    """``torch.compile`` of ``net``, compiled now; a compiler missing or failing gives a step-less engine."""
    try:
        step = torch_step(torch.compile(net), x, labels, mode, device)
        step()  # compiles now; a compiler missing or failing here raises
        return Engine("torch.compile", step)
    except Exception as exc:  # noqa: BLE001 - any compile failure means: report eager only, with the reason
        torch._dynamo.reset()
        reason = (str(exc).strip().splitlines() or [""])[0][:100]
        return Engine("torch.compile", None, f"torch.compile failed here ({type(exc).__name__}: {reason}); eager only")


def torch_engines(ref: Any, x: np.ndarray, labels: np.ndarray, mode: str, device: str, threads: int,
                  compile_torch: bool) -> list[Engine]:
    """PyTorch eager (and torch.compile when it works) on the same device, loaded with ``ref``'s weights.

    A missing PyTorch, CUDA device or layer equivalent gives an engine with no step and a note saying why.
    """
    try:
        import torch
    except ImportError:
        return [Engine("torch", None, "PyTorch is not installed")]
    reason = _configure(torch, device, threads)
    if reason is not None:
        return [Engine("torch", None, reason)]
    from cnnkit.interop.torch import torch_mirror
    from cnnkit.io import to_torch_state_dict

    state = to_torch_state_dict(ref)

    def mirror() -> Any:
        net = torch_mirror(ref)
        net.load_state_dict(state, strict=True)
        return net

    try:
        engines = [Engine("torch", torch_step(mirror(), x, labels, mode, device))]
    except NotImplementedError as exc:
        return [Engine("torch", None, str(exc))]
    if compile_torch:
        engines.append(_compiled_engine(torch, mirror(), x, labels, mode, device))
    return engines
