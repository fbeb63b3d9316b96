"""``mrimsm recon``: reconstruct an accelerated (or retrospectively undersampled) scan.

Thin layer over :func:`mrimsm.recon.reconstruct_file`: parses options, shows
tqdm progress, prints the metrics table. Library imports happen inside the
command so ``mrimsm --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _tqdm_progress(desc: str, total: int):
    from tqdm import tqdm

    return tqdm(desc=f"{desc:<12}", total=total, unit="slice", leave=False)


def register(app: typer.Typer) -> None:
    """Add the ``recon`` command to ``app``."""

    @app.command("recon")
    def recon(
        input: Path = typer.Argument(..., help="fastMRI multi-coil .h5 file (fully sampled or with its own mask)."),
        accel: Optional[str] = typer.Option(
            None, "--accel", "-R", metavar="R",
            help="Acceleration for retrospective undersampling of a fully sampled file (e.g. 4, 6, 8).",
        ),
        output: Optional[Path] = typer.Option(
            None, "--output", "-o", help="Output .h5 (one method) or directory (several). Default: current dir."
        ),
        method: Optional[List[str]] = typer.Option(
            None, "--method", "-m", metavar="NAME",
            help="zero-filled | cs | any registered method (repeat for several; default: msm if installed, else cs).",
        ),
        png: Optional[Path] = typer.Option(None, "--png", help="Write per-slice PNG figures into this directory."),
        seed: int = typer.Option(0, "--seed", help="Base seed of the masks (and of random methods)."),
        center_fraction: Optional[float] = typer.Option(
            None, "--center-fraction", help="Fully sampled centre fraction (default: fastMRI's, >= 8 columns)."
        ),
        cs_lambda: Optional[float] = typer.Option(None, "--cs-lambda", help="L1-wavelet weight for cs (images at max 1)."),
        cs_iters: Optional[int] = typer.Option(None, "--cs-iters", help="FISTA iterations for cs."),
        checkpoint: Optional[Path] = typer.Option(
            None, "--checkpoint", help="MSM checkpoint (default: the shipped model)."
        ),
        ssdu_checkpoint: Optional[Path] = typer.Option(None, "--ssdu-checkpoint", help="SSDU checkpoint."),
        steps: Optional[int] = typer.Option(None, "--steps", help="msm: reverse diffusion steps (default 200)."),
        w: Optional[int] = typer.Option(None, "--w", help="msm: masks per step (default 3)."),
        samples: Optional[int] = typer.Option(
            None, "--samples", help="msm: posterior samples per slice; > 1 also writes an uncertainty map."
        ),
        device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (learned methods)."),
    ) -> None:
        """Reconstruct INPUT, write fastMRI-layout output, print PSNR / SSIM / NMSE."""
        from mrimsm.recon import format_table, reconstruct_file

        report = reconstruct_file(
            input,
            output,
            methods=method or None,
            accel=accel,
            seed=seed,
            options={
                "cs_lambda": cs_lambda,
                "cs_iters": cs_iters,
                "checkpoint": checkpoint,
                "ssdu_checkpoint": ssdu_checkpoint,
                "steps": steps,
                "w": w,
                "samples": samples,
                "device": device,
            },
            png_dir=png,
            center_fraction=center_fraction,
            progress=_tqdm_progress,
        )
        typer.echo(format_table(report.results, report.volume))
        for name, path in report.outputs.items():
            typer.echo(f"wrote {path}")
        if report.pngs:
            typer.echo(f"wrote {len(report.pngs)} PNG files to {png}")
