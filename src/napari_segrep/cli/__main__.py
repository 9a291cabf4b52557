"""``python -m napari_segrep.cli``: what ``--devices N`` relaunches under torchrun, and what
``torchrun ... -m napari_segrep.cli train`` runs."""

import sys

from . import main

if __name__ == "__main__":  # pragma: no cover - run as a program
    sys.exit(main())
