"""``mrimsm sample CKPT``: unconditional samples from an MSM prior (Algorithm 1).

SIGINT / SIGTERM stop it with ``interrupted: ...`` (exit 130) saying what was written:
the HDF5 file and the PNG grid are each written whole once every sample is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("sample")
    def sample_command(
        checkpoint: Path = typer.Argument(..., help="Checkpoint file or run directory (uses its last.pt)."),
        num: Optional[int] = typer.Option(None, "-n", "--num", help="Number of samples (config: 16)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Reverse diffusion steps (config: 200)."),
        w: Optional[int] = typer.Option(None, "--w", help="Random masks per step (config: 1)."),
        eta: Optional[float] = typer.Option(None, "--eta", help="DDIM eta in [0, 1] (config: 1)."),
        seed: int = typer.Option(0, "--seed", help="Same seed, same samples."),
        out: Path = typer.Option(
            Path("samples.h5"), "-o", "--out",
            help="Output HDF5 (a PNG grid is written beside it; -o x.png writes x.h5 and x.png)."
        ),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples drawn at once (config: 8)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda if available)."),
        threads: Optional[int] = typer.Option(
            None, "--threads", help="torch CPU threads (1 is fastest on a busy shared CPU)."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Draw samples from a trained MSM prior; write HDF5 (complex images) and a PNG grid
        (Ctrl-C / SIGTERM: stop, say what was written, exit 130)."""
        from mrimsm.errors import MrimsmError
        from mrimsm.utils import resolve_device, set_threads

        for name, value in (("-n", num), ("--steps", steps), ("--w", w), ("--batch-size", batch_size),
                            ("--threads", threads)):
            if value is not None and value < 1:
                raise MrimsmError(f"{name} must be >= 1, got {value}")
        if eta is not None and not 0 <= eta <= 1:
            raise MrimsmError(f"--eta must be in [0, 1], got {eta}")
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
                num = _draw_and_write(ckpt_path, h5_path, png_path, torch_device, num, steps, w, eta, seed,
                                      batch_size, quiet, drawn, written)
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


def _draw_and_write(ckpt_path, h5_path, png_path, torch_device, num, steps, w, eta, seed, batch_size, quiet,
                    drawn: list, written: list) -> int:
    """Load the prior, draw the samples, write ``h5_path`` then ``png_path`` (appended to
    ``written`` once whole); ``drawn[0]`` counts the samples drawn so far. Returns ``num``."""
    from tqdm import tqdm

    from mrimsm.errors import MrimsmError
    from mrimsm.inference import check_sample_disk, generate, load_msm, write_samples
    from mrimsm.train import save_grid

    loaded = load_msm(ckpt_path, device=torch_device)
    defaults = loaded.config.get("sample", {})
    num = num if num is not None else int(defaults.get("num", 16))
    steps = steps if steps is not None else int(defaults.get("steps", 200))
    w = w if w is not None else int(defaults.get("w", 1))
    eta = eta if eta is not None else float(defaults.get("eta", 1.0))
    batch_size = batch_size if batch_size is not None else int(defaults.get("batch_size", 8))
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
            loaded, num, steps=steps, w=w, eta=eta, seed=seed, batch_size=batch_size,
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
