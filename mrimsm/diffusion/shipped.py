"""Which MSM prior reconstructs a scan of a given size.

``mrimsm recon --method msm`` without ``--checkpoint`` picks a shipped prior by
the scan's image size (after the readout crop), from :data:`SHIPPED_PRIORS`:

=====================  ==============  ==========================================
file (mrimsm/assets/)  trained at      scans it reconstructs (H and W)
=====================  ==============  ==========================================
default_msm.pt         64 x 64         exactly 64 x 64 (3.6 mm pixels: the demo)
default_msm256.pt      256 x 256       sides 192 .. 416 (1 mm pixels)
=====================  ==============  ==========================================

A fully convolutional prior may run on a scan of another size when its pixels
are about the size of the training pixels: a model trained on native-pixel data
(``data.simulated.pixel: native``, e.g. the 256 x 256 prior) accepts each side
from 3/4 to 13/8 of its training side (192 .. 416 for the 256 model: 320 x 320,
and fastMRI brain's 320 x 392 / 320 x 396 matrices after the readout crop, whose
extra columns are phase-encode field of view). Sides the UNet cannot halve
``len(channel_mult) - 1`` times are zero-padded for the network and cropped back
(:meth:`mrimsm.diffusion.denoiser.MSMDenoiser._backbone_padded`). The bounds are a
proxy for the pixel size, which a scan file does not reliably state. Any other
model (including ``--checkpoint`` models trained on resized data or on prepared
shards) reconstructs its training size only. Outside the range: a one-line
:class:`~mrimsm.errors.MrimsmError`.

Solver settings: :class:`~mrimsm.solver_settings.PosteriorSettings`' defaults are the
general ones (the 64 x 64 prior's, and any ``--checkpoint`` model's). A prior whose solver
was chosen apart on validation slices names a YAML beside its checkpoint (``settings``: the
256 prior's is ``mrimsm/assets/default_msm256.recon.yaml``) holding only the keys that differ
from those defaults. ``recon`` uses it for the scans that prior reconstructs unless
``--settings`` is given; single options (``--steps``, ``--w``, ...) override either. The
files ship in the package (``pyproject.toml`` package data); ``recon`` refuses to start when
an installed prior's settings file is missing (:func:`check_settings_installed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from mrimsm.assets import ASSETS  # the shipped files; tests patch it here
from mrimsm.data.simulate import mni_pixel_mm
from mrimsm.errors import MrimsmError

__all__ = ["ShippedPrior", "SHIPPED_PRIORS", "SHIPPED_SSDU", "ASSETS", "size_range", "check_scan_size", "choose_shipped_prior",
           "check_settings_installed", "trained_pixel_mm", "pixel_note"]



@dataclass(frozen=True)
class ShippedPrior:
    """One shipped prior: ``file`` under ``mrimsm/assets``, the side range it serves, and
    ``settings``: its solver settings file under ``mrimsm/assets`` (``None``: the general
    defaults of :class:`~mrimsm.solver_settings.PosteriorSettings`)."""

    file: str
    trained: int
    min_side: int
    max_side: int
    description: str
    settings: Optional[str] = None

    @property
    def path(self) -> Path:
        return ASSETS / self.file

    @property
    def settings_path(self) -> Optional[Path]:
        """The posterior settings chosen for this prior (``None``: the general defaults)."""
        return None if self.settings is None else ASSETS / self.settings

    def serves(self, shape: Sequence[int]) -> bool:
        return all(self.min_side <= int(s) <= self.max_side for s in shape)

    def range_text(self) -> str:
        if self.min_side == self.max_side:
            return f"{self.min_side} x {self.min_side}"
        return f"sides {self.min_side}-{self.max_side}"


#: The shipped priors, smallest first (see the module docstring). The 256 prior's solver
#: settings (steps, w, dc_lambda, dc_schedule, t0, init) are in ``mrimsm/assets/default_msm256.recon.yaml``.
SHIPPED_PRIORS: tuple[ShippedPrior, ...] = (
    ShippedPrior("default_msm.pt", 64, 64, 64, "64 x 64 demonstration prior"),
    ShippedPrior("default_msm256.pt", 256, 192, 416, "256 x 256 brain prior", "default_msm256.recon.yaml"),
)

#: The shipped SSDU baselines, chosen the same way by ``recon --method ssdu`` without
#: ``--ssdu-checkpoint`` (each trained on the data of the MSM prior of its size).
SHIPPED_SSDU: tuple[ShippedPrior, ...] = (
    ShippedPrior("default_ssdu.pt", 64, 64, 64, "64 x 64 demonstration SSDU"),
    ShippedPrior("default_ssdu256.pt", 256, 192, 416, "256 x 256 brain SSDU"),
)


def size_range(config: Mapping, image_shape: Sequence[int]) -> tuple[int, int]:
    """``(min_side, max_side)`` of the scans a checkpoint may reconstruct (each side).

    Args:
        config: the checkpoint's resolved config dict.
        image_shape: ``(H, W)`` it was trained at.
    """
    side = max(int(s) for s in image_shape)
    sim = (config.get("data") or {}).get("simulated") or {}
    if sim.get("pixel") != "native" or int(image_shape[0]) != int(image_shape[1]):
        return side, side
    return -(-3 * side // 4), 13 * side // 8


def check_scan_size(config: Mapping, image_shape: Sequence[int], shape: Sequence[int], path: object) -> None:
    """Raise a one-line :class:`MrimsmError` unless the model at ``path`` (trained at
    ``image_shape`` with ``config``) may reconstruct a scan of ``shape``."""
    h, w = int(shape[0]), int(shape[1])
    if (h, w) == tuple(int(s) for s in image_shape):
        return
    lo, hi = size_range(config, image_shape)
    if all(lo <= s <= hi for s in (h, w)) and lo < hi:
        return
    what = f"sides {lo}-{hi}" if lo < hi else f"{image_shape[0]} x {image_shape[1]} only"
    raise MrimsmError(
        f"the scan is {h} x {w} after readout cropping but {path} reconstructs {what}; "
        f"train a model at this size (prep-fastmri --size) or reconstruct with --method cs"
    )


def choose_shipped_prior(shape: Sequence[int], models: Optional[Sequence[ShippedPrior]] = None,
                         kind: str = "MSM", flag: str = "--checkpoint") -> ShippedPrior:
    """The shipped model for a ``(H, W)`` scan, or a one-line :class:`MrimsmError`.

    Args:
        shape: the scan's image size after the readout crop.
        models: :data:`SHIPPED_PRIORS` (default) or :data:`SHIPPED_SSDU`.
        kind, flag: for the messages (``"SSDU"``, ``"--ssdu-checkpoint"``).
    """
    h, w = int(shape[0]), int(shape[1])
    models = SHIPPED_PRIORS if models is None else models
    for prior in models:
        if prior.serves((h, w)):
            if not prior.path.exists():
                raise MrimsmError(
                    f"the scan is {h} x {w}: its shipped {kind} model {prior.file} is not installed "
                    f"({prior.path}); pass {flag} or reconstruct with --method cs"
                )
            return prior
    served = ", ".join(f"{p.range_text()} ({p.file})" for p in models if p.path.exists())
    raise MrimsmError(
        f"no shipped {kind} model reconstructs a {h} x {w} scan (after readout cropping); the shipped models "
        f"serve {served or 'nothing: none is installed'}; pass {flag} or reconstruct with --method cs"
    )


def check_settings_installed(models: Optional[Sequence[ShippedPrior]] = None) -> None:
    """A one-line :class:`MrimsmError` when a shipped prior is installed (its checkpoint is
    there) but its solver settings file is not: a broken install, found before any work."""
    for prior in SHIPPED_PRIORS if models is None else models:
        path = prior.settings_path
        if path is not None and prior.path.exists() and not path.is_file():
            raise MrimsmError(
                f"the shipped {prior.description} {prior.file} has no solver settings file {path}; "
                f"reinstall mrimsm, or pass --settings FILE"
            )


def trained_pixel_mm(config: Mapping) -> Optional[tuple[float, float]]:
    """``(finest, coarsest)`` pixel size in mm of the simulated data a checkpoint trained
    on (``data.simulated``: native pixels at each of ``scales``, or the template squeezed
    into ``size``), or ``None`` when it trained on prepared scans (their pixels are not recorded)."""
    sim = (config.get("data") or {}).get("simulated")
    if not sim:
        return None
    pixel = sim.get("pixel", "fit")
    scales = (sim.get("scales") or [1.0]) if pixel == "native" else [1.0]  # scales need native pixels
    sizes = [mni_pixel_mm(int(sim.get("size", 64)), pixel, float(s)) for s in scales]
    return min(sizes), max(sizes)


#: Scan pixels further than this factor outside the trained range get a warning in the note.
PIXEL_TOLERANCE = 1.15


def pixel_note(config: Mapping, pixel_mm: Optional[Sequence[float]]) -> str:
    """``"scan pixels 0.69 x 0.69 mm, finer than the 0.83-1.43 mm the prior trained at: expect lower quality"``-style
    text for the model line ("" when the scan's header states no pixel size). Only a note:
    a prior may still do well on other pixels, and the header may be wrong."""
    if pixel_mm is None:
        return ""
    rows, cols = (float(p) for p in pixel_mm)
    text = f"scan pixels {rows:.2f} x {cols:.2f} mm"
    trained = trained_pixel_mm(config)
    if trained is None:
        return text
    lo, hi = trained
    span = f"{lo:.2f} mm" if abs(hi - lo) < 5e-3 else f"{lo:.2f}-{hi:.2f} mm"
    if min(rows, cols) < lo / PIXEL_TOLERANCE:
        return f"{text}, finer than the {span} the prior trained at: expect lower quality"
    if max(rows, cols) > hi * PIXEL_TOLERANCE:
        return f"{text}, coarser than the {span} the prior trained at: expect lower quality"
    return f"{text} (trained at {span})"


def describe(prior: Optional[ShippedPrior], path: object, step: int, image_shape: Sequence[int]) -> str:
    """The one line telling the user which model reconstructed the scan."""
    trained = f"trained at {image_shape[0]} x {image_shape[1]}, step {step}"
    if prior is not None:
        return f"shipped {prior.description} {prior.file} ({trained})"
    return f"{path} ({trained})"
