"""``mrimsm calibrate``: make a prior's split-conformal calibration from fully sampled
scans, so that ``recon`` can write a calibrated ``error_bound`` beside ``uncertainty``.

Thin layer over :func:`mrimsm.recon.calibration.calibrate`; the file goes beside the
checkpoint (``C.pt`` -> ``C.calibration.json``, where ``recon`` looks for it) unless
``-o`` says otherwise; ``--add`` adds accelerations to an existing file
(:func:`~mrimsm.recon.calibration.merge_calibration`). Options are typed; ``--accel`` is checked as recon's
(:func:`mrimsm.limits.parse_accel`), ``--samples`` by the field of :class:`~mrimsm.solver_settings.PosteriorSettings` it overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mrimsm.limits import parse_accel
from mrimsm.solver_settings import PosteriorSettings

from .options import device_option, seed_option, setting_option, threads_option


def register(app: typer.Typer) -> None:
    """Add the ``calibrate`` command to ``app``."""

    @app.command("calibrate")
    def calibrate(
        scans: List[Path] = typer.Argument(
            ..., help="Fully sampled fastMRI multi-coil .h5 files (or directories of them), kept apart from "
            "the scans you validate and test on.",
        ),
        checkpoint: Optional[Path] = typer.Option(
            None, "--checkpoint", help="MSM checkpoint (default: the shipped prior for the scans' size)."
        ),
        accel: List[float] = typer.Option(
            [4.0, 6.0], "--accel", "-R", metavar="R", callback=lambda values: [parse_accel(a) for a in values],
            help="Accelerations to calibrate (repeat; default 4 and 6).",
        ),
        samples: Optional[int] = setting_option(
            PosteriorSettings, "samples", "--samples", help="Posterior samples per slice (default: the solver settings').",
        ),
        bootstrap: Optional[float] = setting_option(
            PosteriorSettings, "bootstrap", "--bootstrap",
            help="Share of the acquired lines each sample leaves out (recon --bootstrap; default: the solver settings').",
        ),
        settings: Optional[Path] = typer.Option(
            None, "--settings", metavar="YAML", help="Posterior settings file (the bound holds for these)."
        ),
        seed: int = seed_option("Base seed of the masks."),
        output: Optional[Path] = typer.Option(
            None, "--output", "-o", help="Calibration file (default: beside the checkpoint, C.calibration.json)."
        ),
        device: Optional[str] = device_option(),
        threads: Optional[int] = threads_option(),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing calibration file."),
        add: bool = typer.Option(
            False, "--add", help="Add these accelerations to an existing calibration file of the same checkpoint "
            "and solver settings (their entries are replaced, the others kept).",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """Calibrate a prior's uncertainty maps on fully sampled scans (errors against each scan's
        reconstruction_rss), for recon's error_bound."""
        from mrimsm.errors import MrimsmError
        from mrimsm.recon.calibration import calibrate as make, calibration_path, made_for, \
            merge_calibration, read_calibration, write_calibration
        from mrimsm.recon.directory import list_inputs
        from mrimsm.utils import check_output

        from .recon_cmd import _echo_line, _progress

        from mrimsm.utils import set_threads

        set_threads(threads)
        opts = {"samples": samples, "bootstrap": bootstrap, "checkpoint": checkpoint, "settings": settings, "device": device}
        files: list[Path] = []
        for p in scans:
            if p.is_dir():
                files += list_inputs(p)
            elif p.is_file():
                files.append(p)
            else:
                raise MrimsmError(f"no such file or directory: {p}")
        if not files:
            raise MrimsmError("no .h5 files among the scans given")
        if output is None and checkpoint is None:
            raise MrimsmError("give --checkpoint (or -o): a shipped prior's calibration lives in the package")
        target = output if output is not None else calibration_path(checkpoint)
        if add and overwrite:
            raise MrimsmError("--add keeps the file's other entries and --overwrite replaces it: give one of them")
        if target.exists() and not (overwrite or add):
            raise MrimsmError(f"{target} exists; pass --overwrite to replace it or --add to add to it")
        check_output(target, kind="file", inputs=[*files, *(x for x in (checkpoint, settings) if x)])
        old = read_calibration(target) if add and target.exists() else None  # unusable: refused before any work
        if old is not None and checkpoint is not None and not made_for(old, checkpoint):
            raise MrimsmError(f"cannot add to {target}: it is the calibration of another checkpoint "
                              f"({old['checkpoint'].get('file')})")
        cal = make(files, accel, {k: v for k, v in opts.items() if v is not None},
                   seed=seed, progress=_progress(not quiet),
                   on_volume=None if quiet else _echo_line)
        if old is not None:
            try:
                cal = merge_calibration(old, cal)
            except MrimsmError as exc:  # keep the work: beside the file, which is left as it was
                aside = write_calibration(cal, target.with_name(target.name[:-5] + ".new.json"
                                                                if target.name.endswith(".json") else target.name + ".new"))
                raise MrimsmError(f"cannot add to {target}: {exc}; the new calibration is in {aside}") from None
        write_calibration(cal, target)
        for e in cal["entries"]:
            m = e["metrics"]
            typer.echo(f"R {e['accel']:g}: {e['slices']} slices, 90 % scale {e['levels']['0.90']:.3g}; "
                       f"uncalibrated 2-std coverage {m['coverage_2']:.1%}, Spearman |error|-std {m['spearman']:.2f}")
        typer.echo(f"wrote {target}")
