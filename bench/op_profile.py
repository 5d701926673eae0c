"""Where a step's time goes, op by op: ``python3 bench/op_profile.py --backend cupy --batch 256`` (see ``--help``;
the engine is :mod:`cnnkit.bench.opprofile`)."""
from __future__ import annotations

import sys

from cnnkit.bench.opprofile import main

if __name__ == "__main__":
    sys.exit(main())
