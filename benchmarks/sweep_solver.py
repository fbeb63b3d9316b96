"""Choose the posterior solver's defaults, and compare checkpoints, on VALIDATION slices
(never the held-out test slices).

Validation slices (``--val-set``):

* ``mni`` (default): MNI152 slices of the training ranges that the shipped priors never saw
  (the odd offsets: the training sets take every other slice from the start of each range,
  so these are 1 mm neighbours of training slices, not held-out anatomy);
* ``brains``: the ``val`` set of ``data_scripts/brains.py``: 23 slices of the individual
  pycortex S1 head, 1 mm neighbours of the brain training set's slices (8 coils, the
  ``fit`` pixels of the 64 x 64 prior; written once into ``--work`` and reused, the noise-free
  twins beside them). ``--slices N`` keeps N of them, evenly spread.

The held-out evaluation slices of ``recon.py`` / ``csmri.py`` / ``heldout_sets.py`` are not
touched here.

Each ``--grid`` entry is ``key=v1,v2,...`` over :class:`mrimsm.diffusion.posterior.PosteriorSettings`
fields (``dc``, ``dc_lambda``, ``dc_schedule``, ``t0``, ``init``, ``steps``, ``w``, ``samples``,
``eta``, ...); the sweep runs their Cartesian product on top of ``--base`` (same syntax,
one value each). ``--sense`` sweeps the SENSE baseline's Tikhonov weight and iterations
instead; ``--baselines`` adds zero-filled, SENSE and CS-L1 rows for reference.

    .venv/bin/python -m benchmarks.sweep_solver --accels 6 --base steps=50 samples=1 \\
        --grid dc=operator,measurement dc_lambda=0,0.01 --out results/sweep
    .venv/bin/python -m benchmarks.sweep_solver --sense --accels 4 6

Writes ``<out>/sweep.md`` and ``sweep.csv`` (one row per setting and R; both PSNR
conventions, SSIM, seconds and network evaluations per slice).
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from benchmarks import RESULTS_DIR
from benchmarks.arguments import AUTO, ONE_THREAD_ON_CPU, add_heldout_arguments, base_parser, parse_value, run_main, \
    setup_torch
from benchmarks.data import HELDOUT_COILS, read_references, simulated_volumes, validation_selection
from benchmarks.progress import bars, log_line
from benchmarks.runs import Run, build_methods, evaluate, truth_metrics
from benchmarks.tables import METRIC_HEADER, conventions_note, cost_cells, header_lines, md_table, metric_cells, \
    slice_rows, summarize, write_results

def parse_grid(items: Optional[Iterable[str]]) -> list[dict[str, Any]]:
    """``["a=1,2", "b=x"]`` -> ``[{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]``."""
    keys, values = [], []
    for item in items or []:
        key, _, vals = item.partition("=")
        keys.append(key.strip())
        values.append([parse_value(v) for v in vals.split(",")])
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)] if keys else [{}]


def label_of(opts: dict) -> str:
    """A row's label: ``"key=value key=value"``, or ``"default"``."""
    return " ".join(f"{k}={v}" for k, v in opts.items()) or "default"


def brains_validation(work: Path, size: int, noise: float, slices: int) -> tuple[list[Path], list[Path]]:
    """``(files, noise-free twins)``: ``slices`` of the brains.py ``val`` set at test ``noise``,
    evenly spread (:func:`benchmarks.heldout_sets.capped_files`), written into ``work/size_<size>``
    when absent."""
    from benchmarks.heldout_sets import brains_raw, capped_files

    root, cap = work / f"size_{size}", work / f"size_{size}" / f"slices_{slices}"
    picked = []
    for n in (noise, 0.0):
        raw = sorted((brains_raw(root, n, ["val"], size) / "val").glob("*.h5"))
        picked.append(capped_files(raw, slices, cap / f"noise_{n:g}" / "val"))
    return picked[0], picked[1]


def main(argv: Optional[list[str]] = None) -> int:
    ap = base_parser(__doc__, out=RESULTS_DIR / "sweep", threads=None, threads_help=ONE_THREAD_ON_CPU, device=AUTO,
                     seed=0, quiet=True)
    add_heldout_arguments(ap, data=False)
    ap.add_argument("--val-set", choices=("mni", "brains"), default="mni",
                    help="validation slices: mni (the MNI152 template's, default) or brains (the individual "
                    "pycortex head of data_scripts/brains.py's val set)")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "mrimsm" / "heldout_sets",
                    help="--val-set brains: where its files are written and reused (default "
                    "~/.cache/mrimsm/heldout_sets, shared with heldout_sets.py)")
    ap.add_argument("--base", nargs="*", default=[], help="fixed settings key=value")
    ap.add_argument("--grid", nargs="*", default=[], help="swept settings key=v1,v2,...")
    ap.add_argument("--sense", action="store_true", help="sweep SENSE's sense_lambda / sense_iters instead")
    ap.add_argument("--baselines", action="store_true", help="add zero-filled, SENSE and CS-L1 rows")
    ap.add_argument("--pixel", choices=("fit", "native"), default="fit",
                    help="slice pixels: fit (resampled to --size, the 64 x 64 prior's data) or native "
                         "(1 mm, zero-padded to --size: the 256 x 256 prior's data)")
    args = ap.parse_args(argv)
    if args.val_set == "brains" and (args.pixel != "fit" or args.coils != HELDOUT_COILS):
        ap.error("--val-set brains has brains.py's own slices: 8 coils, fit pixels (leave --coils and --pixel out)")
    setup_torch(args)

    def body() -> int:
        from mrimsm.data.simulate import simulate_volume_file

        t0 = time.perf_counter()
        base = parse_grid(args.base)[0]
        if args.sense:
            grid = parse_grid(args.grid or ["sense_lambda=0,0.001,0.003,0.01,0.03,0.1", "sense_iters=5,10,20,50"])
            runs = [Run(label_of(g), "sense", {**base, **g}) for g in grid]
        else:
            runs = [Run(label_of(g), "msm", {**base, **g}) for g in parse_grid(args.grid)]
        if args.baselines:
            runs = [Run(n, m, {}) for n, m in (("zero-filled", "zero-filled"), ("SENSE", "sense"), ("CS-L1", "cs"))] + runs
        common = {"checkpoint": args.checkpoint, "settings": args.settings, "device": args.device, "seed": args.seed}
        built = build_methods(runs, common)
        progress = bars(args.quiet)
        with tempfile.TemporaryDirectory(prefix="mrimsm-sweep-") as work:
            if args.val_set == "brains":
                from benchmarks.heldout_sets import COILS as coils

                files, twins = brains_validation(args.work, args.size, args.noise, args.slices)
                where = None  # the slice count comes with the volumes below
            else:
                sel = validation_selection(args.slices)

                def simulate(folder: Path, noise: float) -> list[Path]:  # the same seeds: noise 0 gives the noise-free twins
                    folder.mkdir(exist_ok=True)
                    return [simulate_volume_file(folder / f"val_{o}.h5", o, idx, args.size, args.coils, noise, True,
                                                 seed=100 + k, pixel=args.pixel) for k, (o, idx) in enumerate(sel)]

                files, twins = simulate(Path(work), args.noise), simulate(Path(work) / "noise_free", 0.0)
                coils, where = args.coils, "; ".join(f"{o} {i}" for o, i in sel)
            vols = {float(a): simulated_volumes(files, float(a), args.seed, progress) for a in args.accels}
            if where is None:
                count = sum(len(v.slices) for v in next(iter(vols.values())))
                where = f"the {count} slices of {', '.join(f.name for f in files)}"
            records = evaluate(vols, runs, built, common, progress, log_line, keep=lambda run, k: True)
            clean = read_references(twins)
        rows = summarize(records, runs)
        truth = truth_metrics(records, clean)
        for r in rows:
            r.update(truth[(r["accel"], r["label"])])
        lines = header_lines("Posterior solver sweep on validation slices", sys.argv, args.device)
        lines += [f"Validation slices ({args.val_set}; trained on by no shipped model, not the held-out test set): "
                  f"{where}, {args.size} x {args.size} ({args.pixel} pixels), {coils} coils, "
                  f"noise {args.noise:g}. Base: {label_of(base)}.", "", conventions_note("one per orientation"), ""]
        for accel in dict.fromkeys(r["accel"] for r in rows):
            here = sorted((r for r in rows if r["accel"] == accel), key=lambda r: -r["psnr_paper_mean"])
            lines += [f"## R = {accel:g}", "", md_table(
                ["setting", *METRIC_HEADER, "noise-free ref: PSNR dB (paper)", "SSIM (paper)", "PSNR dB (fastMRI)",
                 "s/slice", "NFE/slice"],
                [[r["label"], *metric_cells(r), f"{r['psnr_clean_paper']:.2f}", f"{r['ssim_clean_paper']:.4f}",
                  f"{r['psnr_clean_fastmri']:.2f}", *cost_cells(r)] for r in here]), ""]
        lines += [f"Total wall time {(time.perf_counter() - t0) / 60:.1f} min.", ""]
        write_results(args.out, "sweep", "\n".join(lines), rows, slice_rows(records))
        return 0

    run_main(body)
    return 0


if __name__ == "__main__":
    main()
