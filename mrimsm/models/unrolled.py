"""The SSDU unrolled network (Yaman et al., 2020), written for the shared operator.

An unrolled network alternates, ``K`` times (10 in the paper), a learned
regulariser and a data-consistency block:

    x_0     = A^H y                                   (zero-filled image)
    z_k     = R(x_{k-1})                              (residual CNN, weights shared over k)
    x_k     = argmin_x ||y - A x||^2 + mu ||x - z_k||^2
            = (A^H A + mu I)^{-1} (A^H y + mu z_k)   (conjugate gradient, learned mu > 0)

``A = M F C`` is :class:`mrimsm.physics.operators.MultiCoilMRI` -- the same
object MSM trains and samples with; nothing here knows about FFTs or coils.
During SSDU training ``M`` is the Theta part of the acquisition mask; at test
time it is the whole acquisition mask.

Pieces (each usable alone):

* :func:`conjugate_gradient` -- batched CG for a Hermitian positive definite
  operator on complex images, a fixed number of iterations with an optional
  early stop, differentiable by autograd through its iterations.
* :class:`ResNetRegularizer` -- SSDU's ResNet: an input convolution, ``num_blocks``
  residual blocks (conv-ReLU-conv, residual scaled by ``res_scale``), a
  convolution, a long skip from the input convolution, and an output
  convolution; 2 real channels (real, imaginary) in and out.
* :class:`DataConsistencyCG` -- the CG block with its learned ``mu``.
* :class:`UnrolledNet` -- the whole network.

Example::

    >>> net = UnrolledNet(num_unrolls=2, num_blocks=2, channels=8)
    >>> maps = torch.randn(1, 4, 32, 32, dtype=torch.complex64) / 2
    >>> op = MultiCoilMRI(maps, mask=torch.rand(1, 1, 1, 32) < 0.4)
    >>> y = op(torch.randn(1, 32, 32, dtype=torch.complex64))
    >>> x = net(y, op)                          # (1, 32, 32) complex64
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mrimsm.physics.operators import LinearOperator
from mrimsm.physics.solvers import conjugate_gradient  # re-exported: SSDU's DC block uses it

__all__ = [
    "conjugate_gradient",
    "complex_to_channels",
    "channels_to_complex",
    "ResidualBlock",
    "ResNetRegularizer",
    "DataConsistencyCG",
    "UnrolledNet",
]


# -- complex <-> 2 real channels -----------------------------------------------


def complex_to_channels(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` complex64 -> ``(B, 2, H, W)`` float32 (real, imaginary)."""
    return torch.view_as_real(x).permute(0, 3, 1, 2).contiguous()


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, H, W)`` float32 -> ``(B, H, W)`` complex64."""
    return torch.view_as_complex(x.permute(0, 2, 3, 1).contiguous())


# -- conjugate gradient ---------------------------------------------------------


# -- regulariser ----------------------------------------------------------------


class ResidualBlock(nn.Module):
    """``x + res_scale * conv(relu(conv(x)))`` with ``channels`` channels, size kept.

    ``(B, channels, H, W)`` float32 -> same.
    """

    def __init__(self, channels: int, res_scale: float = 0.1, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.res_scale = float(res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


class ResNetRegularizer(nn.Module):
    """SSDU's residual CNN regulariser on complex images.

    Layout: conv(2 -> channels) -> ``num_blocks`` :class:`ResidualBlock` ->
    conv(channels -> channels) + long skip from the first conv -> conv(channels -> 2).
    The original uses 15 blocks of 64 channels, 3 x 3 kernels, residual scale 0.1.

    ``forward``: ``(B, H, W)`` complex64 -> ``(B, H, W)`` complex64.
    """

    def __init__(self, channels: int = 64, num_blocks: int = 15, res_scale: float = 0.1, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.head = nn.Conv2d(2, channels, kernel_size, padding=pad)
        self.blocks = nn.Sequential(*[ResidualBlock(channels, res_scale, kernel_size) for _ in range(num_blocks)])
        self.body_out = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.tail = nn.Conv2d(channels, 2, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.head(complex_to_channels(x))
        h = self.body_out(self.blocks(h0)) + h0
        # .float(): under CUDA autocast the convolutions run in half precision; the
        # data-consistency CG must stay complex64
        return channels_to_complex(self.tail(h).float())


# -- data consistency -------------------------------------------------------------


def _inverse_softplus(v: float) -> float:
    return v + math.log(-math.expm1(-v))


class DataConsistencyCG(nn.Module):
    """``x = (A^H A + mu I)^{-1} (A^H y + mu z)`` by conjugate gradient, learned ``mu``.

    ``mu = softplus(raw) > 0`` (initialised to ``mu_init``; SSDU starts at 0.05).
    The CG starts from ``z``. ``forward(z (B, H, W) complex64, aty (B, H, W)
    complex64 = A^H y, op)`` -> ``(B, H, W)`` complex64.
    """

    def __init__(self, mu_init: float = 0.05, cg_iters: int = 10, cg_tol: float = 0.0):
        super().__init__()
        if mu_init <= 0:
            raise ValueError(f"mu_init must be positive, got {mu_init}")
        self.raw_mu = nn.Parameter(torch.tensor(_inverse_softplus(float(mu_init))))
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)

    @property
    def mu(self) -> torch.Tensor:
        """The penalty weight, a positive scalar tensor."""
        return F.softplus(self.raw_mu)

    def forward(self, z: torch.Tensor, aty: torch.Tensor, op: LinearOperator) -> torch.Tensor:
        mu = self.mu.to(z.real.dtype)
        return conjugate_gradient(
            lambda v: op.normal(v) + mu * v,
            aty + mu * z,
            x0=z,
            max_iter=self.cg_iters,
            tol=self.cg_tol,
        )


# -- the network ------------------------------------------------------------------


class UnrolledNet(nn.Module):
    """SSDU's unrolled network: ``num_unrolls`` x (regulariser, CG data consistency).

    Args:
        num_unrolls: ``K`` (SSDU: 10).
        num_blocks, channels, res_scale, kernel_size: the :class:`ResNetRegularizer`
            (SSDU: 15 blocks, 64 channels, 0.1, 3).
        mu_init: initial penalty weight (SSDU: 0.05).
        cg_iters: CG iterations per data-consistency block (SSDU: 10).
        cg_tol: relative residual for CG's early stop (0 = always ``cg_iters``).
        grad_checkpoint: recompute each unroll in the backward pass instead of
            storing its activations (for the full-size network at 256 x 256).

    The regulariser and ``mu`` are shared by all unrolls (as in SSDU).

    ``forward(y, op)``: ``y`` ``(B, C, H, W)`` complex64 measured k-space (zero
    off the mask), ``op`` a :class:`~mrimsm.physics.operators.MultiCoilMRI`
    (or any operator with ``adjoint`` / ``normal``) holding the maps and the mask
    the network may use -> image ``(B, H, W)`` complex64.
    """

    def __init__(
        self,
        num_unrolls: int = 10,
        num_blocks: int = 15,
        channels: int = 64,
        res_scale: float = 0.1,
        kernel_size: int = 3,
        mu_init: float = 0.05,
        cg_iters: int = 10,
        cg_tol: float = 0.0,
        grad_checkpoint: bool = False,
    ):
        super().__init__()
        if num_unrolls < 1:
            raise ValueError(f"num_unrolls must be >= 1, got {num_unrolls}")
        self.num_unrolls = int(num_unrolls)
        self.regularizer = ResNetRegularizer(channels, num_blocks, res_scale, kernel_size)
        self.dc = DataConsistencyCG(mu_init, cg_iters, cg_tol)
        self.grad_checkpoint = bool(grad_checkpoint)

    def _unroll(self, x: torch.Tensor, aty: torch.Tensor, op: LinearOperator) -> torch.Tensor:
        return self.dc(self.regularizer(x), aty, op)

    def forward(self, y: torch.Tensor, op: LinearOperator) -> torch.Tensor:
        aty = op.adjoint(y)
        x = aty
        for _ in range(self.num_unrolls):
            if self.grad_checkpoint and torch.is_grad_enabled():
                x = checkpoint(self._unroll, x, aty, op, use_reentrant=False)
            else:
                x = self._unroll(x, aty, op)
        return x
