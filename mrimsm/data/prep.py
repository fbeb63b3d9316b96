"""The ``prep-fastmri`` pipeline: raw fastMRI multi-coil HDF5 -> undersampled,
optionally noisy training shards with ESPIRiT maps.

Per volume (one input file), for each selected slice:

1. image-domain centre crop to the reference size (removes the readout
   oversampling, as fastMRI does), then centre crop / zero-pad to ``size x size``,
   back to k-space ``z`` ``(C, size, size)``;
2. the slice's own seeded Cartesian mask ``M`` (``seed_for(file, slice, seed)``;
   default: the paper's family, ``round(20 * size / 256)`` centre columns plus
   every other column with probability ``1 / accel``);
3. one scale per volume, estimated from what the undersampled scan holds: the
   root-sum-of-squares image of the fully sampled centre (ACS) columns common
   to the volume's masks, ``scale = 1 / max_volume RSS_acs``. Because
   ``sum_c |C_c|^2 = 1``, RSS equals ``|x|`` of the coil-combined image, at low
   resolution; on MNI simulations its peak is 4-8 % above the true peak, so the
   normalized images have ``max |x|`` of about 0.93-0.96 (never the fully
   sampled data);
4. ``y = M (scale * z) + rho * M n`` with ``n`` complex Gaussian (std 1 per real
   component), seeded per slice. The noise the raw k-space already carries is
   estimated from its empty readout rows (:func:`mrimsm.data.noise.estimate_noise_std`),
   scaled like the data (``noise_measured``); the measurements' total noise is
   ``noise_total = sqrt(noise_measured^2 + rho^2)``, per real component;
5. ESPIRiT maps from ``y`` itself (the calibration block is the ACS columns:
   ``calib_width = min(24, ACS width)`` columns x ``calib_rows`` rows, kernel
   ``min(6, (calib_width + 1) // 2)``).

Output layout under ``OUT_DIR``::

    manifest.json                 every parameter, versions, inputs (size, sha256),
                                  counts, skipped files and why, the shard list
    train/<file stem>.h5          y (N, C, H, W) complex64, mask (N, W) bool,
                                  maps (N, C, H, W) complex64, scale (N,) float32,
                                  slice_index (N,) int32; attrs source_file,
                                  noise_measured, noise_total, ...
    val/<file stem>.h5            the same plus reference (N, H, W) complex64
                                  (scale * C^H F^H z: evaluation only)

Shards are written atomically; a re-run on the same ``OUT_DIR`` skips shards
that were finished with the same parameters from the same input bytes. A data set
in ``OUT_DIR`` prepared with other parameters (its manifest's ``params_hash``, or
shards of an unfinished run) is refused unless ``overwrite``; then its
``manifest.json`` is deleted before the first new shard is written and its shards of
other parameters with it, so ``OUT_DIR`` never holds a complete manifest beside shards
it does not describe. Whenever shards are to be written, an existing
``manifest.json`` goes first for the same reason; it is written last, atomically.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import h5py
import numpy as np
import torch

from mrimsm.data.noise import estimate_noise_std
from mrimsm.data.normalization import common_acs, volume_peak
from mrimsm.data.coil_compression import coils_note, compress_coils
from mrimsm.data.espirit import estimate_maps
from mrimsm.data.datasets import read_manifest
from mrimsm.data.fastmri_io import FileLockedError, crop_to_reconstruction, open_hdf5, read_header, read_multicoil
from mrimsm.errors import Interrupted, MrimsmError
from mrimsm.limits import check_memory, check_seed, parse_accel
from mrimsm.interrupt import check_interrupt, raising_interrupts
from mrimsm.physics.fft import fft2c, ifft2c
from mrimsm.physics.masks import MaskFamily, PaperCartesian, achieved_acceleration, cartesian_family, seed_for
from mrimsm.utils import atomic_path, check_output, file_sha256, is_hdf5_name, same_file
from mrimsm.workers import process_map

__all__ = [
    "PrepOptions",
    "prepare_dataset",
    "prepare_volume",
    "prepare_simulated_dataset",
    "mask_family",
    "FORMAT",
]

FORMAT = "mrimsm-prep/1"
NORMALIZATION = (
    "one scale per volume: scale = 1 / max over the volume's slices of the root-sum-of-squares image "
    "of the ACS (fully sampled centre) columns common to the volume's masks; y = mask * (scale * z) + "
    "rho * mask * n. reconstructions map back to the input scale by dividing by `scale`."
)


@dataclass
class PrepOptions:
    """Every parameter of a prep run (all recorded in the manifest).

    Attributes:
        accel: requested acceleration R (>= 1).
        noise_rho: std per real component of the noise added to measured entries
            (images normalized to max |x| about 1).
        size: output image side (multiple of 16).
        acquisition: keep files whose ``acquisition`` attribute equals this
            (``None``: all files).
        slices_per_volume: keep this many central slices of each volume (after
            the edge skip); ``None``: all.
        slice_list: CSV of ``file,slice`` rows; only those slices (no edge skip).
        skip_first, skip_last: edge slices dropped from each volume (the paper
            drops the last 5).
        val_fraction: fraction of volumes held out as the validation split.
        seed: base seed of masks, noise and the split.
        mask_kind: ``paper`` (default), ``random`` (fastMRI) or ``equispaced``.
        center_lines: ``paper`` centre columns (default ``round(20 * size / 256)``).
        center_fraction: ``random`` / ``equispaced`` centre fraction (default:
            fastMRI's pairing with R).
        calib_width: ESPIRiT calibration columns (default ``min(24, ACS width)``).
        calib_rows: ESPIRiT calibration rows (readout; fully sampled).
        kernel_width: ESPIRiT kernel (reduced to ``(calib_width + 1) // 2`` when
            the ACS is narrow).
        thresh, crop: ESPIRiT singular-value threshold and eigenvalue crop.
        espirit_backend, device: see :func:`estimate_maps`.
        espirit_coarse: eigen-solve grid step of the torch backend; 0 = auto
            (``max(1, size // 64)``: exact at 64; at 256 a 64 x 64 grid of
            eigenproblems, then interpolation and two power iterations at full
            resolution, 3x faster, maps within about 1e-4 (relative) of exact).
        keep_reference: store ``reference`` in validation shards.
        workers: processes (results do not depend on it).
        strict: a corrupt input file is fatal instead of skipped.
        overwrite: replace a data set in ``OUT_DIR`` that was prepared with other
            parameters (module doc); without it that is refused.
        coils: compress each volume's k-space to this many virtual coils (per slice, PCA
            over the coils of the centre columns its mask acquires,
            :func:`mrimsm.data.coil_compression.compress_coils`) before the scale, the
            noise and ESPIRiT; ``None``: no compression (and no ``coils`` key in
            :meth:`params`, so earlier data sets keep their ``params_hash``).
    """

    accel: float = 4.0
    noise_rho: float = 0.0
    size: int = 256
    acquisition: Optional[str] = "AXT2"
    slices_per_volume: Optional[int] = None
    slice_list: Optional[str] = None
    skip_first: int = 0
    skip_last: int = 5
    val_fraction: float = 0.05
    seed: int = 0
    mask_kind: str = "paper"
    center_lines: Optional[int] = None
    center_fraction: Optional[float] = None
    calib_width: Optional[int] = None
    calib_rows: int = 24
    kernel_width: int = 6
    thresh: float = 0.02
    crop: float = 0.95
    espirit_backend: str = "torch"
    espirit_coarse: int = 0
    device: str = "cpu"
    keep_reference: bool = True
    workers: int = 1
    strict: bool = False
    overwrite: bool = False
    coils: Optional[int] = None

    #: options that do not change the output (left out of the parameter hash)
    _RUNTIME = ("workers", "strict", "device", "overwrite")

    def validate(self) -> None:
        from mrimsm.data.coil_compression import check_coils

        parse_accel(self.accel)
        check_coils(self.coils)
        check_seed(self.seed)
        if self.size <= 0 or self.size % 16:
            raise MrimsmError(f"--size must be a positive multiple of 16, got {self.size}")
        if not np.isfinite(self.noise_rho) or self.noise_rho < 0:
            raise MrimsmError(f"--noise-rho must be >= 0, got {self.noise_rho:g}")
        if not 0 <= self.val_fraction < 1:
            raise MrimsmError(f"--val-fraction must be in [0, 1), got {self.val_fraction:g}")
        if self.workers < 1:
            raise MrimsmError(f"--workers must be >= 1, got {self.workers}")
        if self.slices_per_volume is not None and self.slices_per_volume < 1:
            raise MrimsmError(f"--slices-per-volume must be >= 1, got {self.slices_per_volume}")
        if self.slices_per_volume is not None and self.slice_list is not None:
            raise MrimsmError("give either --slices-per-volume or --slice-list, not both")
        if self.skip_first < 0 or self.skip_last < 0:
            raise MrimsmError("edge-slice skips must be >= 0")
        if self.mask_kind not in ("paper", "random", "equispaced"):
            raise MrimsmError(f"unknown mask kind {self.mask_kind!r}; use paper, random or equispaced")
        if self.kernel_width < 2 or self.calib_rows < self.kernel_width:
            raise MrimsmError(f"--kernel-width must be >= 2 and <= --calib-rows, got {self.kernel_width}")
        if self.calib_width is not None and self.calib_width < 3:
            raise MrimsmError(f"--calib-width must be >= 3, got {self.calib_width}")
        if not 0 < self.thresh < 1 or not 0 <= self.crop < 1:
            raise MrimsmError("--thresh must be in (0, 1) and --crop in [0, 1)")
        c = self.espirit_coarse
        if c < 0 or (c > 1 and (self.size % c or self.size // c < 2 * self.kernel_width - 1)):
            raise MrimsmError(
                f"--espirit-coarse must be 0 (auto) or divide --size leaving a grid of at least "
                f"{2 * self.kernel_width - 1} pixels, got {c}"
            )
        if self.espirit_backend not in ("torch", "sigpy"):
            raise MrimsmError(f"unknown ESPIRiT backend {self.espirit_backend!r}; use torch or sigpy")
        try:
            mask_family(self)((self.size, self.size), seed=0)
        except ValueError as exc:
            raise MrimsmError(str(exc)) from None

    def params(self) -> dict:
        """The parameters that determine the output (JSON-friendly)."""
        d = dataclasses.asdict(self)
        d["center_lines"] = self.resolved_center_lines()
        if self.coils is None:
            del d["coils"]  # runs without --coils hash as before it existed
        return {k: v for k, v in d.items() if k not in self._RUNTIME}

    def params_hash(self) -> str:
        text = json.dumps(self.params(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def resolved_center_lines(self) -> Optional[int]:
        if self.mask_kind != "paper":
            return None
        return int(self.center_lines) if self.center_lines is not None else max(1, round(20 * self.size / 256))


def mask_family(opts: PrepOptions) -> MaskFamily:
    """The acquisition mask family of a prep run."""
    if opts.mask_kind == "paper":
        return PaperCartesian(opts.accel, center_lines=opts.resolved_center_lines())
    kw = {} if opts.center_fraction is None else {"center_fraction": opts.center_fraction}
    return cartesian_family(opts.mask_kind, opts.accel, **kw)


def _mask_spec(opts: PrepOptions) -> dict:
    spec = {"kind": opts.mask_kind, "accel": float(opts.accel)}
    fam = mask_family(opts)
    if opts.mask_kind == "paper":
        spec["center_lines"] = fam.center_lines
    else:
        spec["center_fraction"] = fam.center_fraction
    return spec


# -- per-volume core ---------------------------------------------------------------


def _crop_or_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop or zero-pad the last two dims to ``size x size``."""
    out = images
    for dim in (-2, -1):
        n = out.shape[dim]
        if n > size:
            out = out.narrow(dim, (n - size) // 2, size)
        elif n < size:
            before = (size - n) // 2
            pad = [0, 0, 0, 0]
            pad[2 * (-1 - dim)], pad[2 * (-1 - dim) + 1] = before, size - n - before
            out = torch.nn.functional.pad(out, pad)
    return out


def to_target_kspace(kspace: np.ndarray, recon_size: Sequence[int], size: int) -> np.ndarray:
    """``(S, C, H, W)`` raw k-space -> ``(S, C, size, size)`` complex64: centre crop to
    the reference size (removing readout oversampling), crop / pad to ``size``, FFT."""
    h = min(int(recon_size[0]), kspace.shape[-2])
    w = min(int(recon_size[1]), kspace.shape[-1])
    img = crop_to_reconstruction(ifft2c(torch.from_numpy(np.ascontiguousarray(kspace, np.complex64))), (h, w))
    return fft2c(_crop_or_pad(img, size).contiguous()).numpy()


def _coil_combine(kspace: np.ndarray, maps: Optional[np.ndarray] = None) -> np.ndarray:
    """``(S, C, H, W)`` k-space -> ``(S, H, W)``: ``sum_c conj(C_c) F^H k_c`` with
    maps, else the root-sum-of-squares magnitude."""
    img = ifft2c(torch.from_numpy(kspace))
    if maps is None:
        return (img.abs() ** 2).sum(1).sqrt().numpy()
    return (torch.from_numpy(maps).conj() * img).sum(1).numpy()


_common_acs = common_acs


def _centred_width(run: tuple[int, int], w: int) -> int:
    """The widest block placed as ESPIRiT places it (``w // 2 - width // 2``) that
    stays inside ``run``."""
    left, right = w // 2 - run[0], run[1] - w // 2
    width = run[1] - run[0]
    while width > 1 and (width // 2 > left or width - width // 2 > right):
        width -= 1
    return width


def espirit_settings(masks: np.ndarray, opts: PrepOptions) -> dict:
    """The ESPIRiT calibration of a volume with masks ``(S, n)`` bool (step 5 of the module
    doc): ``{"calib_width", "calib_rows", "kernel_width", "coarse"}``, the manifest's
    ``espirit`` entry (recomputed from a finished shard's masks when it is resumed)."""
    n = masks.shape[-1]
    run = _common_acs(masks)
    cw = min(opts.calib_width or 24, _centred_width(run, n))
    rows = max(opts.calib_rows, cw)
    kw = min(opts.kernel_width, max(2, (cw + 1) // 2))
    coarse = opts.espirit_coarse or max(1, n // 64)
    if opts.espirit_backend == "sigpy":
        rows, coarse = cw, 1  # sigpy: square block, every pixel
    return {"calib_width": int(cw), "calib_rows": int(rows), "kernel_width": int(kw), "coarse": int(coarse)}


def prepare_volume(
    kspace: np.ndarray,
    recon_size: Sequence[int],
    slice_indices: Sequence[int],
    name: str,
    opts: PrepOptions,
    reference: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> dict:
    """Prepare the selected slices of one volume (steps 1-5 of the module doc).

    Args:
        kspace: ``(S, C, H, W)`` complex64 fully sampled raw k-space of the slices.
        recon_size: ``(h, w)`` of the file's reference (readout crop).
        slice_indices: the slices' indices in the file (seeds masks and noise).
        name: the file name (seeds masks and noise).
        opts: the run's options.
        reference: also return ``reference`` ``(S, size, size)`` complex64.
        progress: called with 1 per slice once its maps are done.

    Returns:
        dict of arrays: ``y`` ``(S, C, n, n)`` complex64, ``mask`` ``(S, n)`` bool,
        ``maps`` ``(S, C, n, n)`` complex64, ``scale`` ``(S,)`` float32 (one value),
        ``slice_index`` ``(S,)`` int32, optionally ``reference``; floats
        ``noise_measured`` (the raw k-space's own noise std per real component, times
        ``scale``) and ``noise_total`` (with ``rho`` added in quadrature).
    """
    if recon_size[0] > kspace.shape[-2] or recon_size[1] > kspace.shape[-1]:
        raise MrimsmError(
            f"{name}: reference size {recon_size[0]}x{recon_size[1]} is larger than the k-space matrix "
            f"{kspace.shape[-2]}x{kspace.shape[-1]} (a malformed file)"
        )
    z = to_target_kspace(kspace, recon_size, opts.size)
    if not np.isfinite(z).all():
        raise MrimsmError(
            f"{name}: k-space values up to {float(np.abs(kspace).max()):.3g} overflow float32 arithmetic; "
            f"rescale the file"
        )
    n = opts.size
    family = mask_family(opts)
    masks = np.stack([family((n, n), seed=seed_for(name, int(s), opts.seed)) for s in slice_indices])
    run = _common_acs(masks)
    if run is None or run[1] - run[0] < 3:
        raise MrimsmError(f"the masks of {name} share fewer than 3 fully sampled centre columns; ESPIRiT needs more")
    # 2b. coil compression (--coils), calibrated on each slice's acquired centre columns
    z = compress_coils(z, masks, opts.coils)
    # 3. one scale per volume from the ACS block every mask holds
    peak = volume_peak(z, masks)  # shared with the recon pipeline (mrimsm.data.normalization)
    if not peak > 0:
        raise MrimsmError(f"{name} holds no signal in its centre columns")
    scale = 1.0 / peak
    # 4. measured entries, with noise rho
    y = (z * np.float32(scale)) * masks[:, None, None, :]
    if opts.noise_rho > 0:
        for i, s in enumerate(slice_indices):
            rng = np.random.default_rng((seed_for(name, int(s), opts.seed), 1))
            noise = rng.standard_normal((2,) + y.shape[1:], dtype=np.float32) * np.float32(opts.noise_rho)
            y[i] += (noise[0] + 1j * noise[1]) * masks[i][None, None, :]
    y = y.astype(np.complex64)
    measured = estimate_noise_std(kspace) * scale
    # 5. ESPIRiT from what the scan holds
    esp = espirit_settings(masks, opts)
    maps = estimate_maps(
        y, calib_width=esp["calib_width"], calib_rows=esp["calib_rows"], kernel_width=esp["kernel_width"],
        thresh=opts.thresh, crop=opts.crop, device=opts.device, backend=opts.espirit_backend,
        coarse=esp["coarse"], progress=progress,
    )
    out = {
        "y": y,
        "mask": masks,
        "maps": maps,
        "scale": np.full(len(slice_indices), scale, dtype=np.float32),
        "slice_index": np.asarray(slice_indices, dtype=np.int32),
        "espirit": esp,
        "noise_measured": float(measured),
        "noise_total": float(np.hypot(measured, opts.noise_rho)),
    }
    if reference:
        out["reference"] = _coil_combine(z * np.float32(scale), maps).astype(np.complex64)
    return out


# -- planning ----------------------------------------------------------------------


def _read_slice_list(path: str) -> dict[str, list[int]]:
    """CSV rows ``file,slice`` (a header row is allowed) -> {file name: [slices]}."""
    p = Path(path)
    if not p.is_file():
        raise MrimsmError(f"slice list not found: {p}")
    out: dict[str, list[int]] = {}
    with open(p, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row if c.strip()]
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise MrimsmError(f"{p}:{lineno}: expected 'file,slice', got {','.join(row)!r}")
            try:
                s = int(row[1])
            except ValueError:
                if lineno == 1:
                    continue  # header
                raise MrimsmError(f"{p}:{lineno}: slice {row[1]!r} is not an integer") from None
            out.setdefault(Path(row[0]).name, []).append(s)
    if not out:
        raise MrimsmError(f"slice list {p} has no rows")
    return {k: sorted(set(v)) for k, v in out.items()}


def _select_slices(num: int, opts: PrepOptions, listed: Optional[list[int]]) -> list[int]:
    if listed is not None:
        return [s for s in listed if 0 <= s < num]
    cand = list(range(opts.skip_first, num - opts.skip_last))
    k = opts.slices_per_volume
    if k is not None and len(cand) > k:
        start = (len(cand) - k) // 2
        cand = cand[start : start + k]
    return cand


def _split_volumes(names: list[str], val_fraction: float, seed: int) -> set[str]:
    """Names of the validation volumes: the ``round(f * n)`` (at least one when
    ``f > 0`` and ``n >= 2``) with the smallest seeded hash (stable per name)."""
    if val_fraction <= 0 or len(names) < 2:
        return set()
    n_val = min(len(names) - 1, max(1, int(round(val_fraction * len(names)))))
    ranked = sorted(names, key=lambda nm: hashlib.sha256(f"{seed}:split:{nm}".encode()).hexdigest())
    return set(ranked[:n_val])


def _check_shards_spare_inputs(out_dir: Path, inputs: list[Path]) -> None:
    """MrimsmError when a shard path ``OUT_DIR/{train,val}/<stem>.h5`` is one of the input
    files, by resolved path or by inode (links, bind mounts), before anything is written."""
    by_path = {p.resolve(): p for p in inputs}
    by_inode = {(st.st_dev, st.st_ino): p for p in inputs for st in [p.stat()]}
    for path in inputs:
        for sub in ("train", "val"):
            shard = out_dir / sub / f"{path.stem}.h5"
            hit = by_path.get(shard.resolve())
            if hit is None and shard.exists():
                st = shard.stat()
                hit = by_inode.get((st.st_dev, st.st_ino))
            if hit is not None:
                raise MrimsmError(f"the shard {shard} would replace the input {hit}; choose another OUT_DIR")


def _check_dirs(raw_dir: Path, out_dir: Path) -> list[Path]:
    if not raw_dir.exists():
        raise MrimsmError(f"RAW_DIR does not exist: {raw_dir}")
    if not raw_dir.is_dir():
        raise MrimsmError(f"RAW_DIR is not a directory: {raw_dir}")
    files = sorted(p for p in raw_dir.iterdir() if is_hdf5_name(p) and p.is_file())
    if not files:
        raise MrimsmError(f"RAW_DIR holds no .h5 files: {raw_dir}")
    if same_file(out_dir, raw_dir):
        raise MrimsmError("OUT_DIR must differ from RAW_DIR (inputs are never overwritten)")
    for split in ("train", "val"):  # the shards go to OUT_DIR/<split>/<file stem>.h5
        if same_file(out_dir / split, raw_dir):
            raise MrimsmError(f"RAW_DIR {raw_dir} is OUT_DIR/{split}, where the shards go: they would replace "
                              f"the raw files; choose another OUT_DIR")
    check_output(out_dir, kind="dir", flag="OUT_DIR")  # created only once there is work to do
    return files


def _remove_if_empty(root: Path) -> None:
    """Remove ``root`` and the directories below it if none of them holds a file."""
    if not root.is_dir() or any(p.is_file() or p.is_symlink() for p in root.rglob("*")):
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        d.rmdir()
    root.rmdir()


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("mrimsm", "numpy", "torch", "h5py", "sigpy", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


# -- per-file worker -----------------------------------------------------------------


def _shard_done(path: Path, params_hash: str, sha: str) -> bool:
    """Whether ``path`` is a finished shard of these parameters from these input bytes
    (a truncated or corrupt one is not: it is redone; a locked one stops the run)."""
    if not path.is_file():
        return False
    try:
        with open_hdf5(path, "r", what="shard") as f:
            return f.attrs.get("params_hash") == params_hash and f.attrs.get("source_sha256") == sha
    except FileLockedError:
        raise
    except (MrimsmError, OSError):
        return False


def _shard_hash(path: Path) -> Optional[str]:
    """The ``params_hash`` a prep shard records (``None``: no such attribute, or not a
    readable HDF5 file: then it is not known to be another run's)."""
    try:
        with open_hdf5(path, "r", what="shard") as f:
            value = f.attrs.get("params_hash")
    except FileLockedError:
        raise
    except (MrimsmError, OSError):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _write_shard(path: Path, result: dict, task: dict) -> None:
    n = result["y"].shape
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            chunks = (1,) + tuple(n[1:])
            f.create_dataset("y", data=result["y"], chunks=chunks, compression="lzf")
            f.create_dataset("maps", data=result["maps"], chunks=chunks, compression="lzf")
            f.create_dataset("mask", data=result["mask"])
            f.create_dataset("scale", data=result["scale"])
            f.create_dataset("slice_index", data=result["slice_index"])
            if "reference" in result:
                f.create_dataset("reference", data=result["reference"], chunks=(1,) + n[2:], compression="lzf")
            f.attrs["format"] = FORMAT
            f.attrs["split"] = task["split"]
            f.attrs["source_file"] = task["name"]
            f.attrs["source_sha256"] = task["sha256"]
            f.attrs["params_hash"] = task["params_hash"]
            f.attrs["noise_measured"] = result["noise_measured"]
            f.attrs["noise_total"] = result["noise_total"]


def _drop_zero_slices(kspace: np.ndarray, slices: Sequence[int], name: str) -> tuple[np.ndarray, list, list]:
    """``(k-space, slice indices, dropped indices)`` without the slices whose k-space is
    all zero (nothing to learn from; they would also make the volume's scale meaningless).
    MrimsmError when no slice is left."""
    has_signal = [bool(np.any(k)) for k in kspace]
    if not any(has_signal):
        raise MrimsmError(f"{name}: every selected slice holds only zeros")
    kept = [int(s) for s, ok in zip(slices, has_signal) if ok]
    zero = [int(s) for s, ok in zip(slices, has_signal) if not ok]
    return (kspace if not zero else kspace[np.asarray(has_signal)]), kept, zero


def _run_task(task: dict, progress: Optional[Callable[[int], None]] = None) -> dict:
    """Read one input volume, prepare it, write its shard. Returns a summary."""
    opts = PrepOptions(**task["options"])
    summary = {"name": task["name"], "shard": task["shard_rel"], "split": task["split"]}
    try:
        f = read_multicoil(task["path"], slices=task["slices"])
        kspace, slices, zero = _drop_zero_slices(f.kspace, task["slices"], task["name"])
        if zero and progress is not None:
            progress(len(zero))
        res = prepare_volume(
            kspace, f.recon_size, slices, task["name"], opts,
            reference=task["split"] == "val" and opts.keep_reference, progress=progress,
        )
        _write_shard(Path(task["out_dir"]) / task["shard_rel"], res, task)
    except FileLockedError as exc:
        summary["error"], summary["fatal"] = str(exc), True
        return summary
    except MrimsmError as exc:
        summary["error"] = str(exc)
        return summary
    summary.update(
        num_slices=len(slices),
        slices=list(slices),
        zero_slices=zero,
        scale=float(res["scale"][0]),
        achieved_acceleration=[float(achieved_acceleration(m)) for m in res["mask"]],
        espirit=res["espirit"],
        noise_measured=res["noise_measured"],
        noise_total=res["noise_total"],
    )
    return summary


# -- the pipeline --------------------------------------------------------------------


def prepare_dataset(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    opts: Optional[PrepOptions] = None,
    progress: Optional[Callable[[int], None]] = None,
    on_start: Optional[Callable[[int], None]] = None,
    on_warning: Optional[Callable[[str], None]] = None,
    extra_manifest: Optional[dict] = None,
) -> dict:
    """Run the prep pipeline (module doc) from ``raw_dir`` into ``out_dir``.

    Args:
        raw_dir: directory of fastMRI multi-coil ``.h5`` files (not recursive).
        out_dir: output directory (created; must differ from ``raw_dir``).
        opts: :class:`PrepOptions` (defaults: R = 4 paper mask, rho 0, 256 x 256, AXT2).
        progress: called with the number of slices finished (e.g. ``tqdm.update``).
        on_start: called once with the number of slices to process.
        on_warning: called with a one-line message per skipped file
            (default :func:`warnings.warn`).
        extra_manifest: merged into the manifest (e.g. simulation settings).

    Returns:
        The manifest (also written to ``out_dir / "manifest.json"``).

    Raises:
        MrimsmError: bad options or directories, no file matching the filter, no
        usable file, a corrupt file under ``strict``, a slice list naming no file.
    """
    opts = opts or PrepOptions()
    opts.validate()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    files = _check_dirs(raw_dir, out_dir)
    missing = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # what this run creates
    try:
        with raising_interrupts():
            return _prepare(raw_dir, out_dir, files, opts, progress, on_start, on_warning, extra_manifest)
    except BaseException:
        if missing:
            _remove_if_empty(missing[-1])  # a failed first run leaves no empty OUT_DIR behind
        raise


@dataclass
class _Inventory:
    """What the scan of the input files found (all of it goes into the manifest).

    Attributes:
        inputs: one entry per file found (name, size, status, ...).
        skipped: ``{"file", "reason"}`` per file that cannot be used.
        filtered: names of files of another acquisition.
        planned: ``(path, slices, entry)`` per file to prepare.
        matched: files of the asked-for acquisition (used or not).
        uncompressed: ``(name, coils)`` of planned files with no more coils than ``--coils``.
    """

    inputs: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    filtered: list = field(default_factory=list)
    planned: list = field(default_factory=list)
    matched: int = 0
    uncompressed: list = field(default_factory=list)


def _prepare(raw_dir: Path, out_dir: Path, files: list[Path], opts: PrepOptions, progress, on_start, on_warning,
             extra_manifest) -> dict:
    """:func:`prepare_dataset` after its checks (``out_dir`` is created here, when needed):
    scan the inputs, plan one task per file, run the tasks, write the manifest."""
    warn = on_warning or (lambda msg: warnings.warn(msg, stacklevel=3))
    listed = _read_slice_list(opts.slice_list) if opts.slice_list else None
    params_hash = opts.params_hash()
    inv = _scan_inputs(files, opts, listed, warn)
    _check_scan(inv, files, listed, raw_dir, opts, warn)
    stale = _check_existing(out_dir, opts, params_hash)  # before anything is written
    tasks, resumed = _plan_tasks(inv.planned, out_dir, opts, params_hash)
    if tasks or stale:
        _clear_old_output(out_dir, stale, [p for p, _, _ in inv.planned])
    results = _run_tasks(tasks, resumed, out_dir, opts, params_hash, progress, on_start)
    shards = _collect_shards(results, inv, raw_dir, opts, warn)
    manifest = _manifest(raw_dir, opts, params_hash, inv, shards, len(resumed))
    manifest.update(extra_manifest or {})
    with atomic_path(out_dir / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest


def _existing_shards(out_dir: Path) -> list[Path]:
    return sorted(p for sub in ("train", "val") if (out_dir / sub).is_dir()
                  for p in (out_dir / sub).glob("*.h5") if p.is_file() and not p.is_symlink())


def _changed_params(old: Any, new: dict) -> str:
    """``"accel 4.0 -> 8.0, ..."`` for the prep parameters that differ (``""``: unknown)."""
    if not isinstance(old, dict):
        return ""
    keys = [k for k in new if k in old and old[k] != new[k]] + [k for k in new if k not in old]
    return ", ".join(f"{k} {old.get(k)} -> {new[k]}" for k in keys[:6]) + (", ..." if len(keys) > 6 else "")


def _check_existing(out_dir: Path, opts: PrepOptions, params_hash: str) -> list[Path]:
    """What ``OUT_DIR`` already holds, read only. MrimsmError (one line) when it holds a
    data set of other parameters (a manifest with another ``params_hash``, an unreadable
    manifest, shards recording another ``params_hash``) and ``opts.overwrite`` is not
    set; with it, the shards of other parameters, which :func:`_clear_old_output`
    removes."""
    mpath = out_dir / "manifest.json"
    problem = ""
    if mpath.exists():
        try:
            old = read_manifest(out_dir, hint=None)
        except MrimsmError as exc:
            problem = f"{exc}, so {out_dir} is not a data set this run can resume"
        else:
            if old.get("params_hash") != params_hash:
                changed = _changed_params(old.get("params"), opts.params())
                problem = (f"{out_dir} holds a data set prepared with other parameters (params_hash "
                           f"{old.get('params_hash')}, this run {params_hash}{': ' + changed if changed else ''})")
    other = [p for p in _existing_shards(out_dir) if _shard_hash(p) not in (None, params_hash)]
    if other and not problem:
        problem = (f"{other[0]} was prepared with other parameters (params_hash {_shard_hash(other[0])}, "
                   f"this run {params_hash}; {len(other)} such shard(s) in {out_dir})")
    if problem and not opts.overwrite:
        raise MrimsmError(f"{problem}; pass --overwrite to replace it, or choose another OUT_DIR")
    return other


def _clear_old_output(out_dir: Path, stale: list[Path], inputs: list[Path]) -> None:
    """Before the first new shard: delete ``manifest.json`` (an interrupted run never
    leaves a complete manifest beside shards it does not describe), then the ``stale``
    shards of other parameters (``--overwrite``; never an input file)."""
    with contextlib.suppress(FileNotFoundError):
        (out_dir / "manifest.json").unlink()
    inodes = {(st.st_dev, st.st_ino) for p in inputs for st in [p.stat()]}
    for shard in stale:
        st = shard.stat()
        if (st.st_dev, st.st_ino) not in inodes:
            shard.unlink()


def _skip(inv: _Inventory, path: Path, reason: str, opts: PrepOptions, warn: Callable[[str], None],
          entry: Optional[dict] = None) -> None:
    """Record that ``path`` cannot be used (MrimsmError instead under ``--strict``)."""
    if opts.strict:
        raise MrimsmError(f"{reason} (--strict)")
    warn(f"skipping {path.name}: {reason}")
    inv.skipped.append({"file": path.name, "reason": reason})
    if entry is not None:
        entry["status"] = "skipped"


def _check_prep_memory(shape: Sequence[int], num_slices: int, path: Path, opts: PrepOptions) -> None:
    """MrimsmError (one line) when preparing ``num_slices`` slices of a file of k-space
    ``shape`` at ``--size`` would not fit in memory: the raw slices (complex64) and four
    ``(S, C, size, size)`` complex64 arrays alive together (target k-space, measurements,
    noise, coil maps), once per worker."""
    _, coils, h, w = (int(x) for x in shape)
    raw = float(num_slices) * coils * h * w * 8
    work = 4.0 * num_slices * coils * opts.size * opts.size * 8
    check_memory(int((raw + work) * opts.workers),
                 f"--size {opts.size}: preparing {path.name} ({num_slices} slice(s), {coils} coils)",
                 "lower --size or --workers")


def _scan_inputs(files: list[Path], opts: PrepOptions, listed: Optional[dict[str, list[int]]],
                 warn: Callable[[str], None]) -> _Inventory:
    """Read each file's header: which files (and slices) to prepare, which are filtered
    out by ``--acquisition`` or the slice list, which cannot be used and why."""
    inv = _Inventory()
    for path in files:
        entry = {"file": path.name, "size": path.stat().st_size}
        inv.inputs.append(entry)
        if listed is not None and path.name not in listed:
            entry["status"] = "not in slice list"
            continue
        try:
            head = read_header(path)
        except FileLockedError:
            raise  # not a bad file: skipping it would leave it out of the data set
        except MrimsmError as exc:
            _skip(inv, path, str(exc), opts, warn, entry)
            continue
        entry["acquisition"] = head["attrs"].get("acquisition")
        entry["num_slices"] = head["shape"][0]
        if opts.acquisition and entry["acquisition"] != opts.acquisition:
            entry["status"] = "filtered"
            inv.filtered.append(path.name)
            continue
        inv.matched += 1
        if head["has_mask"]:
            _skip(inv, path, f"{path} is already undersampled (has a 'mask'); prep needs fully sampled k-space",
                  opts, warn, entry)
            continue
        slices = _select_slices(head["shape"][0], opts, None if listed is None else listed[path.name])
        if not slices:
            _skip(inv, path, f"{path} has no slices left after the edge / list selection", opts, warn, entry)
            continue
        _check_prep_memory(head["shape"], len(slices), path, opts)
        if coils_note(opts.coils, head["shape"][1]) is not None:
            inv.uncompressed.append((path.name, int(head["shape"][1])))
        entry["sha256"] = file_sha256(path)
        entry["status"] = "used"
        inv.planned.append((path, slices, entry))
    if inv.uncompressed:
        first, num = inv.uncompressed[0]
        warn(coils_note(opts.coils, num, first) + (f" (nor for {len(inv.uncompressed) - 1} more file(s) with at most "
                                                   f"{opts.coils} coils)" if len(inv.uncompressed) > 1 else ""))
    return inv


def _check_scan(inv: _Inventory, files: list[Path], listed: Optional[dict[str, list[int]]], raw_dir: Path,
                opts: PrepOptions, warn: Callable[[str], None]) -> None:
    """MrimsmError when the scan leaves nothing to do (slice list naming no file, no file of
    the acquisition, no usable file); a warning for slice-list files that are missing."""
    if listed is not None:
        missing = sorted(set(listed) - {p.name for p in files})
        if len(missing) == len(listed):
            raise MrimsmError(f"no file of the slice list is in {raw_dir}")
        if missing:
            warn(f"the slice list names {len(missing)} file(s) not in {raw_dir}: {', '.join(missing[:5])}")
    if opts.acquisition and inv.matched == 0 and inv.filtered:
        found = sorted({str(e.get("acquisition")) for e in inv.inputs if "acquisition" in e})
        raise MrimsmError(
            f"no file in {raw_dir} matches --acquisition {opts.acquisition} (found: {', '.join(found) or 'none'})"
        )
    if not inv.planned:
        raise MrimsmError(f"no usable file in {raw_dir} ({len(inv.skipped)} skipped)")


def _plan_tasks(planned: list, out_dir: Path, opts: PrepOptions, params_hash: str) -> tuple[list[dict], list[dict]]:
    """One worker task per planned file, split into train / val; ``(to do, already done)``
    (a shard already written with the same parameters and source hash is not redone).
    Creates ``out_dir/train`` and ``out_dir/val`` and removes temporaries of a killed run."""
    val_names = _split_volumes([p.name for p, _, _ in planned], opts.val_fraction, opts.seed)
    _check_shards_spare_inputs(out_dir, [p for p, _, _ in planned])
    for sub in ("train", "val"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
        for stale in (out_dir / sub).glob(".*.tmp"):
            stale.unlink()  # left by a killed run

    tasks, resumed = [], []
    for path, slices, entry in planned:
        split = "val" if path.name in val_names else "train"
        entry["split"] = split
        task = {
            "path": str(path),
            "name": path.name,
            "slices": slices,
            "split": split,
            "sha256": entry["sha256"],
            "params_hash": params_hash,
            "out_dir": str(out_dir),
            "shard_rel": f"{split}/{path.stem}.h5",
            "options": dataclasses.asdict(opts),
        }
        (resumed if _shard_done(out_dir / task["shard_rel"], params_hash, entry["sha256"]) else tasks).append(task)
    return tasks, resumed


def _run_tasks(tasks: list[dict], resumed: list[dict], out_dir: Path, opts: PrepOptions, params_hash: str,
               progress, on_start) -> list[dict]:
    """Run ``tasks`` (:func:`_execute`) and read the summaries of the ``resumed`` shards.
    An interrupt becomes :class:`Interrupted` saying how many shards are on disk."""
    if on_start is not None:
        on_start(sum(len(t["slices"]) for t in tasks))
    results: list[dict] = []
    try:
        _execute(tasks, opts, progress, results)
    except KeyboardInterrupt:  # count the shards on disk: the signal may land after a write
        done = sum(_shard_done(out_dir / t["shard_rel"], params_hash, t["sha256"]) for t in tasks)
        rest = len(tasks) - done
        raise Interrupted(
            f"{done} of {len(tasks)} files prepared this run ({len(resumed)} were already done), {rest} not; "
            f"their shards in {out_dir} are complete; rerun the same command to finish (no manifest.json yet)"
        ) from None
    for task in resumed:
        results.append(_summary_from_shard(out_dir, task))
    return results


def _collect_shards(results: list[dict], inv: _Inventory, raw_dir: Path, opts: PrepOptions,
                    warn: Callable[[str], None]) -> list[dict]:
    """The manifest's shard entries, by file name; a file whose worker failed is skipped
    (MrimsmError under ``--strict``, or when no shard is left)."""
    shards = []
    by_name = {e["file"]: e for e in inv.inputs}
    for res in sorted(results, key=lambda r: r["name"]):
        if res.get("fatal"):
            raise MrimsmError(f"{res['error']}; the other files' shards are complete: rerun the same command then")
        if "error" in res:
            _skip(inv, Path(res["name"]), res["error"], opts, warn, by_name[res["name"]])
            continue
        if res.get("zero_slices"):
            warn(f"{res['name']}: skipped {len(res['zero_slices'])} all-zero slice(s): "
                 f"{', '.join(map(str, res['zero_slices']))}")
        shards.append({k: res[k] for k in ("shard", "split", "name", "num_slices", "slices", "scale",
                                           "achieved_acceleration", "espirit", "noise_measured",
                                           "noise_total") if k in res})
        if res.get("zero_slices"):
            shards[-1]["zero_slices"] = res["zero_slices"]
    if not shards:
        raise MrimsmError(f"no usable file in {raw_dir} ({len(inv.skipped)} skipped)")
    return shards


def _manifest(raw_dir: Path, opts: PrepOptions, params_hash: str, inv: _Inventory, shards: list[dict],
              num_resumed: int) -> dict:
    """The ``manifest.json`` of a finished run (format in the module doc)."""
    accels = [a for s in shards for a in s["achieved_acceleration"]]
    return {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "raw_dir": str(raw_dir.resolve()),
        "params": opts.params(),
        "params_hash": params_hash,
        "rho": float(opts.noise_rho),
        "noise": _noise_summary(shards),
        "size": int(opts.size),
        "mask": _mask_spec(opts),
        "normalization": NORMALIZATION,
        "versions": _versions(),
        "inputs": inv.inputs,
        "skipped": inv.skipped,
        "filtered": inv.filtered,
        "shards": shards,
        "counts": {
            "files_found": len(inv.inputs),
            "files_used": len(shards),
            "files_skipped": len(inv.skipped),
            "files_filtered": len(inv.filtered),
            "files_resumed": num_resumed,
            "zero_slices_skipped": sum(len(s.get("zero_slices", [])) for s in shards),
            "slices": {sp: sum(s["num_slices"] for s in shards if s["split"] == sp) for sp in ("train", "val")},
        },
        "achieved_acceleration": {
            "mean": float(np.mean(accels)),
            "min": float(np.min(accels)),
            "max": float(np.max(accels)),
            "overall": float(len(accels) * opts.size / sum(opts.size / a for a in accels)),
        },
        "complete": True,
    }


def _noise_summary(shards: list[dict]) -> dict:
    """The manifest's ``noise`` entry: the median over the shards that record it of
    ``noise_measured`` and ``noise_total`` (per real component, normalized units;
    ``None`` when no shard does), and how they were measured."""
    def median(key: str) -> Optional[float]:
        values = [float(s[key]) for s in shards if s.get(key) is not None]
        return float(np.median(values)) if values else None

    return {"measured": median("noise_measured"), "total": median("noise_total"),
            "estimator": "mrimsm.data.noise.estimate_noise_std (empty readout rows of the raw k-space)"}


def _summary_from_shard(out_dir: Path, task: dict) -> dict:
    with open_hdf5(out_dir / task["shard_rel"], "r", what="shard") as f:
        masks = f["mask"][()]
        noise = {k: float(f.attrs[k]) for k in ("noise_measured", "noise_total") if k in f.attrs}
        return {
            **noise,
            "name": task["name"],
            "shard": task["shard_rel"],
            "split": task["split"],
            "num_slices": int(masks.shape[0]),
            "slices": [int(s) for s in f["slice_index"][()]],
            "scale": float(f["scale"][0]),
            "achieved_acceleration": [float(achieved_acceleration(m)) for m in masks],
            "espirit": espirit_settings(masks, PrepOptions(**task["options"])),
            "resumed": True,
        }


def _execute(tasks: list[dict], opts: PrepOptions, progress: Optional[Callable[[int], None]],
             results: list[dict]) -> list[dict]:
    """Run ``tasks``, appending each summary to ``results`` as it finishes (so an interrupt
    can tell what finished). On KeyboardInterrupt the workers are stopped at once (their
    shards are written atomically, so no partial file is left) and it propagates."""
    if opts.workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            results.append(_run_task(t, progress))
            check_interrupt()
        return results

    def done(task: dict, res: dict) -> None:
        results.append(res)
        if progress is not None:
            progress(len(task["slices"]))

    process_map(_run_task, tasks, opts.workers, on_result=done)
    return results


# -- simulated data sets ---------------------------------------------------------------


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
    import tempfile

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
