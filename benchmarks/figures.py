"""Matplotlib figures of the benchmarks (the Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from benchmarks.data import Volumes
from benchmarks.runs import Record

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: "Figure", path: Path, dpi: int) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    from mrimsm.utils import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
    return Path(path)


def comparison_figure(
    path: Path,
    volumes: Volumes,
    records: Sequence[Record],
    labels: Sequence[str],
    uncertainty_label: Optional[str] = None,
) -> Optional[Path]:
    """Per acceleration two rows for the first slice of the first volume: reference and
    each method's reconstruction (same grey scale), then |error| of each (scale: a
    quarter of the reference max) and the uncertainty map of ``uncertainty_label``.
    ``None`` (nothing written) when no record kept its images."""
    plt = pyplot()
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
    return save_figure(fig, path, dpi=110)
