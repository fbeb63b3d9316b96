"""``python -m mrimsm`` (also what ``torchrun -m mrimsm`` runs)."""

import sys

from cli.main import main

sys.exit(main())
