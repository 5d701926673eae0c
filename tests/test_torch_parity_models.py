"""Whole models against PyTorch in float32: LeNet-5 (modern) and ResNet-20 with shortcut option B (the default)
and option A (zero padding), each in train and eval mode.

The PyTorch models are cnnkit.interop.torch's hand-written twins (not derived from our models, so they catch a
mistake in cnnkit.models): the same nn.Sequential structure, so their state-dict keys are exactly ours (batch
norm's num_batches_tracked included); weights are copied from PyTorch by key. Logits, loss, the input
gradient and every parameter gradient must agree within MODEL_REL_F32, measured as max|ours - torch| / max|torch|
per tensor.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tolerances import MODEL_REL_F32, max_rel_err

from cnnkit import functional as F
from cnnkit import models, nn
from cnnkit.interop.torch import torch_lenet5, torch_resnet20

torch.set_float32_matmul_precision("highest")


def copy_weights(ours: nn.Layer, theirs: torch.nn.Module) -> None:
    # copies: load_state_dict keeps a NumPy array it is given, and .numpy() shares PyTorch's memory
    state = {k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()}
    assert sorted(state) == sorted(ours.state_dict()), "state-dict keys must be PyTorch's"
    ours.load_state_dict(state)


def compare(ours: nn.Layer, theirs: torch.nn.Module, x: np.ndarray, labels: np.ndarray) -> None:
    """One forward and backward of softmax cross-entropy on both; every result within MODEL_REL_F32."""
    logits = ours(x)
    loss, dlogits = F.softmax_cross_entropy(logits, labels)
    ours.zero_grad()
    dx = ours.backward(dlogits)

    tx = torch.tensor(x, requires_grad=True)
    theirs.zero_grad()
    tlogits = theirs(tx)
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.tensor(labels))
    tloss.backward()

    errors = {"logits": max_rel_err(logits, tlogits.detach().numpy()),
              "loss": max_rel_err(np.asarray(loss).reshape(1), tloss.detach().numpy().reshape(1)),
              "dx": max_rel_err(dx, tx.grad.numpy())}
    tparams = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        errors[name] = max_rel_err(p.grad, tparams[name].grad.numpy())
    theirs_buffers = dict(theirs.named_buffers())
    for name, b in ours.named_buffers():
        if b.dtype.kind == "f":
            errors[name] = max_rel_err(b, theirs_buffers[name].numpy())
        else:
            assert int(b) == int(theirs_buffers[name]), name
    worst = max(errors, key=errors.get)
    assert errors[worst] <= MODEL_REL_F32, f"{worst}: max relative error {errors[worst]:.3g} > {MODEL_REL_F32}"


def _batch(shape: tuple[int, ...], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 10, n)


def test_lenet5_matches_pytorch():
    torch.manual_seed(0)
    theirs = torch_lenet5()
    ours = models.lenet5()
    copy_weights(ours, theirs)
    compare(ours, theirs, *_batch((1, 32, 32), 8, seed=1))


@pytest.fixture(scope="module", params=["B", "A"])
def resnet_pair(request):
    torch.manual_seed(0)
    theirs = torch_resnet20(shortcut=request.param)
    with torch.no_grad():   # non-trivial batch-norm affine parameters
        for module in theirs.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    ours = models.resnet20(shortcut=request.param)
    copy_weights(ours, theirs)
    return ours, theirs


def test_resnet20_train_mode_matches_pytorch(resnet_pair):
    """Batch statistics normalise; the running statistics both models update must agree too."""
    ours, theirs = resnet_pair
    ours.train(), theirs.train()
    compare(ours, theirs, *_batch((3, 32, 32), 4, seed=2))


def test_resnet20_eval_mode_matches_pytorch(resnet_pair):
    """Running statistics normalise (after a few training batches, so they are not the initial 0 and 1)."""
    ours, theirs = resnet_pair
    ours.train(), theirs.train()
    for seed in (3, 4):
        x, _ = _batch((3, 32, 32), 4, seed)
        ours(x)
        with torch.no_grad():
            theirs(torch.tensor(x))
    ours.eval(), theirs.eval()
    compare(ours, theirs, *_batch((3, 32, 32), 4, seed=5))


def test_torch_mirror_of_option_a_matches_hand_written_twin():
    from cnnkit.interop.torch import torch_mirror

    torch.manual_seed(0)
    hand, mirror = torch_resnet20(shortcut="A").eval(), torch_mirror(models.resnet20(shortcut="A")).eval()
    mirror.load_state_dict(hand.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hand(x), mirror(x))
