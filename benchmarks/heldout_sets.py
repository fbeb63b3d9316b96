"""Every method on the held-out brain sets of ``data_scripts/brains.py`` (another subject,
another contrast, a knee) at several test-noise levels, against the noise-free object and
the files' RSS reference, in both PSNR conventions and SSIM, with seconds per slice.

The raw files are made here with ``brains.py`` (seeded: the same coil maps and phases at
every noise level, so noise 0 gives each file's noise-free twin) into ``--work``, reused
when present. The first ``--files`` files of each set are used (8 slices each).

    .venv/bin/python -m benchmarks.heldout_sets --noise 0.002 0.01 --out results/heldout_sets
    .venv/bin/python -m benchmarks.heldout_sets --msm runs/msm64_brains --label brains --noise 0.01
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from benchmarks import REPO, RESULTS_DIR
from benchmarks.arguments import ONE_THREAD_ON_CPU, base_parser, run_main, setup_torch
from benchmarks.data import read_references, simulated_volumes
from benchmarks.progress import bars, log_line
from benchmarks.runs import Run, build_methods, evaluate, truth_metrics
from benchmarks.tables import conventions_note, header_lines, md_table, summarize, write_results

SETS = ("heldout_subject", "heldout_contrast", "knee")


def _raw(work: Path, noise: float, sets: list, size: int) -> Path:
    """``work/noise_<noise>``: the sets at this test noise (made by brains.py if absent)."""
    out = work / f"noise_{noise:g}"
    if not all((out / s).is_dir() for s in sets):
        cmd = [sys.executable, str(REPO / "data_scripts" / "brains.py"), str(out), "--size", str(size),
               "--noise", f"{noise:g}", "--sets", ",".join(sets)]
        subprocess.run(cmd, check=True)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = base_parser(__doc__, out=RESULTS_DIR / "heldout_sets", threads=None, threads_help=ONE_THREAD_ON_CPU,
                     device="cpu", seed=0, quiet=True)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.002, 0.01], help="test noise levels")
    ap.add_argument("--accels", type=float, nargs="+", default=[4.0, 6.0])
    ap.add_argument("--files", type=int, default=1, help="files per set (8 slices each; default 1)")
    ap.add_argument("--msm", nargs="*", default=["shipped"],
                    help="MSM checkpoints to compare ('shipped': the shipped prior, the default); none: no MSM row")
    ap.add_argument("--label", nargs="*", default=None, help="a row label per --msm checkpoint")
    ap.add_argument("--ssdu", action="store_true", help="add the shipped SSDU")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "mrimsm" / "heldout_sets")
    args = ap.parse_args(argv)
    setup_torch(args)

    def body() -> int:
        t0 = time.perf_counter()
        ckpts = [None if p == "shipped" else Path(p) for p in args.msm]
        labels = args.label or [("MSM" if p is None else f"MSM {p.name}") for p in ckpts]
        runs = [Run("zero-filled", "zero-filled"), Run("SENSE", "sense"), Run("CS-L1", "cs")]
        runs += [Run(lab, "msm", {} if p is None else {"checkpoint": str(p)}) for lab, p in zip(labels, ckpts)]
        if args.ssdu:
            runs.append(Run("SSDU", "ssdu"))
        common = {"device": args.device, "seed": args.seed}
        built = build_methods(runs, common)
        progress = bars(args.quiet)
        clean_root = _raw(args.work, 0.0, args.sets, args.size)
        lines = header_lines("Held-out brain sets (another subject, another contrast, a knee)", sys.argv,
                               args.device)
        lines += ["Raw files: `data_scripts/brains.py` at the test noise (per real component, images at max 1), "
                  f"{args.size} x {args.size}, the first {args.files} file(s) of each set; noise-free reference: "
                  "the same simulation at noise 0. Retrospective RandomCartesian masks as `mrimsm recon` draws them.",
                  "", conventions_note("one per file"), ""]
        all_rows = []
        for noise in args.noise:
            root = _raw(args.work, noise, args.sets, args.size)
            for s in args.sets:
                files = sorted((root / s).glob("*.h5"))[: args.files]
                twins = [clean_root / s / f.name for f in files]
                vols = {float(a): simulated_volumes(files, float(a), args.seed, progress) for a in args.accels}
                records = evaluate(vols, runs, built, common, progress, log_line, keep=lambda run, k: True)
                rows = summarize(records, runs)
                truth = truth_metrics(records, read_references(twins))
                for r in rows:
                    r.update(truth[(r["accel"], r["label"])], set=s, noise=noise)
                all_rows += rows
                n = sum(len(v.slices) for v in vols[float(args.accels[0])])
                lines += [f"## {s}, test noise {noise:g} ({n} slices: {', '.join(f.name for f in files)})", ""]
                for accel in args.accels:
                    here = [r for r in rows if r["accel"] == float(accel)]
                    lines += [f"R = {accel:g}", "", md_table(
                        ["method", "noise-free: PSNR dB (paper)", "SSIM (paper)", "PSNR dB (fastMRI)",
                         "RSS ref: PSNR dB (paper)", "SSIM (paper)", "PSNR dB (fastMRI)", "SSIM (fastMRI)",
                         "s/slice"],
                        [[r["label"], f"{r['psnr_clean_paper']:.2f}", f"{r['ssim_clean_paper']:.4f}",
                          f"{r['psnr_clean_fastmri']:.2f}", f"{r['psnr_paper_mean']:.2f}",
                          f"{r['ssim_paper_mean']:.4f}", f"{r['psnr_fastmri_mean']:.2f}",
                          f"{r['ssim_fastmri_mean']:.4f}", f"{r['seconds_per_slice']:.2f}"] for r in here]), ""]
        lines += [f"Total wall time {(time.perf_counter() - t0) / 60:.1f} min.", ""]
        write_results(args.out, "heldout_sets", "\n".join(lines), all_rows)
        return 0

    run_main(body)
    return 0


if __name__ == "__main__":
    main()
