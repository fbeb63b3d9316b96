"""``mrimsm sample CKPT``: unconditional samples from an MSM prior (Algorithm 1).

SIGINT / SIGTERM stop it with ``interrupted: ...`` (exit 130) saying what was written:
the HDF5 file and the PNG grid are each written whole once every sample is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mrimsm.sections import SampleConfig

from .options import device_option, seed_option, setting_option, threads_option


def register(app: typer.Typer) -> None:
    @app.command("sample")
    def sample_command(
        checkpoint: Path = typer.Argument(..., help="Checkpoint file or run directory (uses its last.pt)."),
        num: Optional[int] = setting_option(SampleConfig, "num", "-n", "--num",
                                            help="Number of samples (default: the checkpoint config's sample.num)."),
        steps: Optional[int] = setting_option(SampleConfig, "steps", "--steps",
                                              help="Reverse diffusion steps (default: sample.steps)."),
        w: Optional[int] = setting_option(SampleConfig, "w", "--w", help="Random masks per step (default: sample.w)."),
        eta: Optional[float] = setting_option(SampleConfig, "eta", "--eta",
                                              help="DDIM eta (default: sample.eta)."),
        seed: int = seed_option("Same seed, same samples."),
        out: Path = typer.Option(
            Path("samples.h5"), "-o", "--out",
            help="Output HDF5 (a PNG grid is written beside it; -o x.png writes x.h5 and x.png)."
        ),
        batch_size: Optional[int] = setting_option(SampleConfig, "batch_size", "--batch-size",
                                                   help="Samples drawn at once (default: sample.batch_size)."),
        device: Optional[str] = device_option(),
        threads: Optional[int] = threads_option(),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Draw samples from a trained MSM prior; write HDF5 (complex images) and a PNG grid
        (Ctrl-C / SIGTERM: stop, say what was written, exit 130)."""
        from mrimsm.utils import resolve_device, set_threads

        set_threads(threads)
        torch_device = resolve_device(device)
        # -o x.h5 -> x.h5 + x.png; -o x.png -> the same pair; -o x -> x.h5 + x.png
        suffix = out.suffix.lower()
        h5_path = out if suffix in (".h5", ".hdf5") else (
            out.with_suffix(".h5") if suffix == ".png" else out.with_name(out.name + ".h5"))
        png_path = h5_path.with_suffix(".png")

        from mrimsm.checkpoint import resolve_checkpoint_path
        from mrimsm.errors import Interrupted
        from mrimsm.interrupt import raising_interrupts
        from mrimsm.utils import check_output

        ckpt_path = resolve_checkpoint_path(checkpoint)
        for path in (h5_path, png_path):  # before any work; nothing is created
            check_output(path, inputs=[ckpt_path], role="checkpoint")
        drawn = [0]
        written: list = []
        try:
            with raising_interrupts():  # SIGINT / SIGTERM: stop, say what was written (each file whole)
                given = {"num": num, "steps": steps, "w": w, "eta": eta, "batch_size": batch_size}
                num = _draw_and_write(ckpt_path, h5_path, png_path, torch_device,
                                      {k: v for k, v in given.items() if v is not None}, seed, quiet, drawn, written)
        except KeyboardInterrupt as exc:
            name = str(exc.args[0]) if exc.args else "SIGINT"
            if not written:
                of = f" of {num}" if num is not None else ""
                raise Interrupted(
                    f"{name} after {drawn[0]}{of} samples; nothing written ({h5_path} and {png_path} are "
                    f"written together once all are drawn); the same command draws them again") from None
            missing = [str(p) for p in (h5_path, png_path) if p not in written]
            raise Interrupted(
                f"{name}: wrote {', '.join(str(p) for p in written)}"
                + (f"; not written: {', '.join(missing)}; the same command writes both" if missing else "")
            ) from None
        typer.echo(f"wrote {num} samples to {h5_path} and {png_path}", err=True)


def _draw_and_write(ckpt_path, h5_path, png_path, torch_device, given: dict, seed, quiet,
                    drawn: list, written: list) -> int:
    """Load the prior, draw the samples, write ``h5_path`` then ``png_path`` (appended to
    ``written`` once whole); ``drawn[0]`` counts the samples drawn so far. ``given``: the
    options given, over the checkpoint config's ``sample`` section. Returns the number drawn."""
    import dataclasses

    from tqdm import tqdm

    from mrimsm.errors import MrimsmError
    from mrimsm.inference import check_sample_disk, generate, load_msm, write_samples
    from mrimsm.train import save_grid

    loaded = load_msm(ckpt_path, device=torch_device)
    settings = dataclasses.replace(SampleConfig(**loaded.config.get("sample", {})), **given)
    num, steps, w, eta = settings.num, settings.steps, settings.w, settings.eta
    num_steps = int(loaded.meta.get("schedule", {}).get("num_steps", 1000))
    if steps > num_steps:
        raise MrimsmError(f"--steps must be <= {num_steps}, got {steps}")

    check_sample_disk(loaded, num, h5_path)
    bar = None if quiet else tqdm(total=num, unit="sample", desc="sample", dynamic_ncols=True)

    def advance(done: int) -> None:
        drawn[0] = done
        if bar is not None:
            bar.update(done - bar.n)

    try:
        images = generate(
            loaded, num, steps=steps, w=w, eta=eta, seed=seed, batch_size=settings.batch_size,
            device=torch_device, progress=advance,
        )
    finally:
        if bar is not None:
            bar.close()
    attrs = {
        "checkpoint": str(ckpt_path),
        "checkpoint_step": loaded.step,
        "steps": steps,
        "w": w,
        "eta": eta,
        "seed": seed,
    }
    write_samples(h5_path, images, attrs)
    written.append(h5_path)
    lo, hi = loaded.meta.get("value_range", (0.0, 1.0))  # image priors: [-1, 1] -> the grid's [0, 1]
    save_grid(png_path, (images - lo) / (hi - lo) if not images.is_complex() else images)
    written.append(png_path)
    return num
