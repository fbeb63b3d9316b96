"""Do a prior's uncertainty maps predict its errors? Calibrate on one set of slices, test
on others, against the noise-free object.

Slices (MNI152 T1, simulated as the held-out set of ``recon.py``: ``--coils`` coils, noise
``--noise``, readout oversampled by 2, a retrospective RandomCartesian mask per slice):

* **calibration**: the odd offsets of the held-out ranges (``mni_split_indices(o,
  "heldout", step=1)`` minus the test slices): never trained on, never tested on, but
  1 mm neighbours of the test slices, so the two are drawn alike (exchangeable, as the
  split-conformal guarantee needs) and a calibration here is on the optimistic side of
  what a user's own calibration scans give;
* **test**: the held-out slices of ``recon.py`` / ``csmri.py`` (even offsets), and with
  ``--test-sets`` the validation slices of ``sweep_solver.py`` (odd offsets of the training
  ranges, at most 6), the real dipy T1 slice and b0 EPI slices of :mod:`benchmarks.heldout_sets`
  (simulated here with ``--coils`` coils), at each ``--test-noise``: another subject, another
  contrast and another noise than the calibration's, so these rows measure how a calibration
  transfers rather than what split conformal guarantees. ``--calibration FILE`` tests an
  existing calibration (an installed one) instead of making one.

The reference for errors is the noise-free object: the RSS image of the same simulation
without k-space noise. "Inside the object": :func:`mrimsm.uncertainty.object_support`.

Per acceleration it reports, on the test slices: pixel Spearman and Pearson correlation of
|error| with std; coverage of ``mean +- 2 std``; coverage of the calibrated bound at 80, 90
and 95 %; std / |error|; the slice-level Spearman correlation of mean std with NMSE; PSNR;
where the two sit: the share of the squared error and of the variance on the object's
edges (:func:`edge_share`; a std that predicts the error puts as much of its mass there); and
the neighbour Spearman (:func:`neighbour_error_spearman`), what a map that knew the size of
the error around each pixel would reach: about the best a smooth map such as a std can do
(an oracle's level, not a strict bound).
Figures: a reliability diagram (nominal vs observed coverage of the bound), |error| vs
std (2-D histogram), and the maps of the first test slices (object, |error|, std).
``--install`` writes the calibration beside the checkpoint (for the shipped priors: into
``mrimsm/assets/``), which ``recon`` then uses.

    .venv/bin/python -m benchmarks.calibration --out results/calibration64
    .venv/bin/python -m benchmarks.calibration --base samples=8 t0=0.5 --out results/cal64_t05
    .venv/bin/python -m benchmarks.calibration --size 256 --pixel native --test-slices 3 \
        --calibration mrimsm/assets/default_msm256.calibration.json --test-sets mni dipy dipyb0 \
        --dipy dipy-*.whl --dipy-slices 2 --test-noise 0.002 0.01 --out results/calibration256_sets
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks import RESULTS_DIR
from benchmarks.arguments import ONE_THREAD_ON_CPU, base_parser, parse_value, run_main, setup_torch
from benchmarks.data import HELDOUT_COILS, HELDOUT_NOISE, HELDOUT_SIZE, heldout_selection, read_references
from benchmarks.figures import pyplot, save_figure
from benchmarks.progress import bars, log_line
from benchmarks.tables import header_lines, md_table, write_results, write_text


def _selections(cal_slices: int, test_slices: int) -> tuple[list, list]:
    """``(calibration, test)`` as ``[(orientation, indices)]``; the test slices are
    :func:`benchmarks.data.heldout_selection`'s, the calibration ones the odd offsets beside them."""
    from mrimsm.data.simulate import ORIENTATIONS, mni_split_indices

    test = heldout_selection(test_slices)
    cal = []
    for k, o in enumerate(ORIENTATIONS):
        spare = [i for i in mni_split_indices(o, "heldout", step=1) if i not in mni_split_indices(o, "heldout", step=2)]
        n = len(range(k, cal_slices, len(ORIENTATIONS)))
        if n:
            cal.append((o, [spare[int((j + 0.5) * len(spare) / n)] for j in range(n)]))
    return cal, test


def _write(folder: Path, sel: list, args: argparse.Namespace, noise: float, seed0: int) -> list[Path]:
    from mrimsm.data.simulate import simulate_volume_file

    folder.mkdir(parents=True, exist_ok=True)
    return [simulate_volume_file(folder / f"{o}.h5", o, idx, args.size, args.coils, noise, True, seed=seed0 + k,
                                 pixel=args.pixel) for k, (o, idx) in enumerate(sel)]


#: Edge pixels: the top fraction of the reference's gradient magnitude inside the object.
EDGE_FRACTION = 0.2


def edge_pixels(reference: np.ndarray, support: np.ndarray, fraction: float = EDGE_FRACTION) -> np.ndarray:
    """``(H, W)`` bool: the ``fraction`` of ``support``'s pixels where the ``(H, W)`` real
    ``reference`` changes most (central-difference gradient magnitude; ties in raster order)."""
    gy, gx = np.gradient(np.asarray(reference, dtype=np.float64))
    grad = np.hypot(gy, gx)
    where = np.flatnonzero(support)
    keep = where[np.argsort(-grad.ravel()[where], kind="stable")[: int(round(fraction * where.size))]]
    out = np.zeros(support.shape, dtype=bool)
    out.ravel()[keep] = True
    return out


def edge_share(values: np.ndarray, reference: np.ndarray, support: np.ndarray,
               fraction: float = EDGE_FRACTION) -> float:
    """The share of ``sum(values**2)`` over ``support`` that falls on its edge pixels
    (:func:`edge_pixels`); a map spread evenly over the object gives about ``fraction``."""
    v2 = np.asarray(values, dtype=np.float64) ** 2
    total = float(v2[support].sum())
    return float(v2[edge_pixels(reference, support, fraction)].sum() / total) if total > 0 else 0.0


def _maps_figure(out: Path, stem: str, accel: float, refs: list, errs: list, stds: list) -> Path:
    plt = pyplot()
    n = min(3, len(refs))
    fig, axes = plt.subplots(n, 3, figsize=(7.2, 2.4 * n), squeeze=False)
    for row, ref, e, s in zip(axes, refs, errs, stds):
        top = float(np.quantile(np.abs(e), 0.99))
        for ax, img, title, kw in ((row[0], ref, "noise-free object", {"cmap": "gray"}),
                                   (row[1], np.abs(e), "|error|", {"cmap": "magma", "vmin": 0, "vmax": top}),
                                   (row[2], s, "posterior std", {"cmap": "magma", "vmin": 0, "vmax": top})):
            ax.imshow(img, **kw)
            ax.set_title(f"{title}, R = {accel:g}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, out / f"{stem}_maps.png", dpi=110)


def neighbour_error_spearman(errors: list, supports: list, size: int = 5) -> float:
    """The Spearman correlation of ``|error|`` with the RMS of the error at each pixel's
    neighbours (the ``size x size`` window without the pixel itself), pooled over the
    pixels inside ``supports`` (``(H, W)`` real errors, ``(H, W)`` bool supports).

    What a map that knew how large the error is around each pixel, but not at the pixel
    itself, would reach: about the best a smooth uncertainty map (a posterior std is one) can
    do; an oracle's level, not a strict bound, and none for maps that are not smooth. Errors that are noise of one size everywhere give about 0."""
    from scipy.ndimage import uniform_filter
    from scipy.stats import spearmanr

    a, b = [], []
    for e, sup in zip(errors, supports):
        e2 = np.asarray(e, dtype=np.float64) ** 2
        window = uniform_filter(e2, size=size, mode="constant") * size * size - e2
        count = uniform_filter(np.ones_like(e2), size=size, mode="constant") * size * size - 1.0
        a.append(np.sqrt(e2[sup]))
        b.append(np.sqrt(np.maximum(window[sup], 0.0) / count[sup]))
    return float(spearmanr(np.concatenate(a), np.concatenate(b)).statistic)


def _figures(out: Path, stem: str, curves: list, primary: dict) -> list[Path]:
    """The reliability diagram (``curves``: ``(label, levels, observed, gaussian or None)``),
    and for ``primary`` (``R -> pooled |e|, std, maps``) the |error| vs std histograms and maps."""
    plt = pyplot()
    paths = []
    fig, ax = plt.subplots(figsize=(4.4 + (3.2 if len(curves) > 4 else 0), 3.8))
    ax.plot([0.5, 1], [0.5, 1], color="0.6", lw=0.8, label="calibrated")
    for label, levels, observed, gaussian in curves:
        line, = ax.plot(levels, observed, marker=".", lw=1, label=f"bound, {label}")
        if gaussian is not None:
            ax.plot(levels, gaussian, ls="--", color=line.get_color(), label=f"mean +- z std, {label}")
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed (test pixels in the object)")
    ax.set_xlim(0.5, 1)
    ax.set_ylim(0, 1)
    if len(curves) > 4:  # beside the plot, where it hides no curve
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, out / f"{stem}_reliability.png", dpi=120))
    fig, axes = plt.subplots(1, len(primary), figsize=(3.6 * len(primary), 3.4), squeeze=False)
    for ax, (accel, d) in zip(axes[0], primary.items()):
        e, s = d["e"], d["s"]
        top = float(np.quantile(np.concatenate([e, s]), 0.995))
        ax.hist2d(s, e, bins=60, range=[[0, top], [0, top]], cmap="magma", cmin=1)
        ax.plot([0, top], [0, top], color="0.7", lw=0.8)
        ax.set_title(f"R = {accel:g}: Spearman {d['spearman']:.2f}", fontsize=9)
        ax.set_xlabel("posterior std")
        ax.set_ylabel("|error| (noise-free object)")
    fig.tight_layout()
    paths.append(save_figure(fig, out / f"{stem}_error_vs_std.png", dpi=120))
    first = next(iter(primary.items()))
    paths.append(_maps_figure(out, stem, first[0], *first[1]["maps"]))
    return paths


#: Test sets: the MNI152 held-out slices of recon.py, the MNI152 validation slices of
#: sweep_solver.py, and the dipy sets of heldout_sets.py.
TEST_SETS = ("mni", "val", "dipy", "dipyb0")
SET_NAMES = {"mni": "MNI152", "val": "MNI152 validation", "dipy": "dipy T1", "dipyb0": "dipy b0"}


def _dipy_test(root: Path, args: argparse.Namespace, noise: float, images: dict) -> dict:
    """``set -> files`` of the dipy sets in ``images`` at test ``noise`` (``--dipy-slices``
    of each, evenly spread; the same slices at every noise), simulated like the MNI slices."""
    from benchmarks.heldout_sets import capped_files, write_dipy

    folder = root / f"dipy_{noise:g}"
    write_dipy(folder, noise, args.size, images, coils=args.coils)
    return {name: capped_files(sorted((folder / name).glob("*.h5")), args.dipy_slices, folder / "capped" / name)
            for name in images}


def _mni_sets(args: argparse.Namespace, test_sel: list) -> dict:
    """``set -> [(orientation, indices)]`` of the MNI152 test sets in ``args.test_sets``."""
    from benchmarks.data import validation_selection

    chosen = {"mni": lambda: test_sel, "val": lambda: validation_selection(min(args.test_slices, 6))}
    return {k: make() for k, make in chosen.items() if k in args.test_sets}


def _test_sets(w: Path, args: argparse.Namespace, mni: dict, dipy: dict) -> dict:
    """``noise -> set -> (files, {file name: noise-free reference})`` for ``args.test_noise``
    and ``args.test_sets`` (``mni``: :func:`_mni_sets`; the noise-free twins share the files'
    seeds)."""
    sets: dict = {}
    clean = {k: read_references(_write(w / f"{k}_clean", sel, args, 0.0, 0)) for k, sel in mni.items()}
    if dipy:
        clean.update({k: read_references(v) for k, v in _dipy_test(w, args, 0.0, dipy).items()})
    for noise in args.test_noise:
        files = {k: _write(w / f"{k}_{noise:g}", sel, args, noise, 0) for k, sel in mni.items()}
        files.update(_dipy_test(w, args, noise, dipy) if dipy else {})
        sets[noise] = {name: (files[name], clean[name]) for name in args.test_sets}
    return sets


def pooled_slice_line(slice_rows: list[dict]) -> str:
    """One line: the Spearman correlation of mean std with NMSE over the slices of every test
    set together, per test noise and R (the per-set value needs more than 3 slices)."""
    from scipy.stats import spearmanr

    parts = []
    for key in dict.fromkeys((float(r["noise"]), float(r["accel"])) for r in slice_rows):
        mine = [r for r in slice_rows if (float(r["noise"]), float(r["accel"])) == key]
        if len(mine) > 3:
            rho = spearmanr([float(r["mean_std"]) for r in mine], [float(r["nmse"]) for r in mine]).statistic
            parts.append(f"noise {key[0]:g}, R {key[1]:g}: {rho:.2f} ({len(mine)} slices)")
    return ("Slice Spearman (mean std vs NMSE) over all test sets: " + "; ".join(parts) + ".") if parts else ""


#: The README table's metrics: (header, row key, format).
README_COLUMNS = (("90 % bound covers", "bound90", "{:.1%}"), ("Spearman |e|-std", "spearman", "{:.3f}"),
                  ("neighbour Spearman", "neighbour_spearman", "{:.2f}"))


def readme_table(rows: list[dict], prior: str, command: str, setup: str) -> str:
    """The run as a result file for ``benchmarks/results/`` (:func:`benchmarks.readme.format_table`):
    a row per test set, a column per metric and test noise, each cell ``R a / R b / ...`` over
    the accelerations run ("-": not run)."""
    from benchmarks.readme import measured_table

    accels = sorted({float(r["accel"]) for r in rows})
    noises = sorted({float(r["noise"]) for r in rows})
    pair = " / ".join(f"{x:g}" for x in accels)
    header = ["prior", "set", "slices"] + [f"{h}, noise {n:g} (R {pair})" for h, _, _ in README_COLUMNS for n in noises]
    body = []
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = {(float(r["noise"]), float(r["accel"])): r for r in rows if r["set"] == name}
        cells = [prior, SET_NAMES[name], str(next(iter(mine.values()))["test_slices"])]
        for _, key, fmt in README_COLUMNS:
            for n in noises:
                cells.append(" / ".join(fmt.format(float(mine[n, x][key])) if (n, x) in mine else "-" for x in accels))
        body.append(cells)
    return measured_table(command, setup, header, body)


def main(argv: Optional[list[str]] = None) -> int:
    ap = base_parser(__doc__, out=RESULTS_DIR / "calibration", threads=None, threads_help=ONE_THREAD_ON_CPU,
                     device="cpu", seed=0, quiet=True)
    ap.add_argument("--accels", type=float, nargs="+", default=[4.0, 6.0])
    ap.add_argument("--cal-slices", type=int, default=12, help="calibration slices (default 12)")
    ap.add_argument("--test-slices", type=int, default=12, help="MNI152 test slices (default 12)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="MSM checkpoint (default: the shipped prior)")
    ap.add_argument("--settings", type=Path, default=None, help="posterior settings YAML (default: the prior's)")
    ap.add_argument("--base", nargs="*", default=[], help="setting overrides key=value (e.g. samples=8 t0=0.5)")
    ap.add_argument("--size", type=int, default=HELDOUT_SIZE)
    ap.add_argument("--pixel", choices=["fit", "native"], default="fit")
    ap.add_argument("--coils", type=int, default=HELDOUT_COILS)
    ap.add_argument("--noise", type=float, default=HELDOUT_NOISE, help="noise of the calibration slices")
    ap.add_argument("--test-noise", type=float, nargs="+", default=None,
                    help="test noise levels (default: --noise); a calibration holds for its own noise, so the "
                    "others measure how it transfers")
    ap.add_argument("--test-sets", nargs="+", choices=TEST_SETS, default=["mni"],
                    help="test sets (default mni; val: MNI152 validation slices, at most 6; dipy, dipyb0 need "
                    "--dipy or an installed dipy)")
    ap.add_argument("--dipy", type=Path, default=None,
                    help="the dipy wheel (pip download dipy --no-deps) for the dipy test sets")
    ap.add_argument("--dipy-slices", type=int, default=None,
                    help="slices of each dipy set, evenly spread (default: all; dipy b0 has 10)")
    ap.add_argument("--calibration", type=Path, default=None,
                    help="test this calibration file (e.g. an installed one) instead of calibrating on new slices")
    ap.add_argument("--install", action="store_true",
                    help="write the calibration beside the checkpoint (the shipped prior's: mrimsm/assets/)")
    ap.add_argument("--add", action="store_true",
                    help="with --install: add the --accels to the installed calibration (same checkpoint, settings, "
                         "slices and simulation; their entries are replaced, the others kept) instead of replacing it")
    args = ap.parse_args(argv)
    if args.install and args.calibration is not None:
        ap.error("--install writes a new calibration; it cannot go with --calibration")
    if args.add and not args.install:
        ap.error("--add goes with --install")
    for flag in ("cal_slices", "test_slices", "dipy_slices"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    args.test_noise = args.test_noise or [args.noise]
    args.test_sets = list(dict.fromkeys(args.test_sets))
    setup_torch(args)

    def body() -> int:
        from benchmarks.heldout_sets import dipy_images
        from mrimsm.diffusion import shipped
        from mrimsm.errors import MrimsmError
        from mrimsm.metrics import per_slice_metrics
        from mrimsm.recon import prepare_volume, run_method
        from mrimsm.recon.calibration import BoundChoice, calibrate, calibration_path, error_bound_for, \
            made_for, merge_calibration, read_calibration, settings_differ, solver_settings, write_calibration
        from mrimsm.recon.methods import get_method
        from mrimsm.uncertainty import LEVELS, calibration_metrics, object_support, std_floor
        from scipy.stats import norm, spearmanr

        t_start = time.perf_counter()
        options = {"checkpoint": args.checkpoint, "settings": args.settings, "device": args.device,
                   "seed": args.seed, **{k: parse_value(v) for k, v in (b.split("=", 1) for b in args.base)}}
        options = {k: v for k, v in options.items() if v is not None}
        progress = bars(args.quiet)
        cal_sel, test_sel = _selections(args.cal_slices, args.test_slices)
        wanted_dipy = [s for s in args.test_sets if s in ("dipy", "dipyb0")]
        dipy = dipy_images(args.dipy, wanted_dipy) if wanted_dipy else {}
        if missing := [s for s in wanted_dipy if s not in dipy]:
            raise MrimsmError(f"--test-sets {' '.join(missing)} needs --dipy (the dipy wheel: pip download dipy "
                              "--no-deps) or an installed dipy")
        checkpoint = Path(args.checkpoint) if args.checkpoint else Path(
            shipped.choose_shipped_prior((args.size, args.size)).path)
        installed = None
        if args.add and calibration_path(checkpoint).is_file():  # checked before the work, merged after it
            installed = read_calibration(calibration_path(checkpoint))
            if not made_for(installed, checkpoint):
                raise MrimsmError(f"--add: {calibration_path(checkpoint)} is the calibration of another checkpoint")
        with tempfile.TemporaryDirectory(prefix="mrimsm-calib-") as work:
            w = Path(work)
            if args.calibration is not None:
                cal = read_calibration(args.calibration)
                if not made_for(cal, checkpoint):
                    raise MrimsmError(f"{args.calibration} is the calibration of {cal['checkpoint'].get('file')}, "
                                      f"not of {checkpoint.name}")
                have = [e["accel"] for e in cal["entries"]]
                if absent := [a for a in args.accels if a not in have]:
                    raise MrimsmError(f"{args.calibration} has no entry for R {' '.join(f'{a:g}' for a in absent)} "
                                      f"(it has {' '.join(f'{a:g}' for a in have)})")
                cal["entries"] = [e for e in cal["entries"] if e["accel"] in args.accels]
                cal_text = f"{args.calibration.name} ({cal.get('calibration_slices', 'slices not recorded')})"
            else:
                cal_files = _write(w / "cal", cal_sel, args, args.noise, 300)
                clean_cal = read_references(_write(w / "cal_clean", cal_sel, args, 0.0, 300))
                cal = calibrate(cal_files, args.accels, options, seed=args.seed,
                                reference_for=lambda path, vol: clean_cal[path.name][list(vol.slices)],
                                reference_text="the noise-free object (RSS of the simulation without k-space noise)",
                                progress=progress, on_volume=log_line)
                cal["calibration_slices"] = "; ".join(f"MNI152 {o} {idx}" for o, idx in cal_sel)
                cal["simulation"] = f"{args.size} x {args.size} ({args.pixel}), {args.coils} coils, noise {args.noise:g}"
                cal_text = f"{cal['calibration_slices']} (odd offsets of the held-out ranges)"
            mni = _mni_sets(args, test_sel)
            tests = _test_sets(w, args, mni, dipy)
            args.out.mkdir(parents=True, exist_ok=True)
            write_calibration(cal, args.out / "calibration.json")
            method = get_method("msm").build(options)
            rows, curves, primary, slice_rows = [], [], {}, []
            for noise, sets in tests.items():
                for set_name, (test_files, clean_test) in sets.items():
                    first = not rows or (noise == rows[0]["noise"] and set_name == rows[0]["set"])
                    for entry in cal["entries"]:
                        accel = entry["accel"]
                        errs, stds, sups, refs, slice_std, slice_nmse, psnr = [], [], [], [], [], [], []
                        for f in test_files:
                            vol = prepare_volume(f, accel, args.seed, progress=progress)
                            res = run_method(vol, "msm", options, progress, method=method)
                            used = solver_settings(res.info)
                            ref = clean_test[f.name][list(vol.slices)]
                            psnr += list(per_slice_metrics(ref, res.reconstruction)["psnr"])
                            for i in range(len(ref)):
                                sup = object_support(ref[i])
                                e = res.reconstruction[i] - ref[i]
                                errs.append(e)
                                stds.append(res.uncertainty[i])
                                sups.append(sup)
                                refs.append(ref[i])
                                slice_std.append(float(res.uncertainty[i][sup].mean()))
                                slice_nmse.append(float(np.sum(e[sup] ** 2) / np.sum(ref[i][sup] ** 2)))
                                slice_rows.append({"set": set_name, "noise": noise, "accel": accel, "file": f.name,
                                                   "slice": int(vol.slices[i]), "psnr_paper": psnr[len(psnr) - len(ref) + i],
                                                   "mean_std": slice_std[-1], "nmse": slice_nmse[-1]})
                            log_line(f"{SET_NAMES[set_name]} noise {noise:g} R {accel:g} test {f.name}: "
                                     f"PSNR {np.mean(psnr[-len(ref):]):.2f} dB (paper)")
                        err_abs, std_all, inside = np.abs(np.stack(errs)), np.stack(stds), np.stack(sups)
                        floors = [std_floor(s) for s in stds]
                        m = calibration_metrics(err_abs, std_all, inside)
                        cover, observed, gaussian = {}, [], []
                        for lv in LEVELS:
                            b = error_bound_for(std_all, BoundChoice(entry["levels"][f"{lv:.2f}"]))
                            observed.append(float(np.mean((err_abs <= b)[inside])))
                            zz = norm.ppf(0.5 + lv / 2)
                            gaussian.append(float(np.mean([np.mean(np.abs(e[s_]) <= zz * (s[s_] + fl))
                                                           for e, s, s_, fl in zip(errs, stds, sups, floors)])))
                            cover[f"{lv:.2f}"] = observed[-1]
                        label = f"{SET_NAMES[set_name]}, noise {noise:g}, R {accel:g}"
                        curves.append((label, list(LEVELS), observed, gaussian if first else None))
                        if first:
                            primary[accel] = {
                                "e": np.concatenate([np.abs(e[s_]) for e, s_ in zip(errs, sups)]),
                                "s": np.concatenate([s[s_] for s, s_ in zip(stds, sups)]),
                                "spearman": m.spearman, "maps": (refs, errs, stds)}
                        rows.append({
                            "set": set_name, "noise": noise, "accel": accel, "test_slices": len(errs),
                            "cal_slices": entry["slices"],
                            "psnr_paper": float(np.mean(psnr)), "spearman": m.spearman, "pearson": m.pearson,
                            "neighbour_spearman": neighbour_error_spearman(errs, sups),
                            "coverage_2std": m.coverage_2, "std_over_error": m.std_over_error,
                            "bound80": cover["0.80"], "bound90": cover["0.90"], "bound95": cover["0.95"],
                            "scale90": entry["levels"]["0.90"],
                            "slice_spearman": (float(spearmanr(slice_std, slice_nmse).statistic)
                                               if len(errs) > 3 else float("nan")),
                            "cal_spearman": entry["metrics"]["spearman"],
                            "edge_share_error": float(np.mean([edge_share(e, r, s_)
                                                               for e, r, s_ in zip(errs, refs, sups)])),
                            "edge_share_variance": float(np.mean([edge_share(s, r, s_) for s, r, s_ in
                                                                  zip(stds, refs, sups)])),
                        })
        paths = _figures(args.out, "calibration", curves, primary)
        settings = used
        if differ := settings_differ(cal, used):
            log_line(f"note: the calibration holds for other solver settings ({', '.join(differ)}); its bound "
                     "coverage here measures that mismatch")
        described = {k: f"{SET_NAMES[k]} " + "; ".join(f"{o} {idx}" for o, idx in sel)
                     for k, sel in mni.items()}
        described.update({
                     "dipy": "the dipy T1 coronal slice", "dipyb0": "the dipy b0 EPI slices"
                     + (f" ({args.dipy_slices} of 10)" if args.dipy_slices else "")})
        lines = header_lines("Calibration of the posterior std (split conformal)", sys.argv, args.device)
        lines += [
            f"Prior: {checkpoint.name}; solver: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".",
            f"Slices: {args.size} x {args.size} ({args.pixel}), {args.coils} coils. Calibration: {cal_text}, "
            f"noise {args.noise:g}. Test: " + "; ".join(described[s] for s in args.test_sets)
            + f", at test noise {', '.join(f'{n:g}' for n in args.test_noise)}.",
            "Errors against the noise-free object, inside the object (reference >= 10 % of its slice maximum). "
            f"Edges: the {EDGE_FRACTION:.0%} of object pixels where the object's gradient is largest. "
            "Neighbour Spearman: |e| against the RMS error of its 5 x 5 neighbours (the pixel left out), "
            "about the best a smooth map can do.", "",
            md_table(["set", "test noise", "R", "test slices", "PSNR dB (paper)", "Spearman \\|e\\|-std",
                      "neighbour Spearman", "Pearson", "mean +- 2 std covers", "80 % bound covers",
                      "90 % bound covers", "95 % bound covers", "std / \\|e\\|", "slice Spearman (mean std vs NMSE)",
                      "90 % scale", "edge share of error^2", "edge share of std^2"],
                     [[SET_NAMES[r["set"]], f"{r['noise']:g}", f"{r['accel']:g}", str(r["test_slices"]),
                       f"{r['psnr_paper']:.2f}", f"{r['spearman']:.3f}", f"{r['neighbour_spearman']:.3f}",
                       f"{r['pearson']:.3f}", f"{r['coverage_2std']:.1%}", f"{r['bound80']:.1%}",
                       f"{r['bound90']:.1%}", f"{r['bound95']:.1%}", f"{r['std_over_error']:.2f}",
                       f"{r['slice_spearman']:.2f}", f"{r['scale90']:.2f}", f"{r['edge_share_error']:.1%}",
                       f"{r['edge_share_variance']:.1%}"] for r in rows]),
            "", pooled_slice_line(slice_rows),
            "", f"Figures: {', '.join(p.name for p in paths)}. Total {(time.perf_counter() - t_start) / 60:.1f} min.", ""]
        write_results(args.out, "calibration", "\n".join(lines), rows, slice_rows)
        # the shipped priors by their size, as the README table names them; others by file name
        prior = str(args.size) if not args.checkpoint else checkpoint.name
        write_text(args.out / "calibration_readme.csv", readme_table(
            rows, prior, "python -m benchmarks.calibration " + " ".join(sys.argv[1:]),
            f"{args.size} x {args.size} ({args.pixel}), {args.coils} coils; calibration {cal_text}, noise "
            f"{args.noise:g}; errors against the noise-free object, inside the object"))
        if args.install:
            if installed is not None:
                try:
                    cal = merge_calibration(installed, cal)
                except MrimsmError as exc:  # the file is left as it was; the work is in --out
                    raise MrimsmError(f"--add: cannot add to {calibration_path(checkpoint)}: {exc}; the new "
                                      f"calibration is in {args.out / 'calibration.json'}") from None
            target = write_calibration(cal, calibration_path(checkpoint))
            log_line(f"installed {target}")
        print("\n".join(lines))
        return 0

    run_main(body)
    return 0


if __name__ == "__main__":
    main()
