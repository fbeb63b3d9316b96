"""Benchmark: zero-filled, SENSE, CS-L1 (sigpy), SSDU and MSM on the same held-out
slices with the same masks, coil maps and seeds, at R = 4 and R = 6.

    .venv/bin/python benchmarks/csmri.py                                   # defaults (< 30 min on 2 CPU cores)
    .venv/bin/python benchmarks/csmri.py --accels 4 6 --slices 12 --device cuda
    .venv/bin/python benchmarks/csmri.py --data data/fastmri_r4 --slices 40 --device cuda   # real fastMRI
    .venv/bin/python benchmarks/csmri.py --checkpoint runs/default_msm --ssdu-checkpoint runs/ssdu_tiny
    .venv/bin/python benchmarks/csmri.py --slices 1 --steps 4 --out /tmp/c                  # smoke test

Defaults: 3 simulated held-out slices (one per orientation; ``--slices`` up to 24),
the shipped MSM and SSDU models, MSM with the general solver settings
(``PosteriorSettings``' defaults: 50 steps, w = 3, from CG-SENSE at t0 0.3, 4 posterior samples per
slice: their mean is the reconstruction, their pixel-wise std the uncertainty map; the
paper averages 5: ``--samples 5``), about 11 minutes on this CPU. ``--data DIR`` uses the validation shards of a
prepared directory (``mrimsm prep-fastmri``; they keep a ``reference``) instead.

Writes ``results/csmri.md`` (a table per R: PSNR / SSIM / NMSE mean ± std in the paper's
and fastMRI's conventions, seconds and network evaluations per slice, MSM against SSDU
beside the paper's margins), ``results/csmri.csv`` (the same numbers),
``results/csmri_slices.csv`` (every slice) and ``results/csmri.png`` (reference, each
method, error maps and the MSM uncertainty, one slice per R).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: The paper's PSNR (dB, fastMRI brain AXT2 at 256 x 256, per-slice [0, 1] convention).
PAPER_PSNR = {
    4.0: {"zero-filled": 22.75, "SSDU": 29.65, "MSM": 30.71},
    6.0: {"SSDU": 28.02, "MSM": 28.86},
}

LABELS = {"zero-filled": "zero-filled", "sense": "SENSE", "cs": "CS-L1", "ssdu": "SSDU", "msm": "MSM"}


def plan_runs(args) -> list:
    runs = []
    for m in args.methods:
        opts = {}
        if m == "msm":
            opts.update({k: v for k, v in (("steps", args.steps), ("w", args.w), ("samples", args.samples))
                         if v is not None})
        runs.append(C.Run(LABELS[m], m, opts))
    return runs


def margin_line(rows: list, accel: float) -> str:
    msm, ssdu = C.find(rows, accel, "MSM"), C.find(rows, accel, "SSDU")
    if msm is None or ssdu is None:
        return ""
    d = msm["psnr_paper_mean"] - ssdu["psnr_paper_mean"]
    dv = msm["psnr_fastmri_mean"] - ssdu["psnr_fastmri_mean"]
    paper = PAPER_PSNR.get(accel, {})
    ref = (f"; the paper: {paper['MSM'] - paper['SSDU']:+.2f} dB ({paper['MSM']:.2f} vs {paper['SSDU']:.2f})"
           if "MSM" in paper and "SSDU" in paper else "")
    return f"MSM − SSDU: {d:+.2f} dB paper convention / {dv:+.2f} dB fastMRI convention{ref}."


def render(args, rows: list, runs: list, data_text: str, model_lines: list, figure: Path | None,
           seconds: float) -> str:
    lines = C.header_lines("CS-MRI benchmark: zero-filled, SENSE, CS-L1, SSDU, MSM", sys.argv, args.device)
    lines += [f"Data: {data_text}", ""] + [m + "." for m in model_lines] + ["", C.conventions_note(
        "here a volume is one orientation's slices" if args.data is None else "one per source volume"), ""]
    labels = [r.label for r in runs]
    for accel in dict.fromkeys(r["accel"] for r in rows):
        here = [r for r in (C.find(rows, accel, lab) for lab in labels) if r is not None]
        lines += [f"## R = {accel:g} (achieved {here[0]['achieved_accel']:.2f}, {here[0]['slices']} slices)", ""]
        lines.append(C.md_table(["method", *C.METRIC_HEADER, "s/slice", "NFE/slice"],
                                [[r["label"], *C.metric_cells(r), *C.cost_cells(r)] for r in here]))
        m = margin_line(rows, accel)
        lines += ["", m, ""] if m else [""]
    if figure is not None:
        lines += [f"Figure: `{figure.name}` (first slice; top: reference and reconstructions with their PSNR, "
                  "bottom: |error| at a quarter of the reference's maximum, and the MSM posterior std).", ""]
    lines += [f"Total wall time {seconds / 60:.1f} min.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_arguments(ap)
    ap.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS))
    ap.add_argument("--ssdu-checkpoint", type=Path, default=None, help="SSDU checkpoint (default: the shipped model)")
    ap.add_argument("--samples", type=int, default=None,
                    help="MSM posterior samples per slice (default: the settings, 4; > 1 gives the uncertainty map)")
    args = ap.parse_args()
    C.setup_torch(args)

    def body() -> int:
        t0 = time.perf_counter()
        runs = plan_runs(args)
        common = {"checkpoint": args.checkpoint, "ssdu_checkpoint": args.ssdu_checkpoint, "settings": args.settings,
                  "device": args.device, "seed": args.seed}
        built = C.build_methods(runs, common)  # checkpoints and options fail here, before any work
        progress = C.tqdm_progress(args.quiet)
        with tempfile.TemporaryDirectory(prefix="mrimsm-bench-") as work:
            vols, data_text = C.load_volumes(args, Path(work), progress)
            from mrimsm.diffusion.posterior import load_posterior_settings

            s = load_posterior_settings(args.settings, steps=args.steps, w=args.w, samples=args.samples)
            nfe = C.estimate_nfe(runs, {a: sum(len(v.slices) for v in vs) for a, vs in vols.items()}, s.steps, s.w,
                                 s.samples)
            C.log_line(f"{len(runs)} methods x {len(vols)} accelerations; MSM network evaluations in total: {nfe}")
            records = C.evaluate(vols, runs, built, common, progress, C.log_line)
            args.out.mkdir(parents=True, exist_ok=True)
            figure = C.comparison_figure(args.out / "csmri.png", vols, records, [r.label for r in runs],
                                         uncertainty_label="MSM")
        rows = C.summarize(records, runs)
        models = [C.checkpoint_line(k, p) for k, p in (("msm", args.checkpoint), ("ssdu", args.ssdu_checkpoint))
                  if k in args.methods]
        text = render(args, rows, runs, data_text, models, figure, time.perf_counter() - t0)
        C.write_results(args.out, "csmri", text, rows, C.slice_rows(records), extra=[figure])
        return 0

    C.run_main(body)
    return 0


if __name__ == "__main__":
    main()
