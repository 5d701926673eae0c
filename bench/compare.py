"""Head-to-head benchmark of cnnkit's backends against PyTorch: ``python3 bench/compare.py ...`` is
``cnnkit bench ...`` (see ``--help``; the engine is :mod:`cnnkit.bench`)."""
from __future__ import annotations

import sys

from cnnkit.bench import main

if __name__ == "__main__":
    sys.exit(main())
