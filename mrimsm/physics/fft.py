"""Centered, orthonormal 2-D FFT on the last two dimensions.

Convention (the same as fastMRI's ``fft2c`` and sigpy's ``fft(..., center=True)``)::

    fft2c(x)  = fftshift(fft2(ifftshift(x), norm="ortho"))
    ifft2c(y) = fftshift(ifft2(ifftshift(y), norm="ortho"))

For even sizes the shifts are a sign pattern: with ``chk[i, j] = (-1)^(i + j)``
and ``s = (-1)^(H/2 + W/2)``::

    fft2c(x) = s * chk * fft2(chk * x)

which costs two element-wise products instead of two copies with ``roll``.
:func:`centering_signs` returns ``s * chk`` so operators can fold it into
their coil maps and masks (see :mod:`mrimsm.physics.operators`).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["fft2c", "ifft2c", "centering_signs"]


@functools.lru_cache(maxsize=32)
def _signs_cpu(h: int, w: int) -> torch.Tensor:
    i = torch.arange(h).view(h, 1)
    j = torch.arange(w).view(1, w)
    chk = 1.0 - 2.0 * ((i + j) % 2).to(torch.float32)
    return chk


def centering_signs(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Checkerboard ``(-1)^(i + j)`` of shape ``(H, W)`` float32.

    Only meaningful for even ``H`` and ``W``; callers check evenness.
    """
    return _signs_cpu(h, w).to(device)


def _even(x: torch.Tensor) -> bool:
    return x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0


def _global_sign(h: int, w: int) -> float:
    return -1.0 if ((h // 2 + w // 2) % 2) else 1.0


def _centered(x: torch.Tensor, transform) -> torch.Tensor:
    """``fftshift(transform(ifftshift(x), norm="ortho"))`` on the last two dimensions
    (for even sizes as the sign pattern of the module doc), complex64."""
    if not x.is_complex():
        x = x.to(torch.complex64)
    h, w = x.shape[-2:]
    if _even(x):
        chk = centering_signs(h, w, x.device)
        return transform(x * chk, norm="ortho") * (chk * _global_sign(h, w))
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    x = transform(x, norm="ortho")
    return torch.fft.fftshift(x, dim=(-2, -1))


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D FFT.

    Args:
        x: ``(..., H, W)`` complex64 (or real, promoted to complex).

    Returns:
        ``(..., H, W)`` complex64 k-space, DC at ``(H // 2, W // 2)``.
    """
    return _centered(x, torch.fft.fft2)


def ifft2c(y: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D inverse FFT, the exact inverse (and adjoint) of :func:`fft2c`.

    Args:
        y: ``(..., H, W)`` complex64 k-space.

    Returns:
        ``(..., H, W)`` complex64 image.
    """
    return _centered(y, torch.fft.ifft2)
