"""``python -m cnnkit ...`` runs the ``cnnkit`` command line (see :mod:`cnnkit.cli`)."""
from cnnkit.cli import main

raise SystemExit(main())
