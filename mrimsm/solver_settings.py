"""The settings of each reconstruction method, typed once.

Each is a dataclass whose field annotations give every setting's type, range and choices
(:mod:`mrimsm.settings`): the same annotation checks a ``recon`` / ``restore`` /
``calibrate`` option while the command line is parsed (:func:`mrimsm.cli.options.setting_option`),
a key of a solver settings YAML (:func:`mrimsm.diffusion.posterior.load_posterior_settings`)
and what a direct caller of the library passes (:func:`settings_from_options`,
:meth:`PosteriorSettings.validate`). Importing this module does not import torch.

* :class:`SenseSettings`, :class:`CSSettings`: ``recon --method sense`` / ``cs`` (and the
  warm start of ``msm`` from them);
* :class:`SSDUSettings`: ``recon --method ssdu``;
* :class:`PosteriorSettings`: the MSM posterior solver (``recon --method msm``, ``restore``,
  ``calibrate``);
* :class:`ReconSettings`: the options of ``recon`` that are not one method's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping, Optional

from annotated_types import Ge, Gt, Interval

from mrimsm.errors import MrimsmError
from mrimsm.limits import MAX_ITERATIONS, MAX_MASKS_PER_STEP
from mrimsm.sections import Count, Seed
from mrimsm.settings import SettingError, validate_dataclass

__all__ = ["Iterations", "Weight", "RECON_INITS", "RESTORE_INITS", "RESTORE_TASKS", "SenseSettings", "CSSettings", "SSDUSettings",
           "PosteriorSettings", "ReconSettings", "settings_from_options", "flag_of"]

#: iterations of an iterative solver (CG, FISTA)
Iterations = Annotated[int, Interval(ge=1, le=MAX_ITERATIONS)]
#: a regularization weight (NaN and infinities are refused for every float)
Weight = Annotated[float, Ge(0)]

#: the initial images of an MRI warm start (recon's methods) and of restore's
RECON_INITS = ("none", "sense", "cs", "zero-filled")
RESTORE_INITS = ("none", "baseline")
#: the tasks of ``restore``: a centred box blanked, or 4x average pooling
RESTORE_TASKS = ("inpaint-box", "sr4")


def flag_of(key: str) -> str:
    """The ``recon`` flag of an option key: ``"dc_step"`` -> ``"--dc-step"``."""
    return "--" + key.replace("_", "-")


def settings_from_options(cls: type, options: Mapping[str, Any]) -> Any:
    """``cls`` from the command's ``options``: field ``f`` from ``options[cls.OPTIONS[f]]``
    when that is given (not ``None``), else its default; a one-line MrimsmError naming the
    flag (``--sense-iters must be an integer in [1, 100000], got 0``) otherwise."""
    keys: Mapping[str, str] = cls.OPTIONS
    given = {name: options[key] for name, key in keys.items() if options.get(key) is not None}
    try:
        return validate_dataclass(cls, given)
    except SettingError as exc:
        raise MrimsmError(f"{flag_of(keys[exc.key])} {exc.message}") from None


@dataclass
class SenseSettings:
    """CG-SENSE with Tikhonov regularization (:func:`mrimsm.baselines.classical.sense`), for
    images normalized to max ``|A^H y|`` about 1: ``lamda`` (``--sense-lambda``) and ``iters``
    CG iterations (``--sense-iters``); defaults tuned on MNI training-range slices only
    (``python -m benchmarks.sweep_solver --sense``)."""

    OPTIONS: ClassVar[dict] = {"lamda": "sense_lambda", "iters": "sense_iters"}
    lamda: Weight = 0.01
    iters: Iterations = 10


@dataclass
class CSSettings:
    """L1-wavelet compressed sensing by FISTA (:func:`mrimsm.baselines.classical.cs_l1_wavelet`):
    ``lamda`` (``--cs-lambda``) for images normalized to max ``|A^H y|`` = 1 and ``iters``
    (``--cs-iters``); how the defaults were tuned: :data:`mrimsm.baselines.classical.DEFAULT_LAMBDA`."""

    OPTIONS: ClassVar[dict] = {"lamda": "cs_lambda", "iters": "cs_iters"}
    lamda: Weight = 1e-3
    iters: Iterations = 50


@dataclass
class SSDUSettings:
    """The SSDU network of ``recon --method ssdu``: ``checkpoint`` (``--ssdu-checkpoint``;
    ``None``: the shipped SSDU for the scan's size)."""

    OPTIONS: ClassVar[dict] = {"checkpoint": "ssdu_checkpoint"}
    checkpoint: Optional[Path] = None


@dataclass
class ReconSettings:
    """The options of ``recon`` that are not one method's: ``seed`` (masks and random
    methods), ``center_fraction`` of a retrospective mask (``None``: fastMRI's), ``coils``
    (compress to that many virtual coils; ``None``: none), ``batch_slices`` (slices per
    method call; ``None``: the method's own), ``coverage`` of the calibrated error bound
    (``None``: :data:`mrimsm.recon.calibration.DEFAULT_COVERAGE` when there is a calibration)."""

    seed: Seed = 0
    center_fraction: Optional[Annotated[float, Interval(gt=0, le=1)]] = None
    coils: Optional[Count] = None
    batch_slices: Optional[Count] = None
    coverage: Optional[Annotated[float, Interval(ge=0.5, le=0.99)]] = None


@dataclass
class PosteriorSettings:
    """Solver settings of MSM posterior sampling (:func:`mrimsm.diffusion.posterior.posterior_sample`).

    The defaults are the general CS-MRI settings, chosen on validation slices of the 64 x 64
    prior (``python -m benchmarks.sweep_solver``, recorded in ``CHANGELOG.md``, 2026-11-27; never the
    held-out test slices): ``recon`` uses them for the 64 x 64 prior and any ``--checkpoint``
    model. A settings file (``--settings FILE``, or a shipped prior's own,
    :mod:`mrimsm.diffusion.shipped`) replaces the keys it gives and keeps these for the rest;
    its keys and the ``recon`` flags (``dc_step`` is ``--dc-step``) are these fields. The
    paper's setting is ``steps=200, w=3, samples=5, dc="measurement", t0=1, init="none"``.

    Attributes:
        steps: reverse steps of the chain (from ``t0`` down to 0).
        w: masks (network evaluations) per step (paper, inverse problems: 3).
        eta: DDIM stochasticity (paper CS-MRI: 0.85).
        samples: posterior samples per slice (mean = reconstruction, std = uncertainty).
        dc: data consistency: ``operator`` (a solve on the image through the test
            operator ``A = H T``) or ``measurement`` (the step ``z - dc_step H^+ (H z - y)``
            on the measurement; with ``dc_step = 2`` and ``placement = local`` the published
            code's rule) or ``tweedie`` (Gaussian conditioning with the denoiser's own
            posterior covariance: exact for Gaussian priors, costs ``dc_iters`` backward
            passes per step); :mod:`mrimsm.diffusion.consistency`.
        dc_lambda: weight of the prior term of the ``operator`` solve,
            ``min ||A x - y||^2 + lambda_t ||x - T^H z0_hat||^2``; 0 is the projection onto
            ``A x = y``.
        dc_schedule: ``fixed`` (``lambda_t = dc_lambda``), ``sigma``
            (``lambda_t = dc_lambda / sigma_t^2``: the Tweedie estimate is trusted more as
            its noise level ``sigma_t`` falls) or ``noise`` (DiffPIR's
            ``lambda_t = dc_lambda * sigma_y^2 / sigma_t^2`` with ``sigma_y`` the test
            scan's own noise std, measured by ``recon`` (:mod:`mrimsm.data.noise`), else
            ``dc_noise``; ``dc_lambda = 1`` at ``sigma_y = 0.01`` equals ``sigma`` with
            ``dc_lambda = 1e-4``).
        dc_iters: conjugate-gradient iterations of the ``operator`` and ``tweedie`` solves.
        dc_noise: the test data's noise std per real component (normalized units) for
            ``tweedie``, and for the ``noise`` schedule when no measured value is passed.
        dc_step: step of the ``measurement`` rule (1 = replace measured entries by y).
        placement: ``global`` (after aggregation, the paper's text) or ``local`` (on each
            local estimate, the published code); ``measurement`` only.
        t0: warm start: the chain starts at ``t0 * (T - 1)`` from the noised initial
            image (1 = from pure noise, the paper; 0 returns the initial image).
        init: the initial image of a warm start: ``none`` (t0 must be 1), ``sense``,
            ``cs``, ``zero-filled`` (MRI, :data:`RECON_INITS`), ``baseline`` (restore:
            bicubic / mean fill).
        batch_slices: slices denoised together (memory vs. speed).
        bootstrap: share of the acquired k-space lines (pixels for a 2-D mask) outside the
            fully sampled centre that each sample leaves out of its data consistency, a
            different random share per sample (a k-space bootstrap,
            :func:`mrimsm.physics.masks.bootstrap_masks`): the samples then also differ
            where the reconstruction depends on which data was acquired, not only where the
            prior is unsure; 0 (default): every sample uses all the data. Measured with 0.3 on
            validation slices (``benchmarks/calibration.py``, CHANGELOG.md 2026-12-04): a wider
            spread (std / |error| 0.46 -> 0.53 at 256, R 4) that ranks the errors no better
            (pixel Spearman 0.020 -> 0.014), so it stays off.
    """

    steps: Count = 50
    w: Annotated[int, Interval(ge=1, le=MAX_MASKS_PER_STEP)] = 3
    eta: Annotated[float, Interval(ge=0, le=1)] = 1.0  # validation: 1.0 25.12, 0.85 25.01, 0.5 24.90 dB (the paper uses 0.85)
    samples: Count = 4
    dc: Literal["operator", "measurement", "tweedie"] = "operator"  # the coils' parallel imaging; `measurement` (the published rule) lost 2.1 dB
    dc_lambda: Weight = 1.0
    # validation R = 4 / 6 at test noise 0.002: +0.16 / +0.32 dB (paper convention) over the
    # sigma schedule (dc_lambda 1e-4 / sigma_t^2); at noise 0.01 within 0.03 dB
    dc_schedule: Literal["fixed", "sigma", "noise"] = "noise"
    dc_iters: Iterations = 10
    dc_noise: Annotated[float, Ge(0)] = 0.01
    dc_step: Annotated[float, Interval(ge=0, le=2)] = 1.0
    placement: Literal["global", "local"] = "global"
    t0: Annotated[float, Interval(ge=0, le=1)] = 0.3  # the chain starts at 0.3 T from the noised initial image (1: from noise, the paper)
    init: Literal[RECON_INITS + RESTORE_INITS[1:]] = "sense"
    batch_slices: Count = 4
    bootstrap: Annotated[float, Interval(ge=0, le=0.9)] = 0.0

    def validate(self) -> "PosteriorSettings":
        """These settings checked against the field annotations, then across keys; the checked
        copy (ints widened to floats where a field is a float), or a one-line MrimsmError
        (``t0 must be in [0, 1], got 1.5``)."""
        try:
            checked = validate_dataclass(PosteriorSettings, dataclasses.asdict(self))
        except SettingError as exc:
            raise MrimsmError(f"{exc.key} {exc.message}") from None
        if checked.placement == "local" and checked.dc != "measurement":
            raise MrimsmError("placement local works only with dc: measurement")
        if checked.init == "none" and checked.t0 != 1.0:
            raise MrimsmError(f"t0 = {checked.t0} needs an initial image (init)")
        return checked

    @property
    def nfe(self) -> int:
        """Network evaluations per slice, at most (a warm start from a step below ``steps``
        runs ``t0 * (T - 1) + 1`` steps): ``samples * w * steps``, 0 for ``t0 = 0``."""
        return int(self.samples) * int(self.w) * int(self.steps) if float(self.t0) > 0 else 0
