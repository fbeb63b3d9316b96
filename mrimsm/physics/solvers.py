"""Linear solvers on the measurement operators.

:func:`conjugate_gradient` solves ``A x = b`` for Hermitian positive definite
``A`` (batched, differentiable through its unrolled iterations). Two users:
SSDU's data-consistency block, ``(A^H M A + mu I) x = A^H y``
(:mod:`mrimsm.models.unrolled`), and the MSM denoiser's ``projection`` skip, the
least-squares image ``A_S^H A_S x = A_S^H v`` (:mod:`mrimsm.diffusion.denoiser`).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["conjugate_gradient"]


def _dot(a: torch.Tensor, b: torch.Tensor, dims: tuple) -> torch.Tensor:
    """Real part of ``<a, b> = sum conj(a) b`` over ``dims`` (keeps them as size 1)."""
    return (a.conj() * b).real.sum(dim=dims, keepdim=True)


def conjugate_gradient(
    apply_a: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: Optional[torch.Tensor] = None,
    max_iter: int = 10,
    tol: float = 0.0,
    batch_dims: int = 1,
) -> torch.Tensor:
    """Solve ``A x = b`` for a Hermitian positive definite ``A``, batched.

    Args:
        apply_a: ``x -> A x`` (same shape as ``x``), linear and Hermitian
            positive definite per batch item, e.g. ``lambda x: op.normal(x) + mu * x``
            (an item that meets a direction of non-positive curvature stops there).
        b: right-hand side ``(B, ...)``, complex or real (``(B, H, W)`` complex64 here).
        x0: starting point (default zeros).
        max_iter: at most this many iterations (SSDU: 10).
        tol: stop an item once ``||b - A x|| <= tol * ||b||``; iterations stop when
            every item has converged. ``0`` runs exactly ``max_iter`` iterations
            (no host synchronisation, what training uses).
        batch_dims: leading dimensions that index independent systems (each
            gets its own step sizes); the rest are summed in the inner products.

    Returns:
        ``x`` with ``b``'s shape and dtype. Gradients flow to ``b``, ``x0`` and
        any parameters inside ``apply_a`` through the unrolled iterations.
    """
    dims = tuple(range(batch_dims, b.dim()))
    x = torch.zeros_like(b) if x0 is None else x0
    r = b - apply_a(x) if x0 is not None else b
    p = r
    rs = _dot(r, r, dims)
    tiny = torch.finfo(rs.dtype).tiny
    stop = None
    if tol > 0:
        stop = (tol**2) * _dot(b, b, dims)
    for _ in range(max_iter):
        if stop is not None:
            active = rs > stop
            if not bool(active.any()):
                break
        ap = apply_a(p)
        p_ap = _dot(p, ap, dims)
        # an item whose operator shows no positive curvature along p (only possible when
        # A is not positive definite, e.g. a network's Jacobian) stops where it is
        alpha = torch.where(p_ap > tiny, rs / p_ap.clamp_min(tiny), torch.zeros_like(rs))
        if stop is not None:
            alpha = torch.where(active, alpha, torch.zeros_like(alpha))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _dot(r, r, dims)
        beta = rs_new / rs.clamp_min(tiny)
        if stop is not None:
            beta = torch.where(active, beta, torch.zeros_like(beta))
        p = r + beta * p
        rs = rs_new
    return x
