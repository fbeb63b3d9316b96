"""Running registered reconstruction methods over volumes into records.

A :class:`Run` is one row of a benchmark (a ``mrimsm recon`` method with its options);
:func:`evaluate` runs every run on every volume of every acceleration and returns one
:class:`Record` per reconstructed volume, with the metrics in both conventions
(:mod:`mrimsm.metrics`): the paper's (every slice min-max normalized to [0, 1] on its own)
and fastMRI's (per volume, ``data_range`` = the reference volume's max).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from benchmarks.data import Volumes
from benchmarks.progress import Progress


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
        """Whether this run has a row at acceleration ``accel``."""
        return self.accels is None or any(abs(accel - a) < 1e-9 for a in self.accels)


def build_methods(runs: Sequence[Run], common: Mapping[str, Any]) -> dict[str, Any]:
    """``label -> method``, each built once (checkpoints loaded, options checked)."""
    from mrimsm.recon import get_method

    return {r.label: get_method(r.method).build({**common, **r.options}) for r in runs}


@dataclass
class Record:
    """One reconstructed volume of one run at one acceleration.

    Attributes:
        accel, label, method, group: which run.
        volume: the volume's name; ``slices``: its slice indices.
        paper: per-slice metrics, ``{"psnr": (S,), "ssim": (S,), "nmse": (S,)}`` float arrays.
        fastmri: per-volume metrics ``{"psnr", "ssim", "nmse"}`` (floats).
        seconds_per_slice: the method's wall time per slice (coil maps excluded).
        nfe_per_slice: network evaluations per slice (0 for classical methods).
        achieved_accel: of the volume's masks.
        info: what the method reported (numbers and strings only).
        result: the :class:`mrimsm.recon.MethodResult` (images ``(S, H, W)``, uncertainty) if kept.
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


def _first_only(run: Run, k: int) -> bool:
    return k == 0


def evaluate(
    volumes: Volumes,
    runs: Sequence[Run],
    built: Mapping[str, Any],
    common: Mapping[str, Any],
    progress: Optional[Progress] = None,
    log: Callable[[str], None] = print,
    keep: Callable[[Run, int], bool] = _first_only,
) -> list[Record]:
    """Run every applicable ``run`` on every volume of every acceleration.

    Args:
        volumes: ``accel -> [PreparedVolume]``.
        built: from :func:`build_methods`.
        common: options every run gets (its own ``options`` win).
        log: called with one line per reconstructed volume.
        keep: ``keep(run, volume position)``: keep the images (for figures); default: the
            first volume's.
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


def truth_metrics(records: Sequence[Record], clean: Mapping[str, np.ndarray]) -> dict[tuple[float, str], dict]:
    """``(accel, label) -> {psnr_clean_paper, ssim_clean_paper, psnr_clean_fastmri}``: both
    conventions against noise-free references (``clean``: file name -> ``(S, H, W)`` float32,
    the RSS image of the same simulation without k-space noise), mean over slices / volumes.
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
