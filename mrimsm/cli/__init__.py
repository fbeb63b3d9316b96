"""``mrimsm.cli``: the command line (Typer). Its modules live in the repository's top-level
``cli/`` folder. An installed wheel gets them here through the package-dir mapping in
``pyproject.toml``; in a source checkout (``PYTHONPATH=.`` or an editable install) this stub
takes their place and points the package's search path at that folder, so
``mrimsm.cli.main`` is ``cli/main.py`` in every case (and no top-level ``cli`` is installed).
"""

from pathlib import Path as _Path

__path__ = [str(_Path(__file__).resolve().parents[2] / "cli")]
