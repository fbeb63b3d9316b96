"""Benchmark: zero-filled, CS-L1 (sigpy) and MSM posterior sampling on held-out
slices at R = 4 and R = 6, with the paper's ablations (data consistency, start of the chain,
w = 1 vs 3, the main steps vs ``--ablation-steps``) and the number of posterior samples averaged.

    .venv/bin/python -m benchmarks.recon                                  # defaults (< 30 min on 2 CPU cores)
    .venv/bin/python -m benchmarks.recon --checkpoint runs/default_msm    # another MSM model
    .venv/bin/python -m benchmarks.recon --slices 24 --ablation-accels 4 6 --device cuda   # everything
    .venv/bin/python -m benchmarks.recon --ablations none                                 # no ablations
    .venv/bin/python -m benchmarks.recon --slices 1 --steps 4 --ablation-steps 2 --out /tmp/r   # smoke test

Defaults: 3 held-out slices (one per orientation; ``--slices`` up to 24), R = 4 and 6,
the shipped MSM model with the general solver settings (``PosteriorSettings``' defaults:
50 steps, w = 3, from CG-SENSE at t0 0.3, mean of 4 samples), ablations at R = 4 only
(``--ablation-accels``): about 18 minutes on this 2-core CPU with one thread.
Writes ``results/recon.md`` (tables), ``results/recon.csv`` (one row per method and R:
mean and std of every metric in both conventions, seconds and network evaluations per
slice) and ``results/recon_slices.csv`` (every slice). The data: :mod:`benchmarks.data`; the
metric conventions: :mod:`benchmarks.runs`. The pipeline is :mod:`benchmarks.runner`'s, as
``benchmarks.csmri``'s.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from benchmarks import RESULTS_DIR
from benchmarks.arguments import AUTO, ONE_THREAD_ON_CPU, add_heldout_arguments, base_parser, run_main, setup_torch
from benchmarks.runner import Outcome, accel_tables, report_head, run_heldout
from benchmarks.runs import Run
from benchmarks.tables import checkpoint_line, cost_cells, find, md_table, pm

#: The targets, PSNR differences in dB (paper convention): MSM at least CS-L1 + 1 dB and
#: SENSE + 1 dB (and, from the first issue, zero-filled + 4 dB).
TARGET_OVER_CS = 1.0
TARGET_OVER_SENSE = 1.0
TARGET_OVER_ZF = 4.0


#: Data-consistency variants beside the default (label, options). ``dc: tweedie`` is left out:
#: exact for Gaussian priors (tests/test_posterior.py) but with the shipped network's Jacobian
#: it diverged on the validation slices (9.5-13 dB at R = 6, 4x the time; CHANGELOG.md, 2026-11-27).
DC_ABLATIONS = (
    ("replace (dc_step 1, after aggregation)", {"dc": "measurement", "dc_step": 1.0, "placement": "global"}),
    ("published (dc_step 2, each local estimate)", {"dc": "measurement", "dc_step": 2.0, "placement": "local"}),
)


def plan_runs(args: argparse.Namespace, main_steps: int, main_w: int, main_samples: int = 1) -> list[Run]:
    """The rows: the chosen main methods, then the ablations (MSM variants, only when
    MSM itself is run; a value equal to the main setting is the main row)."""
    runs = []
    names = {"zero-filled": "zero-filled", "sense": "SENSE", "cs": "CS-L1", "msm": "MSM"}
    for m in args.methods:
        opts = {"steps": main_steps, "w": main_w, "samples": main_samples} if m == "msm" else {}
        runs.append(Run(names[m], m, opts))
    if "msm" not in args.methods:  # an ablation is read against the main MSM row
        return runs
    ab_accels = tuple(float(a) for a in args.ablation_accels)
    ab_k = main_samples if args.ablation_k is None else int(args.ablation_k)  # samples in dc/start/w/steps rows
    if "w" in args.ablations:
        for w in dict.fromkeys(args.ablation_w):
            if w != main_w:
                runs.append(Run(f"MSM w={w}", "msm", {"steps": main_steps, "w": w, "samples": ab_k},
                                  "w", ab_accels))
    if "steps" in args.ablations:
        for st in dict.fromkeys(args.ablation_steps):
            if st != main_steps:
                runs.append(Run(f"MSM {st} steps", "msm", {"steps": st, "w": main_w, "samples": ab_k},
                                  "steps", ab_accels))
    if "dc" in args.ablations:
        for label, dc in DC_ABLATIONS:
            runs.append(Run(f"MSM dc {label}", "msm", {"steps": main_steps, "w": main_w, "samples": ab_k,
                                                         **dc}, "dc", ab_accels))
    if "start" in args.ablations:
        for spec in dict.fromkeys(args.ablation_starts):
            init, _, t0 = spec.partition(":")
            runs.append(Run(f"MSM start {init} t0={float(t0):g}", "msm",
                              {"steps": main_steps, "w": main_w, "samples": ab_k, "init": init,
                               "t0": float(t0)}, "start", ab_accels))
    if "samples" in args.ablations:
        for k in dict.fromkeys(args.ablation_samples):
            if k != main_samples:
                runs.append(Run(f"MSM mean of {k}", "msm", {"steps": main_steps, "w": main_w, "samples": k},
                                  "samples", ab_accels))
    return runs


def target_line(rows: Sequence[dict], accel: float) -> str:
    """MSM's margins over CS-L1, SENSE and zero-filled at ``accel`` against the targets."""
    msm, cs, sense, zf = (find(rows, accel, lab) for lab in ("MSM", "CS-L1", "SENSE", "zero-filled"))
    if msm is None or (cs is None and zf is None and sense is None):
        return ""
    parts = []
    for other, name, target in ((cs, "CS-L1", TARGET_OVER_CS), (sense, "SENSE", TARGET_OVER_SENSE),
                                (zf, "zero-filled", TARGET_OVER_ZF)):
        if other is None:
            continue
        d = msm["psnr_paper_mean"] - other["psnr_paper_mean"]
        dv = msm["psnr_fastmri_mean"] - other["psnr_fastmri_mean"]
        verdict = "met" if d >= target else "NOT met"
        parts.append(f"MSM − {name} = {d:+.2f} dB paper / {dv:+.2f} dB fastMRI (target ≥ +{target:g}: {verdict})")
    return "Targets (paper-convention PSNR): " + "; ".join(parts) + "."


def ablation_table(rows: list[dict], accel: float, group: str, main_label: str) -> str:
    """The rows of ablation ``group`` at ``accel`` beside the main row ("" with fewer than 2)."""
    picked = [r for r in rows if r["accel"] == accel and (r["group"] == group or r["label"] == main_label)]
    if len(picked) < 2:
        return ""
    def order(r):  # numeric settings high to low; others (dc) as run
        try:
            return -float(r.get(group, 0))
        except (TypeError, ValueError):
            return 0.0

    picked.sort(key=order)
    body = [
        [r["label"], r.get("steps", "-"), r.get("w", "-"), r.get("samples", "-"), pm(r, "psnr_paper", 2), pm(r, "ssim_paper", 4),
         pm(r, "psnr_fastmri", 2), pm(r, "ssim_fastmri", 4), *cost_cells(r)]
        for r in picked
    ]
    header = ["setting", "steps", "w", "samples", "PSNR dB (paper)", "SSIM (paper)", "PSNR dB (fastMRI)", "SSIM (fastMRI)",
              "s/slice", "NFE/slice"]
    return md_table(header, body)


def render(args: argparse.Namespace, runs: list[Run], outcome: Outcome) -> str:
    """``recon.md``: a table per R with the targets, then the ablation tables."""
    rows = outcome.rows
    model = checkpoint_line("msm", args.checkpoint) if any(r.method == "msm" for r in runs) else "No MSM run"
    lines = report_head(args, "MSM reconstruction benchmark", outcome, [model])
    lines += accel_tables(rows, [r.label for r in runs if r.group == "main"], target_line)
    for group, title in (("dc", "data consistency"), ("start", "start of the chain"), ("w", "masks per step w"),
                         ("steps", "reverse steps"), ("samples", "posterior samples averaged")):
        for accel in dict.fromkeys(r["accel"] for r in rows if r["group"] == group):
            table = ablation_table(rows, accel, group, "MSM")
            if table:
                lines += [f"## Ablation: {title}, R = {accel:g}", "", table, ""]
    lines += [f"Total wall time {outcome.seconds / 60:.1f} min.", ""]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The command line: the held-out options, the methods and the ablations."""
    ap = base_parser(__doc__, out=RESULTS_DIR, threads=None, threads_help=ONE_THREAD_ON_CPU, device=AUTO, seed=0,
                     quiet=True)
    add_heldout_arguments(ap)
    ap.add_argument("--methods", nargs="+", default=["zero-filled", "sense", "cs", "msm"],
                    choices=["zero-filled", "sense", "cs", "msm"])
    ap.add_argument("--samples", type=int, default=None,
                    help="MSM posterior samples per slice, mean = reconstruction (default: the settings)")
    ap.add_argument("--ablations", nargs="+", default=["dc", "start", "w", "steps", "samples"],
                    choices=["dc", "start", "w", "steps", "samples", "none"])
    ap.add_argument("--ablation-starts", nargs="+", default=["none:1", "sense:0.3"], metavar="INIT:T0",
                    help="starts beside the main one, as init:t0 (default none:1 = from noise, the paper; sense:0.3)")
    ap.add_argument("--ablation-k", type=int, default=None,
                    help="posterior samples in the dc/start/w/steps ablation rows (default: the main setting); "
                    "compare them with the 'mean of K' row of the samples ablation")
    ap.add_argument("--ablation-accels", type=float, nargs="+", default=[4.0], help="R of the ablations (default 4)")
    ap.add_argument("--ablation-w", type=int, nargs="+", default=[1], help="w values beside the main one (default 1)")
    ap.add_argument("--ablation-samples", type=int, nargs="+", default=[1],
                    help="posterior samples averaged, beside the main setting (default 1; ablation 'samples')")
    ap.add_argument("--ablation-steps", type=int, nargs="+", default=[100, 50],
                    help="step counts beside the main one (default 100 50)")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    setup_torch(args)

    def body() -> int:
        from mrimsm.diffusion.posterior import load_posterior_settings

        settings = load_posterior_settings(args.settings, steps=args.steps, w=args.w, samples=args.samples)
        runs = plan_runs(args, settings.steps, settings.w, settings.samples)
        common = {"checkpoint": args.checkpoint, "settings": args.settings, "device": args.device, "seed": args.seed}
        return run_heldout(args, runs, common, settings, lambda outcome: render(args, runs, outcome), stem="recon",
                           unit="runs")

    run_main(body)
    return 0


if __name__ == "__main__":
    main()
