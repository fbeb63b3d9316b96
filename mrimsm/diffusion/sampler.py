"""Algorithm 1: sampling full measurements with the MSM score (docs/method.md, Algorithm 1).

The state is the full measurement estimate ``z`` (MRI: multi-coil k-space
``(C, H, W)`` per sample), VP-scaled: at step ``t`` it stands for
``sqrt(abar_t) z0 + sqrt(1 - abar_t) n``. Every reverse step ``t -> t_prev``
of the respaced chain (``steps`` of the ``T`` training steps) does:

1. for ``i = 1..w``: draw ``S_i`` from the training mask family; take the local
   measurement ``y_t = S_i z``; denoise it, ``s_hat_i = S_i T x0_hat(A_{S_i}^H y_t, t)``;
   [optional local data consistency on ``s_hat_i``];
2. aggregate ``z0_hat = sum_i S_i s_hat_i / max(sum_i S_i, 1)`` on covered entries,
   keeping the previous ``z0_hat`` elsewhere (the MMSE estimate);
   [optional data consistency on ``z0_hat``: a
   :class:`~mrimsm.diffusion.consistency.DataConsistency` rule];
3. DDIM(eta) step of the state from ``t`` to ``t_prev`` with the clean estimate
   ``z0_hat`` and the implied noise ``eps = (z - sqrt(abar_t) z0_hat) / sqrt(1 - abar_t)``;
   after the last step return ``T^H z0_hat`` (MRI: ``C^H F^H z0_hat``).

As ``w`` grows the aggregation tends to the expectation over masks, so the
sampler tends to the "full" MSM sampler the paper's KL bound compares with
(checked in closed form on Gaussian data in ``tests/test_sampler.py``: the
covariance error to the ideal sampler falls from 0.17 at ``w = 1`` to sampling
noise at ``w = 3``). It is also what the CPU prototype and the authors' code do
(aggregated ``x0``, then one DDIM step). The literal alternative (each local
estimate takes its own DDIM step, written back into ``z`` on ``S_i``)
over-disperses the samples as ``w`` grows; ``tests/test_sampler.py`` keeps it
for that comparison.

Design of the denoiser interface: the sampler talks to the network through a
*local denoiser* ``local_denoise(op_S, y_t, t) -> s_hat``, which maps a
VP-scaled local measurement to the clean local measurement. By default it is
built from an image-domain ``denoiser(u_t, t) -> x0`` (an
:class:`~mrimsm.diffusion.denoiser.MSMDenoiser`) as
``op_S(denoiser(op_S.H(y_t), t))``; tests pass an exact analytic one instead,
so everything but the network call is what runs in production.

Shapes: ``op_full`` has batch ``B`` (its maps; 1 broadcasts). With
``num_samples = N``, ``K = N / B`` samples share each batch element: the state
is ``(K, B, *measurement)`` and sample ``j`` of the output uses batch element
``j % B``. Data-consistency rules and ``local_denoise`` see tensors in that ``(K, B, ...)``
layout, so a test measurement ``y`` of shape ``(B, ...)`` broadcasts against them.

Example::

    >>> sampler = SubmaskSampler(PaperCartesian(4, 20), (256, 256))
    >>> x = msm_sample(den.eval(), MultiCoilMRI(maps), sampler, num_samples=4, steps=200, w=1,
    ...                generator=torch.Generator().manual_seed(0))   # (4, 256, 256) complex64
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from mrimsm.diffusion.consistency import DataConsistency
from mrimsm.diffusion.denoiser import local_estimate
from mrimsm.diffusion.losses import gaussian_like
from mrimsm.diffusion.schedule import VPSchedule
from mrimsm.errors import MrimsmError
from mrimsm.physics.masks import SubmaskSampler
from mrimsm.physics.operators import MaskedMeasurement
from mrimsm.sections import SampleConfig
from mrimsm.settings import check_field

__all__ = ["msm_sample", "sampling_timesteps", "ddim_coefficients", "network_local_denoiser"]

LocalDenoiser = Callable[[MaskedMeasurement, torch.Tensor, int], torch.Tensor]


def sampling_timesteps(schedule: VPSchedule, steps: int, t_start: Optional[int] = None) -> list[tuple[int, int, int]]:
    """The reverse chain as ``(t_index, t, t_prev)`` triples, first to last.

    ``t_index`` counts down ``steps - 1 .. 0`` (the index data-consistency rules receive), ``t`` is
    the original step index fed to the network, ``t_prev`` the next (less noisy)
    step, ``-1`` (clean) after the last. The chain starts at ``T - 1`` (pure noise)
    or, for a warm start, at ``t_start``: ``steps`` steps spread evenly over
    ``0 .. t_start`` (fewer if they would repeat a step).
    """
    if t_start is None or int(t_start) >= schedule.num_steps - 1:
        ts = schedule.respaced(steps).tolist()
    else:
        t_start = int(t_start)
        if t_start < 0:
            raise ValueError(f"t_start must be >= 0, got {t_start}")
        n = max(1, min(int(steps), t_start + 1))
        grid = torch.linspace(0, t_start, n, dtype=torch.float64) if n > 1 else torch.tensor([float(t_start)])
        ts = torch.unique(torch.round(grid).to(torch.int64)).tolist()
    return [(k, ts[k], ts[k - 1] if k > 0 else -1) for k in range(len(ts) - 1, -1, -1)]


def ddim_coefficients(schedule: VPSchedule, t: int, t_prev: int, eta: float) -> dict[str, float]:
    """Scalars of the DDIM step ``x_t -> x_{t_prev}`` given a clean estimate (Python floats).

    ``x_prev = sqrt(abar_prev) x0 + c_eps eps + noise_std n`` with
    ``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``,
    ``noise_std = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``,
    ``c_eps = sqrt(1 - abar_prev - noise_std^2)``. ``a`` is the total coefficient of
    ``x0`` once ``eps`` is expanded (how a change of ``x0`` moves ``x_prev``).
    """
    ab_t = float(schedule.alpha_bar(t))
    ab_p = float(schedule.alpha_bar(t_prev))
    noise_std = eta * math.sqrt(max((1 - ab_p) / (1 - ab_t), 0.0) * max(1 - ab_t / ab_p, 0.0))
    c_eps = math.sqrt(max(1 - ab_p - noise_std**2, 0.0))
    return {
        "sqrt_ab_t": math.sqrt(ab_t),
        "sqrt_1m_ab_t": math.sqrt(1 - ab_t),
        "sqrt_ab_prev": math.sqrt(ab_p),
        "c_eps": c_eps,
        "noise_std": noise_std,
        "a": math.sqrt(ab_p) - c_eps * math.sqrt(ab_t) / math.sqrt(1 - ab_t),
    }


def network_local_denoiser(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> LocalDenoiser:
    """Wrap an image-domain ``denoiser(u_t, t) -> x0`` as ``local_denoise(op_S, y_t, t) -> s_hat``.

    ``y_t`` is ``(K, B, *measurement)``; the network sees ``u = A_S^H y_t``
    flattened to ``(K * B, *image)`` and the step ``t`` for every sample.
    """

    def local(op_s: MaskedMeasurement, y_t: torch.Tensor, t: int) -> torch.Tensor:
        k, b = y_t.shape[:2]
        steps = torch.full((k * b,), int(t), dtype=torch.int64, device=y_t.device)
        return local_estimate(denoiser, op_s, y_t, steps)  # S_i T x0_hat (K, B, *meas)

    return local


def _infer_device(op: MaskedMeasurement, denoiser) -> torch.device:
    """The operator's tensors' device, else the denoiser's parameters', else CPU."""
    for value in vars(op).values():
        if isinstance(value, torch.Tensor):
            return value.device
    if isinstance(denoiser, nn.Module):
        for p in denoiser.parameters():
            return p.device
    return torch.device("cpu")


def as_generator(generator: Optional[torch.Generator | int]) -> torch.Generator:
    """``generator`` itself, a CPU generator seeded with the integer ``generator``, or
    (``None``) one seeded from the OS: the seed argument of the samplers."""
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    if generator is None:
        g.seed()
    else:
        g.manual_seed(int(generator))
    return g


def _check_arguments(num_samples: int, steps: int, w: int, eta: float) -> None:
    """MrimsmError for sampler settings out of range: the rules of ``mrimsm sample``'s
    options, :class:`~mrimsm.sections.SampleConfig`'s fields (for direct callers; the
    commands have checked their settings before)."""
    for label, name, value in (("w (masks per step)", "w", w), ("steps", "steps", steps),
                               ("num_samples", "num", num_samples), ("eta", "eta", eta)):
        check_field(SampleConfig, name, value, label)


def _resolve(denoiser, op_full: MaskedMeasurement, schedule: Optional[VPSchedule],
             local_denoise: Optional[LocalDenoiser], image_shape: Optional[Sequence[int]]):
    """``(schedule, local_denoise, image_shape)`` with their defaults (see :func:`msm_sample`)."""
    schedule = schedule if schedule is not None else getattr(denoiser, "schedule", None)
    if schedule is None:
        raise ValueError("pass schedule= (the denoiser has none)")
    if local_denoise is None:
        if denoiser is None:
            raise ValueError("give a denoiser or a local_denoise")
        local_denoise = network_local_denoiser(denoiser)
    if image_shape is None and not hasattr(op_full, "image_shape"):
        raise ValueError("pass image_shape= for operators without image_shape")
    return schedule, local_denoise, tuple(int(s) for s in (image_shape or op_full.image_shape[1:]))


@contextlib.contextmanager
def _eval_mode(denoiser) -> Iterator[None]:
    """The denoiser in eval mode for the block (an ``nn.Module``'s mode is restored)."""
    was_training = isinstance(denoiser, nn.Module) and denoiser.training
    if isinstance(denoiser, nn.Module):
        denoiser.eval()
    try:
        yield
    finally:
        if was_training:
            denoiser.train()


def _aggregate(local_denoise: LocalDenoiser, op_full: MaskedMeasurement, mask_sampler: SubmaskSampler,
               consistency: DataConsistency, z_t: torch.Tensor, z0_hat: torch.Tensor, t: int, t_index: int,
               w: int, np_rng: np.random.Generator) -> torch.Tensor:
    """Steps 1 and 2 of Algorithm 1 at level ``t``: the ``w`` local estimates of the state
    ``z_t (K, B, *meas)``, aggregated into the new ``z0_hat`` (``z0_hat``: the previous one,
    kept on entries no mask covers)."""
    k, b = z_t.shape[:2]
    acc, cov = torch.zeros_like(z_t), None
    for _ in range(int(w)):
        # step 1: draw S_i from the training family (one per sample); local
        # measurement S_i z -> A_{S_i}^H (S_i z) -> x0_hat -> s_hat_i = S_i T x0_hat
        mask = mask_sampler.draw(k * b, np_rng, device=z_t.device)
        mask = mask.reshape(k, b, *mask.shape[1:])
        op_s = op_full.with_mask(mask)
        s_hat = op_s.apply_mask(local_denoise(op_s, op_s.apply_mask(z_t), t))
        acc = acc + consistency.correct_local(s_hat, op_s, t_index)  # optional local data consistency
        cov = mask if cov is None else cov + mask
    # step 2: MMSE aggregation with weights 1 / max(coverage, 1) on covered
    # entries; uncovered entries keep the previous z0_hat
    covered = (cov > 0).expand_as(z_t)
    return torch.where(covered, acc * SubmaskSampler.weights(cov), z0_hat)


@torch.no_grad()
def msm_sample(
    denoiser: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
    op_full: MaskedMeasurement,
    mask_sampler: SubmaskSampler,
    num_samples: int,
    steps: int = 200,
    w: int = 1,
    eta: float = 1.0,
    generator: Optional[torch.Generator | int] = None,
    consistency: Optional[DataConsistency] = None,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
    *,
    schedule: Optional[VPSchedule] = None,
    local_denoise: Optional[LocalDenoiser] = None,
    image_shape: Optional[Sequence[int]] = None,
    start: Optional[tuple[torch.Tensor, int]] = None,
    chain: Optional[Sequence[tuple[int, int, int]]] = None,
) -> torch.Tensor:
    """Draw ``num_samples`` samples with Algorithm 1: images ``(N, *image)`` (``T^H z0_hat``).

    Args:
        denoiser: image-domain ``(u_t (M, *image), t (M,) int64) -> x0`` (an
            :class:`MSMDenoiser`, put in eval mode here); ``None`` when ``local_denoise`` is given.
        op_full: the operator with no mask (``T``), batch ``B``; mask_sampler: the training
            mask family; num_samples: ``N``, a multiple of ``B``; steps: reverse steps (paper
            200); w: masks per step; eta: DDIM stochasticity (0: deterministic); generator:
            torch.Generator or int seed of all draws (``None``: a fresh seed).
        consistency: the data-consistency rule
            (:class:`~mrimsm.diffusion.consistency.DataConsistency`; ``None``: none).
        progress: wraps the list of steps, e.g. ``tqdm``.
        schedule: defaults to ``denoiser.schedule``.
        local_denoise: ``(op_S, y_t (K, B, *meas), t) -> s_hat`` in place of the network
            (see :func:`network_local_denoiser`).
        image_shape: per-sample image shape; default ``op_full.image_shape[1:]`` (required
            for operators without one, e.g. ``Identity``: ``(K, H, W)``).
        start: warm start ``(z_init, t_start)``: the chain starts at ``t_start`` from
            ``sqrt(abar) z_init + sqrt(1 - abar) n`` (SDEdit style); ``z_init`` ``(B, *meas)`` or
            ``(K, B, *meas)`` is the full measurement of an initial image and the clean
            estimate on entries no mask covers before the first aggregation.
        chain: the reverse chain, :func:`sampling_timesteps` (default: of ``steps`` and ``start``).
    """
    _check_arguments(num_samples, steps, w, eta)
    schedule, local_denoise, image_shape = _resolve(denoiser, op_full, schedule, local_denoise, image_shape)
    op_full = op_full.with_mask(None)
    device = _infer_device(op_full, denoiser)
    g = as_generator(generator)
    np_rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    # measurement layout: (B, *meas) from T applied to a zero image; state (K, B, *meas)
    z_like = op_full.full_forward(torch.zeros((1, *image_shape), device=device))
    b, n = z_like.shape[0], int(num_samples)
    if n % b:
        raise MrimsmError(f"num_samples ({n}) must be a multiple of the operator's batch ({b})")
    consistency = consistency if consistency is not None else DataConsistency()
    graph = consistency.needs_graph
    if chain is None:
        chain = sampling_timesteps(schedule, steps, None if start is None else int(start[1]))
    with _eval_mode(denoiser):
        # start: z_T ~ N(0, I) per real component, no clean estimate yet; or a warm
        # start: the initial measurement noised to the starting step
        z = gaussian_like(torch.zeros((n // b, b, *z_like.shape[1:]), dtype=z_like.dtype, device=device), g)
        z0_hat = torch.zeros_like(z)
        if start is not None:
            z0_hat = z0_hat + start[0].to(device=device, dtype=z.dtype)
            ab = float(schedule.alpha_bar(chain[0][1]))
            z = math.sqrt(ab) * z0_hat + math.sqrt(1 - ab) * z
        for t_index, t, t_prev in progress(chain) if progress is not None else chain:
            co = ddim_coefficients(schedule, t, t_prev, float(eta))
            z_t = z.detach().requires_grad_() if graph else z  # the state at level t
            with torch.enable_grad() if graph else contextlib.nullcontext():
                # steps 1-2: w local estimates, aggregated; then data consistency on z0_hat
                z0_hat = _aggregate(local_denoise, op_full, mask_sampler, consistency, z_t, z0_hat, t, t_index,
                                    w, np_rng)
                z0_hat = consistency.correct(z0_hat, t_index, z_t)
            z0_hat, z_t = z0_hat.detach(), z_t.detach()
            # step 3: DDIM(eta) step of the whole state from z0_hat, t -> t_prev
            eps = (z_t - co["sqrt_ab_t"] * z0_hat) / co["sqrt_1m_ab_t"]
            z = co["sqrt_ab_prev"] * z0_hat + co["c_eps"] * eps
            if co["noise_std"] > 0:
                z = z + co["noise_std"] * gaussian_like(z, g)
        # the image T^H z0_hat
        images = op_full.full_adjoint(z0_hat)
    return images.reshape(n, *images.shape[2:])
