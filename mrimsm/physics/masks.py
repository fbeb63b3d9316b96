"""Seeded sampling-mask families.

All families are small callables in the style of fastMRI's mask functions:
``family(shape, seed) -> np.ndarray`` (bool). The same ``(shape, seed)`` always
gives the same mask, on any machine. :func:`seed_for` derives a stable seed from
a file name and slice index, so a file's masks are reproducible.

1-D Cartesian families return a ``(W,)`` column mask (whole phase-encode
columns, the last image axis); use :func:`column_mask_tensor` to get the
``(1, 1, 1, W)`` float32 tensor the operators broadcast.

Families:
    * :class:`RandomCartesian` - fastMRI convention: ``round(W * center_fraction)``
      central columns plus exactly enough random others to reach ``W / R``.
    * :class:`EquispacedCartesian` - same center, other columns equispaced.
    * :class:`PaperCartesian` - the MSM paper's: ``center_lines`` central columns
      always, each other column independently with probability ``1 / R``
      (achieves about 3.2 at ``R = 4``, 256 columns).
    * :class:`BernoulliPixel` - keep each pixel with probability ``p``.
    * :class:`BoxPattern` - keep everything but a central box.
    * :class:`SuperResolutionPattern` - one pixel per ``f x f`` block.

Also here: :func:`ssdu_split` (SSDU's Theta / Lambda split) and
:class:`SubmaskSampler` (the MSM sampler's random masks, coverage and weights).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from mrimsm.errors import MrimsmError
from mrimsm.limits import is_acceleration

__all__ = [
    "MaskFamily",
    "RandomCartesian",
    "EquispacedCartesian",
    "PaperCartesian",
    "BernoulliPixel",
    "BoxPattern",
    "SuperResolutionPattern",
    "achieved_acceleration",
    "bootstrap_masks",
    "central_run",
    "cartesian_family",
    "column_mask_tensor",
    "seed_for",
    "hash_seed",
    "fastmri_center_fraction",
    "ssdu_split",
    "SubmaskSampler",
    "coverage_weights",
    "mask_on_encoded_columns",
    "encoded_acceleration",
    "EmpiricalMasks",
    "training_mask_family",
]


def hash_seed(text: str) -> int:
    """A stable 32-bit seed from ``text``: the first 4 bytes of its SHA-256, little-endian
    (the same on every machine and NumPy version). Text that is not valid UTF-8 (a POSIX
    file name's bytes, decoded by ``os.fsdecode`` with surrogate escapes) hashes its own
    bytes."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:4], "little")


def seed_for(name: str, slice_index: int = 0, base_seed: int = 0) -> int:
    """A stable 32-bit seed from a file name, a slice index and a base seed
    (:func:`hash_seed` of ``"base_seed:name:slice_index"``)."""
    return hash_seed(f"{base_seed}:{name}:{slice_index}")


def fastmri_center_fraction(accel: float, width: Optional[int] = None, min_columns: int = 0) -> float:
    """fastMRI's centre fraction for acceleration ``accel``: 0.08 at R <= 4, 0.04 at
    R >= 8, linear between; raised to ``min_columns / width`` when ``round(width * cf)``
    would keep fewer than ``min_columns`` centre columns of a ``width``-column mask."""
    a = float(accel)
    cf = 0.08 if a <= 4 else (0.04 if a >= 8 else 0.08 - 0.01 * (a - 4))
    if width is not None and round(width * cf) < min_columns:
        cf = min_columns / width
    return cf


def mask_on_encoded_columns(family: "MaskFamily", shape: Sequence[int], encoded: Optional[tuple],
                            seed: Optional[int] = None) -> np.ndarray:
    """``(W,)`` bool: a 1-D ``family``'s mask of an ``(H, W)`` scan whose columns outside
    ``encoded = (left, right)`` are zero padding (never sampled).

    The family draws its mask over the ``n = right - left`` encoded columns (so R and the
    centre fraction count those only) and that mask is placed with its centre column
    ``n // 2`` on the k-space centre ``W // 2``. When the padding is asymmetric, the part
    that would fall on padded columns wraps round to the encoded columns at the other end
    (a cyclic shift inside the encoded range: every drawn column lands on an encoded one,
    so R is exact; an equispaced pattern has one irregular gap there).
    ``encoded=None``: ``family(shape, seed)``.
    """
    if encoded is None:
        return family(shape, seed=seed)
    width = int(shape[-1])
    left, right = int(encoded[0]), int(encoded[1])
    if not 0 <= left < right <= width:
        raise ValueError(f"encoded columns {left}..{right - 1} are not inside the {width} columns")
    n = right - left
    sub = np.asarray(family((int(shape[0]), n), seed=seed), dtype=bool).reshape(-1)
    columns = left + (np.arange(n) + (width // 2 - n // 2) - left) % n
    mask = np.zeros(width, dtype=bool)
    mask[columns] = sub
    return mask


def encoded_acceleration(masks: np.ndarray, encoded: Optional[tuple] = None) -> list[float]:
    """Per-mask achieved R of ``(S, W)`` bool column ``masks``: the encoded columns
    (``encoded = (left, right)``, all when ``None``) over the columns kept."""
    m = np.asarray(masks, dtype=bool)
    if encoded is not None:
        m = m[..., int(encoded[0]) : int(encoded[1])]
    return [float(achieved_acceleration(one)) for one in m.reshape(-1, m.shape[-1])]


def achieved_acceleration(mask: np.ndarray | torch.Tensor) -> float:
    """Number of coordinates divided by the number kept (``inf`` for an empty mask)."""
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    kept = float((m != 0).sum())
    return float("inf") if kept == 0 else m.size / kept


def column_mask_tensor(mask: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(W,)`` or ``(B, W)`` column mask -> ``(B, 1, 1, W)`` float32 tensor."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32, device=device)
    if m.dim() == 1:
        m = m[None]
    return m[:, None, None, :]


class MaskFamily:
    """Base class. Subclasses implement ``__call__(shape, seed) -> bool ndarray``.

    ``shape`` is the image shape ``(H, W)``; 1-D families only use ``W``.
    """

    one_dimensional: bool = False

    def __call__(self, shape: Sequence[int], seed: Optional[int] = None) -> np.ndarray:
        raise NotImplementedError

    def probability(self, shape: Sequence[int]) -> np.ndarray:
        """Per-coordinate keep probability, same layout as a mask (estimated by
        Monte Carlo unless a subclass knows it exactly)."""
        draws = [self(shape, seed) for seed in range(2000)]
        return np.mean(np.stack(draws).astype(np.float64), axis=0)


def _center_slice(n: int, num_low: int) -> slice:
    start = (n - num_low + 1) // 2
    return slice(start, start + num_low)


def _check_accel(accel: float) -> float:
    accel = float(accel)
    if not is_acceleration(accel):
        raise ValueError(f"acceleration must be a number >= 1, got {accel}")
    return accel


@dataclass
class RandomCartesian(MaskFamily):
    """fastMRI's random 1-D mask: ``round(W * center_fraction)`` central columns,
    plus exactly ``round(W / R) - num_low`` others drawn uniformly without
    replacement, so the achieved acceleration is ``W / round(W / R)`` (within
    a column of the request, unlike a Bernoulli draw).
    """

    accel: float = 4.0
    center_fraction: float = 0.08
    one_dimensional = True

    def __post_init__(self) -> None:
        self.accel = _check_accel(self.accel)

    def _layout(self, w: int) -> tuple[slice, int]:
        num_low = max(1, int(round(w * self.center_fraction)))
        total = int(round(w / self.accel))
        if total < num_low:
            raise ValueError(
                f"acceleration {self.accel:g} keeps {total} of {w} columns, fewer than the "
                f"{num_low} center columns; lower --accel or the center fraction"
            )
        return _center_slice(w, num_low), total - num_low

    def _start(self, shape: Sequence[int], seed: Optional[int]) -> tuple[np.ndarray, int, np.random.Generator]:
        """``(mask of the central columns, how many others to add, the seeded generator)``."""
        w = int(shape[-1])
        center, n_other = self._layout(w)
        mask = np.zeros(w, dtype=bool)
        mask[center] = True
        return mask, n_other, np.random.default_rng(seed)

    def __call__(self, shape: Sequence[int], seed: Optional[int] = None) -> np.ndarray:
        mask, n_other, rng = self._start(shape, seed)
        others = np.flatnonzero(~mask)
        mask[rng.choice(others, size=n_other, replace=False)] = True
        return mask

    def probability(self, shape: Sequence[int]) -> np.ndarray:
        w = int(shape[-1])
        center, n_other = self._layout(w)
        p = np.full(w, n_other / (w - (center.stop - center.start)))
        p[center] = 1.0
        return p


@dataclass
class EquispacedCartesian(RandomCartesian):
    """Central columns plus equispaced others (random offset from the seed)."""

    def __call__(self, shape: Sequence[int], seed: Optional[int] = None) -> np.ndarray:
        mask, n_other, rng = self._start(shape, seed)
        if n_other > 0:
            others = np.flatnonzero(~mask)
            step = len(others) / n_other
            offset = rng.uniform(0, step)
            idx = np.floor(offset + step * np.arange(n_other)).astype(int)
            mask[others[np.clip(idx, 0, len(others) - 1)]] = True
        return mask


@dataclass
class PaperCartesian(MaskFamily):
    """The MSM paper's mask: ``center_lines`` central columns always, every other
    column independently with probability ``1 / accel``."""

    accel: float = 4.0
    center_lines: int = 20
    one_dimensional = True

    def __post_init__(self) -> None:
        self.accel = _check_accel(self.accel)

    def _check_reachable(self, w: int) -> None:
        """ValueError when ``accel`` is so high that the mask is expected to keep less than
        one column beyond the always-kept centre: the request would have no effect, the
        achieved acceleration staying at about ``W / center_lines`` whatever it says."""
        num_low = min(self.center_lines, w)
        expected = (w - num_low) / self.accel
        if num_low < w and expected < 1:
            raise ValueError(
                f"acceleration {self.accel:g} keeps {expected:.2g} of the {w - num_low} columns beyond the "
                f"{num_low} center columns (fewer than one); lower --accel"
            )

    def __call__(self, shape: Sequence[int], seed: Optional[int] = None) -> np.ndarray:
        w = int(shape[-1])
        self._check_reachable(w)
        rng = np.random.default_rng(seed)
        mask = rng.random(w) < 1.0 / self.accel
        mask[_center_slice(w, min(self.center_lines, w))] = True
        return mask

    def probability(self, shape: Sequence[int]) -> np.ndarray:
        w = int(shape[-1])
        self._check_reachable(w)
        p = np.full(w, 1.0 / self.accel)
        p[_center_slice(w, min(self.center_lines, w))] = 1.0
        return p


@dataclass
class BernoulliPixel(MaskFamily):
    """Keep each pixel independently with probability ``p``; returns ``(H, W)``."""

    p: float = 0.4

    def __post_init__(self) -> None:
        if not 0 < self.p <= 1:
            raise ValueError(f"keep probability must be in (0, 1], got {self.p}")

    def __call__(self, shape: Sequence[int], seed: Optional[int] = None) -> np.ndarray:
        h, w = int(shape[-2]), int(shape[-1])
        return np.random.default_rng(seed).random((h, w)) < self.p

    def probability(self, shape: Sequence[int]) -> np.ndarray:
        return np.full((int(shape[-2]), int(shape[-1])), self.p)


@dataclass
class BoxPattern(MaskFamily):
    """Everything kept except a central box of ``box_fraction`` of each side."""

    box_fraction: float = 0.5

    def __call__(self, shape: Sequence[int], seed: Optional[int] = None) -> np.ndarray:
        h, w = int(shape[-2]), int(shape[-1])
        bh, bw = int(round(h * self.box_fraction)), int(round(w * self.box_fraction))
        mask = np.ones((h, w), dtype=bool)
        top, left = (h - bh) // 2, (w - bw) // 2
        mask[top : top + bh, left : left + bw] = False
        return mask


@dataclass
class SuperResolutionPattern(MaskFamily):
    """One pixel per ``factor x factor`` block (the top-left one)."""

    factor: int = 4

    def __call__(self, shape: Sequence[int], seed: Optional[int] = None) -> np.ndarray:
        h, w = int(shape[-2]), int(shape[-1])
        mask = np.zeros((h, w), dtype=bool)
        mask[:: self.factor, :: self.factor] = True
        return mask


def cartesian_family(kind: str, accel: float, **kw) -> MaskFamily:
    """Build a 1-D Cartesian family by name: ``random`` (fastMRI), ``equispaced``
    or ``paper``. ``center_fraction`` defaults to fastMRI's pairing (0.08 for
    R <= 4, 0.04 for R >= 8, interpolated between); ``center_lines`` to 20."""
    kind = kind.lower()
    if kind in ("random", "equispaced"):
        cf = kw.get("center_fraction")
        if cf is None:
            cf = fastmri_center_fraction(accel)
        cls = RandomCartesian if kind == "random" else EquispacedCartesian
        return cls(accel=accel, center_fraction=cf)
    if kind == "paper":
        return PaperCartesian(accel=accel, center_lines=int(kw.get("center_lines", 20)))
    raise ValueError(f"unknown mask kind {kind!r}; use random, equispaced or paper")


# -- SSDU ---------------------------------------------------------------------


def ssdu_split(
    mask: np.ndarray,
    loss_ratio: float = 0.4,
    method: str = "gaussian",
    center_size: int | tuple = 8,
    std_scale: float = 4.0,
    seed: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split an acquisition mask into disjoint Theta (input / data consistency)
    and Lambda (loss) masks, as in SSDU (Yaman et al., 2020).

    Args:
        mask: ``(H, W)`` or ``(W,)`` bool acquisition mask (a 1-D mask is split
            column-wise).
        loss_ratio: fraction of acquired coordinates moved to Lambda.
        method: ``"gaussian"`` (Lambda drawn with a 2-D Gaussian density around
            the center, width ``size / std_scale``) or ``"uniform"``.
        center_size: coordinates within this central window stay in Theta.
        seed: RNG seed.

    Returns:
        ``(theta, lam)`` bool arrays of ``mask``'s shape, with
        ``theta | lam == mask`` and ``theta & lam`` empty.
    """
    m = np.asarray(mask).astype(bool)
    if not 0 < loss_ratio < 1:
        raise ValueError(f"loss_ratio must be in (0, 1), got {loss_ratio}")
    rng = np.random.default_rng(seed)
    shape = m.shape
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centers = [n // 2 for n in shape]
    cs = (center_size,) * len(shape) if np.isscalar(center_size) else tuple(center_size)
    protected = np.ones(shape, dtype=bool)
    for g, c, s in zip(grids, centers, cs):
        start = c - max(1, s) // 2  # exactly s central coordinates per axis
        protected &= (g >= start) & (g < start + max(1, s))
    candidates = np.flatnonzero(m & ~protected)
    n_loss = int(round(loss_ratio * m.sum()))
    n_loss = min(n_loss, candidates.size)
    if method == "uniform":
        weights = np.ones(candidates.size)
    elif method == "gaussian":
        d2 = np.zeros(shape)
        for g, c, n in zip(grids, centers, shape):
            d2 += ((g - c) / (n / std_scale)) ** 2
        weights = np.exp(-0.5 * d2).ravel()[candidates]
    else:
        raise ValueError(f"unknown split method {method!r}; use gaussian or uniform")
    weights = weights / weights.sum() if weights.sum() > 0 else None
    chosen = rng.choice(candidates, size=n_loss, replace=False, p=weights) if n_loss else []
    lam = np.zeros(m.size, dtype=bool)
    lam[chosen] = True
    lam = lam.reshape(shape)
    theta = m & ~lam
    return theta, lam


def central_run(mask: np.ndarray) -> slice:
    """The run of kept coordinates through the centre ``n // 2`` of a ``(n,)`` mask (the
    fully sampled calibration block of a Cartesian column mask); empty if the centre is
    not kept."""
    m = np.asarray(mask).astype(bool).ravel()
    c = m.size // 2
    if not m[c]:
        return slice(c, c)
    lo, hi = c, c
    while lo > 0 and m[lo - 1]:
        lo -= 1
    while hi < m.size - 1 and m[hi + 1]:
        hi += 1
    return slice(lo, hi + 1)


def bootstrap_masks(mask: torch.Tensor, share: float, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` random subsets of an acquisition mask, each without ``share`` of the
    kept coordinates outside the fully sampled centre (a k-space bootstrap).

    Args:
        mask: ``(B, ..., h, W)`` 0/1 float mask, the same over the middle axes (coils);
            ``h == 1`` is a column mask (whole columns are left out; its central
            calibration run, :func:`central_run`, is always kept), else a 2-D mask
            (single coordinates; all are candidates).
        share: fraction of the kept coordinates outside the centre to leave out, in
            ``[0, 1)``, drawn uniformly without replacement (rounded to a whole count).
        count: subsets to draw.
        seed: RNG seed (the same seed, the same subsets).

    Returns:
        ``count`` masks of ``mask``'s shape, dtype and device; each a subset of ``mask``.
    """
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    if share == 0:
        return [mask.clone() for _ in range(count)]
    rng = np.random.default_rng(seed)
    m = mask.detach().cpu().numpy() > 0.5
    h, w = m.shape[-2:]
    out = [m.copy() for _ in range(count)]
    for i in range(m.shape[0]):
        plane = m[i].reshape(-1, h, w)[0]
        flat = (plane[0] if h == 1 else plane).ravel()
        candidates = flat.copy()
        if h == 1:
            candidates[central_run(flat)] = False
        candidates = np.flatnonzero(candidates)
        n_out = int(round(share * candidates.size))
        for k in range(count):
            left_out = rng.choice(candidates, size=n_out, replace=False)
            keep = flat.copy()
            keep[left_out] = False
            keep = keep.reshape(1, w) if h == 1 else keep.reshape(h, w)
            out[k][i] = np.broadcast_to(keep, m.shape[1:])
    return [torch.from_numpy(o.astype(np.float32)).to(device=mask.device, dtype=mask.dtype) for o in out]


# -- MSM sub-masks ------------------------------------------------------------


def coverage_weights(coverage: torch.Tensor) -> torch.Tensor:
    """``W = 1 / max(coverage, 1)`` (element-wise)."""
    return 1.0 / torch.clamp(coverage, min=1.0)


class SubmaskSampler:
    """Random masks for Algorithm 1: draws of a family, restricted to a support.

    Args:
        family: the training mask family (what each training scan was seen through).
        image_shape: ``(H, W)``.
        support: optional bool mask of the same layout as the family's masks; draws
            are intersected with it (``None``: the whole space).
        expand: turns a numpy family mask into the tensor layout the operator
            broadcasts: ``(1, 1, 1, W)`` for 1-D families, ``(1, 1, H, W)`` otherwise.

    ``draw(n, generator)`` returns a ``(n, 1, 1, W)`` or ``(n, 1, H, W)`` float32
    stack; ``coverage(masks)`` the number of draws covering each coordinate;
    ``expected_coverage(w)`` ``w * E_S[diag(S^T S)]`` from the family's
    probabilities, and ``weights`` the MMSE aggregation weights.
    """

    def __init__(self, family: MaskFamily, image_shape: Sequence[int], support: Optional[np.ndarray] = None):
        self.family = family
        self.image_shape = tuple(int(s) for s in image_shape)
        self.support = None if support is None else np.asarray(support).astype(bool)

    def _to_tensor(self, m: np.ndarray, device) -> torch.Tensor:
        t = torch.as_tensor(m, dtype=torch.float32, device=device)
        if t.dim() == 1:
            return t.view(1, 1, 1, -1)
        return t.view(1, 1, *t.shape[-2:])

    def draw(self, n: int, generator: np.random.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` masks, each from a fresh seed taken from ``generator``."""
        out = []
        for _ in range(n):
            m = self.family(self.image_shape, int(generator.integers(0, 2**31 - 1)))
            if self.support is not None:
                m = m & self.support
            out.append(self._to_tensor(m, device))
        return torch.cat(out, 0)

    @staticmethod
    def coverage(masks: torch.Tensor) -> torch.Tensor:
        """Sum over the leading (draw) dimension, keeping it as size 1."""
        return masks.sum(0, keepdim=True)

    def expected_coverage(self, w: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
        p = self.family.probability(self.image_shape)
        if self.support is not None:
            p = p * self.support
        return self._to_tensor(w * p, device)

    @staticmethod
    def weights(coverage: torch.Tensor) -> torch.Tensor:
        return coverage_weights(coverage)


# -- the mask family a checkpoint was trained with -----------------------------------


class EmpiricalMasks(MaskFamily):
    """The training acquisitions' own masks as a family: each draw is one of them.

    Args:
        masks: ``(N, W)`` (1-D Cartesian) or ``(N, H, W)`` bool.
    """

    def __init__(self, masks: np.ndarray):
        self.masks = np.asarray(masks).astype(bool)
        if self.masks.ndim not in (2, 3) or self.masks.shape[0] == 0:
            raise ValueError(f"need (N, W) or (N, H, W) masks, got shape {self.masks.shape}")
        self.one_dimensional = self.masks.ndim == 2

    def __call__(self, shape, seed=None) -> np.ndarray:
        return self.masks[np.random.default_rng(seed).integers(len(self.masks))].copy()

    def probability(self, shape) -> np.ndarray:
        return self.masks.mean(0)


def training_mask_family(meta: dict) -> MaskFamily:
    """The mask family a checkpoint was trained with (``meta["mask"]``): a 1-D
    Cartesian family (``kind`` random / equispaced / paper), ``bernoulli`` pixel
    masks (``p``), or ``empirical`` (the recorded ``train_masks``)."""
    spec = dict(meta.get("mask") or {})
    kind = spec.get("kind", "empirical")
    if kind == "empirical":
        masks = meta.get("train_masks")
        if masks is None:
            raise MrimsmError("the checkpoint records neither a mask family nor its training masks")
        return EmpiricalMasks(torch.as_tensor(masks).cpu().numpy())
    if kind == "bernoulli":  # natural images: pixel masks keeping a fraction p
        return BernoulliPixel(float(spec.get("p", 0.4)))
    kw = {k: spec[k] for k in ("center_fraction", "center_lines") if spec.get(k) is not None}
    try:
        return cartesian_family(kind, float(spec["accel"]), **kw)
    except (KeyError, ValueError) as exc:
        raise MrimsmError(f"the checkpoint's mask settings {spec} are not usable ({exc})") from None
