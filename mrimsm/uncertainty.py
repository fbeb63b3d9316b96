"""How well a posterior standard-deviation map predicts the reconstruction error, and a
split-conformal error bound built from it.

Calibration of a map ``std`` against the error ``e = |recon - truth|`` inside a support
(:func:`calibration_metrics`):

* Spearman and Pearson correlation of ``e`` with ``std`` over pixels;
* coverage of ``|e| <= z std`` for ``z = 1, 2, 3`` (a Gaussian posterior whose std is
  right covers 68.3 / 95.4 / 99.7 %);
* the mean interval width ``2 z std``, and ``mean(std) / mean(e)``.

Split-conformal bound (:func:`conformal_scale`): on calibration pixels, the scores
``s = e / (std + eps)``; the scale ``q`` is their ``ceil((n + 1) alpha) / n`` empirical
quantile, ``alpha`` the coverage. For test pixels exchangeable with the calibration
pixels, ``P(e <= q (std + eps)) >= alpha`` (Vovk et al.; Angelopoulos & Bates, *A gentle
introduction to conformal prediction*, 2021). Pixels of one slice are not independent, so
the guarantee holds for the pixel-marginal coverage over slices drawn like the calibration
slices, not for every slice; ``eps`` (default: 1 % of the mean std) keeps pixels whose
samples agree exactly from getting a zero-width bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from mrimsm.errors import MrimsmError

__all__ = ["Calibration", "calibration_metrics", "conformal_scale", "error_bound", "GAUSSIAN_COVERAGE"]

#: Two-sided Gaussian coverage of mean +- z std.
GAUSSIAN_COVERAGE = {z: math.erf(z / math.sqrt(2.0)) for z in (1, 2, 3)}


def _flat(error: np.ndarray, std: np.ndarray, support: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    e = np.abs(np.asarray(error, dtype=np.float64))
    s = np.asarray(std, dtype=np.float64)
    if e.shape != s.shape:
        raise MrimsmError(f"error {e.shape} and std {s.shape} differ in shape")
    if support is not None:
        sup = np.broadcast_to(np.asarray(support, dtype=bool), e.shape)
        e, s = e[sup], s[sup]
    e, s = e.ravel(), s.ravel()
    if e.size == 0:
        raise MrimsmError("no pixel inside the support")
    if not (np.isfinite(e).all() and np.isfinite(s).all()) or (s < 0).any():
        raise MrimsmError("error and std must be finite, std >= 0")
    return e, s


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


@dataclass(frozen=True)
class Calibration:
    """The numbers of :func:`calibration_metrics` (fractions in [0, 1])."""

    spearman: float
    pearson: float
    coverage_1: float
    coverage_2: float
    coverage_3: float
    width_2: float
    std_over_error: float
    pixels: int

    def as_dict(self) -> dict:
        return asdict(self)


def calibration_metrics(error: np.ndarray, std: np.ndarray, support: Optional[np.ndarray] = None) -> Calibration:
    """How well ``std`` predicts ``|error|`` on the pixels of ``support``.

    Args:
        error: ``(..., H, W)`` reconstruction minus truth (complex or real; its magnitude counts).
        std: the same shape, float, >= 0.
        support: bool, broadcastable to ``error`` (``None``: every pixel).
    """
    e, s = _flat(error, std, support)
    pearson = float(np.corrcoef(e, s)[0, 1]) if np.ptp(e) > 0 and np.ptp(s) > 0 else 0.0
    cover = {z: float(np.mean(e <= z * s)) for z in (1, 2, 3)}
    mean_e = float(e.mean())
    return Calibration(
        spearman=_spearman(e, s),
        pearson=pearson,
        coverage_1=cover[1],
        coverage_2=cover[2],
        coverage_3=cover[3],
        width_2=float(4.0 * s.mean()),
        std_over_error=float(s.mean() / mean_e) if mean_e > 0 else float("inf"),
        pixels=int(e.size),
    )


def _eps(s: np.ndarray, eps: Optional[float]) -> float:
    return float(0.01 * s.mean()) if eps is None else float(eps)


def conformal_scale(errors: Sequence[np.ndarray], stds: Sequence[np.ndarray], coverage: float = 0.9,
                    supports: Optional[Sequence[np.ndarray]] = None, eps: Optional[float] = None) -> dict:
    """The split-conformal scale of the bound ``q (std + eps)`` at ``coverage``.

    Args:
        errors, stds: per calibration slice, ``(H, W)`` arrays (see :func:`calibration_metrics`).
        coverage: the nominal coverage ``alpha`` in (0, 1).
        supports: per slice bool masks, or ``None``.
        eps: added to the std (``None``: 1 % of the calibration pixels' mean std).

    Returns:
        ``{"scale": q, "eps": eps, "coverage": alpha, "pixels": n, "slices": k}``.
    """
    if not 0.0 < float(coverage) < 1.0:
        raise MrimsmError(f"coverage must be in (0, 1), got {coverage}")
    if len(errors) == 0 or len(errors) != len(stds):
        raise MrimsmError("need as many std maps as error maps, at least one")
    pairs = [_flat(e, s, None if supports is None else supports[i]) for i, (e, s) in enumerate(zip(errors, stds))]
    e = np.concatenate([p[0] for p in pairs])
    s = np.concatenate([p[1] for p in pairs])
    eps_value = _eps(s, eps)
    if eps_value <= 0 and (s == 0).any():
        raise MrimsmError("a zero std needs eps > 0")
    scores = np.sort(e / (s + eps_value))
    n = scores.size
    rank = math.ceil((n + 1) * float(coverage))
    q = float(scores[min(rank, n) - 1]) if rank <= n else float("inf")
    return {"scale": q, "eps": eps_value, "coverage": float(coverage), "pixels": int(n), "slices": len(pairs)}


def error_bound(std: np.ndarray, calibration: dict) -> np.ndarray:
    """``(..., H, W)`` float32: the pixel-wise error bound ``scale (std + eps)`` of a
    :func:`conformal_scale` result."""
    for key in ("scale", "eps"):
        if not isinstance(calibration.get(key), (int, float)) or not math.isfinite(float(calibration[key])):
            raise MrimsmError(f"the calibration has no finite {key!r}")
    return (float(calibration["scale"]) * (np.asarray(std, dtype=np.float64) + float(calibration["eps"]))).astype(
        np.float32)
