"""Convolution, Numba, organised by path: :mod:`.plan` holds the rule that picks a path per pass and the two
ops (``conv2d_forward``, ``conv2d_backward``, registered for the contract); :mod:`.shifted`, :mod:`.lanes`,
:mod:`.channels`, :mod:`.planar`, :mod:`.winograd`, :mod:`.packed`, :mod:`.im2row` and :mod:`.direct` are
the paths; :mod:`._loops` holds the loops
they share.

The package re-exports the ops, :func:`~.plan.plan`, ``PATHS`` and ``STRIDE_ONE_PATHS`` (``conv.plan`` is therefore
the function).
"""
from __future__ import annotations

from .plan import PATHS, STRIDE_ONE_PATHS, conv2d_backward, conv2d_forward, plan

__all__ = ["PATHS", "STRIDE_ONE_PATHS", "conv2d_backward", "conv2d_forward", "plan"]
