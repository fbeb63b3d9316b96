"""Aggregating records into rows, and the markdown / csv files of the benchmarks.

A row (:func:`summarize`) is one (acceleration, run): mean and std of the paper metrics
over slices and of the fastMRI metrics over volumes, seconds and network evaluations
(NFE) per slice. :func:`write_results` writes ``<stem>.md``, ``<stem>.csv`` and
``<stem>_slices.csv``.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from benchmarks import REPO
from benchmarks.runs import Record, Run

METRICS = ("psnr", "ssim", "nmse")

METRIC_HEADER = [
    "PSNR dB (paper)", "SSIM (paper)", "NMSE (paper)", "PSNR dB (fastMRI)", "SSIM (fastMRI)", "NMSE (fastMRI)",
]


# -- rows ----------------------------------------------------------------------------------


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


def find(rows: Sequence[dict], accel: float, label: str) -> Optional[dict]:
    """The row of ``label`` at ``accel``, or ``None``."""
    return next((r for r in rows if r["accel"] == accel and r["label"] == label), None)


# -- markdown ------------------------------------------------------------------------------


def pm(row: dict, key: str, digits: int) -> str:
    """``"30.71 ± 1.20"`` from ``key_mean`` / ``key_std``."""
    return f"{row[key + '_mean']:.{digits}f} ± {row[key + '_std']:.{digits}f}"


def metric_cells(row: dict) -> list[str]:
    """PSNR / SSIM / NMSE in the paper's then fastMRI's convention (:data:`METRIC_HEADER`)."""
    return [
        pm(row, "psnr_paper", 2), pm(row, "ssim_paper", 4), pm(row, "nmse_paper", 4),
        pm(row, "psnr_fastmri", 2), pm(row, "ssim_fastmri", 4), pm(row, "nmse_fastmri", 4),
    ]


def cost_cells(row: dict) -> list[str]:
    """Seconds and network evaluations per slice (``-`` for none)."""
    nfe = row["nfe_per_slice"]
    return [f"{row['seconds_per_slice']:.2f}", f"{nfe:.0f}" if nfe else "-"]


def md_table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    """A markdown table (cells as ``str`` of each value)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in body]
    return "\n".join(lines)


def conventions_note(volume_kind: str) -> str:
    """The paragraph that defines both metric conventions and the cost columns."""
    return (
        "Conventions: **paper** = every slice of the reference and of the reconstruction min-max "
        "normalized to [0, 1] separately, PSNR with peak 1, 2-D SSIM (7 x 7, data_range 1), "
        "NMSE = ||ref - x||^2 / ||ref||^2; mean ± std over slices. **fastMRI** = per volume on the "
        f"magnitude images, data_range = the reference volume's max; mean ± std over volumes ({volume_kind}). "
        "Seconds per slice: the method's wall time only (coil maps, shared by all methods, excluded); "
        "NFE: network evaluations per slice."
    )


def machine_line(device: str) -> str:
    """The machine, the device and torch's threads, and the load average now."""
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if device.startswith("cuda") and torch.cuda.is_available() else ""
    return (
        f"{platform.system()} {cpu}, {os.cpu_count()} CPU cores{gpu}; device {device}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s); load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end"
    )


def command_line(argv: Sequence[str]) -> str:
    """The command that ran: ``python -m benchmarks.NAME ARGS`` for a script of this
    package (``argv[0]`` is its file), else ``python PATH ARGS``."""
    script = Path(argv[0]).resolve()
    here = Path(__file__).resolve().parent
    if script.parent == here and script.suffix == ".py":
        return " ".join(["python", "-m", f"benchmarks.{script.stem}", *argv[1:]])
    shown = script.relative_to(REPO).as_posix() if script.is_relative_to(REPO) else argv[0]
    return " ".join(["python", shown, *argv[1:]])


def header_lines(title: str, argv: Sequence[str], device: str) -> list[str]:
    """A results file's title, date, command and machine (markdown lines)."""
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return [f"# {title}", "", f"Generated {now} by `{command_line(argv)}`.", "", f"Machine: {machine_line(device)}.", ""]


def checkpoint_line(kind: str, path: Optional[Path]) -> str:
    """``"MSM model: PATH (step N, 64 x 64)"`` (the default one when ``path`` is None)."""
    try:
        if kind == "msm":
            from mrimsm.diffusion.posterior import default_checkpoint
            from mrimsm.inference import load_msm

            loaded = load_msm(path or default_checkpoint())
            shape = " x ".join(map(str, loaded.meta.get("image_shape", [])))
            return f"MSM model: `{loaded.path}` (training step {loaded.step}, {shape})"
        from mrimsm.baselines.ssdu import DEFAULT_CHECKPOINT
        from mrimsm.inference import load_ssdu

        loaded = load_ssdu(path or DEFAULT_CHECKPOINT)
        return f"SSDU model: `{loaded.path}` (training step {loaded.step})"
    except Exception as exc:  # informative only
        return f"{kind.upper()} model: {path or 'default'} ({type(exc).__name__}: {exc})"


# -- files ---------------------------------------------------------------------------------


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """Rows (dicts, keys in first-seen order; floats as ``%.6g``) as CSV, written atomically."""
    from mrimsm.utils import atomic_path

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """``text`` into ``path``, written atomically."""
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
