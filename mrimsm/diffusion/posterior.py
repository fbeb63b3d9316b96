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
from mrimsm.physics.masks import SubmaskSampler
from mrimsm.physics.operators import LinearOperator, MaskedMeasurement
from mrimsm.settings import SettingError, validate_dataclass, yaml_loader
from mrimsm.solver_settings import PosteriorSettings

__all__ = [
    "PosteriorSettings",
    "load_posterior_settings",
    "data_consistency",
    "posterior_sample",
    "default_checkpoint",
]

#: The shipped 64 x 64 demonstration prior (the first of :data:`mrimsm.diffusion.shipped.SHIPPED_PRIORS`).
DEFAULT_CHECKPOINT = SHIPPED_PRIORS[0].path


def load_posterior_settings(path: Optional[str | Path] = None, **overrides: Any) -> PosteriorSettings:
    """Settings from a YAML file (``posterior:`` section or top level), then overrides.

    The file's keys and the overrides are checked against :class:`PosteriorSettings`' field
    annotations (one-line MrimsmError naming the key, and the file for the file's keys);
    ``None`` overrides are ignored. Keys neither the file nor the overrides give (all of them
    without a file) take :class:`PosteriorSettings`' defaults.
    """
    values = {} if path is None else _read_settings_file(Path(path))
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = validate_dataclass(PosteriorSettings, {**values, **given})
    except SettingError as exc:
        name = exc.key.split(".")[0].split("[")[0]
        where = f"{path}: " if name in values and name not in given else ""
        if exc.kind == "unknown":
            known = ", ".join(sorted(exc.allowed))
            raise MrimsmError(f"{where}unknown posterior setting {exc.key} (known: {known})") from None
        raise MrimsmError(f"{where}{exc.key} {exc.message}") from None
    return settings.validate()


def _read_settings_file(p: Path) -> dict[str, Any]:
    """The mapping of solver settings in YAML file ``p`` (its ``posterior:`` section, or the
    top level); one-line MrimsmError for a missing, unreadable or malformed file."""
    import yaml

    if p.is_dir():
        raise MrimsmError(f"settings file {p} is a directory; give a YAML file of solver settings "
                          f"(e.g. a copy of mrimsm/assets/default_msm256.recon.yaml)")
    if not p.exists():
        raise MrimsmError(f"settings file {p} does not exist")
    try:
        data = yaml.load(p.read_text(), Loader=yaml_loader()) or {}
    except yaml.YAMLError as exc:
        raise MrimsmError(f"{p} is not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise MrimsmError(f"{p}: not a text file") from None
    except OSError as exc:
        raise MrimsmError(f"cannot read settings file {p}: {exc.strerror or exc}") from None
    data = data.get("posterior", data) if isinstance(data, dict) else None
    if not isinstance(data, dict):
        raise MrimsmError(f"{p}: expected a mapping of solver settings")
    return data


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

    settings = settings.validate()  # the same rules as the YAML and the flags, for direct callers
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

    def run(count: int, H_run: LinearOperator, y_run: torch.Tensor, gen, progress) -> torch.Tensor:
        return msm_sample(
            denoiser,
            op_full,
            mask_sampler,
            num_samples=count * b,
            steps=int(settings.steps),
            w=int(settings.w),
            eta=float(settings.eta),
            generator=gen,
            consistency=data_consistency(settings, op_full, H_run, y_run, schedule, chain, noise_std),
            progress=progress,
            image_shape=image_shape,
            schedule=schedule,
            start=start,
            chain=chain,
        )

    if float(settings.bootstrap) == 0.0:
        images = run(k, H, y, generator, _step_progress(on_step))
        return _summarize(images.reshape(k, b, *images.shape[1:]))
    return _summarize(torch.stack(_bootstrap_samples(run, H, y, settings, k, generator, on_step, len(chain))))


def _bootstrap_samples(run: Callable, H: LinearOperator, y: torch.Tensor, settings: PosteriorSettings, k: int,
                       generator, on_step: Optional[Callable[[int, int], None]], steps: int) -> list[torch.Tensor]:
    """The ``k`` samples of ``settings.bootstrap > 0``, one chain each through its own
    subset of the acquired data (:func:`mrimsm.physics.masks.bootstrap_masks`), each
    ``(B, *image)``; ``on_step`` counts the steps of all ``k`` chains."""
    from mrimsm.diffusion.sampler import as_generator
    from mrimsm.physics.masks import bootstrap_masks

    mask = getattr(H, "mask", None)
    if not isinstance(H, MaskedMeasurement) or mask is None:
        raise MrimsmError("bootstrap needs a masked test operator (a k-space or pixel mask)")
    gen = as_generator(generator)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    samples = []
    for i, sub in enumerate(bootstrap_masks(mask, float(settings.bootstrap), k, seed)):
        done = i * steps
        progress = _step_progress(None if on_step is None else
                                  (lambda d, _t, done=done: on_step(done + d, k * steps)))
        samples.append(run(1, H.with_mask(sub), y * sub, gen, progress))
    return samples


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
