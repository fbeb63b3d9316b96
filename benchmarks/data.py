"""Evaluation volumes of the benchmarks: the same masks, coil maps and seeds for every method.

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

A :class:`mrimsm.recon.PreparedVolume` holds one file's slices: ``kspace`` ``(S, C, H, W)``
complex64, ``mask`` ``(S, W)`` bool, ``maps`` ``(S, C, H, W)`` complex64, ``reference``
``(S, H, W)`` float32.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np

from benchmarks import REPO
from benchmarks.progress import Progress

if TYPE_CHECKING:
    from mrimsm.recon import PreparedVolume

#: The simulated held-out set: the shipped model's size, fastMRI-like coils and noise.
HELDOUT_SIZE = 64
HELDOUT_COILS = 16
HELDOUT_NOISE = 0.01

#: ``accel -> [PreparedVolume]``: the volumes of one benchmark, per acceleration.
Volumes = dict[float, list["PreparedVolume"]]


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


#: Validation slices per orientation: never trained on (odd offsets of the training ranges).
VALIDATION = {"axial": [41, 111], "coronal": [71, 161], "sagittal": [45, 121]}


def validation_selection(num_slices: int) -> list[tuple[str, list[int]]]:
    """``num_slices`` validation slices dealt round-robin over the orientations."""
    from mrimsm.data.simulate import mni_split_indices
    from mrimsm.errors import MrimsmError

    for o, idx in VALIDATION.items():  # guard: never a training or held-out slice
        trained = set(mni_split_indices(o, "train", step=2)) | set(mni_split_indices(o, "heldout", step=1))
        if trained & set(idx):
            raise MrimsmError(f"validation slices {sorted(trained & set(idx))} ({o}) are used elsewhere")
    most = sum(len(v) for v in VALIDATION.values())
    if not 1 <= num_slices <= most:
        raise MrimsmError(f"--slices must be in 1..{most}, got {num_slices}")
    order = [(o, i) for j in range(2) for o, idx in VALIDATION.items() for i in idx[j : j + 1]][:num_slices]
    return [(o, [i for oo, i in order if oo == o]) for o in VALIDATION if any(oo == o for oo, _ in order)]


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


def simulated_volumes(files: Sequence[Path], accel: float, seed: int,
                      progress: Optional[Progress] = None) -> list["PreparedVolume"]:
    """:func:`mrimsm.recon.prepare_volume` of each file at acceleration ``accel``."""
    from mrimsm.recon import prepare_volume

    return [prepare_volume(f, accel, seed, progress=progress) for f in files]


def _subsample(mask: np.ndarray, keep: float, seed: int) -> np.ndarray:
    """Keep the centre block of ``mask`` ``(W,)`` bool and each other acquired column with
    probability ``keep`` (seeded)."""
    from mrimsm.data.espirit import acs_width

    w = mask.shape[0]
    acs = acs_width(mask)
    centre = np.zeros(w, dtype=bool)
    lo = w // 2 - acs // 2
    centre[lo : lo + acs] = True
    draw = np.random.default_rng(seed).random(w) < keep
    return mask & (centre | draw)


def prepared_volumes(root: Path, accel: float, seed: int, num_slices: int) -> list["PreparedVolume"]:
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


def read_references(files: Iterable[Path]) -> dict[str, np.ndarray]:
    """``file name -> (S, H, W)`` float32 ``reconstruction_rss`` of each fastMRI file."""
    import h5py

    out = {}
    for f in files:
        with h5py.File(f, "r") as h:
            out[Path(f).name] = np.asarray(h["reconstruction_rss"][()], dtype=np.float32)
    return out


def load_volumes(args: argparse.Namespace, work_dir: Path, progress: Optional[Progress]) -> tuple[Volumes, str]:
    """``accel -> [PreparedVolume]`` for ``args.accels`` and a sentence describing the data:
    ``args.data``'s validation shards, else the simulated held-out slices written to
    ``work_dir`` (``args.slices``, ``args.size``, ``args.coils``, ``args.noise``)."""
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


def data_script(name: str) -> ModuleType:
    """``data_scripts/<name>.py`` loaded as a module (data_scripts/ is a folder of scripts,
    not a package), registered in ``sys.modules`` (its dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(f"data_scripts_{name}", REPO / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module
