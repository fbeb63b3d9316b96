"""``python -m mrimsm`` (also what ``torchrun -m mrimsm`` runs)."""

import sys

from mrimsm.cli.main import main

sys.exit(main())
