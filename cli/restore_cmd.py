"""``mrimsm restore``: box inpainting / 4x super-resolution of an image with a natural-image MSM prior.

Thin layer over :func:`mrimsm.restore.restore_file`: typed options (declared from the fields
of :class:`~mrimsm.solver_settings.PosteriorSettings`, checked while parsing), shows tqdm
progress over the reverse steps, prints the summary (and, with ``--simulate``,
PSNR / SSIM against the clean image for MSM and the simple baseline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mrimsm.solver_settings import RESTORE_INITS, RESTORE_TASKS, PosteriorSettings

from .options import choice_enum, device_option, finite_option, seed_option, setting_option, threads_option


#: ``--init``: where the chain starts, :data:`mrimsm.solver_settings.RESTORE_INITS`
Init = choice_enum("Init", RESTORE_INITS)
#: ``--task``: :data:`mrimsm.solver_settings.RESTORE_TASKS`
Task = choice_enum("Task", RESTORE_TASKS)


def register(app: typer.Typer) -> None:
    """Add the ``restore`` command to ``app``."""

    @app.command("restore")
    def restore(
        input: Path = typer.Argument(
            ..., help="Degraded image (PNG/JPEG): box blanked (inpaint-box) or 4x smaller (sr4); "
                      "with --simulate a clean image."
        ),
        output: Path = typer.Option(..., "--output", "-o", help="Restored image (.png or .jpg)."),
        task: Task = typer.Option(..., "--task", "-t", help="Box inpainting or 4x super-resolution."),
        checkpoint: Optional[Path] = typer.Option(
            None, "--checkpoint", help="Image MSM checkpoint or run directory (default: the shipped model)."
        ),
        simulate: bool = typer.Option(
            False, "--simulate", help="INPUT is clean: degrade it, restore it, print PSNR/SSIM vs the baseline."
        ),
        samples: Optional[int] = setting_option(
            PosteriorSettings, "samples", "--samples", "-k",
            help="Posterior samples (default 4; mean = output; > 1 also writes an uncertainty PNG).",
        ),
        steps: Optional[int] = setting_option(PosteriorSettings, "steps", "--steps",
                                              help="Reverse diffusion steps from t0 (default 50)."),
        w: Optional[int] = setting_option(PosteriorSettings, "w", "--w", help="Random masks per step (default 3)."),
        eta: Optional[float] = setting_option(PosteriorSettings, "eta", "--eta", help="DDIM eta (default 1)."),
        t0: Optional[float] = setting_option(
            PosteriorSettings, "t0", "--t0",
            help="Warm start: begin the chain at t0 * T from --init (default 0.4 inpaint-box, 0.2 sr4; 1 = from noise).",
        ),
        init: Optional[Init] = typer.Option(
            None, "--init", help="Initial image of the warm start: baseline (bicubic / mean fill) or none (t0 1)."
        ),
        noise: float = finite_option(0.01, "--noise", help="--simulate: observation noise std (images in [-1, 1])."),
        seed: int = seed_option("Same seed, same result."),
        device: Optional[str] = device_option(),
        threads: Optional[int] = threads_option(),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Restore INPUT (box inpainting or 4x super-resolution) with the MSM posterior solver."""
        from mrimsm.utils import resolve_device, set_threads

        set_threads(threads)
        torch_device = resolve_device(device)

        from mrimsm.restore import format_report, image_settings, restore_file

        settings = image_settings(task.value, steps=steps, w=w, eta=eta, samples=samples, t0=t0,
                                  init=init.value if init is not None else None)
        bar = None  # made at the first step: a bad input stays one error line

        def on_step(done: int, total: int) -> None:
            nonlocal bar
            if quiet:
                return
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=settings.steps, unit="step", desc="restore", leave=False, dynamic_ncols=True)
            bar.update(done - bar.n)

        try:
            report = restore_file(
                input, output, task.value, checkpoint=checkpoint, simulate=simulate, settings=settings,
                noise=noise, seed=seed, device=torch_device, on_step=on_step,
            )
        finally:
            if bar is not None:
                bar.close()
        typer.echo(format_report(report))
        for role, path in report.outputs.items():
            typer.echo(f"wrote {role}: {path}")
