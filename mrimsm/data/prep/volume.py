"""One raw fastMRI volume made into training measurements (steps 1-5 of
:mod:`mrimsm.data.prep`): crop, seeded masks, coil compression, scale, noise, ESPIRiT."""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mrimsm.data.coil_compression import compress_coils
from mrimsm.data.espirit import MIN_CALIB_COLUMNS, calibration_region, estimate_maps, shared_acs_width
from mrimsm.data.fastmri_io import crop_to_reconstruction
from mrimsm.data.noise import estimate_noise_std
from mrimsm.data.normalization import volume_peak
from mrimsm.data.prep.options import PrepOptions, mask_family
from mrimsm.errors import MrimsmError
from mrimsm.physics.fft import fft2c, ifft2c
from mrimsm.physics.masks import mask_on_encoded_columns, seed_for

__all__ = ["prepare_training_volume", "to_target_kspace", "target_encoded_columns", "espirit_settings"]


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


def target_encoded_columns(encoded: Optional[tuple], raw_width: int, size: int) -> Optional[tuple]:
    """The encoded columns ``(left, right)`` of a raw ``raw_width``-column scan, on the
    ``size``-column grid of :func:`to_target_kspace`; ``None`` when every column is.

    :func:`to_target_kspace` crops and pads in the image domain at the raw pixel size, so
    target column ``j`` sits at raw k-space position ``W // 2 + (j - size // 2) * W / size``;
    a target column counts as encoded when that position lies between the first and the last
    encoded raw column. Approximate at the edges: the image crop spreads a little of the
    encoded signal into the first target columns past them (the padded raw columns are
    exact zeros, their target columns are not quite)."""
    if encoded is None:
        return None
    ratio = size / float(raw_width)
    lo = size // 2 + math.ceil((int(encoded[0]) - raw_width // 2) * ratio - 1e-9)
    hi = size // 2 + math.floor((int(encoded[1]) - 1 - raw_width // 2) * ratio + 1e-9) + 1
    lo, hi = max(0, lo), min(size, hi)
    return None if (lo, hi) == (0, size) or lo >= hi else (int(lo), int(hi))


def _coil_combine(kspace: np.ndarray, maps: Optional[np.ndarray] = None) -> np.ndarray:
    """``(S, C, H, W)`` k-space -> ``(S, H, W)``: ``sum_c conj(C_c) F^H k_c`` with
    maps, else the root-sum-of-squares magnitude."""
    img = ifft2c(torch.from_numpy(kspace))
    if maps is None:
        return (img.abs() ** 2).sum(1).sqrt().numpy()
    return (torch.from_numpy(maps).conj() * img).sum(1).numpy()


def espirit_settings(masks: np.ndarray, opts: PrepOptions) -> dict:
    """The ESPIRiT calibration of a volume with masks ``(S, n)`` bool (step 5 of
    :mod:`mrimsm.data.prep`; :func:`mrimsm.data.espirit.calibration_region` with the run's
    ``--calib-width``, ``--calib-rows`` and ``--kernel-width``):
    ``{"calib_width", "calib_rows", "kernel_width", "coarse"}``, the manifest's
    ``espirit`` entry (recomputed from a finished shard's masks when it is resumed)."""
    n = masks.shape[-1]
    region = calibration_region(masks, max_width=opts.calib_width or None, rows=opts.calib_rows,
                                max_kernel=opts.kernel_width)
    rows, coarse = region.rows, opts.espirit_coarse or max(1, n // 64)
    if opts.espirit_backend == "sigpy":
        rows, coarse = region.width, 1  # sigpy: square block, every pixel
    return {"calib_width": region.width, "calib_rows": int(rows), "kernel_width": region.kernel_width,
            "coarse": int(coarse)}


def _check_reference_size(kspace: np.ndarray, recon_size: Sequence[int], name: str) -> None:
    """MrimsmError when the file's reference size exceeds its k-space matrix."""
    if recon_size[0] > kspace.shape[-2] or recon_size[1] > kspace.shape[-1]:
        raise MrimsmError(
            f"{name}: reference size {recon_size[0]}x{recon_size[1]} is larger than the k-space matrix "
            f"{kspace.shape[-2]}x{kspace.shape[-1]} (a malformed file)"
        )


def _check_finite(z: np.ndarray, kspace: np.ndarray, name: str) -> None:
    """MrimsmError when the target k-space ``z`` of raw ``kspace`` overflowed float32."""
    if not np.isfinite(z).all():
        raise MrimsmError(
            f"{name}: k-space values up to {float(np.abs(kspace).max()):.3g} overflow float32 arithmetic; "
            f"rescale the file"
        )


def _measure(z: np.ndarray, masks: np.ndarray, scale: float, slice_indices: Sequence[int], name: str,
             opts: PrepOptions) -> np.ndarray:
    """Step 4: ``y = M (scale * z) + rho * M n``, the noise ``n`` seeded per slice;
    ``(S, C, n, n)`` complex64."""
    y = (z * np.float32(scale)) * masks[:, None, None, :]
    if opts.noise_rho > 0:
        for i, s in enumerate(slice_indices):
            rng = np.random.default_rng((seed_for(name, int(s), opts.seed), 1))
            noise = rng.standard_normal((2,) + y.shape[1:], dtype=np.float32) * np.float32(opts.noise_rho)
            y[i] += (noise[0] + 1j * noise[1]) * masks[i][None, None, :]
    return y.astype(np.complex64)


def prepare_training_volume(
    kspace: np.ndarray,
    recon_size: Sequence[int],
    slice_indices: Sequence[int],
    name: str,
    opts: PrepOptions,
    reference: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    encoded: Optional[tuple] = None,
) -> dict:
    """Prepare the selected slices of one volume (steps 1-5 of :mod:`mrimsm.data.prep`).

    Args:
        kspace: ``(S, C, H, W)`` complex64 fully sampled raw k-space of the slices.
        recon_size: ``(h, w)`` of the file's reference (readout crop).
        slice_indices: the slices' indices in the file (seeds masks and noise).
        name: the file name (seeds masks and noise).
        opts: the run's options.
        reference: also return ``reference`` ``(S, size, size)`` complex64.
        progress: called with 1 per slice once its maps are done.
        encoded: ``(left, right)``, the raw k-space columns that were encoded (the others
            are zero padding, :func:`mrimsm.data.fastmri_io.encoded_region`), or ``None``.
            The masks never sample the padded columns of the target grid
            (:func:`target_encoded_columns`) and R counts the encoded ones only.

    Returns:
        dict of arrays: ``y`` ``(S, C, n, n)`` complex64, ``mask`` ``(S, n)`` bool,
        ``maps`` ``(S, C, n, n)`` complex64, ``scale`` ``(S,)`` float32 (one value),
        ``slice_index`` ``(S,)`` int32, optionally ``reference``; ``espirit`` (the
        :func:`espirit_settings`); ``encoded`` (the target grid's encoded columns, or
        ``None``); floats ``noise_measured`` (the raw k-space's own noise
        std per real component, times ``scale``) and ``noise_total`` (with ``rho`` added
        in quadrature).
    """
    _check_reference_size(kspace, recon_size, name)
    # 1. crop to the reference, crop / pad to size x size
    z = to_target_kspace(kspace, recon_size, opts.size)
    _check_finite(z, kspace, name)
    # 2. each slice's seeded mask
    n = opts.size
    family = mask_family(opts)
    columns = target_encoded_columns(encoded, kspace.shape[-1], n)
    try:
        masks = np.stack([mask_on_encoded_columns(family, (n, n), columns, seed=seed_for(name, int(s), opts.seed))
                          for s in slice_indices])
    except ValueError as exc:  # e.g. too few encoded columns for the centre block
        raise MrimsmError(f"{name}: {exc}") from None
    if shared_acs_width(masks) < MIN_CALIB_COLUMNS:
        raise MrimsmError(f"the masks of {name} share fewer than 3 fully sampled centre columns; ESPIRiT needs more")
    # 2b. coil compression (--coils), calibrated on each slice's acquired centre columns
    z = compress_coils(z, masks, opts.coils)
    # 3. one scale per volume from the ACS block every mask holds
    peak = volume_peak(z, masks)  # shared with the recon pipeline (mrimsm.data.normalization)
    if not peak > 0:
        raise MrimsmError(f"{name} holds no signal in its centre columns")
    scale = 1.0 / peak
    # 4. measured entries, with noise rho
    y = _measure(z, masks, scale, slice_indices, name, opts)
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
        "encoded": columns,
        "noise_measured": float(measured),
        "noise_total": float(np.hypot(measured, opts.noise_rho)),
    }
    if reference:
        out["reference"] = _coil_combine(z * np.float32(scale), maps).astype(np.complex64)
    return out
