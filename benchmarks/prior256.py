"""Held-out check of the 256 x 256 brain prior: zero-filled, CS-L1, SENSE
(when registered) and MSM on the same slices, masks, coil maps and seeds, at R = 4 and 6.

    .venv/bin/python -m benchmarks.prior256 --checkpoint runs/default_msm256             # defaults
    .venv/bin/python -m benchmarks.prior256 --sizes 256 320 --dipy dipy-*.whl            # + individual anatomy
    .venv/bin/python -m benchmarks.prior256 --slices 1 --steps 4 --sizes 256 --out /tmp/p   # smoke test

Test sets (never trained on):

* ``mni<size>``: held-out MNI152 T1 slices (``MNI_SPLIT``; the training slices come
  from the same averaged template, which flatters every learned method) at their native
  1 mm pixels, zero-padded to ``size`` (``--sizes``, default 256 and 320: the 256 model
  runs on 320 x 320 scans within its documented size range, mrimsm/diffusion/shipped.py).
* ``mni<size>x<s>`` (``--scales``, default 1 only): the same slices resampled by ``s``,
  i.e. at pixels of ``1 / s`` mm (0.7: 1.43 mm, more detail per pixel than the smooth
  template at 1 mm; the dipy slice is at about 1 mm: its brain is 142 pixels wide, the
  template's coronal slices 133-145).
* ``mni<size>c<N>`` (``--columns``, none by default): the ``mni<size>`` slices and seeds in
  ``N`` columns, the object in the middle of a wider phase-encode field of view, as in
  fastMRI brain's 768 x 396 files (320 x 396 after the readout crop; the UNet zero-pads
  396 to 416 and crops back). Its masks differ from ``mni<size>``'s (another width).
* ``dipy``: a real individual T1 coronal slice, 256 x 256 (about 1 mm), shipped inside
  the dipy wheel (``dipy/data/files/t1_coronal_slice.npy``). dipy is not a dependency:
  pass ``--dipy`` a downloaded wheel (``pip download dipy --no-deps``), the ``.npy``
  file or nothing to look for an installed dipy; without one this set is skipped.
* ``dipyb0``: the 10 real axial b0 slices of one diffusion scan the same wheel ships
  (``dipy/data/files/S0_10slices.nii.gz``: 128 x 128 at 2 mm pixels, T2-weighted EPI, 12-bit,
  another contrast than the T1 the prior saw), normalized by the volume's maximum and
  resampled by 2 (linear) to 256 x 256 at 1 mm pixels, the prior's pixel scale. The
  upsampled slices hold nothing beyond the 2 mm scan's resolution, which makes the outer
  k-space easy for every method. Needs ``--dipy`` to be the wheel (or an installed dipy).

``--check denoiser`` (seconds, not minutes) runs no reconstruction: on the same
slices (fully sampled, normalized as recon does, ESPIRiT maps from the centre, one
mask of the model's training family per slice) it noises the local measurement
``y = S z`` to several steps ``t`` and reports the relative error
``||A_S x0_hat - y||^2 / ||y||^2`` of the denoiser's clean estimate (lower is
better; the measurement's own noise rho = 0.01 is in ``y``), the check used to
decide whether a later checkpoint is better.

Every slice is simulated as in training (``--coils`` birdcage coils, k-space noise
``--noise``, readout oversampled by 2, a smooth random phase), then reconstructed
through the ``mrimsm recon`` pipeline (readout crop, a seeded RandomCartesian(R)
mask, ESPIRiT maps from the centre columns). MSM uses the 256 prior's own posterior
settings (``mrimsm/assets/default_msm256.recon.yaml``, what ``recon`` uses for these scans; ``--settings``
for another file) with optional ``--steps / --w / --samples`` overrides. Writes
``<out>/prior256.md`` and ``.csv``: both metric conventions against the file's reference
(the RSS image of the noisy fully sampled k-space, as fastMRI's), a foreground PSNR
(fastMRI convention on the pixels where that reference exceeds 10 % of its max: its
background is the RSS noise floor), and both conventions against the noise-free
reference (the RSS image of the same simulation without k-space noise: the object
itself, which only a simulation knows; `benchmarks.runs.truth_metrics` says why).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks import REPO, RESULTS_DIR
from benchmarks.arguments import base_parser, run_main, setup_torch
from benchmarks.data import Volumes, heldout_selection, read_references, simulated_volumes
from benchmarks.progress import bars, log_line
from benchmarks.runs import Record, Run, build_methods, evaluate, truth_metrics
from benchmarks.tables import METRIC_HEADER, conventions_note, cost_cells, header_lines, md_table, metric_cells, \
    summarize, write_csv, write_results, write_text

DIPY_MEMBER = "dipy/data/files/t1_coronal_slice.npy"
DIPY_B0_MEMBER = "dipy/data/files/S0_10slices.nii.gz"
LABELS = {"zero-filled": "zero-filled", "cs": "CS-L1", "sense": "SENSE", "ssdu": "SSDU", "msm": "MSM"}


#: foreground of the foreground PSNR: reference above this fraction of its volume max
FOREGROUND_LEVEL = 0.1


def _installed_dipy_file(member: str) -> Optional[Path]:
    """Where an installed dipy keeps ``member`` (a wheel path like ``dipy/data/...``), or
    ``None`` when dipy is not installed."""
    spec = importlib.util.find_spec("dipy")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent / member


def dipy_slice(source: Optional[Path]) -> Optional[np.ndarray]:
    """The dipy T1 coronal slice ``(256, 256)`` float32 in [0, 1], from a wheel, the
    ``.npy`` file or an installed dipy (``None`` if none is found)."""
    from mrimsm.errors import MrimsmError

    if source is None:
        source = _installed_dipy_file(DIPY_MEMBER)
        if source is None:
            return None
    source = Path(source)
    if not source.is_file():
        raise MrimsmError(f"--dipy {source} is not a file")
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            try:
                with z.open(DIPY_MEMBER) as f:
                    img = np.load(f)
            except KeyError:
                raise MrimsmError(f"{source} holds no {DIPY_MEMBER}") from None
    else:
        img = np.load(source)
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2:
        raise MrimsmError(f"the dipy slice should be 2-D, got shape {img.shape}")
    return np.clip(img / max(float(img.max()), 1e-12), 0.0, None)


def dipy_b0_slices(source: Optional[Path]) -> Optional[np.ndarray]:
    """The dipy b0 slices ``(10, 256, 256)`` float32 in [0, 1] (module docstring), from the
    wheel or an installed dipy; ``None`` when neither holds them (e.g. ``--dipy`` an ``.npy``)."""
    import gzip

    import nibabel as nib
    from skimage.transform import rescale

    if source is None:
        path = _installed_dipy_file(DIPY_B0_MEMBER)
        raw = path.read_bytes() if path is not None and path.is_file() else None
    elif Path(source).suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            raw = z.read(DIPY_B0_MEMBER) if DIPY_B0_MEMBER in z.namelist() else None
    else:
        raw = None
    if raw is None:
        return None
    vol = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(raw)).get_fdata(), dtype=np.float32)
    vol = vol.reshape(vol.shape[0], vol.shape[1], -1) / max(float(vol.max()), 1e-12)
    # (x, y, slice) -> rows anterior at the top, as the MNI axial slices; 2 mm -> 1 mm pixels
    slices = [rescale(vol[:, :, k].T[::-1], 2.0, order=1, preserve_range=True) for k in range(vol.shape[2])]
    return np.clip(np.stack(slices).astype(np.float32), 0.0, None)


def write_sets(work: Path, args: argparse.Namespace, noise: Optional[float] = None) -> dict[str, list[Path]]:
    """``set name -> [fastMRI files]`` (one file per orientation for the MNI sets), with
    k-space noise ``noise`` (default ``args.noise``). The same seeds give the same coil
    phases, so ``noise = 0`` writes the noise-free twins of the noisy files."""
    from mrimsm.data.simulate import simulate_multicoil, simulate_volume_file, write_fastmri_file

    noise = args.noise if noise is None else float(noise)
    sets: dict[str, list[Path]] = {}

    def mni_set(name: str, size: int, **kw) -> None:
        """The held-out MNI slices at native pixels, one file per orientation (``kw``:
        ``scale`` or ``columns`` of :func:`simulate_volume_file`)."""
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        sets[name] = [
            simulate_volume_file(d / f"heldout_{o}.h5", o, idx, size, args.coils, noise, True,
                                 seed=k, pixel="native", **kw)
            for k, (o, idx) in enumerate(heldout_selection(args.slices))
        ]

    for size in args.sizes:
        for scale in args.scales:
            mni_set(f"mni{size}" + ("" if scale == 1.0 else f"x{scale:g}"), size, scale=scale)
        for columns in [c for c in args.columns if c > size]:
            # the same slices and seeds in a wider phase-encode field of view (fastMRI brain: 320 x 396)
            mni_set(f"mni{size}c{columns}", size, columns=columns)
    img = dipy_slice(args.dipy)
    if img is not None:
        sim = simulate_multicoil(img, args.coils, noise, oversample_readout=True, seed=7)
        path = write_fastmri_file(work / "dipy_t1_coronal.h5", sim["kspace"][None], sim["reconstruction_rss"][None],
                                  {"acquisition": "CORT1", "simulated_from": "dipy t1_coronal_slice.npy"},
                                  pixel_mm=1.0)  # about 1 mm (module docstring); the slice states none
        sets["dipy"] = [path]
    b0 = dipy_b0_slices(args.dipy)
    if b0 is not None:
        sims = [simulate_multicoil(im, args.coils, noise, oversample_readout=True, seed=100 + k)
                for k, im in enumerate(b0)]
        path = write_fastmri_file(work / "dipy_b0_axial.h5", np.stack([s["kspace"] for s in sims]),
                                  np.stack([s["reconstruction_rss"] for s in sims]),
                                  {"acquisition": "AXB0", "simulated_from": "dipy S0_10slices.nii.gz, resampled by 2"},
                                  pixel_mm=1.0)
        sets["dipyb0"] = [path]
    if args.sets:
        unknown = sorted(set(args.sets) - set(sets))
        if unknown:
            from mrimsm.errors import MrimsmError

            raise MrimsmError(f"--sets: no set named {', '.join(unknown)} (these exist: {', '.join(sets)})")
        sets = {name: files for name, files in sets.items() if name in args.sets}
    return sets


def foreground_psnr(records: Sequence[Record], vols: Volumes, level: float = FOREGROUND_LEVEL) -> dict:
    """``(accel, label) -> mean over volumes`` of the fastMRI-convention PSNR (peak: the
    reference volume's max) on the foreground only: pixels where the reference exceeds
    ``level`` times its volume max. The simulated references are RSS images of noisy
    k-space, so their background is a noise floor (about 4 % of the max at noise 0.01,
    8 coils) that no denoising reconstruction reproduces; this column shows what the
    whole-image metrics say about the object itself."""
    import numpy as np

    refs = {(a, v.path.name): np.asarray(v.reference, dtype=np.float64) for a, vs in vols.items() for v in vs}
    out: dict = {}
    for rec in records:
        ref = refs[(rec.accel, rec.volume)]
        x = np.asarray(rec.result.reconstruction, dtype=np.float64)
        fg = ref > level * ref.max()
        mse = float(np.mean((x[fg] - ref[fg]) ** 2))
        out.setdefault((rec.accel, rec.label), []).append(10 * np.log10(ref.max() ** 2 / mse))
    return {k: float(np.mean(v)) for k, v in out.items()}


def denoiser_check(checkpoint: Optional[Path], sets: dict[str, list[Path]], ts: Sequence[int],
                   seed: int = 0) -> list[dict]:
    """Relative error of the local clean estimate per set and step (module docstring);
    ``checkpoint`` ``None``: the shipped 256 x 256 prior."""
    import torch

    from mrimsm.diffusion.shipped import SHIPPED_PRIORS
    from mrimsm.inference import load_msm
    from mrimsm.physics.masks import training_mask_family
    from mrimsm.physics.operators import MultiCoilMRI
    from mrimsm.recon import prepare_volume

    loaded = load_msm(checkpoint if checkpoint is not None else SHIPPED_PRIORS[1].path)
    den, family = loaded.denoiser, training_mask_family(loaded.meta)
    rows = []
    for name, files in sets.items():
        vols = [prepare_volume(f, 1.0, seed) for f in files]
        z = torch.cat([torch.from_numpy(v.kspace / np.float32(v.scale)) for v in vols])
        maps = torch.cat([torch.from_numpy(v.maps) for v in vols])
        w = z.shape[-1]
        masks = torch.stack([torch.as_tensor(family((z.shape[-2], w), seed=seed * 1000 + i)).float()
                             for i in range(z.shape[0])]).view(-1, 1, 1, w)
        op = MultiCoilMRI(maps, masks)
        y = op.apply_mask(z)
        g = torch.Generator().manual_seed(seed)
        row = {"set": name, "slices": int(z.shape[0]), "step": loaded.step}
        for t in ts:
            ab = float(den.schedule.alpha_bar(torch.tensor([t]))[0])
            n = op.apply_mask(torch.randn(y.shape, dtype=torch.complex64, generator=g))
            yt = ab**0.5 * y + (1 - ab) ** 0.5 * n
            with torch.no_grad():
                s_hat = den.measure(op, yt[None], torch.full((y.shape[0],), t, dtype=torch.long))[0]
            row[f"t{t}"] = float((s_hat - y).abs().pow(2).sum() / y.abs().pow(2).sum())
        rows.append(row)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    ap = base_parser(__doc__, out=RESULTS_DIR, threads=1, device="cpu", seed=0, quiet=True)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="MSM checkpoint or run directory (default: the shipped prior chosen by size)")
    ap.add_argument("--accels", type=float, nargs="+", default=[4.0, 6.0])
    ap.add_argument("--slices", type=int, default=3, help="held-out MNI slices per size (default 3)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 320])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0],
                    help="MNI sets at pixels of 1 / scale mm (default 1: the native 1 mm)")
    ap.add_argument("--columns", type=int, nargs="+", default=[],
                    help="also each size's MNI set in this many columns (phase-encode oversampling, "
                         "e.g. 396: fastMRI brain's 320 x 396 matrices); set mni<size>c<columns>")
    ap.add_argument("--dipy", type=Path, default=None, help="dipy wheel or t1_coronal_slice.npy")
    ap.add_argument("--sets", nargs="+", default=None,
                    help="evaluate only these sets (e.g. dipy dipyb0 mni320c396; default: all written)")
    ap.add_argument("--methods", nargs="+", default=["zero-filled", "cs", "sense", "msm"], choices=list(LABELS))
    ap.add_argument("--ssdu-checkpoint", type=Path, default=None,
                    help="SSDU model for --methods ssdu (e.g. runs/default_ssdu256/last.pt, trained with "
                         "configs/default_ssdu256.yaml; default: the shipped 64 x 64 one)")
    ap.add_argument("--settings", type=Path, default=None,
                    help="posterior settings YAML (default: the 256 prior's, mrimsm/assets/default_msm256.recon.yaml)")
    ap.add_argument("--steps", type=int, default=None, help="override the settings' steps")
    ap.add_argument("--w", type=int, default=None, help="override the settings' w")
    ap.add_argument("--samples", type=int, default=None, help="override the settings' samples")
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--check", choices=["recon", "denoiser"], default="recon")
    ap.add_argument("--steps-t", type=int, nargs="+", default=[5, 20, 50, 100, 200, 300],
                    help="--check denoiser: diffusion steps t")
    args = ap.parse_args(argv)
    setup_torch(args)

    def body() -> int:
        from mrimsm.recon import available_methods

        t0 = time.perf_counter()
        if args.check == "denoiser":
            with tempfile.TemporaryDirectory(prefix="mrimsm-prior256-") as work:
                rows = denoiser_check(args.checkpoint, write_sets(Path(work), args), args.steps_t, args.seed)
            head = ["set", "slices", "step"] + [f"t = {t}" for t in args.steps_t]
            body = [[r["set"], r["slices"], r["step"]] + [f"{r[f't{t}']:.4f}" for t in args.steps_t] for r in rows]
            text = "\n".join(header_lines("256 x 256 prior: held-out denoiser check", sys.argv, args.device)
                             + ["Relative error ||A_S x0_hat - y||^2 / ||y||^2 (lower is better).", "",
                                md_table(head, body), ""])
            write_results(args.out, "prior256_denoiser", text, rows)
            return 0
        skipped = [m for m in args.methods if m not in available_methods()]
        runs = []
        for m in args.methods:
            if m in skipped:
                continue
            opts = {"steps": args.steps, "w": args.w, "samples": args.samples} if m == "msm" else {}
            runs.append(Run(LABELS[m], m, opts))
        from mrimsm.diffusion.posterior import load_posterior_settings
        from mrimsm.diffusion.shipped import SHIPPED_PRIORS

        settings_file = args.settings or SHIPPED_PRIORS[1].settings_path
        shown = Path(settings_file).resolve()
        shown = shown.relative_to(REPO) if shown.is_relative_to(REPO) else shown
        common = {"checkpoint": args.checkpoint, "settings": settings_file, "device": args.device, "seed": args.seed,
                  "ssdu_checkpoint": args.ssdu_checkpoint}
        st = load_posterior_settings(settings_file, steps=args.steps, w=args.w, samples=args.samples)
        built = build_methods(runs, common)
        progress = bars(args.quiet)
        lines = header_lines("256 x 256 prior: held-out check", sys.argv, args.device)
        lines += [f"MSM: {args.checkpoint or 'the shipped prior chosen by size'}; posterior settings "
                  f"{shown}: {st.steps} steps, w {st.w}, {st.samples} sample(s), start {st.init} at t0 "
                  f"{st.t0:g} ({st.nfe} NFE per slice). {args.coils} simulated coils, noise {args.noise:g}; "
                  f"RandomCartesian masks seeded per file and slice (seed {args.seed})."]
        if skipped:
            lines.append(f"Not registered here, skipped: {', '.join(skipped)}.")
        lines += ["", conventions_note("a volume is one orientation's slices, or the one dipy slice"), ""]
        all_rows = []
        with tempfile.TemporaryDirectory(prefix="mrimsm-prior256-") as work:
            sets = write_sets(Path(work), args)
            twins = write_sets(Path(work) / "noise_free", args, noise=0.0)  # the same seeds without noise
            if "dipy" not in sets and not args.sets:
                lines += ["(no dipy slice found: pass --dipy; that set is skipped)", ""]
            for name, files in sets.items():
                vols = {float(a): simulated_volumes(files, float(a), args.seed, progress) for a in args.accels}
                records = evaluate(vols, runs, built, common, progress, log_line, keep=lambda r, k: True)
                rows = summarize(records, runs)
                fg = foreground_psnr(records, vols)
                truth = truth_metrics(records, read_references(twins[name]))
                for r in rows:
                    r["psnr_foreground"] = fg.get((r["accel"], r["label"]))
                    r.update(truth.get((r["accel"], r["label"]), {}))
                for rec in records:
                    rec.result = None  # the images were kept for the foreground PSNR only
                models = sorted({r.info.get("model", "") for r in records if r.info.get("model")})
                height, width = vols[float(args.accels[0])][0].kspace.shape[-2:]
                lines += [f"## {name}: {rows[0]['slices']} slices, {height} x {width}"
                          + (f"; models: {'; '.join(models)}" if models else ""), ""]
                lines.append(md_table(["R", "method", *METRIC_HEADER, "PSNR dB (foreground)",
                                         "noise-free ref: PSNR dB (paper)", "SSIM (paper)", "PSNR dB (fastMRI)",
                                         "s/slice", "NFE/slice"],
                                        [[f"{r['accel']:g}", r["label"], *metric_cells(r),
                                          f"{r['psnr_foreground']:.2f}", f"{r['psnr_clean_paper']:.2f}",
                                          f"{r['ssim_clean_paper']:.4f}", f"{r['psnr_clean_fastmri']:.2f}",
                                          *cost_cells(r)] for r in rows]))
                lines.append("")
                all_rows += [{"set": name, **r} for r in rows]
                # the sets done so far, in case a later set fails (a full run takes about 20 minutes)
                write_text(args.out / "prior256.partial.md", "\n".join(lines))
                write_csv(args.out / "prior256.partial.csv", all_rows)
        lines += [f"Total wall time {(time.perf_counter() - t0) / 60:.1f} min.", ""]
        write_results(args.out, "prior256", "\n".join(lines), all_rows)
        for stem in ("prior256.partial.md", "prior256.partial.csv"):
            (args.out / stem).unlink(missing_ok=True)
        return 0

    run_main(body)
    return 0


if __name__ == "__main__":
    main()
