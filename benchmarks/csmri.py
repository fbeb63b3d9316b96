"""Benchmark: zero-filled, SENSE, CS-L1 (sigpy), SSDU and MSM on the same held-out
slices with the same masks, coil maps and seeds, at R = 4 and R = 6.

    .venv/bin/python -m benchmarks.csmri                                   # defaults (< 30 min on 2 CPU cores)
    .venv/bin/python -m benchmarks.csmri --accels 4 6 --slices 12 --device cuda
    .venv/bin/python -m benchmarks.csmri --data data/fastmri_r4 --slices 40 --device cuda   # real fastMRI
    .venv/bin/python -m benchmarks.csmri --checkpoint runs/default_msm --ssdu-checkpoint runs/ssdu_tiny
    .venv/bin/python -m benchmarks.csmri --slices 1 --steps 4 --out /tmp/c                  # smoke test

Defaults: 3 simulated held-out slices (one per orientation; ``--slices`` up to 24),
the shipped MSM and SSDU models, MSM with the general solver settings
(``PosteriorSettings``' defaults: 50 steps, w = 3, from CG-SENSE at t0 0.3, 4 posterior samples per
slice: their mean is the reconstruction, their pixel-wise std the uncertainty map; the
paper averages 5: ``--samples 5``), about 11 minutes on this CPU. ``--data DIR`` uses the validation shards of a
prepared directory (``mrimsm prep-fastmri``; they keep a ``reference``) instead.

Writes ``results/csmri.md`` (a table per R: PSNR / SSIM / NMSE mean ± std in the paper's
and fastMRI's conventions, seconds and network evaluations per slice, MSM against SSDU
beside the paper's margins), ``results/csmri.csv`` (the same numbers),
``results/csmri_slices.csv`` (every slice), ``results/csmri_readme.csv`` (the README's
table, :func:`readme_table`: copy it to ``benchmarks/results/csmri.csv``) and ``results/csmri.png`` (reference, each
method, error maps and the MSM uncertainty, one slice per R).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from benchmarks import RESULTS_DIR
from benchmarks.arguments import AUTO, ONE_THREAD_ON_CPU, add_heldout_arguments, base_parser, run_main, setup_torch
from benchmarks.runner import Outcome, accel_tables, report_head, run_heldout
from benchmarks.runs import Run
from benchmarks.tables import checkpoint_line, find

#: The paper's PSNR (dB, fastMRI brain AXT2 at 256 x 256, per-slice [0, 1] convention).
PAPER_PSNR = {
    4.0: {"zero-filled": 22.75, "SSDU": 29.65, "MSM": 30.71},
    6.0: {"SSDU": 28.02, "MSM": 28.86},
}

LABELS = {"zero-filled": "zero-filled", "sense": "SENSE", "cs": "CS-L1", "ssdu": "SSDU", "msm": "MSM"}


def plan_runs(args: argparse.Namespace) -> list[Run]:
    """One run per ``--methods`` entry; MSM with the ``--steps / --w / --samples`` given."""
    runs = []
    for m in args.methods:
        opts = {}
        if m == "msm":
            opts.update({k: v for k, v in (("steps", args.steps), ("w", args.w), ("samples", args.samples))
                         if v is not None})
        runs.append(Run(LABELS[m], m, opts))
    return runs


def margin_line(rows: Sequence[dict], accel: float) -> str:
    """MSM's PSNR margin over SSDU at ``accel`` beside the paper's ("" without both rows)."""
    msm, ssdu = find(rows, accel, "MSM"), find(rows, accel, "SSDU")
    if msm is None or ssdu is None:
        return ""
    d = msm["psnr_paper_mean"] - ssdu["psnr_paper_mean"]
    dv = msm["psnr_fastmri_mean"] - ssdu["psnr_fastmri_mean"]
    paper = PAPER_PSNR.get(accel, {})
    ref = (f"; the paper: {paper['MSM'] - paper['SSDU']:+.2f} dB ({paper['MSM']:.2f} vs {paper['SSDU']:.2f})"
           if "MSM" in paper and "SSDU" in paper else "")
    return f"MSM − SSDU: {d:+.2f} dB paper convention / {dv:+.2f} dB fastMRI convention{ref}."


def render(args: argparse.Namespace, runs: list[Run], outcome: Outcome) -> str:
    """``csmri.md``: a table per R, the margins, the figure's caption."""
    models = [checkpoint_line(k, p) for k, p in (("msm", args.checkpoint), ("ssdu", args.ssdu_checkpoint))
              if k in args.methods]
    lines = report_head(args, "CS-MRI benchmark: zero-filled, SENSE, CS-L1, SSDU, MSM", outcome, models)
    lines += accel_tables(outcome.rows, [r.label for r in runs], margin_line)
    if outcome.figure is not None:
        lines += [f"Figure: `{outcome.figure.name}` (first slice; top: reference and reconstructions with their PSNR, "
                  "bottom: |error| at a quarter of the reference's maximum, and the MSM posterior std).", ""]
    lines += [f"Total wall time {outcome.seconds / 60:.1f} min.", ""]
    return "\n".join(lines)


def readme_table(rows: Sequence[dict], labels: Sequence[str], command: str, setup: str) -> str:
    """The run as a result file for ``benchmarks/results/`` (:func:`benchmarks.readme.format_table`):
    a row per method (``labels`` order), PSNR dB in the paper and fastMRI conventions per
    R (achieved R in brackets), network evaluations per slice ("-" for none)."""
    from benchmarks.readme import measured_table

    accels = list(dict.fromkeys(r["accel"] for r in rows))
    header = ["method"]
    for accel in accels:
        achieved = next(r["achieved_accel"] for r in rows if r["accel"] == accel)
        head = f"R = {accel:g} ({achieved:.2f})"
        header += [f"{head}: PSNR paper", f"{head}: PSNR fastMRI"]
    header.append("NFE/slice")
    body = []
    for label in labels:
        mine = [find(rows, accel, label) for accel in accels]
        if all(r is None for r in mine):
            continue
        cells = [label]
        for r in mine:
            cells += ["-", "-"] if r is None else [f"{r['psnr_paper_mean']:.2f}", f"{r['psnr_fastmri_mean']:.2f}"]
        nfe = max(float(r["nfe_per_slice"]) for r in mine if r is not None)
        cells.append(f"{nfe:.0f}" if nfe > 0 else "-")
        body.append(cells)
    return measured_table(command, setup, header, body)


def readme_setup(args: argparse.Namespace, outcome: Outcome) -> str:
    """The provenance line of :func:`readme_table`: the models and the data."""
    models = [checkpoint_line(k, p) for k, p in (("msm", args.checkpoint), ("ssdu", args.ssdu_checkpoint))
              if k in args.methods]
    return "; ".join(models + [outcome.data_text.rstrip("."), "PSNR dB"])


def parser() -> argparse.ArgumentParser:
    """The command line: the held-out options, the methods and the SSDU model."""
    ap = base_parser(__doc__, out=RESULTS_DIR, threads=None, threads_help=ONE_THREAD_ON_CPU, device=AUTO, seed=0,
                     quiet=True)
    add_heldout_arguments(ap)
    ap.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS))
    ap.add_argument("--ssdu-checkpoint", type=Path, default=None, help="SSDU checkpoint (default: the shipped model)")
    ap.add_argument("--samples", type=int, default=None,
                    help="MSM posterior samples per slice (default: the settings, 4; > 1 gives the uncertainty map)")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    setup_torch(args)

    def body() -> int:
        from mrimsm.diffusion.posterior import load_posterior_settings

        runs = plan_runs(args)
        common = {"checkpoint": args.checkpoint, "ssdu_checkpoint": args.ssdu_checkpoint, "settings": args.settings,
                  "device": args.device, "seed": args.seed}
        settings = load_posterior_settings(args.settings, steps=args.steps, w=args.w, samples=args.samples)
        command = "python -m benchmarks.csmri " + " ".join(sys.argv[1:] if argv is None else argv)
        return run_heldout(args, runs, common, settings, lambda outcome: render(args, runs, outcome), stem="csmri",
                           figure=True, uncertainty_label="MSM",
                           readme=lambda outcome: readme_table(outcome.rows, [r.label for r in runs], command.strip(),
                                                               readme_setup(args, outcome)))

    run_main(body)
    return 0


if __name__ == "__main__":
    main()
