"""Augmentations that keep the measurement model exact.

A left-right flip of the object is a reflection about the centre of the
centred FFT grid: index ``j -> (2 * (N // 2) - j) mod N`` (for even ``N`` the
column ``0``, frequency ``-N/2``, maps to itself). The centred orthonormal FFT
commutes with this reflection, so reflecting the image, the coil maps and the
k-space columns (and the column mask) together gives exactly the measurement
of the reflected object through the reflected coils:
``reflect(S F (C x)) = reflect(S) F (reflect(C) reflect(x))``. Only the
column (phase-encode, last) axis is reflected: left-right flips of brain
slices look like brains; up-down flips would not.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["reflect_index", "reflect_columns", "flip_batch"]


def reflect_index(n: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """``(n,)`` int64 indices of the centred-grid reflection ``j -> (2 (n // 2) - j) mod n``."""
    j = torch.arange(n, device=device)
    return (2 * (n // 2) - j) % n


def reflect_columns(x: torch.Tensor) -> torch.Tensor:
    """Reflect the last axis of ``x`` (any dtype) about the centred-grid centre."""
    return x.index_select(-1, reflect_index(x.shape[-1], x.device))


def flip_batch(batch: dict, prob: float, generator: torch.Generator, allowed: Optional[torch.Tensor] = None) -> dict:
    """Left-right flip each example of a measurement batch with probability ``prob``.

    Args:
        batch: ``y`` ``(B, C, H, W)`` complex64 k-space, ``mask`` ``(B, 1, 1, W)`` or
            ``(B, 1, H, W)``, optionally ``maps`` ``(B, C, H, W)`` complex64 and
            ``reference`` ``(B, H, W)``; other keys are passed through.
        prob: flip probability per example.
        generator: a CPU ``torch.Generator`` (the draw is ``(B,)`` uniforms).
        allowed: optional ``(B,)`` bool, the examples that may be flipped (e.g. not
            sagittal slices, whose column axis is anterior-posterior); the draw is the
            same with or without it.

    Returns:
        A new dict; the flipped examples' ``y``, ``maps``, ``mask`` and
        ``reference`` reflected together (module docstring).
    """
    y = batch["y"]
    flip = torch.rand(y.shape[0], generator=generator) < prob
    if allowed is not None:
        flip = flip & allowed.to(device=flip.device, dtype=torch.bool)
    if not bool(flip.any()):
        return dict(batch)
    out = dict(batch)
    sel = flip.to(y.device)
    for key in ("y", "maps", "mask", "reference"):
        v = batch.get(key)
        if isinstance(v, torch.Tensor) and v.shape[0] == y.shape[0]:
            shape = (-1,) + (1,) * (v.dim() - 1)
            out[key] = torch.where(sel.view(shape), reflect_columns(v), v)
    return out
