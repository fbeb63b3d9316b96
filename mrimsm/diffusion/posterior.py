"""Posterior sampling for linear inverse problems with the MSM prior (method.md section 6).

Algorithm 1 (:func:`mrimsm.diffusion.sampler.msm_sample`) plus a data-consistency
step on the aggregated clean estimate at every reverse step::

    z0_hat <- z0_hat - step * H^+ (H z0_hat - y)

``H`` acts on the full measurement ``z`` (MRI: the test scan's own Cartesian
mask on multi-coil k-space, through the same operator module; faces: a box mask
or 4x average pooling on the image itself, ``T = I``). ``H^+`` is the operator's
pseudo-inverse where it has one (``Downsample.pseudo_inverse``) and its adjoint
otherwise (exact for 0/1 masks). With ``step = 1`` this *replaces* the measured
entries by ``y`` (the gradient step on ``||y - H z||^2`` with ``gamma = 1/2``),
the natural default for test noise of 0.01; ``step = 2`` is what the authors'
published code does (it reflects the estimate to ``2 y - s_hat`` on measured
entries); ``step`` in between relaxes it. ``placement="local"`` applies the step to
each local estimate inside the ``w`` loop instead, as the published code does.

``K = num_samples`` posterior samples per slice are drawn in one batch; the
reconstruction is their mean and the pixel-wise standard deviation (of the
magnitude for complex MRI images, of the value for real images) is the
uncertainty map.

The same code serves MRI and natural images: no branch on the data kind here;
the operators carry the difference.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch

from mrimsm.errors import MrimsmError
from mrimsm.physics.masks import SubmaskSampler
from mrimsm.physics.operators import Identity, LinearOperator, MaskedMeasurement, MultiCoilMRI

__all__ = [
    "PosteriorSettings",
    "load_posterior_settings",
    "measurement_consistency",
    "posterior_sample",
    "default_checkpoint",
    "make_msm_method",
]

PLACEMENTS = ("global", "local")

#: Where the shipped default MSM model lives (inside the installed package).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "default_msm.pt"
#: The CS-MRI settings file (paper defaults), beside the package in a source checkout.
DEFAULT_SETTINGS_FILE = Path(__file__).resolve().parents[2] / "configs" / "recon_csmri.yaml"


@dataclass
class PosteriorSettings:
    """Solver settings (``configs/recon_csmri.yaml``).

    Attributes:
        steps: respaced reverse steps (paper: 200).
        w: masks (network evaluations) per step (paper, inverse problems: 3).
        eta: DDIM stochasticity (paper CS-MRI: 0.85).
        samples: posterior samples per slice (mean = reconstruction, std = uncertainty).
        dc_step: data-consistency step on the residual (1 = replace measured entries by y).
        placement: ``global`` (after aggregation, the paper's text) or ``local``
            (on each local estimate, the published code).
        batch_slices: slices denoised together (memory vs. speed).
    """

    steps: int = 200
    w: int = 3
    eta: float = 0.85
    samples: int = 4
    dc_step: float = 1.0
    placement: str = "global"
    batch_slices: int = 4

    def validate(self) -> "PosteriorSettings":
        if int(self.steps) < 1:
            raise MrimsmError(f"--steps must be >= 1, got {self.steps}")
        if int(self.w) < 1:
            raise MrimsmError(f"--w must be >= 1, got {self.w}")
        if int(self.samples) < 1:
            raise MrimsmError(f"--samples must be >= 1, got {self.samples}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise MrimsmError(f"eta must be in [0, 1], got {self.eta}")
        if not 0.0 <= float(self.dc_step) <= 2.0:
            raise MrimsmError(f"dc_step must be in [0, 2], got {self.dc_step}")
        if self.placement not in PLACEMENTS:
            raise MrimsmError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if int(self.batch_slices) < 1:
            raise MrimsmError(f"batch_slices must be >= 1, got {self.batch_slices}")
        return self


def load_posterior_settings(path: Optional[str | Path] = None, **overrides: Any) -> PosteriorSettings:
    """Settings from a YAML file (``posterior:`` section or top level), then overrides.

    Unknown keys are an error; ``None`` overrides are ignored. Without a file the
    defaults of :class:`PosteriorSettings` (the paper's CS-MRI setting) apply.
    """
    values: dict[str, Any] = {}
    if path is None and DEFAULT_SETTINGS_FILE.exists():
        path = DEFAULT_SETTINGS_FILE
    if path is not None:
        import yaml

        p = Path(path)
        if not p.exists():
            raise MrimsmError(f"settings file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MrimsmError(f"{p} is not valid YAML ({str(exc).splitlines()[0]})") from None
        data = data.get("posterior", data) if isinstance(data, dict) else None
        if not isinstance(data, dict):
            raise MrimsmError(f"{p}: expected a mapping of solver settings")
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(PosteriorSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise MrimsmError(f"unknown posterior setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return PosteriorSettings(**values).validate()


def _pinv(op: LinearOperator) -> Callable[[torch.Tensor], torch.Tensor]:
    return getattr(op, "pseudo_inverse", op.adjoint)


def measurement_consistency(H: LinearOperator, y: torch.Tensor, step: float = 1.0):
    """The data-consistency hook ``z -> z - step * H^+ (H z - y)``.

    Args:
        H: operator on the full measurement (``Identity(mask)`` for a Cartesian
            k-space mask, ``BoxMask``, ``Downsample``).
        y: observation ``(B, *obs)``; broadcasts against the sampler's ``(K, B, *meas)``.
        step: 1 projects onto ``{H z = y}`` (replacement for masks).

    Returns:
        ``hook(z, t_index) -> z`` for :func:`msm_sample`'s ``data_consistency``, and
        usable as its ``local_consistency`` through :func:`_local`.
    """
    pinv = _pinv(H)

    def hook(z: torch.Tensor, t_index: int) -> torch.Tensor:
        return z - step * pinv(H(z) - y)

    return hook


def _local(hook):
    def local(s_hat: torch.Tensor, op_s: MaskedMeasurement, t_index: int) -> torch.Tensor:
        # the local estimate lives on S_i only: correct it there
        return op_s.apply_mask(hook(s_hat, t_index))

    return local


def _step_progress(on_step: Optional[Callable[[int, int], None]]):
    if on_step is None:
        return None

    def wrap(chain: Sequence) -> Iterable:
        total = len(chain)
        for i, item in enumerate(chain):
            yield item
            on_step(i + 1, total)

    return wrap


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

    Returns:
        ``(mean (B, *image), std (B, *image) float32, samples (K, B, *image))``:
        the posterior mean, the pixel-wise std over the ``K`` samples of the
        magnitude (complex images) or of the value (real images), zeros for
        ``K = 1``, and the samples themselves.
    """
    from mrimsm.diffusion.sampler import msm_sample

    settings.validate()
    hook = measurement_consistency(H, y, float(settings.dc_step))
    b = y.shape[0]
    k = int(settings.samples)
    images = msm_sample(
        denoiser,
        op_full,
        mask_sampler,
        num_samples=k * b,
        steps=int(settings.steps),
        w=int(settings.w),
        eta=float(settings.eta),
        generator=generator,
        data_consistency=hook if settings.placement == "global" else None,
        local_consistency=_local(hook) if settings.placement == "local" else None,
        progress=_step_progress(on_step),
        image_shape=image_shape,
    )
    samples = images.reshape(k, b, *images.shape[1:])
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


def _batch_seed(seeds: Sequence[int]) -> int:
    text = ",".join(str(int(s)) for s in seeds).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def make_msm_method(options: Mapping[str, Any]):
    """Factory for ``mrimsm recon --method msm``.

    Options read: ``checkpoint`` (default: the shipped model), ``settings`` (YAML),
    ``steps``, ``w``, ``eta``, ``samples``, ``dc_step``, ``placement``, ``device``.
    The randomness of a batch of slices is seeded from the slices' seeds, so a
    run is reproducible (for a given ``batch_slices``).
    """
    from mrimsm.diffusion.method import load_msm, training_mask_family

    settings = load_posterior_settings(
        options.get("settings"),
        **{k: options.get(k) for k in ("steps", "w", "eta", "samples", "dc_step", "placement", "batch_slices")},
    )
    device = torch.device(options.get("device") or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MrimsmError("--device cuda asked for, but no CUDA device is available")
    from mrimsm.diffusion import shipped

    models: dict = {}  # path -> (loaded, family, shipped prior or None)

    def model_for(path, prior):
        if path not in models:
            loaded = load_msm(path, device=device)
            meta = loaded.meta
            if meta.get("operator") != "MultiCoilMRI":
                raise MrimsmError(f"{loaded.path} was trained on {meta.get('operator')} data, not multi-coil MRI")
            num_steps = int(meta.get("schedule", {}).get("num_steps", 1000))
            if settings.steps > num_steps:
                raise MrimsmError(f"--steps must be <= {num_steps} (the model's schedule), got {settings.steps}")
            models[path] = (loaded, training_mask_family(meta), prior)
        return models[path]

    checkpoint = options.get("checkpoint")
    if checkpoint:  # load now: a bad --checkpoint fails before any work
        model_for(checkpoint, None)

    def method(batch):
        from mrimsm.recon import MethodOutput

        shape = tuple(batch.kspace.shape[-2:])
        if checkpoint:
            loaded, family, prior = model_for(checkpoint, None)
        else:  # the shipped prior for this scan size (mrimsm/diffusion/shipped.py)
            choice = shipped.choose_shipped_prior(shape)
            loaded, family, prior = model_for(choice.path, choice)
        model_shape = tuple(int(s) for s in loaded.meta["image_shape"])
        shipped.check_scan_size(loaded.config, model_shape, shape, loaded.path)
        maps = batch.maps.to(device)
        mask = batch.mask.to(device)
        y = batch.kspace.to(device) * mask
        op_full = MultiCoilMRI(maps, None)
        H = Identity(mask)  # the test scan's own sampling, on the full k-space
        gen = torch.Generator().manual_seed(_batch_seed(batch.seeds))
        mean, std, _ = posterior_sample(
            loaded.denoiser, op_full, H, y, SubmaskSampler(family, shape), settings,
            generator=gen, on_step=batch.on_step,
        )
        return MethodOutput(
            images=mean.detach().cpu().to(torch.complex64),
            uncertainty=std.detach().cpu() if settings.samples > 1 else None,
            info={
                "nfe_per_slice": settings.steps * settings.w * settings.samples,
                "steps": settings.steps,
                "w": settings.w,
                "samples": settings.samples,
                "checkpoint": str(loaded.path),
                "model": shipped.describe(prior, loaded.path, loaded.step, model_shape),
            },
        )

    method.batch_slices = int(settings.batch_slices)  # the pipeline batches slices by this
    # recorded in each output (checkpoints by hash): the solver settings whole, and the model
    # given, or every shipped one installed (which one a scan gets depends on its size)
    method.settings = {**asdict(settings), **({"checkpoint": str(checkpoint)} if checkpoint else {
        f"shipped_checkpoint {p.file}": str(p.path) for p in shipped.SHIPPED_PRIORS if p.path.exists()})}
    return method


def _register() -> None:
    from mrimsm.recon import register_method

    register_method(
        "msm",
        make_msm_method,
        needs_normalization=True,
        batch_slices=PosteriorSettings.batch_slices,
        description="MSM diffusion prior + data consistency (Algorithm 1)",
        replace=True,
    )


_register()
