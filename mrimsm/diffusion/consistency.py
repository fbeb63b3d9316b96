"""Data consistency for Algorithm 1: objects that pull the sampler's clean estimates toward a
test observation ``y = H z + e`` (docs/method.md section 6).

One object per rule, as deepinv's ``DataFidelity``: the rule holds its operator and data
and :func:`mrimsm.diffusion.sampler.msm_sample` calls it at fixed places of each reverse
step. :meth:`DataConsistency.correct` acts on the aggregated clean estimate ``z0_hat``
(step 2, before the DDIM step), :meth:`DataConsistency.correct_local` on each local
estimate ``s_hat_i`` (step 1); the base class leaves both unchanged. A rule with
``needs_graph = True`` gets ``z0_hat`` as a differentiable function of the state ``z_t``.

Tensors are in the sampler's ``(K, B, *meas)`` layout (``K`` samples per batch element);
``y`` is ``(B, *obs)`` and broadcasts against them.

Example::

    >>> dc = OperatorConsistency(MultiCoilMRI(maps), Identity(mask), y, lam=0.0, iters=10)
    >>> x = msm_sample(den, MultiCoilMRI(maps), sampler, 4, steps=50, consistency=dc)
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from mrimsm.physics.operators import LinearOperator, MaskedMeasurement
from mrimsm.physics.solvers import conjugate_gradient

__all__ = [
    "DataConsistency", "MeasurementConsistency", "OperatorConsistency", "TweedieConsistency", "LocalPlacement",
]


class DataConsistency:
    """No data consistency; the base of the rules (override one or both methods).

    Attributes:
        needs_graph: :meth:`correct` differentiates ``z0_hat`` with respect to ``z_t``: the
            sampler then runs the network calls of the step with gradients on.
    """

    needs_graph: bool = False

    def correct(self, z0_hat: torch.Tensor, t_index: int, z_t: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The aggregated estimate ``z0_hat (K, B, *meas)`` corrected at step ``t_index``
        (``steps - 1 .. 0``); ``z_t``: the state at this level (a graph leaf when
        :attr:`needs_graph`)."""
        return z0_hat

    def correct_local(self, s_hat: torch.Tensor, op_s: MaskedMeasurement, t_index: int) -> torch.Tensor:
        """The local estimate ``s_hat (K, B, *meas)`` on the mask of ``op_s`` corrected
        (zero off that mask)."""
        return s_hat


class MeasurementConsistency(DataConsistency):
    """``z <- z - step * H^+ (H z - y)`` on the measurement.

    Args:
        H: operator on the full measurement (``Identity(mask)`` for a Cartesian k-space
            mask, ``BoxMask``, ``Downsample``); ``H^+`` its ``pseudo_inverse``, else its adjoint.
        y: observation ``(B, *obs)``.
        step: 1 projects onto ``{H z = y}`` (replacement for masks); 2 reflects.
    """

    def __init__(self, H: LinearOperator, y: torch.Tensor, step: float = 1.0) -> None:
        self.H, self.y, self.step = H, y, float(step)
        self.pinv = H.pseudo_inverse if hasattr(H, "pseudo_inverse") else H.adjoint

    def correct(self, z0_hat: torch.Tensor, t_index: int, z_t: Optional[torch.Tensor] = None) -> torch.Tensor:
        return z0_hat - self.step * self.pinv(self.H(z0_hat) - self.y)


class OperatorConsistency(DataConsistency):
    """A solve on the image through the test operator.

    With ``A = H T`` (MRI: ``M F C``, the coils used; ``T = I``: ``H`` itself) and the
    image of the clean estimate ``x_bar = T^H z0_hat``::

        x~ = argmin_x ||A x - y||^2 + lambda_t ||x - x_bar||^2,     z0_hat <- T x~

    by ``iters`` conjugate-gradient steps on ``(A^H A + lambda_t I) x = A^H y + lambda_t x_bar``
    started at ``x_bar``. ``lambda_t = 0`` is the projection of ``x_bar`` onto
    ``{A x = y}`` (CG from ``x_bar`` stays in ``x_bar + range(A^H)``); for a 0/1 mask or
    average pooling with ``T = I`` one iteration is exact, so this equals
    :class:`MeasurementConsistency` with ``step = 1`` (tested). The result also lies in
    the range of ``T`` (MRI: k-space of one coil-combined image).

    Args:
        op_full: ``T`` (any mask on it is ignored), batch ``B``.
        H: test operator on the full measurement; ``y = H z + e`` is ``(B, *obs)``.
        lam: ``lambda_t`` >= 0, a number or a function of the step's ``t_index``.
        iters: CG iterations.
    """

    def __init__(self, op_full: MaskedMeasurement, H: LinearOperator, y: torch.Tensor,
                 lam: float | Callable[[int], float] = 0.0, iters: int = 10) -> None:
        self.T, self.H, self.iters = op_full.with_mask(None), H, int(iters)
        self.rhs_data = self.T.full_adjoint(H.adjoint(y))  # A^H y, (B, *image)
        self.lam_at = lam if callable(lam) else (lambda t_index: float(lam))

    def correct(self, z0_hat: torch.Tensor, t_index: int, z_t: Optional[torch.Tensor] = None) -> torch.Tensor:
        T, H = self.T, self.H
        lam_t = float(self.lam_at(t_index))
        x_bar = T.full_adjoint(z0_hat)  # (K, B, *image)

        def normal(x: torch.Tensor) -> torch.Tensor:
            return T.full_adjoint(H.adjoint(H(T.full_forward(x)))) + lam_t * x

        x = conjugate_gradient(normal, self.rhs_data + lam_t * x_bar, x0=x_bar, max_iter=self.iters, batch_dims=2)
        return T.full_forward(x)


class TweedieConsistency(DataConsistency):
    """Gaussian conditioning with the denoiser's own covariance.

    Tweedie: the clean estimate ``m = E[z0 | z_t]`` has covariance
    ``Cov[z0 | z_t] = sigma_t^2 J`` with ``J = dm / dx_t`` (``x_t = z_t / sqrt(abar_t)``,
    per real component). Conditioning that Gaussian on ``y = H z0 + e`` (``e``: std
    ``noise_std`` per real component) gives::

        z0_hat <- m + C H^T u,    (H C H^T + noise_std^2 I) u = y - H m,    C = sigma_t^2 J^T

    solved by ``iters`` conjugate-gradient steps in the observation space, each a
    vector-Jacobian product through the aggregated network estimate (one backward
    pass of the ``w`` network calls). For a Gaussian prior with exact denoisers this is
    ``E[z0 | z_t, y]``, so the sampler draws from the true posterior (tested against
    the closed form); the ``operator`` and ``measurement`` rules replace ``J`` by a
    multiple of the identity, which conditions only what ``H`` sees directly. ``J^T``
    is used for ``J`` (equal for an exact MMSE denoiser, whose Jacobian is symmetric).

    Args:
        H, y: the test operator and observation; schedule: the diffusion schedule;
        chain: the sampler's ``(t_index, t, t_prev)`` steps; noise_std, iters: as above.
    """

    needs_graph = True

    def __init__(self, H: LinearOperator, y: torch.Tensor, schedule, chain: Sequence,
                 noise_std: float = 0.01, iters: int = 5) -> None:
        self.H, self.y, self.iters = H, y, int(iters)
        self.coef = {ti: (float(schedule.sigma(t)) ** 2, math.sqrt(float(schedule.alpha_bar(t)))) for ti, t, _ in chain}
        self.jitter = max(float(noise_std) ** 2, 1e-8)

    def correct(self, z0_hat: torch.Tensor, t_index: int, z_t: Optional[torch.Tensor] = None) -> torch.Tensor:
        H, m = self.H, z0_hat
        s2, c = self.coef[t_index]

        def cov(v: torch.Tensor) -> torch.Tensor:  # C v = sigma^2 J^T v, J w.r.t. x_t = z_t / c
            (g,) = torch.autograd.grad(m, z_t, v, retain_graph=True)
            return s2 * c * g

        with torch.no_grad():
            r = self.y - H(m)
        u = conjugate_gradient(lambda v: H(cov(H.adjoint(v))) + self.jitter * v, r, max_iter=self.iters, batch_dims=2)
        return (m + cov(H.adjoint(u))).detach()


class LocalPlacement(DataConsistency):
    """``rule`` applied to each local estimate instead of the aggregate (the published
    code's placement): ``s_hat <- S_i rule(s_hat)``; the aggregate is left unchanged."""

    def __init__(self, rule: DataConsistency) -> None:
        self.rule = rule

    def correct_local(self, s_hat: torch.Tensor, op_s: MaskedMeasurement, t_index: int) -> torch.Tensor:
        # the local estimate lives on S_i only: correct it there
        return op_s.apply_mask(self.rule.correct(s_hat, t_index))
