"""What a reconstruction leaves behind: output paths, fastMRI-layout files, per-slice
PNG figures, and the metrics table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from mrimsm.errors import MrimsmError
from mrimsm.recon.run import MethodResult
from mrimsm.recon.volume import PreparedVolume
from mrimsm.utils import check_output, same_file

def plan_outputs(
    input_path: Union[str, os.PathLike],
    output: Optional[Union[str, os.PathLike]],
    methods: Sequence[str],
) -> dict[str, Path]:
    """Where each method's output goes.

    One method: ``output`` is the file (or, if it is an existing directory,
    ``output/<stem>.<method>.h5``). Several methods: ``output`` is a directory
    (created if needed), each method writes ``<stem>.<method>.h5``. No ``output``:
    the current directory. MrimsmError if any path is the input file or cannot be
    written (:func:`~mrimsm.utils.check_output`; nothing is created).
    """
    src = Path(input_path)
    stem = src.name[: -len(".h5")] if src.name.endswith(".h5") else src.stem
    out = Path(output) if output is not None else Path.cwd()
    if len(methods) == 1 and output is not None and not out.is_dir():
        paths = {methods[0]: out}
    else:
        if out.exists() and not out.is_dir():
            raise MrimsmError(f"with several --method, -o must be a directory, got the file {out}")
        if len(methods) > 1 and output is not None and not out.exists() and out.suffix in (".h5", ".hdf5"):
            raise MrimsmError(f"with several --method, -o must be a directory, got {out}")
        paths = {m: out / f"{stem}.{m}.h5" for m in methods}
    for p in paths.values():
        if same_file(src, p):
            raise MrimsmError(f"output {p} is the input file; choose another -o")
        check_output(p, inputs=[src])
    return paths


def write_result(volume: PreparedVolume, result: MethodResult, path: Union[str, os.PathLike]) -> Path:
    """Write ``result`` in fastMRI's layout (atomically), metrics as attributes."""
    from mrimsm import __version__
    from mrimsm.data.fastmri_io import write_reconstruction

    path = Path(path)
    if same_file(volume.path, path):
        raise MrimsmError(f"output {path} is the input file; choose another -o")
    attrs: dict[str, Any] = {k: volume.attrs[k] for k in ("acquisition", "patient_id", "max", "norm") if k in volume.attrs}
    attrs.update(
        method=result.method,
        source_file=volume.path.name,
        mask_source=volume.mask_source,
        acceleration=volume.accel if volume.accel is not None else volume.achieved_accel,
        acceleration_achieved=volume.achieved_accel,
        seed=volume.seed,
        seconds_per_slice=result.seconds_per_slice,
        mrimsm_version=__version__,
    )
    for key, value in (result.metrics or {}).items():
        attrs[key] = value
    extra = {"mask": volume.mask.astype(np.uint8)}
    if result.uncertainty is not None:
        extra["uncertainty"] = result.uncertainty
    return write_reconstruction(path, result.reconstruction, attrs=attrs, extra=extra)


def save_pngs(volume: PreparedVolume, result: MethodResult, out_dir: Union[str, os.PathLike]) -> list[Path]:
    """One PNG per slice: reference, zero-filled, reconstruction, |error|, uncertainty
    (the panels that exist). Files ``<stem>.<method>.slice<NNN>.png``, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrimsm.utils import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = volume.path.name[: -len(".h5")] if volume.path.name.endswith(".h5") else volume.path.stem
    ref = volume.reference
    written = []
    for i, sl in enumerate(volume.slices):
        vmax = float(ref[i].max()) if ref is not None else float(result.reconstruction[i].max())
        panels = []
        if ref is not None:
            panels.append(("reference", ref[i], "gray", vmax))
        panels.append(("zero-filled", volume.zero_filled[i], "gray", vmax))
        panels.append((result.method, result.reconstruction[i], "gray", vmax))
        if ref is not None:
            panels.append(("|error|", np.abs(result.reconstruction[i] - ref[i]), "magma", vmax / 4))
        if result.uncertainty is not None:
            panels.append(("std", result.uncertainty[i], "viridis", None))
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
        for ax, (title, img, cmap, top) in zip(np.atleast_1d(axes), panels):
            ax.imshow(img, cmap=cmap, vmin=0, vmax=top)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{volume.path.name} slice {sl}", fontsize=9)
        fig.tight_layout()
        target = out_dir / f"{stem}.{result.method}.slice{int(sl):03d}.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(target)
    return written


def format_table(results: Sequence[MethodResult], volume: Optional[PreparedVolume] = None) -> str:
    """A plain-text metrics table, one row per method: PSNR / SSIM / NMSE in fastMRI's
    per-volume convention and in the paper's per-slice [0, 1] convention, and seconds per slice."""
    head = (
        f"{'method':<12} {'PSNR':>7} {'SSIM':>7} {'NMSE':>8}   {'PSNR':>7} {'SSIM':>7} {'NMSE':>8}   {'s/slice':>8}"
    )
    lines = []
    if volume is not None:
        how = f"R = {volume.accel:g}" if volume.accel is not None else "the file's own mask"
        lines.append(
            f"{volume.path.name}: {len(volume.slices)} slices, {how} (achieved {volume.achieved_accel:.2f}), "
            f"coil maps {volume.maps_seconds / max(len(volume.slices), 1):.2f} s/slice"
        )
    lines += [f"{'':<12} {'fastMRI (volume, max = ref max)':^25}   {'paper (per slice, [0, 1])':^25}", head]
    lines.append("-" * len(head))
    for r in results:
        m = r.metrics
        if m is None:
            vals = f"{'-':>7} {'-':>7} {'-':>8}   {'-':>7} {'-':>7} {'-':>8}"
        else:
            vals = (
                f"{m['psnr']:7.2f} {m['ssim']:7.4f} {m['nmse']:8.4f}   "
                f"{m['psnr_slice']:7.2f} {m['ssim_slice']:7.4f} {m['nmse_slice']:8.4f}"
            )
        lines.append(f"{r.method:<12} {vals}   {r.seconds_per_slice:8.3f}")
    for r in results:  # which model a learned method used (e.g. the shipped prior picked by size)
        if r.info.get("model"):
            lines.append(f"{r.method} model: {r.info['model']}")
    if results and all(r.metrics is None for r in results):
        lines.append("(no reconstruction_rss in the file: no metrics)")
    return "\n".join(lines)
