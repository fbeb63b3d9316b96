"""Simulated training sets: fastMRI files of the MNI training slices, written to a
temporary directory and prepared (:func:`prepare_simulated_dataset`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from mrimsm.data.datasets import read_manifest
from mrimsm.data.prep.options import PrepOptions
from mrimsm.data.prep.pipeline import prepare_dataset
from mrimsm.errors import MrimsmError

__all__ = ["prepare_simulated_dataset"]


def prepare_simulated_dataset(
    out_dir: str | os.PathLike,
    size: int = 64,
    num_coils: int = 8,
    accel: float = 4.0,
    rho: float = 0.0,
    seed: int = 0,
    center_lines: Optional[int] = None,
    pixel: str = "fit",
    scales: Sequence[float] = (1.0,),
    raw_noise: float = 0.0,
    slices_per_file: int = 8,
    step: int = 2,
    val_fraction: float = 0.05,
    workers: int = 1,
    progress: Optional[Callable[[int], None]] = None,
    on_start: Optional[Callable[[int], None]] = None,
) -> Path:
    """Simulate fastMRI files of the MNI **training** slices and prep them.

    The raw files (readout oversampled by 2, noise ``raw_noise``, ``slices_per_file``
    consecutive training slices each, all three orientations) go to a temporary
    directory that is deleted afterwards; the prep pipeline then runs on them
    with no acquisition filter and no edge skip. Calling it again on a finished
    ``out_dir`` with the same arguments returns at once.

    Args:
        out_dir: where the shards and ``manifest.json`` go.
        size, num_coils: image side and coils.
        accel, rho, seed, center_lines: prep options (paper mask).
        pixel: ``fit`` (the 233 mm field of view resized to ``size``) or
            ``native`` (1 mm pixels, zero-padded to ``size``); see
            :func:`mrimsm.data.simulate.mni_slices`.
        scales: ``pixel="native"``: each training slice once per resampling factor
            (pixels of ``1 / scale`` mm; :func:`mrimsm.data.simulate.write_simulated_raw`).
        raw_noise: noise already in the simulated raw k-space (default 0: the
            measurement noise is exactly ``rho``).
        slices_per_file, step: volumes of consecutive training slices, every
            ``step``-th slice of :data:`~mrimsm.data.simulate.MNI_SPLIT`'s train ranges.

    Returns:
        ``out_dir``.
    """
    from mrimsm.data.simulate import ORIENTATIONS, mni_split_indices, write_simulated_raw

    out_dir = Path(out_dir)
    slices = {o: mni_split_indices(o, "train", step=step) for o in ORIENTATIONS}
    simulation = {
        "source": "MNI152 ICBM2009a T1 (nilearn), training slices (data_scripts/README.md)",
        "size": size, "num_coils": num_coils, "raw_noise": raw_noise, "slices_per_file": slices_per_file,
        "step": step, "seed": seed, "oversample_readout": True, "slices": slices,
    }
    if pixel != "fit":  # manifests of the older fit-only sets stay valid
        simulation["pixel"] = pixel
    if [float(x) for x in scales] != [1.0]:  # and so do those of the single-scale sets
        simulation["scales"] = [float(x) for x in scales]
    opts = PrepOptions(
        accel=accel, noise_rho=rho, size=size, acquisition=None, skip_last=0, val_fraction=val_fraction,
        seed=seed, center_lines=center_lines, workers=workers,
        overwrite=True,  # the cache directory is ours: a set of other settings there is replaced
    )
    opts.validate()
    if (out_dir / "manifest.json").is_file():
        try:
            old = read_manifest(out_dir)
            if old.get("complete") and old.get("params_hash") == opts.params_hash() and old.get("simulation") == simulation:
                return out_dir
        except MrimsmError:
            pass  # rebuilt below
    with tempfile.TemporaryDirectory(prefix="mrimsm-sim-raw-") as tmp:
        write_simulated_raw(tmp, "train", size, num_coils, raw_noise, slices_per_file, step, seed, pixel=pixel,
                            scales=scales, workers=workers)
        prepare_dataset(tmp, out_dir, opts, progress=progress, on_start=on_start,
                        extra_manifest={"simulation": simulation})
    return out_dir
