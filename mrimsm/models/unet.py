"""Diffusion UNet in the style of Dhariwal & Nichol (2021), written for mrimsm.

Structure (``L = len(channel_mult)`` levels)::

    x (B, Cin, H, W) -> conv3x3 ->
      level 0..L-1:  num_res_blocks x [ResBlock (+ attention at listed resolutions)]
                     then a downsample (except the last level)
      middle:        ResBlock, attention, ResBlock
      level L-1..0:  (num_res_blocks + 1) x [concat skip, ResBlock (+ attention)]
                     then an upsample (except level 0)
    -> GroupNorm, SiLU, zero-initialised conv3x3 -> (B, Cout, H, W)

The timestep enters through a sinusoidal embedding and a 2-layer MLP; every
residual block is conditioned on it, either by adding a projection
(``use_scale_shift_norm=False``) or by ``norm(h) * (1 + scale) + shift``
(scale-shift norm, the default). Down/upsampling is done inside residual
blocks (``resblock_updown=True``, the default) or by a strided conv /
nearest upsampling + conv. The last conv of every residual block, the output
projection of every attention block and the output conv start at zero, so a
fresh network is the identity inside each block and outputs zeros.

Example (fast on CPU)::

    >>> net = UNet(in_channels=2, out_channels=2, model_channels=32,
    ...            channel_mult=(1, 2, 2), num_res_blocks=1,
    ...            attention_resolutions=(16,), image_size=64)
    >>> net(torch.randn(4, 2, 64, 64), torch.rand(4) * 999).shape
    torch.Size([4, 2, 64, 64])
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Args:
        t: ``(B,)`` float or int timesteps.
        dim: embedding width.

    Returns:
        ``(B, dim)`` float32: ``[cos(t f_k), sin(t f_k)]`` with geometric
        frequencies ``f_k = max_period^(-k / (dim/2))``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _groups(channels: int, max_groups: int = 32) -> int:
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-5)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _Resample(nn.Module):
    """Factor-2 down (strided conv or average pool) or up (nearest, optional conv)."""

    def __init__(self, channels: int, mode: str, use_conv: bool):
        super().__init__()
        self.mode = mode
        if mode == "down":
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)
        else:
            self.op = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding.

    ``(B, Cin, H, W), (B, E) -> (B, Cout, H', W')`` with ``H' = H``, ``2H`` (up)
    or ``H / 2`` (down).
    """

    def __init__(
        self,
        in_channels: int,
        emb_channels: int,
        out_channels: Optional[int] = None,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_norm = _norm(in_channels)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.resample_h: Optional[nn.Module] = None
        self.resample_x: Optional[nn.Module] = None
        if up or down:
            mode = "up" if up else "down"
            self.resample_h = _Resample(in_channels, mode, use_conv=False)
            self.resample_x = _Resample(in_channels, mode, use_conv=False)
        self.emb = nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.out_norm = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        if self.resample_h is not None:
            h = self.resample_h(h)
            x = self.resample_x(x)
        h = self.in_conv(h)
        e = self.emb(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions, residual.

    ``num_head_channels`` channels per head (at least one head).
    """

    def __init__(self, channels: int, num_head_channels: int = 64):
        super().__init__()
        if num_head_channels <= 0:
            raise ValueError("num_head_channels must be positive")
        self.heads = max(1, channels // num_head_channels)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))  # (B, 3C, N)
        q, k, v = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).permute(1, 0, 2, 4, 3).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C/heads)
        out = out.permute(0, 1, 3, 2).reshape(b, c, h * w)
        return x + self.proj(out).reshape(b, c, h, w)


class _Level(nn.Module):
    """A residual block optionally followed by attention (one UNet stage element)."""

    def __init__(self, res: nn.Module, attn: Optional[nn.Module]):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb) if isinstance(self.res, ResBlock) else self.res(x)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """The diffusion backbone: ``forward(x (B, Cin, H, W) float32, t (B,) float) -> (B, Cout, H, W)``.

    Args:
        in_channels, out_channels: real channels (2 per complex image, 3 for RGB).
        model_channels: base width (paper: 128; CPU-sized: 32).
        channel_mult: width multiplier per level; ``len - 1`` factor-2 downsamplings.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: spatial sizes (in pixels, e.g. ``(32, 16, 8)``) at which
            self-attention follows each residual block. The middle block always has one.
        num_head_channels: channels per attention head.
        dropout: dropout inside residual blocks.
        image_size: training resolution; inputs must be divisible by
            ``2 ** (len(channel_mult) - 1)``. Only used to place attention.
        use_scale_shift_norm: scale-shift conditioning (else additive).
        resblock_updown: resample inside residual blocks (else strided conv / upsample + conv).
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 2,
        model_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (16,),
        num_head_channels: int = 64,
        dropout: float = 0.0,
        image_size: int = 64,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
    ):
        super().__init__()
        if num_res_blocks < 1 or not channel_mult:
            raise ValueError("need num_res_blocks >= 1 and a non-empty channel_mult")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.channel_mult = tuple(int(m) for m in channel_mult)
        self.image_size = int(image_size)
        self.divisor = 2 ** (len(self.channel_mult) - 1)
        attn_res = {int(r) for r in attention_resolutions}
        emb_ch = 4 * model_channels

        self.time_mlp = nn.Sequential(
            nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)
        )

        def res(cin: int, cout: int, **kw) -> ResBlock:
            return ResBlock(cin, emb_ch, cout, dropout, use_scale_shift_norm, **kw)

        def attn(ch: int, size: int) -> Optional[nn.Module]:
            return AttentionBlock(ch, num_head_channels) if size in attn_res else None

        ch = model_channels * self.channel_mult[0]
        self.input_conv = nn.Conv2d(in_channels, ch, 3, padding=1)
        skips = [ch]
        size = self.image_size
        self.down = nn.ModuleList()
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                out = model_channels * mult
                self.down.append(_Level(res(ch, out), attn(out, size)))
                ch = out
                skips.append(ch)
            if level != len(self.channel_mult) - 1:
                sampler = res(ch, ch, down=True) if resblock_updown else _Resample(ch, "down", use_conv=True)
                self.down.append(_Level(sampler, None))
                skips.append(ch)
                size //= 2

        self.middle = nn.ModuleList([res(ch, ch), AttentionBlock(ch, num_head_channels), res(ch, ch)])

        self.up = nn.ModuleList()
        self._up_concat: list[bool] = []
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                out = model_channels * mult
                self.up.append(_Level(res(ch + skips.pop(), out), attn(out, size)))
                self._up_concat.append(True)
                ch = out
                if level and i == num_res_blocks:
                    sampler = res(ch, ch, up=True) if resblock_updown else _Resample(ch, "up", use_conv=True)
                    self.up.append(_Level(sampler, None))
                    self._up_concat.append(False)
                    size *= 2

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, Cin, H, W)`` float32; ``t``: ``(B,)`` float (or int) timesteps.

        Returns ``(B, Cout, H, W)`` float32.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by {self.divisor}")
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        emb = self.time_mlp(timestep_embedding(t, self.model_channels))
        h = self.input_conv(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        h = self.middle[0](h, emb)
        h = self.middle[1](h)
        h = self.middle[2](h, emb)
        for block, concat in zip(self.up, self._up_concat):
            if concat:
                h = torch.cat([h, hs.pop()], dim=1)
            h = block(h, emb)
        return self.out(h)
