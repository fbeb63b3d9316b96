"""``mrimsm prep-fastmri RAW_DIR OUT_DIR``: parse, show progress, call
:func:`mrimsm.data.prep.prepare_dataset`.

Every numeric option is typed, prep's own ones with their range, and every choice is an
Enum, so Click refuses a bad value while parsing (one ``error:`` line, exit 2;
:mod:`mrimsm.cli.main`). ``--seed`` and ``--threads`` keep the bounds every command shares
(:mod:`mrimsm.limits`, the same words everywhere); :meth:`~mrimsm.data.prep.PrepOptions.validate`
checks those and what a range cannot say (a multiple of 16, open bounds, options that
depend on each other).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mrimsm.data.prep.choices import ESPIRIT_BACKENDS, MASK_KINDS

#: ``--mask``: the mask families of :class:`~mrimsm.data.prep.PrepOptions`.
MaskKind = Enum("MaskKind", [(k, k) for k in MASK_KINDS], type=str)
#: ``--espirit-backend``.
EspiritBackend = Enum("EspiritBackend", [(k, k) for k in ESPIRIT_BACKENDS], type=str)


def register(app: typer.Typer) -> None:
    @app.command("prep-fastmri")
    def prep_fastmri(
        raw_dir: Path = typer.Argument(..., help="Directory of fastMRI multi-coil .h5 files (fully sampled)."),
        out_dir: Path = typer.Argument(..., help="Output directory for shards and manifest.json (resumable)."),
        accel: float = typer.Option(4.0, "--accel", min=1, help="Acceleration R of each slice's own mask."),
        noise_rho: float = typer.Option(0.0, "--noise-rho", min=0, help="Noise std added to measured entries (images max ~1)."),
        size: int = typer.Option(256, "--size", min=16, help="Image side after crop / pad (multiple of 16)."),
        acquisition: str = typer.Option("AXT2", "--acquisition", help="Keep files with this `acquisition` attr ('all': every file)."),
        slices_per_volume: Optional[int] = typer.Option(None, "--slices-per-volume", min=1, help="Keep K central slices per volume."),
        slice_list: Optional[Path] = typer.Option(None, "--slice-list", help="CSV of file,slice rows to use (no edge skip)."),
        skip_first: int = typer.Option(0, "--skip-first", min=0, help="Edge slices dropped at the start of each volume."),
        skip_last: int = typer.Option(5, "--skip-last", min=0, help="Edge slices dropped at the end (the paper drops 5)."),
        val_fraction: float = typer.Option(0.05, "--val-fraction", min=0, max=1, help="Fraction of volumes in the validation split, below 1."),
        workers: int = typer.Option(1, "--workers", min=1, help="Worker processes."),
        seed: int = typer.Option(0, "--seed", help="Base seed of masks, noise and the split, in [0, 2^32) as for every command."),
        mask: MaskKind = typer.Option(MaskKind.paper, "--mask", help="Mask family."),
        center_lines: Optional[int] = typer.Option(None, "--center-lines", min=1, help="Paper mask centre columns (default 20 per 256)."),
        calib_width: Optional[int] = typer.Option(None, "--calib-width", min=3, help="ESPIRiT calibration columns (default min(24, ACS))."),
        calib_rows: int = typer.Option(24, "--calib-rows", min=2, help="ESPIRiT calibration rows (readout)."),
        kernel_width: int = typer.Option(6, "--kernel-width", min=2, help="ESPIRiT kernel width (at most --calib-rows)."),
        thresh: float = typer.Option(0.02, "--thresh", min=0, max=1, help="ESPIRiT singular-value threshold, in (0, 1)."),
        crop: float = typer.Option(0.95, "--crop", min=0, max=1, help="ESPIRiT eigenvalue crop, in [0, 1)."),
        espirit_backend: EspiritBackend = typer.Option(EspiritBackend.torch, "--espirit-backend", help="ESPIRiT implementation."),
        espirit_coarse: int = typer.Option(0, "--espirit-coarse", min=0, help="Eigen-solve grid step (0: auto, 1: exact)."),
        device: str = typer.Option("cpu", "--device", help="cpu | cuda[:N] for ESPIRiT."),
        strict: bool = typer.Option(False, "--strict", help="A corrupt input file is fatal instead of skipped."),
        overwrite: bool = typer.Option(
            False, "--overwrite",
            help="Replace a data set in OUT_DIR prepared with other parameters (refused without it): its "
                 "manifest.json goes first, then its shards that this run does not rewrite.",
        ),
        coils: Optional[int] = typer.Option(
            None, "--coils", metavar="N", min=1,
            help="Compress each scan to N virtual coils before the scale, the noise and ESPIRiT (PCA over coils of "
                 "each slice's acquired centre columns; recorded in the manifest's params). Default: no compression (see README, Coil compression).",
        ),
        threads: Optional[int] = typer.Option(
            None, "--threads", help="torch CPU threads per process, in [1, MAX_THREADS] as for every command (1 is fastest "
                                    "on a busy shared CPU)."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Turn raw fastMRI multi-coil k-space into undersampled, noisy training shards with ESPIRiT maps.

        Rerunning the same command into OUT_DIR resumes: finished shards are kept. Other parameters over a data set in OUT_DIR need --overwrite. manifest.json is written last, so a data set without one is unfinished (train refuses it).
        """
        from tqdm import tqdm

        from mrimsm.data.prep import PrepOptions, prepare_dataset
        from mrimsm.utils import set_threads

        set_threads(threads)

        opts = PrepOptions(
            accel=accel, noise_rho=noise_rho, size=size,
            acquisition=None if acquisition.lower() == "all" else acquisition,
            slices_per_volume=slices_per_volume, slice_list=None if slice_list is None else str(slice_list),
            skip_first=skip_first, skip_last=skip_last, val_fraction=val_fraction, seed=seed, mask_kind=mask.value,
            center_lines=center_lines, calib_width=calib_width, calib_rows=calib_rows, kernel_width=kernel_width,
            thresh=thresh, crop=crop, espirit_backend=espirit_backend.value, espirit_coarse=espirit_coarse,
            device=device, workers=workers, strict=strict, overwrite=overwrite, coils=coils,
        )
        bars: list = []

        def start(total: int) -> None:
            bars.append(tqdm(total=total, unit="slice", dynamic_ncols=True, disable=quiet, desc="prep"))

        def update(n: int) -> None:
            bars[-1].update(n)

        try:
            manifest = prepare_dataset(
                raw_dir, out_dir, opts, progress=update, on_start=start,
                on_warning=lambda msg: typer.echo(f"warning: {msg}", err=True),
            )
        finally:
            for bar in bars:
                bar.close()
        c = manifest["counts"]
        acc = manifest["achieved_acceleration"]
        typer.echo(
            f"{c['slices']['train']} train + {c['slices']['val']} val slices from {c['files_used']} files "
            f"({c['files_resumed']} resumed, {c['files_skipped']} skipped, {c['files_filtered']} filtered); "
            f"achieved acceleration {acc['overall']:.2f} (requested {accel:g}); wrote {out_dir / 'manifest.json'}"
        )
