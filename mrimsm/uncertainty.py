"""How well a posterior standard-deviation map predicts the reconstruction error, and a
split-conformal error bound built from it.

Calibration of a map ``std`` against the error ``e = |recon - truth|`` inside a support
(:func:`calibration_metrics`):

* Spearman and Pearson correlation of ``e`` with ``std`` over pixels;
* coverage of ``|e| <= z std`` for ``z = 1, 2, 3`` (a Gaussian posterior whose std is
  right covers 68.3 / 95.4 / 99.7 %);
* the mean interval width ``2 z std``, and ``mean(std) / mean(e)``.

Split-conformal bound (:func:`conformal_scale`): on calibration pixels, the scores
``s = e / (std + floor)``; the scale ``q`` is their ``ceil((n + 1) alpha) / n`` empirical
quantile, ``alpha`` the coverage. For test pixels exchangeable with the calibration
pixels, ``P(e <= q (std + floor)) >= alpha`` (Vovk et al.; Angelopoulos & Bates, *A gentle
introduction to conformal prediction*, 2021). Pixels of one slice are not independent, so
the guarantee holds for the pixel-marginal coverage over slices drawn like the calibration
slices, not for every slice. The floor added to the std (default: 1 % of each slice's mean
positive std, :func:`std_floor`) keeps pixels whose samples agree exactly from getting a
zero-width bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from mrimsm.errors import MrimsmError

__all__ = ["Calibration", "calibration_metrics", "conformal_scale", "conformal_table", "error_bound", "std_floor",
           "GAUSSIAN_COVERAGE", "LEVELS", "RELATIVE_FLOOR", "OBJECT_LEVEL", "object_support"]

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


#: "Inside the object": pixels of at least this fraction of the reference slice's maximum.
OBJECT_LEVEL = 0.1


def object_support(reference: np.ndarray) -> np.ndarray:
    """``(..., H, W)`` bool: the pixels of each reference slice that are at least
    :data:`OBJECT_LEVEL` of that slice's maximum (where calibration and its checks count)."""
    r = np.abs(np.asarray(reference, dtype=np.float64))
    peak = r.max(axis=(-2, -1), keepdims=True)
    return (r >= OBJECT_LEVEL * peak) & (peak > 0)


#: The std floor of a slice, as a fraction of its mean positive std (see :func:`std_floor`).
RELATIVE_FLOOR = 0.01

#: The coverage levels a stored calibration holds (0.50, 0.51, ..., 0.99).
LEVELS = tuple(round(0.5 + 0.01 * i, 2) for i in range(50))


def std_floor(std: np.ndarray) -> float:
    """The floor added to one slice's ``(H, W)`` std map: :data:`RELATIVE_FLOOR` times its
    mean over the pixels where it is positive (0 when none is). The same rule at calibration
    and at test time keeps their scores exchangeable; pixels whose samples agree exactly get
    a bound of ``scale * floor``, not zero."""
    s = np.asarray(std, dtype=np.float64)
    pos = s[s > 0]
    return float(RELATIVE_FLOOR * pos.mean()) if pos.size else 0.0


def _scores(errors: Sequence[np.ndarray], stds: Sequence[np.ndarray], supports: Optional[Sequence[np.ndarray]],
            eps: Optional[float]) -> np.ndarray:
    """Sorted scores ``e / (std + floor)`` of every calibration pixel (``floor``: ``eps``, or
    each slice's :func:`std_floor` when ``eps`` is ``None``)."""
    if len(errors) == 0 or len(errors) != len(stds):
        raise MrimsmError("need as many std maps as error maps, at least one")
    parts = []
    for i, (err, std) in enumerate(zip(errors, stds)):
        floor = std_floor(std) if eps is None else float(eps)
        e, s = _flat(err, std, None if supports is None else supports[i])
        if floor <= 0 and (s == 0).any():
            raise MrimsmError("a zero std needs a positive floor (eps > 0, or a slice with some spread)")
        with np.errstate(divide="ignore", invalid="ignore"):
            parts.append(e / (s + floor))
    return np.sort(np.concatenate(parts))


def _quantile(scores: np.ndarray, coverage: float) -> float:
    n = scores.size
    rank = math.ceil((n + 1) * float(coverage))
    return float(scores[min(rank, n) - 1]) if rank <= n else float("inf")


def conformal_scale(errors: Sequence[np.ndarray], stds: Sequence[np.ndarray], coverage: float = 0.9,
                    supports: Optional[Sequence[np.ndarray]] = None, eps: Optional[float] = None) -> dict:
    """The split-conformal scale of the bound ``q (std + floor)`` at ``coverage``.

    Args:
        errors, stds: per calibration slice, ``(H, W)`` arrays (see :func:`calibration_metrics`).
        coverage: the nominal coverage ``alpha`` in (0, 1).
        supports: per slice bool masks, or ``None``.
        eps: a fixed floor added to the std (``None``: each slice's :func:`std_floor`).

    Returns:
        ``{"scale": q, "floor": ..., "coverage": alpha, "pixels": n, "slices": k}``; ``floor``
        is ``eps``, or ``"slice"`` for the per-slice rule.
    """
    if not 0.0 < float(coverage) < 1.0:
        raise MrimsmError(f"coverage must be in (0, 1), got {coverage}")
    scores = _scores(errors, stds, supports, eps)
    return {"scale": _quantile(scores, coverage), "floor": "slice" if eps is None else float(eps),
            "coverage": float(coverage), "pixels": int(scores.size), "slices": len(errors)}


def conformal_table(errors: Sequence[np.ndarray], stds: Sequence[np.ndarray],
                    supports: Optional[Sequence[np.ndarray]] = None,
                    levels: Sequence[float] = LEVELS) -> dict[str, float]:
    """``{"0.90": q, ...}``: :func:`conformal_scale` at each of ``levels`` with the
    per-slice floor, from one sort of the scores."""
    scores = _scores(errors, stds, supports, None)
    return {f"{lv:.2f}": _quantile(scores, lv) for lv in levels}


def error_bound(std: np.ndarray, calibration: dict) -> np.ndarray:
    """``(H, W)`` or ``(S, H, W)`` float32: the pixel-wise error bound ``scale (std + floor)``
    of a :func:`conformal_scale` result (``floor``: its fixed value, or each slice's
    :func:`std_floor` for ``"slice"``)."""
    scale = calibration.get("scale")
    if not isinstance(scale, (int, float)) or not math.isfinite(float(scale)):
        raise MrimsmError("the calibration has no finite 'scale'")
    floor = calibration.get("floor", "slice")
    if floor != "slice" and (not isinstance(floor, (int, float)) or not math.isfinite(float(floor))):
        raise MrimsmError("the calibration's 'floor' must be 'slice' or a finite number")
    s = np.asarray(std, dtype=np.float64)
    flat = s.reshape((-1,) + s.shape[-2:])
    floors = [std_floor(x) if floor == "slice" else float(floor) for x in flat]
    out = np.stack([float(scale) * (x + f) for x, f in zip(flat, floors)])
    return out.reshape(s.shape).astype(np.float32)
