"""Peak memory of a network's forward pass, estimated before running it, and the memory
the device has free: the guard that turns "the allocator died after 20 s" into a
one-line error up front.

The estimate runs the network once at a small proxy size with forward hooks and scales
what it saw to the real size: activations grow with the pixel count ``r = HW / hw``, the
self-attention scores with ``r^2`` (``B x heads x N x N`` float32, materialized by the
CPU's ``scaled_dot_product_attention``; 2000 x 2000 with the shipped image prior asks for
500 GB, as the estimate says). It counts, for a batch of ``B`` images (no gradients):

* the encoder outputs a UNet keeps for its skip connections (``net.down`` children and
  ``net.input_conv``),
* a working set of 6 of the largest activation (a residual block's input, norm, conv and
  concatenation outputs alive together),
* the largest attention score matrix, twice (scores and softmax).

It is meant to be within a factor of about 2 (measured against the peak RSS in
``tests/test_faults.py``), which is what a refuse-or-run decision needs.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import nn

from mrimsm.limits import available_bytes  # noqa: F401 (re-exported)

__all__ = ["forward_bytes", "available_bytes", "largest_square"]

_FLOAT = 4  # bytes of float32


@torch.no_grad()
def _profile(net: nn.Module, in_channels: Optional[int]) -> tuple[int, int, int, int, int]:
    """``(kept, largest, attention, side, params)`` per image at the proxy size ``side``."""
    from mrimsm.models.unet import AttentionBlock

    c = int(in_channels if in_channels is not None else getattr(net, "in_channels"))
    d = int(getattr(net, "divisor", 1))
    side = 4 * d  # 4 x 4 at the coarsest level
    outs: dict[int, int] = {}
    attn = [0]
    keep = {id(m) for m in getattr(net, "down", [])}
    if hasattr(net, "input_conv"):
        keep.add(id(net.input_conv))
    kept = [0]

    def hook(module: nn.Module, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            outs[id(module)] = max(outs.get(id(module), 0), output[0].numel())  # per image
            if id(module) in keep:
                kept[0] += output[0].numel()
        if isinstance(module, AttentionBlock):
            n = inputs[0].shape[-2] * inputs[0].shape[-1]
            attn[0] = max(attn[0], module.heads * n * n)

    handles = [m.register_forward_hook(hook) for m in net.modules() if m is not net]
    was_training = net.training
    net.eval()
    try:
        dev = next(net.parameters()).device
        net(torch.zeros(1, c, side, side, device=dev), torch.zeros(1, device=dev))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in net.parameters())
    return kept[0], max(outs.values(), default=0), attn[0], side, params


def _bytes(profile: tuple, image_hw: Sequence[int], batch: int) -> int:
    kept, largest, attn, side, params = profile
    d = side // 4  # the UNet's divisor: the denoiser zero-pads other sides up to its multiples
    h, w = (-(-int(s) // d) * d for s in image_hw[:2])
    r = float(h) * float(w) / (side * side)
    per_image = (kept + 6 * largest) * r + 2 * attn * r * r
    return int(_FLOAT * (batch * per_image + params))


def forward_bytes(net: nn.Module, image_hw: Sequence[int], batch: int = 1,
                  in_channels: Optional[int] = None) -> int:
    """Estimated peak bytes of ``net(x, t)`` for ``x`` of shape ``(batch, in_channels, H, W)``
    float32, without gradients (see the module docstring for what is counted).

    Args:
        net: a backbone called as ``net(x, t)`` (e.g. :class:`~mrimsm.models.unet.UNet`);
            ``in_channels`` and ``divisor`` are read from it when present.
        image_hw: ``(H, W)`` of the real input.
        batch: images per forward pass.
    """
    return _bytes(_profile(net, in_channels), image_hw, batch)


def largest_square(net: nn.Module, budget: int, batch: int = 1, multiple: int = 1,
                   in_channels: Optional[int] = None) -> int:
    """The largest side ``s`` (a multiple of ``multiple``) whose ``s x s`` forward fits in
    ``budget`` bytes by :func:`forward_bytes` (0 if none does)."""
    prof = _profile(net, in_channels)
    lo, hi = 0, 1
    while _bytes(prof, (hi * multiple,) * 2, batch) <= budget and hi < 1 << 20:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _bytes(prof, (mid * multiple,) * 2, batch) <= budget else (lo, mid)
    return lo * multiple
