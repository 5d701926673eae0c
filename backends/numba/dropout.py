"""The inverted-dropout mask: the NumPy backend's own. It is one vectorised RNG draw, which a Numba loop would not
beat, and sharing it gives one mask per seed on both CPU backends (models with dropout train identically)."""
from __future__ import annotations

from cnnkit.backends import implements
from cnnkit.backends.numpy.dropout import dropout_mask

implements("numba")(dropout_mask)
