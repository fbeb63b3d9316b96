"""Running one registered method over every slice of a prepared volume."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch

from mrimsm.errors import MrimsmError
from mrimsm.recon.methods import ReconMethod, SliceBatch, get_method
from mrimsm.recon.progress import Progress, StepBar, open_bar
from mrimsm.recon.volume import PreparedVolume

@dataclass
class MethodResult:
    """One method's reconstruction of one volume.

    Attributes:
        method: its name.
        reconstruction: ``(S, h, w)`` float32 magnitude on the reference's scale, zero
            outside the coil maps' support.
        uncertainty: ``(S, h, w)`` float32 or ``None``.
        metrics: :func:`mrimsm.metrics.all_metrics` against the reference, or ``None``.
        seconds_per_slice: the method's wall time per slice (coil maps excluded).
        info: what the method reported.
        error_bound: ``(S, h, w)`` float32 calibrated bound on ``|error|`` beside
            ``uncertainty`` (:mod:`mrimsm.recon.calibration`), or ``None``.
        bound_info: how the bound was calibrated (level, calibration file, R), or why
            none was written (``{"reason": ...}``).
    """

    method: str
    reconstruction: np.ndarray
    uncertainty: Optional[np.ndarray]
    metrics: Optional[dict]
    seconds_per_slice: float
    info: dict = field(default_factory=dict)
    error_bound: Optional[np.ndarray] = None
    bound_info: dict = field(default_factory=dict)


def fit_batch(method: ReconMethod, name: str, per_batch: int, kspace_shape: tuple, device: Any) -> int:
    """Slices per call that fit in memory: ``per_batch``, lowered when the method says how
    much one slice needs (``method.memory_per_slice((H, W), coils) -> bytes``, not ``None``)
    and that many would not fit in :data:`mrimsm.limits.MEMORY_SHARE` of what ``device`` has free
    (batching down changes the random streams, as any ``batch_slices`` does). MrimsmError,
    one line, if not even one slice fits."""
    from mrimsm import limits

    free = limits.available_bytes(device)
    if free is None:
        return per_batch
    h, w = int(kspace_shape[-2]), int(kspace_shape[-1])
    need = method.memory_per_slice((h, w), int(kspace_shape[1]))
    if need is None:
        return per_batch
    one = int(need)
    budget = limits.MEMORY_SHARE * free
    if one > budget:
        gib = 2.0**30
        raise MrimsmError(
            f"{name}: one {h} x {w} slice needs about {one / gib:.1f} GiB, more than {limits.MEMORY_SHARE:.0%} of the "
            f"{free / gib:.1f} GiB free on {torch.device(device).type}; lower --samples or use a device with more memory"
        )
    return max(1, min(per_batch, int(budget // max(one, 1))))


def run_method(
    volume: PreparedVolume,
    name: str,
    options: Optional[Mapping[str, Any]] = None,
    progress: Optional[Progress] = None,
    method: Optional[ReconMethod] = None,
) -> MethodResult:
    """Reconstruct every slice of ``volume`` with the registered method ``name``
    (``method``: an already built instance, else built from ``options``).

    Slices go to the method ``options["batch_slices"]`` at a time if given, else its own
    ``batch_slices``.
    Images (and uncertainty maps) are kept on the coil maps' support
    (:func:`mrimsm.physics.operators.coil_support`) and zero outside it: no coil measures
    anything there. Methods whose output lies in the range of ``A^H`` (zero-filled,
    CG-SENSE, MSM) are unchanged; an unrolled network (SSDU) is free there and put a flat
    bias of about 4 % of the maximum outside the head.
    """
    from mrimsm.data.fastmri_io import crop_to_reconstruction
    from mrimsm.metrics import all_metrics
    from mrimsm.physics.masks import column_mask_tensor, seed_for
    from mrimsm.physics.operators import coil_support

    spec = get_method(name)
    if method is None:
        method = spec.build(dict(options or {}))
    per_batch = int((options or {}).get("batch_slices") or method.batch_slices)
    capped = fit_batch(method, name, per_batch, volume.kspace.shape, (options or {}).get("device") or "cpu")
    scale = volume.scale if spec.needs_normalization else 1.0
    n = volume.kspace.shape[0]
    images, stds, info = [], [], {}
    elapsed = 0.0
    with open_bar(progress, name, n) as bar:
        for start in range(0, n, capped):
            sl = slice(start, min(n, start + capped))
            idx = volume.slices[sl]
            batch = SliceBatch(
                kspace=torch.from_numpy(volume.kspace[sl] / np.float32(scale)),
                mask=column_mask_tensor(volume.mask[sl]),
                maps=torch.from_numpy(volume.maps[sl]),
                slice_indices=list(idx),
                seeds=[seed_for(volume.path.name, int(i), volume.seed) for i in idx],
                scale=scale,
                on_step=StepBar(progress, f"{name} steps") if progress is not None else None,
                pixel_mm=volume.pixel_mm,
                noise_std=None if volume.noise_std is None else volume.noise_std / scale,
            )
            t0 = time.perf_counter()
            try:
                out = method.reconstruct(batch)
            finally:
                if batch.on_step is not None:
                    batch.on_step.close()
            elapsed += time.perf_counter() - t0
            got = tuple(out.images.shape)
            if got != tuple(batch.kspace.shape[:1] + batch.kspace.shape[2:]):
                raise RuntimeError(f"method {name!r} returned images of shape {got}")
            # the image on the coils' support: outside it no coil measures anything, so a
            # method's output there (a network's free bias, SSDU's) is no estimate of the object
            support = coil_support(batch.maps).to(out.images.device)
            images.append((out.images.detach() * support).cpu().abs().numpy() * scale)
            if not np.isfinite(images[-1]).all():
                kmax = float(np.abs(volume.kspace).max())
                raise MrimsmError(
                    f"method {name!r} returned NaN or Inf for {volume.path.name} (largest |k-space| value "
                    f"{kmax:.3g}: the input's scale may be out of float32's range)"
                )
            if out.uncertainty is not None:
                stds.append((out.uncertainty.detach() * support).cpu().numpy() * scale)
            info.update(out.info)
            if capped < per_batch:
                info["batch_slices_memory_capped"] = capped
            bar.update(sl.stop - sl.start)

    recon = np.ascontiguousarray(crop_to_reconstruction(np.concatenate(images), volume.recon_size), dtype=np.float32)
    unc = None
    if stds:
        unc = np.ascontiguousarray(crop_to_reconstruction(np.concatenate(stds), volume.recon_size), dtype=np.float32)
    metrics = all_metrics(volume.reference, recon) if volume.reference is not None else None
    return MethodResult(name, recon, unc, metrics, elapsed / max(n, 1), info)
