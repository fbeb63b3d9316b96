"""``mrimsm recon``: reconstruct an accelerated (or retrospectively undersampled) scan,
or a directory of them.

Thin layer over :func:`mrimsm.recon.reconstruct_file` and
:func:`mrimsm.recon.reconstruct_directory`: parses options into one
:class:`mrimsm.recon.ReconOptions` that both take, shows tqdm progress,
prints the metrics table (one file) or a line per file and a summary (directory).
Options are typed: each method's are declared from its settings in
:mod:`mrimsm.solver_settings` (the field annotations give the ranges and choices, checked
while the command line is parsed, so a bad value is a one-line ``error:``). Library
imports happen inside the command so ``mrimsm --help`` stays fast.

Under ``torchrun --nproc_per_node N`` a directory's files are split across the
ranks (each on its own GPU when CUDA is present); a single input file is done by
rank 0 alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mrimsm.limits import parse_accel
from mrimsm.solver_settings import RECON_INITS, CSSettings, PosteriorSettings, ReconSettings, SenseSettings

from .options import choice_enum, device_option, field_choices, seed_option, setting_option, threads_option

#: the choices of --dc, --dc-schedule and --init, from PosteriorSettings' fields
DC = choice_enum("DC", field_choices(PosteriorSettings, "dc"))
DCSchedule = choice_enum("DCSchedule", field_choices(PosteriorSettings, "dc_schedule"))
Init = choice_enum("Init", RECON_INITS)  # of the field's choices, those of MRI


def _coils(n: Optional[int]) -> Optional[int]:
    """``--coils``: :func:`mrimsm.data.coil_compression.check_coils`, the rule prep's ``--coils`` shares."""
    from mrimsm.data.coil_compression import check_coils

    return check_coils(n)


def _known_methods(names: Optional[List[str]]) -> Optional[List[str]]:
    """``--method``: each a name in :data:`mrimsm.recon.methods.METHODS` (MrimsmError naming
    the known ones otherwise); checked while parsing, against the table (open to additions)."""
    if names:
        from mrimsm.recon.methods import get_method

        for name in names:
            get_method(name)
    return names


def _progress(enabled: bool):
    """``progress(desc, total)`` -> a tqdm bar (slices, steps or files), or ``None``."""
    if not enabled:
        return None

    def make(desc: str, total: int):
        from tqdm import tqdm

        unit = "file" if desc == "files" else ("step" if desc.endswith(" steps") else "slice")
        return tqdm(desc=f"{desc:<12}", total=total, unit=unit, leave=desc == "files")

    return make


def _echo_line(text: str) -> None:
    """Print a line without breaking the progress bars."""
    from tqdm import tqdm

    tqdm.write(text)


def register(app: typer.Typer) -> None:
    """Add the ``recon`` command to ``app``."""

    @app.command("recon")
    def recon(
        input: Path = typer.Argument(
            ...,
            help="fastMRI .h5 file, multi-coil or single-coil (reference reconstruction_esc; identity coil map on "
            "the object), fully sampled or with its own mask (used as acquired, no --accel; no reference: no "
            "metrics); zero-padded edge columns (the header's encoding limits, or all-zero columns) are never "
            "sampled nor counted in R. Or a directory of them (its .h5 / .hdf5 files, any case; other files "
            "are skipped and counted).",
        ),
        accel: Optional[float] = typer.Option(
            None, "--accel", "-R", metavar="R", callback=lambda v: None if v is None else parse_accel(v),
            help="Acceleration for retrospective undersampling of a fully sampled file (e.g. 4, 6, 8).",
        ),
        output: Optional[Path] = typer.Option(
            None, "--output", "-o",
            help="Output .h5 (one method) or directory (several). Directory input: the output directory, "
            "files named as the inputs (one method) or under one sub-directory per method; runs sharing it "
            "skip the files another run is doing (lock OUT/.<name>.lock). "
            "A file input with one method and -o OUT.nii or OUT.nii.gz writes NIfTI: the magnitude volume "
            "(rows x columns x slices, voxel sizes from the ISMRMRD header, 1 mm where it states none), "
            "OUT.uncertainty.nii.gz / OUT.error_bound.nii.gz beside it when there are such maps, and OUT.json, the record.",
        ),
        method: Optional[List[str]] = typer.Option(
            None, "--method", "-m", metavar="NAME", callback=_known_methods,
            help="zero-filled | sense | cs | msm | ssdu (a name in the method table; repeat for several; default: msm).",
        ),
        png: Optional[Path] = typer.Option(None, "--png", help="Write per-slice PNG figures into this directory."),
        seed: int = seed_option("Base seed of the masks and of random methods."),
        center_fraction: Optional[float] = setting_option(
            ReconSettings, "center_fraction", "--center-fraction",
            help="Fully sampled centre fraction (default: fastMRI's, >= 8 columns).",
        ),
        cs_lambda: Optional[float] = setting_option(
            CSSettings, "lamda", "--cs-lambda", help=f"L1-wavelet weight for cs (images at max 1; default {CSSettings.lamda:g})."
        ),
        cs_iters: Optional[int] = setting_option(CSSettings, "iters", "--cs-iters",
                                                 help=f"FISTA iterations for cs (default {CSSettings.iters})."),
        checkpoint: Optional[Path] = typer.Option(
            None, "--checkpoint", help="MSM checkpoint (default: the shipped prior for the scan's size after the readout crop: 64 x 64, or each side 192-416)."
        ),
        ssdu_checkpoint: Optional[Path] = typer.Option(
            None, "--ssdu-checkpoint", help="SSDU checkpoint (default: the shipped SSDU for the scan's size, as --checkpoint)."
        ),
        settings: Optional[Path] = typer.Option(
            None, "--settings", metavar="YAML",
            help="msm: posterior settings file, used instead of the prior's own (the 256 prior's: "
            "mrimsm/assets/default_msm256.recon.yaml); keys it lacks take the general defaults; flags below override it.",
        ),
        steps: Optional[int] = setting_option(
            PosteriorSettings, "steps", "--steps", help="msm: reverse diffusion steps from t0 (default 50; the 256 prior's 10)."
        ),
        w: Optional[int] = setting_option(PosteriorSettings, "w", "--w",
                                          help="msm: masks per step (default 3; the 256 prior's 6)."),
        eta: Optional[float] = setting_option(PosteriorSettings, "eta", "--eta",
                                              help="msm: DDIM stochasticity (default 1.0)."),
        dc_step: Optional[float] = setting_option(
            PosteriorSettings, "dc_step", "--dc-step",
            help="msm: data-consistency step (1 = replace measured k-space by y).",
        ),
        dc: Optional[DC] = typer.Option(
            None, "--dc",
            help="msm: data consistency: operator (CG on the image through the coils), tweedie "
            "(Gaussian conditioning with the network's Jacobian), measurement (replace / published rule).",
        ),
        dc_lambda: Optional[float] = setting_option(
            PosteriorSettings, "dc_lambda", "--dc-lambda", help="msm: prior weight of the operator solve (0 = projection)."
        ),
        dc_schedule: Optional[DCSchedule] = typer.Option(
            None, "--dc-schedule",
            help="msm: fixed (lambda), sigma (lambda / sigma_t^2) or noise (lambda sigma_y^2 / sigma_t^2, "
            "sigma_y the scan's measured noise).",
        ),
        dc_iters: Optional[int] = setting_option(PosteriorSettings, "dc_iters", "--dc-iters",
                                                 help="msm: CG iterations of the DC solve."),
        dc_noise: Optional[float] = setting_option(
            PosteriorSettings, "dc_noise", "--dc-noise", help="msm: tweedie: the data's noise std (normalized units)."
        ),
        t0: Optional[float] = setting_option(
            PosteriorSettings, "t0", "--t0",
            help="msm: warm start: begin the chain at t0 * T from the --init image (1 = from noise; 0 = the init image).",
        ),
        init: Optional[Init] = typer.Option(
            None, "--init", help="msm: initial image of the warm start (none: from noise, t0 1)."
        ),
        sense_lambda: Optional[float] = setting_option(
            SenseSettings, "lamda", "--sense-lambda",
            help=f"sense (and msm's sense init): Tikhonov weight (images at max 1; default {SenseSettings.lamda:g}).",
        ),
        sense_iters: Optional[int] = setting_option(SenseSettings, "iters", "--sense-iters",
                                                    help=f"sense: CG iterations (default {SenseSettings.iters})."),
        samples: Optional[int] = setting_option(
            PosteriorSettings, "samples", "--samples",
            help="msm: posterior samples per slice (default 4); their mean is the reconstruction, their std the uncertainty map (K > 1).",
        ),
        bootstrap: Optional[float] = setting_option(
            PosteriorSettings, "bootstrap", "--bootstrap",
            help="msm: share of the acquired lines outside the centre each sample leaves out of its data "
            "consistency (a k-space bootstrap: the uncertainty map then also shows where the result depends "
            "on which lines were acquired; default 0: every sample uses all lines).",
        ),
        coverage: Optional[float] = setting_option(
            ReconSettings, "coverage", "--coverage",
            help="msm: coverage of the calibrated error_bound written beside the uncertainty map "
            "(default 0.9 when the checkpoint has a calibration, see mrimsm calibrate; "
            "given explicitly, a checkpoint without one is refused).",
        ),
        coils: Optional[int] = typer.Option(
            None, "--coils", metavar="N", callback=_coils,
            help="Compress the k-space to N virtual coils before the coil maps (PCA over coils of each "
            "slice's fully sampled centre columns); N >= the scan's coils compresses nothing (a note). "
            "Default: none up to 16 coils (8 of a real scan's 13 coils: 0.2 dB lower PSNR at most, 1.25-2x faster; "
            "README), 12 virtual coils above (a note; --coils C with the scan's C coils keeps them all).",
        ),
        batch_slices: Optional[int] = setting_option(
            ReconSettings, "batch_slices", "--batch-slices", help="Slices per network batch (memory vs. speed)."
        ),
        device: Optional[str] = device_option("cpu, cuda or cuda:N for the learned methods (default: cuda if available)."),
        threads: Optional[int] = threads_option("torch CPU threads (1 is fastest on a busy shared CPU; default: torch's choice)."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace outputs mrimsm did not write (a file input's existing -o), and, "
            "for a directory input, redo every output, also those done before or made with other settings "
            "(without it: done ones are skipped, others refused)."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """Reconstruct INPUT (a file or a directory), write fastMRI-layout output, print PSNR / SSIM / NMSE."""
        from tqdm import tqdm

        from mrimsm import recon as lib

        # tqdm makes its class-wide write lock on first use; made there, inside a write, a
        # Ctrl-C / SIGTERM landing in the lock's constructor left no lock, and tqdm's cleanup
        # then hid the interrupt behind an AttributeError traceback. Made now, before any work.
        tqdm.get_lock()

        opts = {  # the method options, by the keys of mrimsm.solver_settings
            "cs_lambda": cs_lambda,
            "cs_iters": cs_iters,
            "checkpoint": checkpoint,
            "ssdu_checkpoint": ssdu_checkpoint,
            "settings": settings,
            "steps": steps,
            "w": w,
            "eta": eta,
            "dc_step": dc_step,
            "dc": None if dc is None else dc.value,
            "dc_lambda": dc_lambda,
            "dc_schedule": None if dc_schedule is None else dc_schedule.value,
            "dc_iters": dc_iters,
            "dc_noise": dc_noise,
            "t0": t0,
            "init": None if init is None else init.value,
            "sense_lambda": sense_lambda,
            "sense_iters": sense_iters,
            "samples": samples,
            "bootstrap": bootstrap,
            "coverage": coverage,
            "batch_slices": batch_slices,
            "device": device,
        }
        if threads is not None:
            from mrimsm.utils import set_threads

            set_threads(threads)
        rank, world, _ = lib.rank_info()
        job = lib.ReconOptions(
            methods=method or None,
            accel=accel,
            seed=seed,
            options=opts,
            png_dir=png,
            center_fraction=center_fraction,
            coils=coils,
            progress=_progress(not quiet and rank == 0),
        )

        if input.is_dir():
            report = lib.reconstruct_directory(
                input,
                output,
                recon_options=job,
                overwrite=overwrite,
                on_file=lambda o: _echo_line(f"[rank {rank}] {lib.format_outcome(o)}" if world > 1
                                             else lib.format_outcome(o)),
            )
            typer.echo(lib.format_directory_summary(report))
            if report.failed:
                raise typer.Exit(1)
            return

        if world > 1 and rank != 0:
            typer.echo(f"rank {rank}: one input file; rank 0 reconstructs it")
            return
        report = lib.reconstruct_file(input, output, recon_options=job, overwrite=overwrite)
        from mrimsm.utils import printable  # a file name that is not UTF-8 is printed with \xNN escapes

        for note in report.notes:
            typer.echo(printable(f"note: {note}"), err=True)
        typer.echo(lib.format_table(report.results, report.volume))
        for path in report.outputs.values():
            typer.echo(printable(f"wrote {path}"))
        if report.pngs:
            typer.echo(printable(f"wrote {len(report.pngs)} PNG files to {png}"))
