"""Linear measurement operators: the one module that MSM training, the posterior
solver and SSDU share.

Every operator has ``forward`` (A), ``adjoint`` (A^H) and ``normal`` (A^H A);
``op.H`` is the adjoint as an operator. The operators that MSM trains on are
:class:`MaskedMeasurement` subclasses: ``A_S = S T`` with an injective "full
measurement" operator ``T`` and a coordinate mask ``S`` on its output:

=====================  ==========================  ==========================
operator               image x                     full measurement z = T x
=====================  ==========================  ==========================
:class:`MultiCoilMRI`  ``(B, H, W)`` complex64     ``(B, C, H, W)`` complex64
:class:`Identity`      ``(B, K, H, W)`` float32    ``(B, K, H, W)`` float32
=====================  ==========================  ==========================

``op.with_mask(S)`` returns the same physics (same maps) behind another mask,
which is how the sampler forms the local operators ``A_{S_i}``.
:class:`Downsample` (super-resolution) is a plain linear operator on images.

Example::

    >>> maps = torch.randn(1, 8, 64, 64, dtype=torch.complex64)
    >>> mask = torch.rand(1, 1, 1, 64) < 0.3
    >>> A = MultiCoilMRI(maps, mask)
    >>> y = A(torch.randn(1, 64, 64, dtype=torch.complex64))   # (1, 8, 64, 64)
    >>> x_zf = A.H(y)                                           # (1, 64, 64)
"""

from __future__ import annotations

from typing import Optional

import torch

from mrimsm.physics.fft import _global_sign, centering_signs, fft2c, ifft2c

__all__ = [
    "LinearOperator",
    "MaskedMeasurement",
    "MultiCoilMRI",
    "coil_support",
    "Identity",
    "PixelMask",
    "BoxMask",
    "Downsample",
]


class LinearOperator:
    """Base class: subclasses implement :meth:`forward` and :meth:`adjoint`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x``."""
        return self.adjoint(self.forward(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    @property
    def H(self) -> "LinearOperator":
        """The adjoint as an operator (``A.H(y) == A.adjoint(y)``)."""
        return _Adjoint(self)


class _Adjoint(LinearOperator):
    def __init__(self, op: LinearOperator):
        self.op = op

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(y)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.forward(x)

    @property
    def H(self) -> LinearOperator:
        return self.op


def _as_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.float32:
        mask = mask.to(torch.float32)
    return mask


class MaskedMeasurement(LinearOperator):
    """``A_S = S T``: a full measurement operator ``T`` followed by a 0/1 mask ``S``.

    Subclasses implement :meth:`full_forward` / :meth:`full_adjoint` (``T`` and
    ``T^H``) and :meth:`with_mask`. ``mask=None`` means every coordinate is kept.
    """

    mask: Optional[torch.Tensor]

    def full_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``z = T x`` (no mask)."""
        raise NotImplementedError

    def full_adjoint(self, z: torch.Tensor) -> torch.Tensor:
        """``T^H z`` (no mask)."""
        raise NotImplementedError

    def with_mask(self, mask: Optional[torch.Tensor]) -> "MaskedMeasurement":
        """The same ``T`` behind another mask (broadcastable to the measurement)."""
        raise NotImplementedError

    def apply_mask(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.mask is None else z * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_mask(self.full_forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.full_adjoint(self.apply_mask(y))


#: A column mask keeping at most this fraction of the columns (in its fullest
#: row) is applied by transforming only the kept columns along the readout.
COLUMN_PATH_MAX_FRACTION = 0.75


def _column_plan(mask: Optional[torch.Tensor], h: int, w: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Indices and weights of the kept columns of a 1-D Cartesian mask, or ``None``.

    For a mask ``(..., 1, 1, W)`` (or ``(W,)``, ``(1, W)``) whose rows keep at most
    :data:`COLUMN_PATH_MAX_FRACTION` of the ``W`` columns, returns

    * ``idx`` ``(R, 1, 1, K)`` int64: each row's kept columns in increasing order,
      padded with dropped columns up to ``K`` = the largest count of any row
      (``R`` = number of mask rows, 1 when the mask has no batch dimension);
    * ``out`` ``(R, 1, H, K)`` float32: the centring signs times the global sign
      times the mask value at those columns (0 on the padding).

    A 2-D FFT is a 1-D FFT along ``W`` then one along ``H``; only the ``K``
    gathered columns need the second (and, in the adjoint, the first inverse)
    transform. Exact up to float rounding; ``None`` (use the full 2-D FFT) for
    2-D masks, no mask, or masks that keep most columns.
    """
    if mask is None or mask.dim() > 4 or mask.shape[-1] != w:
        return None
    if mask.dim() >= 2 and mask.shape[-2] != 1:
        return None
    if mask.dim() >= 3 and mask.shape[-3] != 1:
        return None
    rows = mask.reshape(-1, w)
    kept = rows != 0
    k = int(kept.sum(-1).max().item())
    if k > COLUMN_PATH_MAX_FRACTION * w or k == 0:
        return None
    # kept columns first (stable: increasing order), then the dropped ones as padding
    idx = torch.argsort((~kept).to(torch.int8), dim=-1, stable=True)[:, :k]  # (R, K)
    weights = rows.gather(-1, idx)  # (R, K): mask values, 0 on the padding
    chk = centering_signs(h, w, mask.device) * _global_sign(h, w)  # (H, W)
    out = chk[:, idx].permute(1, 0, 2) * weights[:, None, :]  # (R, H, K)
    return idx[:, None, None, :], out[:, None].contiguous()


class MultiCoilMRI(MaskedMeasurement):
    """Cartesian multi-coil MRI, ``A = M F C``.

    Args:
        maps: coil sensitivities ``(B, C, H, W)`` complex64 (``B`` may be 1 to
            share maps across a batch).
        mask: sampling mask broadcastable to ``(B, 1, H, W)`` (for 1-D Cartesian
            masks ``(B, 1, 1, W)``), bool or float; ``None`` = fully sampled.

    ``forward``: images ``(B, H, W)`` complex64 -> k-space ``(B, C, H, W)`` complex64.
    ``adjoint``: k-space ``(B, C, H, W)`` -> coil-combined image ``(B, H, W)``,
    ``sum_c conj(C_c) F^H (M y_c)``.

    For even ``H`` and ``W`` the FFT shifts are folded into the stored maps and
    mask (see :mod:`mrimsm.physics.fft`), so one application costs one batched
    FFT and three element-wise products, with no loop over coils. With a 1-D
    column mask (``(B, 1, 1, W)``) that keeps at most 3/4 of the columns, the
    transform along ``H`` runs on the kept columns only (:func:`_column_plan`).
    """

    def __init__(self, maps: torch.Tensor, mask: Optional[torch.Tensor] = None):
        if maps.dim() != 4:
            raise ValueError(f"maps must be (B, C, H, W), got shape {tuple(maps.shape)}")
        if not maps.is_complex():
            maps = maps.to(torch.complex64)
        self.maps = maps
        self.mask = _as_mask(mask)
        if self.mask is not None:
            self.mask = self.mask.to(maps.device)
        h, w = maps.shape[-2:]
        self._even = h % 2 == 0 and w % 2 == 0
        if self._even:
            chk = centering_signs(h, w, maps.device)
            self._maps_c = maps * chk
            self._maps_c_conj = self._maps_c.conj().resolve_conj()
            out = chk * _global_sign(h, w)
            self._out = out if self.mask is None else out * self.mask
        self._cols = _column_plan(self.mask, h, w) if self._even else None

    # -- construction helpers -------------------------------------------------
    @classmethod
    def _from_parts(cls, src: "MultiCoilMRI", mask: Optional[torch.Tensor]) -> "MultiCoilMRI":
        op = cls.__new__(cls)
        op.maps = src.maps
        op.mask = _as_mask(mask)
        if op.mask is not None:
            op.mask = op.mask.to(src.maps.device)
        op._even = src._even
        if src._even:
            op._maps_c = src._maps_c
            op._maps_c_conj = src._maps_c_conj
            h, w = src.maps.shape[-2:]
            out = centering_signs(h, w, src.maps.device) * _global_sign(h, w)
            op._out = out if op.mask is None else out * op.mask
        op._cols = _column_plan(op.mask, *src.maps.shape[-2:]) if src._even else None
        return op

    def with_mask(self, mask: Optional[torch.Tensor]) -> "MultiCoilMRI":
        return MultiCoilMRI._from_parts(self, mask)

    def to(self, device: torch.device | str) -> "MultiCoilMRI":
        return MultiCoilMRI(self.maps.to(device), None if self.mask is None else self.mask.to(device))

    @property
    def image_shape(self) -> tuple:
        b, _, h, w = self.maps.shape
        return (b, h, w)

    # -- T and T^H --------------------------------------------------------------
    def full_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._even:
            h, w = self.maps.shape[-2:]
            out = centering_signs(h, w, x.device) * _global_sign(h, w)
            return torch.fft.fft2(x.unsqueeze(-3) * self._maps_c, norm="ortho") * out
        return fft2c(x.unsqueeze(-3) * self.maps)

    def full_adjoint(self, z: torch.Tensor) -> torch.Tensor:
        if self._even:
            h, w = self.maps.shape[-2:]
            out = centering_signs(h, w, z.device) * _global_sign(h, w)
            return (torch.fft.ifft2(z * out, norm="ortho") * self._maps_c_conj).sum(-3)
        return (ifft2c(z) * self.maps.conj()).sum(-3)

    # -- A and A^H with the mask folded into the sign pattern -----------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` complex64 -> ``(B, C, H, W)`` complex64 masked k-space."""
        if self._cols is not None:
            idx, out = self._cols
            z = torch.fft.fft(x.unsqueeze(-3) * self._maps_c, dim=-1, norm="ortho")
            lead = torch.broadcast_shapes(z.shape[:-1], idx.shape[:-1])  # masks may outnumber images
            ie = idx.expand(*lead, idx.shape[-1])
            z = torch.fft.fft(z.expand(*lead, z.shape[-1]).gather(-1, ie), dim=-2, norm="ortho").mul_(out)
            return z.new_zeros(*lead, self.maps.shape[-1]).scatter_(-1, ie, z)
        if self._even:
            return torch.fft.fft2(x.unsqueeze(-3) * self._maps_c, norm="ortho") * self._out
        return self.apply_mask(self.full_forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` complex64 -> ``(B, H, W)`` complex64 coil-combined image."""
        if self._cols is not None:
            idx, out = self._cols
            lead = torch.broadcast_shapes(y.shape[:-1], idx.shape[:-1])
            ie = idx.expand(*lead, idx.shape[-1])
            z = torch.fft.ifft(y.expand(*lead, y.shape[-1]).gather(-1, ie).mul_(out), dim=-2, norm="ortho")
            z = z.new_zeros(*lead, y.shape[-1]).scatter_(-1, ie, z)
            return torch.fft.ifft(z, dim=-1, norm="ortho").mul_(self._maps_c_conj).sum(-3)
        if self._even:
            return (torch.fft.ifft2(y * self._out, norm="ortho") * self._maps_c_conj).sum(-3)
        return self.full_adjoint(self.apply_mask(y))


def coil_support(maps: torch.Tensor) -> torch.Tensor:
    """Where any coil sees the object: ``sum_c |C_c|^2 > 0``.

    Args:
        maps: ``(B, C, H, W)`` complex64 coil sensitivities.

    Returns:
        ``(B, H, W)`` bool. Outside it ``A x`` does not depend on ``x`` (no measurement
        constrains the image there); ESPIRiT maps are cropped to zero outside the object's
        support, smooth simulated maps are non-zero everywhere.
    """
    return (maps.abs() ** 2).sum(-3) > 0


class Identity(MaskedMeasurement):
    """``T = I`` with an optional pixel mask: the natural-image adapter.

    Images and measurements are ``(B, K, H, W)`` (``K`` = 3 for RGB, real or
    complex); the mask broadcasts against them (``(B, 1, H, W)`` keeps or
    drops whole pixels).
    """

    def __init__(self, mask: Optional[torch.Tensor] = None):
        self.mask = _as_mask(mask)

    def full_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def full_adjoint(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def with_mask(self, mask: Optional[torch.Tensor]) -> "Identity":
        return Identity(mask)

    def to(self, device: torch.device | str) -> "Identity":
        return Identity(None if self.mask is None else self.mask.to(device))


class PixelMask(Identity):
    """Inpainting with a pixel mask ``(B, 1, H, W)`` (1 = observed)."""

    def __init__(self, mask: torch.Tensor):
        if mask is None:
            raise ValueError("PixelMask needs a mask; use Identity() for no mask")
        super().__init__(mask)


class BoxMask(PixelMask):
    """Box inpainting: everything observed except a ``box_h x box_w`` box.

    Args:
        image_size: ``(H, W)``.
        box_size: ``(box_h, box_w)`` of the missing box.
        top_left: corner of the box; ``None`` centers it.
    """

    def __init__(self, image_size: tuple, box_size: tuple, top_left: Optional[tuple] = None):
        h, w = image_size
        bh, bw = box_size
        if not (0 < bh <= h and 0 < bw <= w):
            raise ValueError(f"box {box_size} does not fit in image {image_size}")
        top, left = top_left if top_left is not None else ((h - bh) // 2, (w - bw) // 2)
        mask = torch.ones(1, 1, h, w)
        mask[..., top : top + bh, left : left + bw] = 0
        super().__init__(mask)
        self.box = (top, left, bh, bw)


class Downsample(LinearOperator):
    """Super-resolution: average pooling by ``factor`` on the last two dims.

    ``forward``: ``(..., H, W)`` -> ``(..., H / f, W / f)`` (each output pixel
    is the mean of an ``f x f`` block). ``adjoint``: the exact adjoint, each
    low-resolution value spread over its block divided by ``f^2``.
    """

    def __init__(self, factor: int):
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor = int(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        h, w = x.shape[-2:]
        if h % f or w % f:
            raise ValueError(f"image size {(h, w)} is not divisible by factor {f}")
        lead = x.shape[:-2]
        x = x.reshape(*lead, h // f, f, w // f, f)
        return x.mean(dim=(-3, -1))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        f = self.factor
        up = y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)
        return up / (f * f)

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour upsampling (``A^+ = f^2 A^H``)."""
        return self.adjoint(y) * (self.factor**2)
