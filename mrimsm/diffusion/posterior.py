"""Posterior sampling for linear inverse problems with the MSM prior (docs/method.md section 6).

Algorithm 1 (:func:`mrimsm.diffusion.sampler.msm_sample`) plus a data-consistency
step on the aggregated clean estimate ``z0_hat`` at every reverse step, for a test
observation ``y = H z + e`` (``H`` acts on the full measurement ``z``: MRI, the test
scan's own Cartesian mask on multi-coil k-space; natural images, a box mask or 4x
average pooling on the image itself, ``T = I``). Three kinds (``PosteriorSettings.dc``):

* ``operator`` (default, :class:`~mrimsm.diffusion.consistency.OperatorConsistency`): a solve on the *image* through
  the test operator ``A = H T`` (MRI: ``M F C``, so the coils' parallel imaging is used)::

      x~ = argmin_x ||A x - y||^2 + lambda_t ||x - T^H z0_hat||^2,    z0_hat <- T x~

  by conjugate gradients from ``T^H z0_hat``. ``lambda_t`` is fixed or ``c / sigma_t^2``
  (``dc_schedule: sigma``, DiffPIR-style: with ``c`` = the data's noise variance this
  is the MAP step when the Tweedie estimate's error is ``sigma_t``). ``lambda = 0`` is
  the projection onto ``{A x = y}``; for ``T = I`` and a mask or pooling it is exactly
  the replacement / pseudo-inverse step below.
* ``measurement`` (:class:`~mrimsm.diffusion.consistency.MeasurementConsistency`): ``z0_hat <- z0_hat - step H^+ (H z0_hat - y)``
  on the measurement. ``step = 1`` *replaces* the measured entries by ``y``; ``step = 2``
  with ``placement: local`` (on each local estimate inside the ``w`` loop) is the
  authors' published code, which reflects the estimate to ``2 y - s_hat``. It never
  uses the coil sensitivities: on multi-coil data it lost 2.1 dB against ``operator``
  on the validation slices (the sweep in CHANGELOG.md, 2026-11-27).
* ``tweedie`` (:class:`~mrimsm.diffusion.consistency.TweedieConsistency`): Gaussian conditioning with the denoiser's
  own covariance ``sigma_t^2 J`` (vector-Jacobian products through the network). Exact
  for Gaussian priors (the sampler then draws the true posterior, tested in closed
  form; the other two kinds are biased there), but with a trained network the
  Jacobian is not a covariance and the step diverged on MRI; kept for study.

Warm start (``t0 < 1``, CCDF / SDEdit style): the chain starts at step ``t0 (T - 1)``
from the noised measurement of an initial image (MRI: CG-SENSE, CS or zero-filled;
restore: bicubic / mean fill), and runs ``steps`` steps from there. ``t0 = 0`` returns
the initial image.

``K = samples`` posterior samples per slice are drawn in one batch; the
reconstruction is their mean and the pixel-wise standard deviation (of the
magnitude for complex MRI images, of the value for real images) is the
uncertainty map.

The same code serves MRI and natural images: no branch on the data kind here;
the operators carry the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from mrimsm.diffusion.consistency import (
    DataConsistency,
    LocalPlacement,
    MeasurementConsistency,
    OperatorConsistency,
    TweedieConsistency,
)
from mrimsm.diffusion.shipped import SHIPPED_PRIORS
from mrimsm.errors import MrimsmError
from mrimsm.limits import MAX_ITERATIONS, MAX_MASKS_PER_STEP
from mrimsm.physics.masks import SubmaskSampler
from mrimsm.physics.operators import LinearOperator, MaskedMeasurement

__all__ = [
    "PosteriorSettings",
    "load_posterior_settings",
    "data_consistency",
    "posterior_sample",
    "default_checkpoint",
]

PLACEMENTS = ("global", "local")
DC_KINDS = ("operator", "measurement", "tweedie")
DC_SCHEDULES = ("fixed", "sigma", "noise")
INITS = ("none", "sense", "cs", "zero-filled", "baseline")

#: The shipped 64 x 64 demonstration prior (the first of :data:`mrimsm.diffusion.shipped.SHIPPED_PRIORS`).
DEFAULT_CHECKPOINT = SHIPPED_PRIORS[0].path


@dataclass
class PosteriorSettings:
    """Solver settings. The defaults are the general CS-MRI settings, chosen on validation
    slices of the 64 x 64 prior (``benchmarks/sweep_solver.py``, recorded in
    ``CHANGELOG.md``, 2026-11-27; never the held-out test slices): ``recon`` uses them for the
    64 x 64 prior and any ``--checkpoint`` model. A settings file (``--settings FILE``, or a
    shipped prior's own, :mod:`mrimsm.diffusion.shipped`) replaces the keys it gives and
    keeps these for the rest. The paper's setting is
    ``steps=200, w=3, samples=5, dc="measurement", t0=1, init="none"``.

    Attributes:
        steps: reverse steps of the chain (from ``t0`` down to 0).
        w: masks (network evaluations) per step (paper, inverse problems: 3).
        eta: DDIM stochasticity (paper CS-MRI: 0.85).
        samples: posterior samples per slice (mean = reconstruction, std = uncertainty).
        dc: data consistency: ``operator`` (a solve on the image through the test
            operator ``A = H T``, :func:`operator_consistency`) or ``measurement`` (the
            step ``z - dc_step H^+ (H z - y)`` on the measurement, :func:`measurement_consistency`;
            with ``dc_step = 2`` and ``placement = local`` the published code's rule) or
            ``tweedie`` (Gaussian conditioning with the denoiser's own posterior covariance,
            :func:`tweedie_consistency`: exact for Gaussian priors, costs ``dc_iters``
            backward passes per step).
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
            ``cs``, ``zero-filled`` (MRI), ``baseline`` (restore: bicubic / mean fill).
        batch_slices: slices denoised together (memory vs. speed).
    """

    steps: int = 50
    w: int = 3
    eta: float = 1.0  # validation: 1.0 25.12, 0.85 25.01, 0.5 24.90 dB (the paper uses 0.85)
    samples: int = 4
    dc: str = "operator"  # the coils' parallel imaging; `measurement` (the published rule) lost 2.1 dB
    dc_lambda: float = 1.0
    # validation R = 4 / 6 at test noise 0.002: +0.16 / +0.32 dB (paper convention) over the
    # sigma schedule (dc_lambda 1e-4 / sigma_t^2); at noise 0.01 within 0.03 dB
    dc_schedule: str = "noise"
    dc_iters: int = 10
    dc_noise: float = 0.01
    dc_step: float = 1.0
    placement: str = "global"
    t0: float = 0.3  # the chain starts at 0.3 T from the noised initial image (1: from noise, the paper)
    init: str = "sense"
    batch_slices: int = 4

    def validate(self) -> "PosteriorSettings":
        checks = [
            (int(self.steps) >= 1, f"steps must be >= 1, got {self.steps}"),
            (1 <= int(self.w) <= MAX_MASKS_PER_STEP, f"w must be in [1, {MAX_MASKS_PER_STEP}], got {self.w}"),
            (int(self.samples) >= 1, f"samples must be >= 1, got {self.samples}"),
            (0.0 <= float(self.eta) <= 1.0, f"eta must be in [0, 1], got {self.eta}"),
            (self.dc in DC_KINDS, f"dc must be one of {', '.join(DC_KINDS)}, got {self.dc!r}"),
            (math.isfinite(float(self.dc_lambda)) and float(self.dc_lambda) >= 0,
             f"dc_lambda must be a number >= 0, got {self.dc_lambda}"),
            (self.dc_schedule in DC_SCHEDULES,
             f"dc_schedule must be one of {', '.join(DC_SCHEDULES)}, got {self.dc_schedule!r}"),
            (1 <= int(self.dc_iters) <= MAX_ITERATIONS, f"dc_iters must be in [1, {MAX_ITERATIONS}], got {self.dc_iters}"),
            (math.isfinite(float(self.dc_noise)) and float(self.dc_noise) >= 0,
             f"dc_noise must be a number >= 0, got {self.dc_noise}"),
            (0.0 <= float(self.dc_step) <= 2.0, f"dc_step must be in [0, 2], got {self.dc_step}"),
            (self.placement in PLACEMENTS, f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}"),
            (self.dc == "measurement" or self.placement == "global",
             "placement local works only with dc: measurement"),
            (math.isfinite(float(self.t0)) and 0.0 <= float(self.t0) <= 1.0, f"t0 must be in [0, 1], got {self.t0}"),
            (self.init in INITS, f"init must be one of {', '.join(INITS)}, got {self.init!r}"),
            (self.init != "none" or float(self.t0) == 1.0, f"t0 = {self.t0} needs an initial image (init)"),
            (int(self.batch_slices) >= 1, f"batch_slices must be >= 1, got {self.batch_slices}"),
        ]
        for ok, message in checks:
            if not ok:
                raise MrimsmError(message)
        return self

    @property
    def nfe(self) -> int:
        """Network evaluations per slice, at most (a warm start from a step below ``steps``
        runs ``t0 * (T - 1) + 1`` steps): ``samples * w * steps``, 0 for ``t0 = 0``."""
        return int(self.samples) * int(self.w) * int(self.steps) if float(self.t0) > 0 else 0


def _typed(key: Any, value: Any, where: str = "") -> Any:
    """A setting's value as its field's type (int, float or str; an int-valued float
    for an int, numeric text for a number); MrimsmError naming ``key`` otherwise. Unknown
    keys pass unchanged (the loader names them all at once)."""
    kind = {f.name: f.type for f in fields(PosteriorSettings)}.get(key)
    kind = {"int": int, "float": float, "str": str}.get(kind, kind) if isinstance(kind, str) else kind
    if kind not in (int, float, str):
        return value
    if kind is str:
        if isinstance(value, str):
            return value
        raise MrimsmError(f"{where}{key} must be a string, got {value!r}")
    if isinstance(value, bool):
        value = None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        what = "an integer" if kind is int else "a finite number"
        raise MrimsmError(f"{where}{key} must be {what}, got {value!r}")
    return int(number) if kind is int else number


def load_posterior_settings(path: Optional[str | Path] = None, **overrides: Any) -> PosteriorSettings:
    """Settings from a YAML file (``posterior:`` section or top level), then overrides.

    Unknown keys are an error; ``None`` overrides are ignored. Keys neither the file nor
    the overrides give (all of them without a file) take :class:`PosteriorSettings`' defaults.
    """
    values: dict[str, Any] = {}
    if path is not None:
        import yaml

        p = Path(path)
        if p.is_dir():
            raise MrimsmError(f"settings file {p} is a directory; give a YAML file of solver settings "
                              f"(e.g. a copy of mrimsm/assets/default_msm256.recon.yaml)")
        if not p.exists():
            raise MrimsmError(f"settings file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MrimsmError(f"{p} is not valid YAML ({str(exc).splitlines()[0]})") from None
        except UnicodeDecodeError:
            raise MrimsmError(f"{p}: not a text file") from None
        except OSError as exc:
            raise MrimsmError(f"cannot read settings file {p}: {exc.strerror or exc}") from None
        data = data.get("posterior", data) if isinstance(data, dict) else None
        if not isinstance(data, dict):
            raise MrimsmError(f"{p}: expected a mapping of solver settings")
        values.update({k: _typed(k, v, f"{p}: ") for k, v in data.items()})
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(PosteriorSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise MrimsmError(f"unknown posterior setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return PosteriorSettings(**values).validate()


def _step_progress(on_step: Optional[Callable[[int, int], None]]):
    if on_step is None:
        return None

    def wrap(chain: Sequence) -> Iterable:
        total = len(chain)
        for i, item in enumerate(chain):
            yield item
            on_step(i + 1, total)

    return wrap


def _dc_lambda(settings: PosteriorSettings, schedule, chain: Sequence,
               noise_std: Optional[float] = None) -> Callable[[int], float]:
    """``lambda_t`` by ``t_index`` of the chain: fixed, ``dc_lambda / sigma_t^2``, or
    ``dc_lambda * sigma_y^2 / sigma_t^2`` (``sigma_y``: ``noise_std``, else ``dc_noise``)."""
    if settings.dc_schedule == "fixed":
        return lambda t_index: float(settings.dc_lambda)
    weight = float(settings.dc_lambda)
    if settings.dc_schedule == "noise":
        sigma_y = float(settings.dc_noise) if noise_std is None else float(noise_std)
        weight *= sigma_y**2
    sigma = {t_index: float(schedule.sigma(t)) for t_index, t, _ in chain}
    return lambda t_index: weight / max(sigma[t_index], 1e-6) ** 2


def data_consistency(settings: PosteriorSettings, op_full: MaskedMeasurement, H: LinearOperator, y: torch.Tensor,
                     schedule, chain: Sequence, noise_std: Optional[float] = None) -> DataConsistency:
    """The rule ``settings.dc`` (with its ``placement``) for the observation ``y = H z + e``
    of the batch of ``op_full``, on the sampler's ``chain``."""
    if settings.dc == "operator":
        return OperatorConsistency(op_full, H, y, _dc_lambda(settings, schedule, chain, noise_std),
                                   int(settings.dc_iters))
    if settings.dc == "tweedie":
        return TweedieConsistency(H, y, schedule, chain, float(settings.dc_noise), int(settings.dc_iters))
    rule = MeasurementConsistency(H, y, float(settings.dc_step))
    return LocalPlacement(rule) if settings.placement == "local" else rule


def posterior_sample(
    denoiser: Callable,
    op_full: MaskedMeasurement,
    H: LinearOperator,
    y: torch.Tensor,
    mask_sampler: SubmaskSampler,
    settings: PosteriorSettings,
    generator: torch.Generator | int | None = None,
    image_shape: Optional[Sequence[int]] = None,
    on_step: Optional[Callable[[int, int], None]] = None,
    x_init: Optional[torch.Tensor] = None,
    schedule=None,
    noise_std: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``settings.samples`` posterior samples for each of ``B`` observations.

    Args:
        denoiser: the MSM denoiser ``(u_t, t) -> x0``.
        op_full: the full-measurement operator of the batch, ``B`` slices (MRI:
            ``MultiCoilMRI(maps (B, C, H, W))``; images: ``Identity()``).
        H: test operator on the full measurement; ``y = H z + e`` is ``(B, *obs)``.
        mask_sampler: the training mask family (what the prior was trained through).
        settings: solver settings.
        generator: seed or torch.Generator (same seed, same samples).
        image_shape: per-sample image shape for operators without ``image_shape``.
        on_step: ``on_step(done, total)`` after each reverse step.
        x_init: ``(B, *image)`` initial image of a warm start (``settings.t0 < 1``), e.g. a
            SENSE reconstruction; required when ``settings.init`` is not ``none``.
        schedule: the diffusion schedule, default ``denoiser.schedule``.
        noise_std: the test data's measured noise std per real component (normalized
            units), used by ``dc_schedule: noise``; ``None``: ``settings.dc_noise``.

    Returns:
        ``(mean (B, *image), std (B, *image) float32, samples (K, B, *image))``:
        the posterior mean, the pixel-wise std over the ``K`` samples of the
        magnitude (complex images) or of the value (real images), zeros for
        ``K = 1``, and the samples themselves. With ``t0 = 0`` every sample is ``x_init``.
    """
    from mrimsm.diffusion.sampler import msm_sample, sampling_timesteps

    settings.validate()
    b = y.shape[0]
    k = int(settings.samples)
    schedule = schedule if schedule is not None else getattr(denoiser, "schedule", None)
    if schedule is None:
        raise ValueError("pass schedule= (the denoiser has none)")
    start = None
    if settings.init != "none":
        if x_init is None:
            raise MrimsmError(f"init {settings.init!r} needs an initial image (x_init)")
        x_init = x_init.to(y.device)
        if float(settings.t0) == 0.0:  # nothing to run: the initial image itself
            samples = x_init.unsqueeze(0).expand(k, *x_init.shape).clone()
            return _summarize(samples)
        start = (op_full.with_mask(None).full_forward(x_init), round(float(settings.t0) * (schedule.num_steps - 1)))
    chain = sampling_timesteps(schedule, int(settings.steps), None if start is None else start[1])
    images = msm_sample(
        denoiser,
        op_full,
        mask_sampler,
        num_samples=k * b,
        steps=int(settings.steps),
        w=int(settings.w),
        eta=float(settings.eta),
        generator=generator,
        consistency=data_consistency(settings, op_full, H, y, schedule, chain, noise_std),
        progress=_step_progress(on_step),
        image_shape=image_shape,
        schedule=schedule,
        start=start,
        chain=chain,
    )
    return _summarize(images.reshape(k, b, *images.shape[1:]))


def _summarize(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, std, samples)`` of ``(K, B, *image)`` samples (see :func:`posterior_sample`)."""
    k = samples.shape[0]
    mean = samples.mean(0)
    # uncertainty of what is displayed: the magnitude for complex (MRI) images, the
    # value itself for real (natural) images, whose sign matters
    shown = samples.abs() if samples.is_complex() else samples
    std = shown.float().std(0, correction=0) if k > 1 else torch.zeros(mean.shape, dtype=torch.float32)
    return mean, std, samples


# -- the `msm` method of `mrimsm recon` ---------------------------------------------


def default_checkpoint() -> Path:
    """The shipped demonstration model (MultiCoilMRI, trained on simulated data)."""
    if not DEFAULT_CHECKPOINT.exists():
        raise MrimsmError(
            f"the default MSM model is missing ({DEFAULT_CHECKPOINT}); pass --checkpoint or reinstall mrimsm"
        )
    return DEFAULT_CHECKPOINT
