"""What ``benchmarks/recon.py`` and ``benchmarks/csmri.py`` share: the evaluation
slices, running registered reconstruction methods on them, metrics in both
conventions, and the table / CSV / figure writers.

Evaluation data (the same masks, coil maps and seeds for every method):

* **simulated held-out slices** (default): MNI152 slices from the HELD-OUT split
  (``mrimsm.data.simulate.MNI_SPLIT``; never seen in training), spread round-robin
  over the three orientations, one fastMRI-style file per orientation (a "volume"),
  64 x 64, 16 birdcage coils, k-space noise 0.01, readout oversampled by 2 —
  deterministic. Each file then goes through the ``mrimsm recon`` pipeline
  (:func:`mrimsm.recon.prepare_volume`): readout crop, a retrospective
  ``RandomCartesian(R)`` mask per slice seeded by ``seed_for(file, slice, seed)``,
  ESPIRiT maps from the kept centre columns.
* **prepared validation shards** (``--data DIR``, e.g. real fastMRI through
  ``mrimsm prep-fastmri``): ``MeasurementDataset(DIR, "val")`` items, with their own
  masks and maps and the ``reference`` image. At the shards' own acceleration the
  acquired lines are used as they are; at a higher R a seeded random subset of the
  acquired non-centre columns is kept (probability R0 / R each, the centre block
  always), so every R is a subset of a real acquisition; a lower R is refused.

Metrics: the paper's convention (every slice min-max normalized to [0, 1] on its
own; mean and std over slices) and fastMRI's (per volume, ``data_range`` = the
reference volume's max; mean and std over volumes), both from :mod:`mrimsm.metrics`.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "results"

#: The simulated held-out set: the shipped model's size, fastMRI-like coils and noise.
HELDOUT_SIZE = 64
HELDOUT_COILS = 16
HELDOUT_NOISE = 0.01

Progress = Callable[[str, int], Any]


# -- evaluation data -------------------------------------------------------------------


def heldout_selection(num_slices: int) -> list[tuple[str, list[int]]]:
    """``[(orientation, slice indices)]``: ``num_slices`` held-out MNI slices dealt
    round-robin to axial, coronal, sagittal; within an orientation, evenly spread over
    its held-out range (every other slice)."""
    from mrimsm.data.simulate import ORIENTATIONS, mni_split_indices
    from mrimsm.errors import MrimsmError

    held = {o: mni_split_indices(o, "heldout", step=2) for o in ORIENTATIONS}
    most = sum(len(v) for v in held.values())
    if not 1 <= num_slices <= most:
        raise MrimsmError(f"--slices must be in 1..{most} (the simulated held-out set), got {num_slices}")
    counts = {o: len(range(k, num_slices, len(ORIENTATIONS))) for k, o in enumerate(ORIENTATIONS)}
    out = []
    for o in ORIENTATIONS:
        n, idx = counts[o], held[o]
        if n:
            out.append((o, [idx[int((j + 0.5) * len(idx) / n)] for j in range(n)]))
    return out


def write_heldout_files(
    out_dir: Path,
    num_slices: int,
    size: int = HELDOUT_SIZE,
    coils: int = HELDOUT_COILS,
    noise: float = HELDOUT_NOISE,
    seed: int = 0,
) -> list[Path]:
    """Simulate the held-out slices as fastMRI files ``heldout_<orientation>.h5``
    (``kspace`` ``(S, coils, 2 size, size)``, ``reconstruction_rss`` ``(S, size, size)``)."""
    from mrimsm.data.simulate import simulate_volume_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        simulate_volume_file(out_dir / f"heldout_{o}.h5", o, idx, size, coils, noise, True, seed=seed * 10 + k)
        for k, (o, idx) in enumerate(heldout_selection(num_slices))
    ]


def simulated_volumes(files: Sequence[Path], accel: float, seed: int, progress: Optional[Progress] = None) -> list:
    """:func:`mrimsm.recon.prepare_volume` of each file at acceleration ``accel``."""
    from mrimsm.recon import prepare_volume

    return [prepare_volume(f, accel, seed, progress=progress) for f in files]


def _subsample(mask: np.ndarray, keep: float, seed: int) -> np.ndarray:
    """Keep the centre block of ``mask`` ``(W,)`` and each other acquired column with
    probability ``keep`` (seeded)."""
    from mrimsm.data.espirit import acs_width

    w = mask.shape[0]
    acs = acs_width(mask)
    centre = np.zeros(w, dtype=bool)
    lo = w // 2 - acs // 2
    centre[lo : lo + acs] = True
    draw = np.random.default_rng(seed).random(w) < keep
    return mask & (centre | draw)


def prepared_volumes(root: Path, accel: float, seed: int, num_slices: int) -> list:
    """Validation slices of a prepared directory as :class:`mrimsm.recon.PreparedVolume`
    objects (one per source volume), at acceleration ``accel`` (see the module doc)."""
    import torch

    from mrimsm.baselines.classical import zero_filled
    from mrimsm.data.datasets import MeasurementDataset
    from mrimsm.errors import MrimsmError
    from mrimsm.physics.masks import seed_for
    from mrimsm.recon import PreparedVolume, volume_scale

    ds = MeasurementDataset(root, "val")
    if len(ds) == 0:
        raise MrimsmError(f"{root} has no validation slices (prep-fastmri with --val-fraction > 0)")
    base = float(ds.manifest.get("mask", {}).get("accel") or ds.masks.shape[1] / ds.masks.sum(1).mean())
    if accel < base - 1e-6:
        raise MrimsmError(f"{root} holds R = {base:g} acquisitions: R = {accel:g} cannot be made from them")
    groups: dict[str, list[int]] = {}
    for i, (source, _) in enumerate(ds.sources):
        groups.setdefault(source, []).append(i)
    picked: dict[str, list[int]] = {}
    order = [idx for k in range(max(map(len, groups.values()))) for g in groups.values() for idx in g[k : k + 1]]
    for i in order[:num_slices]:
        picked.setdefault(ds.sources[i][0], []).append(i)

    volumes = []
    for source, items in picked.items():
        rows = [ds[i] for i in sorted(items)]
        if "reference" not in rows[0]:
            raise MrimsmError(f"{root}: validation shards without 'reference' (prep-fastmri keeps it by default)")
        slices = [ds.sources[i][1] for i in sorted(items)]
        name = Path(source).name
        masks = ds.masks[sorted(items)].copy()
        if accel > base + 1e-6:
            # salted seed: prep drew the acquisition mask from seed_for(name, slice, seed) itself
            masks = np.stack([_subsample(m, base / accel, seed_for(f"subsample R={accel:g} {name}", s, seed))
                              for m, s in zip(masks, slices)])
        y = torch.stack([r["y"] for r in rows]).numpy() * masks[:, None, None, :].astype(np.complex64)
        maps = torch.stack([r["maps"] for r in rows]).numpy()
        ref = torch.stack([r["reference"] for r in rows]).abs().numpy().astype(np.float32)
        volumes.append(
            PreparedVolume(
                path=Path(name),
                kspace=np.ascontiguousarray(y, dtype=np.complex64),
                mask=masks,
                maps=np.ascontiguousarray(maps, dtype=np.complex64),
                reference=ref,
                recon_size=tuple(ref.shape[-2:]),
                zero_filled=zero_filled(y, masks, maps).abs().numpy().astype(np.float32),
                slices=slices,
                attrs={},
                mask_source="prepared" if accel <= base + 1e-6 else f"prepared, subsampled from R = {base:g}",
                accel=accel,
                achieved_accel=float(masks.shape[1] / masks.sum(1).mean()),
                seed=seed,
                scale=volume_scale(y, masks, maps),
            )
        )
    return volumes


# -- running methods -----------------------------------------------------------------


@dataclass
class Run:
    """One row of a benchmark: a registered method with its options.

    Attributes:
        label: the row's name in tables (unique).
        method: the ``mrimsm recon`` method name.
        options: its options (``steps``, ``w``, ``samples``, ``checkpoint``, ...).
        group: ``"main"`` or an ablation's name.
        accels: the accelerations it runs at (``None``: all).
    """

    label: str
    method: str
    options: dict = field(default_factory=dict)
    group: str = "main"
    accels: Optional[tuple] = None

    def runs_at(self, accel: float) -> bool:
        return self.accels is None or any(abs(accel - a) < 1e-9 for a in self.accels)


def build_methods(runs: Sequence[Run], common: Mapping[str, Any]) -> dict:
    """``label -> method``, each built once (checkpoints loaded, options checked)."""
    from mrimsm.recon import get_method

    return {r.label: get_method(r.method).build({**common, **r.options}) for r in runs}


@dataclass
class Record:
    """One reconstructed volume of one run at one acceleration.

    Attributes:
        accel, label, method, group: which run.
        volume: the volume's name; ``slices``: its slice indices.
        paper: per-slice metrics, ``{"psnr": (S,), "ssim": (S,), "nmse": (S,)}``.
        fastmri: per-volume metrics ``{"psnr", "ssim", "nmse"}``.
        seconds_per_slice: the method's wall time per slice (coil maps excluded).
        nfe_per_slice: network evaluations per slice (0 for classical methods).
        achieved_accel: of the volume's masks.
        info: what the method reported.
        result: the :class:`mrimsm.recon.MethodResult` (images, uncertainty) if kept.
    """

    accel: float
    label: str
    method: str
    group: str
    volume: str
    slices: list
    paper: dict
    fastmri: dict
    seconds_per_slice: float
    nfe_per_slice: float
    achieved_accel: float
    info: dict
    result: Any = None


def evaluate(
    volumes: Mapping[float, Sequence],
    runs: Sequence[Run],
    built: Mapping[str, Any],
    common: Mapping[str, Any],
    progress: Optional[Progress] = None,
    log: Callable[[str], None] = print,
    keep: Callable[[Run, int], bool] = lambda run, k: k == 0,
) -> list[Record]:
    """Run every applicable ``run`` on every volume of every acceleration.

    Args:
        volumes: ``accel -> [PreparedVolume]``.
        built: from :func:`build_methods`.
        keep: ``keep(run, volume position)``: keep the images (for figures).
    """
    from mrimsm.metrics import per_slice_metrics, volume_metrics
    from mrimsm.recon import run_method

    records = []
    for accel, vols in volumes.items():
        for run in runs:
            if not run.runs_at(accel):
                continue
            for k, vol in enumerate(vols):
                res = run_method(vol, run.method, {**common, **run.options}, progress, method=built[run.label])
                rec = Record(
                    accel=accel,
                    label=run.label,
                    method=run.method,
                    group=run.group,
                    volume=vol.path.name,
                    slices=list(vol.slices),
                    paper=per_slice_metrics(vol.reference, res.reconstruction),
                    fastmri=volume_metrics(vol.reference, res.reconstruction),
                    seconds_per_slice=res.seconds_per_slice,
                    nfe_per_slice=float(res.info.get("nfe_per_slice", 0)),
                    achieved_accel=vol.achieved_accel,
                    info={k2: v for k2, v in res.info.items() if isinstance(v, (int, float, str))},
                    result=res if keep(run, k) else None,
                )
                records.append(rec)
                log(
                    f"R={accel:g} {run.label:<16} {vol.path.name:<24} PSNR {rec.paper['psnr'].mean():6.2f} dB "
                    f"(paper) {rec.fastmri['psnr']:6.2f} dB (fastMRI), {rec.seconds_per_slice:.2f} s/slice"
                )
    return records


def read_references(files: Iterable[Path]) -> dict[str, np.ndarray]:
    """``file name -> (S, H, W)`` float32 ``reconstruction_rss`` of each fastMRI file."""
    import h5py

    out = {}
    for f in files:
        with h5py.File(f, "r") as h:
            out[Path(f).name] = np.asarray(h["reconstruction_rss"][()], dtype=np.float32)
    return out


def truth_metrics(records: Sequence[Record], clean: Mapping[str, np.ndarray]) -> dict:
    """``(accel, label) -> {psnr_clean_paper, ssim_clean_paper, psnr_clean_fastmri}``: both
    conventions against noise-free references (``clean``: file name -> ``(S, H, W)``, the
    RSS image of the same simulation without k-space noise), mean over slices / volumes.
    The records must keep their results.

    Why: a simulated file's own reference is, as in fastMRI, the RSS image of *noisy*
    fully sampled k-space. At noise 0.01 and 8 coils it is itself only about 27.5 dB
    (fastMRI convention) from the noise-free object, and its background is the RSS noise
    floor, a positive bias that no coil-combined reconstruction has; whole-image metrics
    against it reward reproducing that floor. A simulation knows the object, so the
    truth is measured too."""
    from mrimsm.metrics import per_slice_metrics, volume_metrics

    acc: dict = {}
    for rec in records:
        ref = clean[rec.volume][list(rec.slices)]
        x = np.asarray(rec.result.reconstruction, dtype=np.float32)
        paper = per_slice_metrics(ref, x)
        a = acc.setdefault((rec.accel, rec.label), {"psnr": [], "ssim": [], "fastmri": []})
        a["psnr"] += list(paper["psnr"])
        a["ssim"] += list(paper["ssim"])
        a["fastmri"].append(volume_metrics(ref, x)["psnr"])
    return {k: {"psnr_clean_paper": float(np.mean(a["psnr"])), "ssim_clean_paper": float(np.mean(a["ssim"])),
                "psnr_clean_fastmri": float(np.mean(a["fastmri"]))} for k, a in acc.items()}


def estimate_nfe(
    runs: Sequence[Run], slices_by_accel: Mapping[float, int], main_steps: int, main_w: int, main_samples: int = 1
) -> int:
    """Total network evaluations of MSM runs (``steps * w * samples`` per slice)."""
    total = 0
    for run in runs:
        if run.method != "msm":
            continue
        o = run.options
        per = int(o.get("steps") or main_steps) * int(o.get("w") or main_w) * int(o.get("samples") or main_samples)
        total += per * sum(n for a, n in slices_by_accel.items() if run.runs_at(a))
    return total


# -- summaries ---------------------------------------------------------------------------


METRICS = ("psnr", "ssim", "nmse")


def summarize(records: Sequence[Record], runs: Sequence[Run]) -> list[dict]:
    """One row per (acceleration, run): mean and std of the paper metrics over slices
    and of the fastMRI metrics over volumes, seconds and NFE per slice."""
    rows = []
    for accel in dict.fromkeys(r.accel for r in records):
        for run in runs:
            recs = [r for r in records if r.accel == accel and r.label == run.label]
            if not recs:
                continue
            n = np.array([len(r.slices) for r in recs], dtype=np.float64)
            row: dict[str, Any] = {
                "accel": accel,
                "label": run.label,
                "method": run.method,
                "group": run.group,
                "achieved_accel": float(np.average([r.achieved_accel for r in recs], weights=n)),
                "slices": int(n.sum()),
                "volumes": len(recs),
            }
            for m in METRICS:
                per_slice = np.concatenate([r.paper[m] for r in recs])
                per_vol = np.array([r.fastmri[m] for r in recs])
                row[f"{m}_paper_mean"] = float(per_slice.mean())
                row[f"{m}_paper_std"] = float(per_slice.std())
                row[f"{m}_fastmri_mean"] = float(per_vol.mean())
                row[f"{m}_fastmri_std"] = float(per_vol.std())
            row["seconds_per_slice"] = float(np.average([r.seconds_per_slice for r in recs], weights=n))
            row["nfe_per_slice"] = float(np.average([r.nfe_per_slice for r in recs], weights=n))
            for key in ("steps", "w", "samples", "iterations"):
                if key in recs[0].info:
                    row[key] = recs[0].info[key]
            rows.append(row)
    return rows


def find(rows: Sequence[dict], accel: float, label: str) -> Optional[dict]:
    return next((r for r in rows if r["accel"] == accel and r["label"] == label), None)


def pm(row: dict, key: str, digits: int) -> str:
    """``"30.71 ± 1.20"`` from ``key_mean`` / ``key_std``."""
    return f"{row[key + '_mean']:.{digits}f} ± {row[key + '_std']:.{digits}f}"


def metric_cells(row: dict) -> list[str]:
    """PSNR / SSIM / NMSE in the paper's then fastMRI's convention."""
    return [
        pm(row, "psnr_paper", 2), pm(row, "ssim_paper", 4), pm(row, "nmse_paper", 4),
        pm(row, "psnr_fastmri", 2), pm(row, "ssim_fastmri", 4), pm(row, "nmse_fastmri", 4),
    ]


METRIC_HEADER = [
    "PSNR dB (paper)", "SSIM (paper)", "NMSE (paper)", "PSNR dB (fastMRI)", "SSIM (fastMRI)", "NMSE (fastMRI)",
]


def cost_cells(row: dict) -> list[str]:
    nfe = row["nfe_per_slice"]
    return [f"{row['seconds_per_slice']:.2f}", f"{nfe:.0f}" if nfe else "-"]


def md_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in body]
    return "\n".join(lines)


def conventions_note(volume_kind: str) -> str:
    return (
        "Conventions: **paper** = every slice of the reference and of the reconstruction min-max "
        "normalized to [0, 1] separately, PSNR with peak 1, 2-D SSIM (7 x 7, data_range 1), "
        "NMSE = ||ref - x||^2 / ||ref||^2; mean ± std over slices. **fastMRI** = per volume on the "
        f"magnitude images, data_range = the reference volume's max; mean ± std over volumes ({volume_kind}). "
        "Seconds per slice: the method's wall time only (coil maps, shared by all methods, excluded); "
        "NFE: network evaluations per slice."
    )


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """Rows (dicts, keys in first-seen order) as CSV, written atomically."""
    from mrimsm.utils import atomic_path

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return Path(path)


def slice_rows(records: Sequence[Record]) -> list[dict]:
    """One CSV row per reconstructed slice (paper metrics) with its volume's fastMRI metrics."""
    rows = []
    for r in records:
        for j, s in enumerate(r.slices):
            rows.append({
                "accel": r.accel, "label": r.label, "method": r.method, "volume": r.volume, "slice": s,
                **{f"{m}_paper": float(r.paper[m][j]) for m in METRICS},
                **{f"{m}_fastmri_volume": float(r.fastmri[m]) for m in METRICS},
                "seconds_per_slice": r.seconds_per_slice, "nfe_per_slice": r.nfe_per_slice,
            })
    return rows


def write_text(path: Path, text: str) -> Path:
    from mrimsm.utils import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_results(out_dir: Path, stem: str, text: str, rows: Sequence[dict],
                  slices: Optional[Sequence[dict]] = None, extra: Sequence[Optional[Path]] = ()) -> list[Path]:
    """Write ``<stem>.md`` (``text``), ``<stem>.csv`` (``rows``) and, when given,
    ``<stem>_slices.csv``; say every file written (and ``extra`` ones, e.g. a figure)
    and print the table text."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_text(out_dir / f"{stem}.md", text), write_csv(out_dir / f"{stem}.csv", rows)]
    if slices is not None:
        written.append(write_csv(out_dir / f"{stem}_slices.csv", slices))
    for path in written + [p for p in extra if p]:
        print(f"wrote {path}")
    print(text)
    return written


def machine_line(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if device.startswith("cuda") and torch.cuda.is_available() else ""
    return (
        f"{platform.system()} {cpu}, {os.cpu_count()} CPU cores{gpu}; device {device}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s); load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end"
    )


def header_lines(title: str, argv: Sequence[str], device: str) -> list[str]:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    script = Path(argv[0]).resolve()
    shown = script.relative_to(REPO).as_posix() if script.is_relative_to(REPO) else argv[0]
    cmd = " ".join(["python", shown, *argv[1:]])
    return [f"# {title}", "", f"Generated {now} by `{cmd}`.", "", f"Machine: {machine_line(device)}.", ""]


def checkpoint_line(kind: str, path: Optional[Path]) -> str:
    """``"MSM model: PATH (step N, 64 x 64)"`` (the default one when ``path`` is None)."""
    try:
        if kind == "msm":
            from mrimsm.inference import load_msm
            from mrimsm.diffusion.posterior import default_checkpoint

            loaded = load_msm(path or default_checkpoint())
            shape = " x ".join(map(str, loaded.meta.get("image_shape", [])))
            return f"MSM model: `{loaded.path}` (training step {loaded.step}, {shape})"
        from mrimsm.baselines.ssdu import DEFAULT_CHECKPOINT
        from mrimsm.inference import load_ssdu

        loaded = load_ssdu(path or DEFAULT_CHECKPOINT)
        return f"SSDU model: `{loaded.path}` (training step {loaded.step})"
    except Exception as exc:  # informative only
        return f"{kind.upper()} model: {path or 'default'} ({type(exc).__name__}: {exc})"


# -- figures -------------------------------------------------------------------------------


def comparison_figure(
    path: Path,
    volumes: Mapping[float, Sequence],
    records: Sequence[Record],
    labels: Sequence[str],
    uncertainty_label: Optional[str] = None,
) -> Optional[Path]:
    """Per acceleration two rows for the first slice of the first volume: reference and
    each method's reconstruction (same grey scale), then |error| of each (scale: a
    quarter of the reference max) and the uncertainty map of ``uncertainty_label``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrimsm.utils import atomic_path

    accels = [a for a in volumes if any(r.accel == a and r.result is not None for r in records)]
    if not accels:
        return None
    ncol = len(labels) + 1
    fig, axes = plt.subplots(2 * len(accels), ncol, figsize=(2.2 * ncol, 4.6 * len(accels)), squeeze=False)
    for a_i, accel in enumerate(accels):
        vol = volumes[accel][0]
        ref = vol.reference[0]
        vmax = float(ref.max())
        top, bottom = axes[2 * a_i], axes[2 * a_i + 1]
        top[0].imshow(ref, cmap="gray", vmin=0, vmax=vmax)
        top[0].set_title(f"reference\nR = {accel:g} ({vol.achieved_accel:.1f})", fontsize=8)
        bottom[0].axis("off")
        unc = None
        for j, label in enumerate(labels, start=1):
            rec = next((r for r in records if r.accel == accel and r.label == label and r.result is not None
                        and r.volume == vol.path.name), None)
            for ax in (top[j], bottom[j]):
                ax.axis("off")
            if rec is None:
                continue
            img = rec.result.reconstruction[0]
            top[j].imshow(img, cmap="gray", vmin=0, vmax=vmax)
            top[j].set_title(f"{label}\n{rec.paper['psnr'][0]:.2f} dB", fontsize=8)
            bottom[j].imshow(np.abs(img - ref), cmap="magma", vmin=0, vmax=vmax / 4)
            bottom[j].set_title(f"|error| {label}", fontsize=8)
            if label == uncertainty_label and rec.result.uncertainty is not None:
                unc = rec.result.uncertainty[0]
        if unc is not None:
            bottom[0].imshow(unc, cmap="viridis")
            bottom[0].set_title(f"{uncertainty_label} std\n(uncertainty)", fontsize=8)
        for ax in top:
            ax.axis("off")
        bottom[0].axis("off")
    fig.suptitle(f"{volumes[accels[0]][0].path.name}, slice {volumes[accels[0]][0].slices[0]}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


# -- command-line plumbing -------------------------------------------------------------------


def add_common_arguments(ap) -> None:
    """Arguments both scripts take."""
    import torch

    ap.add_argument("--accels", type=float, nargs="+", default=[4.0, 6.0], help="accelerations (default 4 6)")
    ap.add_argument("--slices", type=int, default=3, help="evaluation slices (default 3: one per orientation)")
    ap.add_argument("--data", type=Path, default=None,
                    help="prepared directory (mrimsm prep-fastmri) whose val shards are used instead of the "
                    "simulated held-out slices")
    ap.add_argument("--checkpoint", type=Path, default=None, help="MSM checkpoint (default: the shipped model)")
    ap.add_argument("--settings", type=Path, default=None, help="posterior settings YAML (default: the prior's own, or PosteriorSettings' defaults)")
    ap.add_argument("--steps", type=int, default=None, help="MSM reverse steps (default: the settings')")
    ap.add_argument("--w", type=int, default=None, help="MSM masks per step (default: the settings')")
    ap.add_argument("--seed", type=int, default=0, help="base seed of masks and posterior sampling")
    ap.add_argument("--size", type=int, default=HELDOUT_SIZE, help="simulated slice size (the model's size)")
    ap.add_argument("--coils", type=int, default=HELDOUT_COILS, help="simulated coils")
    ap.add_argument("--noise", type=float, default=HELDOUT_NOISE, help="simulated k-space noise std")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory (default results/)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on CPU: fastest on a shared machine)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")


def setup_torch(args) -> None:
    import torch

    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)


def tqdm_progress(quiet: bool) -> Optional[Progress]:
    if quiet:
        return None

    def make(desc: str, total: int):
        from tqdm import tqdm

        return tqdm(desc=f"{desc:<12}", total=total, leave=False, file=sys.stderr)

    return make


def log_line(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def load_volumes(args, work_dir: Path, progress: Optional[Progress]) -> tuple[dict, str]:
    """``accel -> [PreparedVolume]`` for ``args.accels`` and a sentence describing the data."""
    if args.data is not None:
        vols = {float(a): prepared_volumes(args.data, float(a), args.seed, args.slices) for a in args.accels}
        n = sum(len(v.slices) for v in next(iter(vols.values())))
        text = (f"{n} validation slices of the prepared directory `{args.data}` (their own masks and ESPIRiT maps; "
                "R above the shards' acceleration keeps a seeded subset of the acquired columns).")
        return vols, text
    files = write_heldout_files(work_dir, args.slices, args.size, args.coils, args.noise, seed=0)
    vols = {float(a): simulated_volumes(files, float(a), args.seed, progress) for a in args.accels}
    sel = "; ".join(f"{o} {idx}" for o, idx in heldout_selection(args.slices))
    maps_s = np.mean([v.maps_seconds / len(v.slices) for vs in vols.values() for v in vs])
    text = (
        f"{args.slices} held-out MNI152 T1 slices ({sel}; never used for training), {args.size} x {args.size}, "
        f"{args.coils} simulated coils, k-space noise {args.noise:g}, readout oversampled by 2; one file (volume) "
        f"per orientation; retrospective RandomCartesian masks seeded per file and slice (seed {args.seed}), "
        f"ESPIRiT maps from the centre columns ({maps_s:.2f} s/slice); the same masks, maps and seeds for every method."
    )
    return vols, text


def parse_value(text: str):
    """A command-line setting value: ``"50"`` -> 50, ``"0.3"`` -> 0.3, else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def run_main(body: Callable[[], int]) -> None:
    """Run ``body`` and turn MrimsmError into ``error: ...`` and exit code 2."""
    from mrimsm.errors import MrimsmError

    try:
        code = body()
    except MrimsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
