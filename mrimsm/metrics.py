"""Image-quality metrics on magnitude volumes, in two conventions.

**fastMRI's convention** (per volume, what ``fastmri.evaluate`` computes):

* ``psnr(gt, pred)``: one PSNR over the whole volume with
  ``data_range = gt.max()``;
* ``ssim(gt, pred)``: 2-D SSIM (scikit-image, 7 x 7 window) slice by slice
  with ``data_range = gt.max()`` of the *volume*, averaged over slices;
* ``nmse(gt, pred) = ||gt - pred||^2 / ||gt||^2`` over the volume.

**The MSM paper's convention** (:func:`per_slice_metrics`): every slice of the
reference and of the reconstruction is min-max normalized to ``[0, 1]``
separately, then PSNR with peak 1, SSIM with ``data_range = 1`` (proper 2-D
SSIM, 7 x 7 window) and NMSE are computed per slice; tables report the mean
over slices.

All functions take magnitude images ``(S, H, W)`` (or one slice ``(H, W)``),
real float32/float64 numpy arrays or torch tensors; complex input is turned
into its magnitude. Example::

    >>> m = volume_metrics(reference, reconstruction)       # fastMRI convention
    >>> m["psnr"], m["ssim"], m["nmse"]
    >>> s = per_slice_metrics(reference, reconstruction)    # paper convention
    >>> s["psnr"].mean()
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = [
    "psnr",
    "ssim",
    "nmse",
    "volume_metrics",
    "per_slice_metrics",
    "all_metrics",
    "minmax_normalize",
    "SSIM_WINDOW",
]

SSIM_WINDOW = 7


def _as_magnitude(x) -> np.ndarray:
    """numpy / torch, real or complex -> real numpy array (no copy when possible)."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if np.iscomplexobj(x):
        x = np.abs(x)
    return x


def _pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = _as_magnitude(gt), _as_magnitude(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: reference {gt.shape} vs prediction {pred.shape}")
    if gt.ndim not in (2, 3):
        raise ValueError(f"expected (S, H, W) or (H, W) magnitude images, got shape {gt.shape}")
    return gt, pred


def _volume(x: np.ndarray) -> np.ndarray:
    return x[None] if x.ndim == 2 else x


def psnr(gt, pred, data_range: Optional[float] = None) -> float:
    """PSNR in dB over the whole volume; ``data_range`` defaults to ``gt.max()``.

    Args:
        gt, pred: ``(S, H, W)`` or ``(H, W)`` magnitude images.
    """
    gt, pred = _pair(gt, pred)
    # gt.max() keeps gt's dtype, exactly as fastmri.evaluate passes it
    rng = gt.max() if data_range is None else data_range
    return float(peak_signal_noise_ratio(gt, pred, data_range=rng))


def ssim(gt, pred, data_range: Optional[float] = None) -> float:
    """Mean over slices of the 2-D SSIM (7 x 7 window), ``data_range`` = ``gt.max()``
    of the whole volume unless given.

    Args:
        gt, pred: ``(S, H, W)`` or ``(H, W)`` magnitude images, each side >= 7.
    """
    gt, pred = _pair(gt, pred)
    gt, pred = _volume(gt), _volume(pred)
    rng = gt.max() if data_range is None else data_range
    values = [
        structural_similarity(g, p, data_range=rng, win_size=SSIM_WINDOW) for g, p in zip(gt, pred)
    ]
    return float(np.mean(values))


def nmse(gt, pred) -> float:
    """``||gt - pred||^2 / ||gt||^2`` over the whole volume."""
    gt, pred = _pair(gt, pred)
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def volume_metrics(gt, pred) -> dict[str, float]:
    """fastMRI convention: ``{"psnr", "ssim", "nmse"}`` of one volume."""
    return {"psnr": psnr(gt, pred), "ssim": ssim(gt, pred), "nmse": nmse(gt, pred)}


def minmax_normalize(x) -> np.ndarray:
    """Min-max normalize each slice of ``(S, H, W)`` (or one ``(H, W)``) to ``[0, 1]``
    in float64. A constant slice becomes all zeros."""
    x = _as_magnitude(x).astype(np.float64)
    v = _volume(x)
    lo = v.min(axis=(-2, -1), keepdims=True)
    span = v.max(axis=(-2, -1), keepdims=True) - lo
    out = (v - lo) / np.where(span > 0, span, 1.0)
    return out if x.ndim == 3 else out[0]


def per_slice_metrics(gt, pred) -> dict[str, np.ndarray]:
    """The paper's convention: per-slice PSNR / SSIM / NMSE after normalizing each
    slice of ``gt`` and ``pred`` separately to ``[0, 1]``.

    Args:
        gt, pred: ``(S, H, W)`` or ``(H, W)`` magnitude images.

    Returns:
        ``{"psnr": (S,), "ssim": (S,), "nmse": (S,)}`` float64 arrays (take ``.mean()``
        for a table).
    """
    gt, pred = _pair(gt, pred)
    g, p = _volume(minmax_normalize(gt)), _volume(minmax_normalize(pred))
    out = {"psnr": [], "ssim": [], "nmse": []}
    for gs, ps in zip(g, p):
        out["psnr"].append(peak_signal_noise_ratio(gs, ps, data_range=1.0))
        out["ssim"].append(structural_similarity(gs, ps, data_range=1.0, win_size=SSIM_WINDOW))
        denom = np.linalg.norm(gs) ** 2
        out["nmse"].append(np.linalg.norm(gs - ps) ** 2 / denom if denom > 0 else np.inf)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def all_metrics(gt, pred) -> dict[str, float]:
    """Both conventions in one flat dict: ``psnr``, ``ssim``, ``nmse`` (fastMRI, per
    volume) and ``psnr_slice``, ``ssim_slice``, ``nmse_slice`` (paper, mean over slices)."""
    out = volume_metrics(gt, pred)
    for key, values in per_slice_metrics(gt, pred).items():
        out[f"{key}_slice"] = float(np.mean(values))
    return out
