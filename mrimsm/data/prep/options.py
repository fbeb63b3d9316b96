"""The options of a prep run (:class:`PrepOptions`) and the mask family they select."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mrimsm.data.coil_compression import check_coils
from mrimsm.data.prep.choices import ESPIRIT_BACKENDS, MASK_KINDS
from mrimsm.errors import MrimsmError
from mrimsm.limits import check_seed, parse_accel
from mrimsm.physics.masks import MaskFamily, PaperCartesian, cartesian_family

__all__ = ["PrepOptions", "mask_family", "mask_spec", "MASK_KINDS", "ESPIRIT_BACKENDS"]


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
        espirit_backend, device: see :func:`mrimsm.data.espirit.estimate_maps`.
        espirit_coarse: eigen-solve grid step of the torch backend; 0 = auto
            (``max(1, size // 64)``: exact at 64; at 256 a 64 x 64 grid of
            eigenproblems, then interpolation and two power iterations at full
            resolution, 3x faster, maps within about 1e-4 (relative) of exact).
        keep_reference: store ``reference`` in validation shards.
        workers: processes (results do not depend on it).
        strict: a corrupt input file is fatal instead of skipped.
        overwrite: replace a data set in ``OUT_DIR`` that was prepared with other
            parameters (:mod:`mrimsm.data.prep`); without it that is refused.
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
        """MrimsmError (one line naming the flag) for the first option out of range."""
        parse_accel(self.accel)
        check_coils(self.coils)
        check_seed(self.seed)
        self._check_ranges()
        self._check_espirit()
        try:
            mask_family(self)((self.size, self.size), seed=0)
        except ValueError as exc:
            raise MrimsmError(str(exc)) from None

    def _check_ranges(self) -> None:
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
        if self.mask_kind not in MASK_KINDS:
            raise MrimsmError(f"unknown mask kind {self.mask_kind!r}; use paper, random or equispaced")

    def _check_espirit(self) -> None:
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
        if self.espirit_backend not in ESPIRIT_BACKENDS:
            raise MrimsmError(f"unknown ESPIRiT backend {self.espirit_backend!r}; use torch or sigpy")

    def params(self) -> dict:
        """The parameters that determine the output (JSON-friendly)."""
        d = dataclasses.asdict(self)
        d["center_lines"] = self.resolved_center_lines()
        if self.coils is None:
            del d["coils"]  # runs without --coils hash as before it existed
        return {k: v for k, v in d.items() if k not in self._RUNTIME}

    def params_hash(self) -> str:
        """The first 16 hex digits of the SHA-256 of :meth:`params` as sorted JSON."""
        text = json.dumps(self.params(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def resolved_center_lines(self) -> Optional[int]:
        """The ``paper`` mask's centre columns (``None`` for the other families)."""
        if self.mask_kind != "paper":
            return None
        return int(self.center_lines) if self.center_lines is not None else max(1, round(20 * self.size / 256))


def mask_family(opts: PrepOptions) -> MaskFamily:
    """The acquisition mask family of a prep run."""
    if opts.mask_kind == "paper":
        return PaperCartesian(opts.accel, center_lines=opts.resolved_center_lines())
    kw = {} if opts.center_fraction is None else {"center_fraction": opts.center_fraction}
    return cartesian_family(opts.mask_kind, opts.accel, **kw)


def mask_spec(opts: PrepOptions) -> dict:
    """The manifest's ``mask`` entry: kind, accel and the centre columns or fraction."""
    spec = {"kind": opts.mask_kind, "accel": float(opts.accel)}
    fam = mask_family(opts)
    if opts.mask_kind == "paper":
        spec["center_lines"] = fam.center_lines
    else:
        spec["center_fraction"] = fam.center_fraction
    return spec
