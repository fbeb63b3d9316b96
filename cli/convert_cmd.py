"""``mrimsm convert``: a Siemens TWIX raw file (``meas.dat``) -> a fastMRI multi-coil
``.h5`` that ``recon``, ``calibrate`` and ``prep-fastmri`` read.

Thin layer over :func:`mrimsm.data.twix.convert` (needs twixtools:
``pip install mrimsm[twix]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the ``convert`` command to ``app``."""

    @app.command("convert")
    def convert(
        input: Path = typer.Argument(..., help="Siemens TWIX raw file (meas.dat) of a 2-D Cartesian, fully sampled scan."),
        output: Optional[Path] = typer.Option(
            None, "--output", "-o", help="Output .h5 (default: the input's name with .h5, in the current directory)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    ) -> None:
        """Convert a Siemens TWIX file to the fastMRI multi-coil layout: lines placed by their counters, readout
        oversampling kept, averages averaged, reconstruction_rss and an ISMRMRD header with the field of view."""
        from mrimsm.data.twix import convert as run

        target = output if output is not None else Path(input.stem + ".h5")
        info = run(input, target, overwrite=overwrite)
        s, c, h, w = info["shape"]
        rh, rw = info["recon_size"]
        typer.echo(f"wrote {info['output']}: kspace {s} x {c} x {h} x {w} (slices, coils, readout, lines), "
                   f"reconstruction_rss {rh} x {rw}, field of view {info['fov_mm'][0]:g} x {info['fov_mm'][1]:g} mm"
                   + (f", {info['averages']} averages averaged" if info["averages"] > 1 else ""))
