"""The files shipped inside the package (package data): the trained checkpoints, their
configs, training logs, calibrations and solver settings (``README.md`` lists them).

Every module that reads one names it through :data:`ASSETS` (or :func:`asset_path`), so
the folder is spelled in one place, in the source tree and in an installed wheel alike.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ASSETS", "asset_path"]

#: The folder of the shipped files (``mrimsm/assets`` in the source tree or a wheel).
ASSETS: Path = Path(__file__).resolve().parent


def asset_path(name: str) -> Path:
    """The path of the shipped file ``name`` (e.g. ``"default_ssdu.pt"``); whether it
    exists is the reader's check."""
    return ASSETS / name
