"""MSM training losses on undersampled (and noisy) measurements (docs/method.md section 4).

Each training example is one acquisition ``y = S z + e`` (zeros outside its
mask ``S``; ``e`` with standard deviation ``rho`` per real component on ``S``),
seen through ``op = A_S`` (a :class:`~mrimsm.physics.operators.MaskedMeasurement`
holding the batch's masks, e.g. ``MultiCoilMRI(maps, mask)``). The loss never
needs ``z``, the clean image, or any coordinate outside ``S``.

Notation: ``s_hat(v, t) = A_S x0_hat(A_S^H (sqrt(abar_t) v), t)`` is the clean
local measurement the denoiser predicts from a noisy measurement ``v`` at
level ``sigma_t`` (the VP factor ``sqrt(abar_t)`` is applied here and divided
out again inside :class:`~mrimsm.diffusion.denoiser.MSMDenoiser`). ``n`` is
standard normal per real component on ``S``; ``m`` is the number of measured
**real** degrees of freedom per example (a complex entry counts twice), so
``rho`` and ``sigma_t`` are per-real-component levels and the formulas below
read exactly as in docs/method.md.

Noiseless, ``rho = 0``::

    L = w_t ||s_hat(y + sigma_t n, t) - y||^2 / m

Noisy, ``rho > 0``; ``t_rho`` = largest training step with ``sigma <= rho``::

    y1 = s_hat(y, t_rho)                       pseudo-clean reference
    y2 = s_hat(y + tau n', t_rho)              Monte-Carlo divergence probe n'
    L_SURE = ||y1 - y||^2 / m - rho^2 + 2 rho^2 / (tau m) <n', y2 - y1>
    sigma_t > rho:   v = y + sqrt(sigma_t^2 - rho^2) n               (total level sigma_t)
                     v_rho = v + (sigma_t^2 - rho^2) / sigma_t^2 (s_hat(v, t) - v)
                     L = w_t ||y - v_rho||^2 / m + lambda_SURE L_SURE
    sigma_t <= rho:  L = w_t ||y1' - s_hat(y1' + sigma_t n, t)||^2 / m + lambda_SURE L_SURE,
                     y1' = y1 detached (no gradient through the reference;
                     ``reference_grad=True`` keeps it, as the published code does)

The partial step ``v -> v_rho`` is taken in the measurement domain (exact:
``E[y | v]`` is that combination of ``v`` and ``E[S z | v]``), so its minimiser is
the clean denoiser ``s_hat = E[S z | v]``, not a noisy one. ``L_SURE`` is an
unbiased estimate of ``||y1 - S z||^2 / m`` (Stein), which trains the network
to denoise at the level ``rho`` without clean data.

Everything is operator-generic: images and measurements can be complex MRI
data or real natural images; the operator carries the difference.

Example::

    >>> loss_fn = MSMLoss(VPSchedule(), rho=0.1)
    >>> loss, logs = loss_fn(denoiser, y, MultiCoilMRI(maps, mask), generator)
    >>> loss.backward()
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from mrimsm.diffusion.denoiser import local_estimate
from mrimsm.diffusion.schedule import VPSchedule
from mrimsm.physics.operators import MaskedMeasurement

__all__ = [
    "MSMLoss",
    "gaussian_like",
    "measured_dof",
    "sure_estimate",
    "WEIGHTINGS",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

WEIGHTINGS = ("uniform", "snr", "edm")


# -- small helpers ------------------------------------------------------------


def gaussian_like(y: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard normal noise shaped like ``y``, unit variance **per real component**.

    Complex ``y`` gets ``a + i b`` with ``a, b ~ N(0, 1)`` (so ``E|n|^2 = 2``,
    unlike ``torch.randn`` for complex dtypes). Drawn on the generator's device
    and moved to ``y``'s, so a CPU generator drives CUDA data reproducibly.
    """
    gdev = generator.device if generator is not None else y.device
    if y.is_complex():
        real_dtype = torch.float64 if y.dtype == torch.complex128 else torch.float32
        n = torch.randn((*y.shape, 2), generator=generator, device=gdev, dtype=real_dtype)
        return torch.view_as_complex(n).to(y.device)
    return torch.randn(y.shape, generator=generator, device=gdev, dtype=y.dtype).to(y.device)


def _sum_rest(a: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``(B, ...) -> (B,)``."""
    return a.reshape(a.shape[0], -1).sum(1)


def _sq_norm(a: torch.Tensor) -> torch.Tensor:
    """Per-example ``||a||^2`` (real): ``(B, ...) -> (B,)`` float."""
    return _sum_rest(a.real.square() + a.imag.square() if a.is_complex() else a.square())


def _real_inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example real inner product ``Re <a, b>``: ``(B, ...) -> (B,)``."""
    if a.is_complex() or b.is_complex():
        return _sum_rest((a.conj() * b).real)
    return _sum_rest(a * b)


def measured_dof(op: MaskedMeasurement, y: torch.Tensor) -> torch.Tensor:
    """Measured real degrees of freedom per example, ``m``: ``(B,)`` float32.

    The mask of ``op`` broadcast to ``y``'s shape and summed; complex entries
    count twice (real and imaginary part). Never below 1.
    """
    ones = torch.ones(y.shape, device=y.device, dtype=torch.float32)
    m = _sum_rest(op.apply_mask(ones).expand(y.shape))
    if y.is_complex():
        m = 2 * m
    return m.clamp(min=1.0)


def sure_estimate(
    y: torch.Tensor,
    y1: torch.Tensor,
    y2: torch.Tensor,
    probe: torch.Tensor,
    rho: float,
    tau: float,
    m: torch.Tensor,
) -> torch.Tensor:
    """Monte-Carlo SURE of ``||y1 - S z||^2 / m`` per example.

    Args:
        y: ``(B, ...)`` noisy measurement, noise ``rho`` per real component on ``S``.
        y1: ``f(y)``; y2: ``f(y + tau * probe)``; probe: ``(B, ...)`` standard
            normal per real component on ``S`` (zero elsewhere).
        m: ``(B,)`` measured real degrees of freedom.

    Returns:
        ``(B,)``: ``||y1 - y||^2 / m - rho^2 + 2 rho^2 / (tau m) Re<probe, y2 - y1>``.
    """
    fit = _sq_norm(y1 - y) / m
    div = _real_inner(probe, y2 - y1) / (tau * m)
    return fit - rho**2 + 2 * rho**2 * div


# -- the loss -----------------------------------------------------------------


class MSMLoss:
    """The MSM loss, ``loss, logs = loss_fn(denoiser, y, op, generator)``.

    Args:
        schedule: the diffusion schedule (the denoiser's).
        rho: measurement noise, standard deviation per real component (0 = noiseless).
        lambda_sure: weight of the SURE term (noisy case only).
        tau: probe scale of the Monte-Carlo divergence.
        train_steps: ``t`` is drawn uniformly from ``schedule.respaced(train_steps)``,
            one step per example.
        weighting: ``w_t`` of the consistency term: ``"uniform"`` (1, default: the
            clean-image loss), ``"snr"`` (``1 / sigma_t^2``, the epsilon loss) or
            ``"edm"`` (``(sigma_t^2 + sigma_data^2) / (sigma_t sigma_data)^2``).
        sigma_data: only for ``weighting="edm"``.
        reference_grad: let the pseudo-clean reference carry gradient (published
            code) instead of detaching it (default).

    Call:
        denoiser: ``(u_t, t) -> x0`` (:class:`~mrimsm.diffusion.denoiser.MSMDenoiser`).
        y: ``(B, ...)`` acquired measurement (``(B, C, H, W)`` complex64 k-space for MRI,
            ``(B, K, H, W)`` float32 for natural images); entries outside the mask are
            ignored (zeroed).
        op: the batch's operator ``A_S`` (maps and masks with batch dimension ``B`` or 1).
        generator: torch.Generator for ``t`` and all noise (same seed, same loss).
        t: optional ``(B,)`` int64 steps to use instead of random ones (tests, diagnostics).

    Returns:
        ``(loss, logs)``: scalar tensor with gradient; dict of Python floats:
        ``loss``, ``consistency`` (mean unweighted consistency term), ``sure``
        (mean SURE estimate, noisy case), ``low_noise_fraction`` (examples with
        ``sigma_t <= rho``), ``t_mean``.

    Network evaluations per call: ``B`` (noiseless); ``3B`` in one stacked call
    (noisy), plus ``B`` more when an example falls in the ``sigma_t <= rho`` case.
    The operator must broadcast a leading stack dimension, ``(k, B, ...)``
    (all mrimsm operators do).
    """

    def __init__(
        self,
        schedule: VPSchedule,
        rho: float = 0.0,
        lambda_sure: float = 0.05,
        tau: float = 0.005,
        train_steps: int = 200,
        weighting: str = "uniform",
        sigma_data: float = 0.5,
        reference_grad: bool = False,
    ):
        if rho < 0 or tau <= 0 or lambda_sure < 0:
            raise ValueError("need rho >= 0, tau > 0, lambda_sure >= 0")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.schedule = schedule
        self.rho = float(rho)
        self.lambda_sure = float(lambda_sure)
        self.tau = float(tau)
        self.weighting = weighting
        self.sigma_data = float(sigma_data)
        self.reference_grad = bool(reference_grad)
        self.steps = schedule.respaced(train_steps)
        self.t_rho = schedule.t_for_sigma(self.rho, self.steps) if self.rho > 0 else None

    def __repr__(self) -> str:
        return (
            f"MSMLoss(rho={self.rho}, lambda_sure={self.lambda_sure}, tau={self.tau}, "
            f"train_steps={len(self.steps)}, weighting={self.weighting!r}, t_rho={self.t_rho})"
        )

    # -- pieces ---------------------------------------------------------------
    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """``w_t`` for steps ``t`` ``(B,)`` -> ``(B,)`` float64."""
        sigma = self.schedule.sigma(t)
        if self.weighting == "uniform":
            return torch.ones_like(sigma)
        if self.weighting == "snr":
            return 1.0 / sigma**2
        sd2 = self.sigma_data**2
        return (sigma**2 + sd2) / (sigma**2 * sd2)

    def draw_steps(self, batch: int, generator: Optional[torch.Generator], device) -> torch.Tensor:
        """``(B,)`` int64 steps drawn uniformly from the training steps."""
        gdev = generator.device if generator is not None else "cpu"
        idx = torch.randint(len(self.steps), (batch,), generator=generator, device=gdev).cpu()
        return self.steps[idx].to(device)

    def _scal(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float64 -> float32 broadcastable against ``like`` ``(B, ...)``."""
        return values.to(device=like.device, dtype=torch.float32).view((-1,) + (1,) * (like.dim() - 1))

    def predict(
        self,
        denoiser: Denoiser,
        op: MaskedMeasurement,
        vs: Sequence[torch.Tensor],
        ts: Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        """``s_hat(v, t)`` for several ``(v, t)`` pairs in ONE network call.

        Args:
            vs: ``k`` measurements ``(B, ...)`` at their levels (unscaled, without ``sqrt(abar)``).
            ts: ``k`` step tensors ``(B,)``.

        Returns:
            ``k`` clean local measurements ``A_S x0_hat`` ``(B, ...)``.
        """
        k, b = len(vs), vs[0].shape[0]
        scaled = torch.stack(
            [v * self._scal(torch.sqrt(self.schedule.alpha_bar(t)), v) for v, t in zip(vs, ts)]
        )  # (k, B, ...): y_t = sqrt(abar_t) v
        s = local_estimate(denoiser, op, scaled, torch.cat(list(ts)))  # (k, B, ...)
        return list(s.unbind(0))

    def sure(
        self, denoiser: Denoiser, y: torch.Tensor, op: MaskedMeasurement, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SURE of the pseudo-clean reference alone: ``(L_SURE (B,), y1 (B, ...))``.

        The same computation as inside :meth:`__call__` (two network evaluations per
        example), exposed for tests and diagnostics.
        """
        if self.rho <= 0:
            raise ValueError("SURE needs rho > 0")
        y = op.apply_mask(y)
        t_rho = torch.full((y.shape[0],), self.t_rho, dtype=torch.int64, device=y.device)
        probe = op.apply_mask(gaussian_like(y, generator))
        y1, y2 = self.predict(denoiser, op, [y, y + self.tau * probe], [t_rho, t_rho])
        return sure_estimate(y, y1, y2, probe, self.rho, self.tau, measured_dof(op, y)), y1

    # -- the loss ------------------------------------------------------------
    def __call__(
        self,
        denoiser: Denoiser,
        y: torch.Tensor,
        op: MaskedMeasurement,
        generator: Optional[torch.Generator] = None,
        t: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, dict]:
        y = op.apply_mask(y)  # entries outside S carry nothing
        b = y.shape[0]
        # one step t per example from the respaced training steps
        t = self.draw_steps(b, generator, y.device) if t is None else torch.as_tensor(t, device=y.device)
        sigma = self.schedule.sigma(t)  # (B,) float64, measurement units
        w_t = self.weight(t).to(device=y.device, dtype=torch.float32)  # (B,)
        m = measured_dof(op, y)  # (B,) measured real dof
        n = op.apply_mask(gaussian_like(y, generator))  # diffusion noise on S only

        if self.rho == 0.0:
            # noiseless: v = y + sigma_t n, loss against y on S
            (s_hat,) = self.predict(denoiser, op, [y + self._scal(sigma, y) * n], [t])
            consistency = _sq_norm(s_hat - y) / m
            loss = (w_t * consistency).mean()
            logs = {"loss": loss.item(), "consistency": consistency.mean().item(), "t_mean": t.float().mean().item()}
            return loss, logs

        rho = self.rho
        high = sigma > rho  # (B,) bool: sigma_t > rho case
        t_rho = torch.full_like(t, self.t_rho)
        probe = op.apply_mask(gaussian_like(y, generator))  # SURE probe n'
        # sigma_t > rho: the data already carries rho, add sqrt(sigma_t^2 - rho^2) more
        extra = torch.sqrt(torch.clamp(sigma**2 - rho**2, min=0.0))
        v = y + self._scal(extra, y) * n
        # one stacked call: y1 = s_hat(y, t_rho), y2 = s_hat(y + tau n', t_rho), s_hat(v, t)
        y1, y2, s_hat = self.predict(denoiser, op, [y, y + self.tau * probe, v], [t_rho, t_rho, t])
        l_sure = sure_estimate(y, y1, y2, probe, rho, self.tau, m)

        # partial step from level sigma_t to level rho, in the measurement domain
        c = self._scal(torch.where(high, (sigma**2 - rho**2) / sigma**2, torch.zeros_like(sigma)), y)
        v_rho = v + c * (s_hat - v)
        consistency = _sq_norm(y - v_rho) / m

        low = ~high
        if bool(low.any()):
            # sigma_t <= rho: re-noise the pseudo-clean reference to level sigma_t
            ref = y1 if self.reference_grad else y1.detach()
            (s_low,) = self.predict(denoiser, op, [ref + self._scal(sigma, y) * n], [t])
            consistency_low = _sq_norm(ref - s_low) / m
            consistency = torch.where(high, consistency, consistency_low)

        loss = (w_t * consistency + self.lambda_sure * l_sure).mean()
        logs = {
            "loss": loss.item(),
            "consistency": consistency.mean().item(),
            "sure": l_sure.mean().item(),
            "low_noise_fraction": low.float().mean().item(),
            "t_mean": t.float().mean().item(),
        }
        return loss, logs
