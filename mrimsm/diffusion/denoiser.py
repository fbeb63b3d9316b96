"""The MSM denoiser: image-domain view of a noisy masked measurement -> clean image.

``x0 = denoiser(u_t, t)`` where ``u_t = A_S^H y_t`` and
``y_t = sqrt(abar_t) (y + sigma_t n)`` on the entries of ``S`` (method.md
section 3). The denoiser gets no mask: the network sees only ``u_t`` and ``t``.

Scaling and preconditioning (EDM-style, with ``sigma = sigma_t`` in
measurement units and a data scale ``sigma_data``)::

    x     = u_t / sqrt(abar_t)             # = A_S^H (y + sigma n): the VP factor divided out
    x0    = c_skip * x + c_out * F(c_in * x, t)
    c_in  = 1 / sqrt(sigma^2 + sigma_data^2)
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)

so the backbone ``F`` always sees an input of roughly unit scale and predicts
a target of roughly unit scale; at small ``sigma`` the zero-filled input
passes through (``c_skip -> 1``), at large ``sigma`` the network predicts
``x0`` outright. With a zero-initialised output layer a fresh denoiser returns
``c_skip * x``. ``prediction="eps"`` instead reads ``F`` as the (image-domain)
noise: ``x0 = x - sigma * F(c_in * x, t)``.

Complex images ``(B, H, W)`` complex64 go through the backbone as
``(B, 2, H, W)`` float32 (:mod:`mrimsm.models.channels`); real images
``(B, K, H, W)`` float32 go through unchanged. The output has the input's kind.

Example::

    >>> net = UNet(2, 2, model_channels=32, image_size=64)
    >>> den = MSMDenoiser(net, VPSchedule())
    >>> x0 = den(u_t, torch.full((B,), 500))   # u_t: (B, 64, 64) complex64 -> (B, 64, 64) complex64
"""

from __future__ import annotations

import torch
from torch import nn

from mrimsm.diffusion.schedule import VPSchedule
from mrimsm.models.channels import from_channels, to_channels

__all__ = ["MSMDenoiser"]


class MSMDenoiser(nn.Module):
    """Preconditioned clean-image predictor around a backbone ``F(x, t)``.

    Args:
        backbone: module ``(B, Cin, H, W) float32, (B,) float -> (B, Cin, H, W)``
            (e.g. :class:`mrimsm.models.unet.UNet` with ``in_channels == out_channels``).
        schedule: the :class:`VPSchedule` that defines ``abar_t`` and ``sigma_t``.
        prediction: ``"x0"`` (preconditioned clean image, default) or ``"eps"``.
        sigma_data: expected per-real-component scale of the zero-filled image
            ``A_S^H y`` (images normalised so that ``max |x| = 1`` give about 0.2-0.5).

    ``forward(u_t, t)``: ``u_t`` ``(B, H, W)`` complex64 or ``(B, K, H, W)`` float32,
    ``t`` ``(B,)`` int64 original step indices (0..T-1) -> ``x0`` of ``u_t``'s shape and kind.
    """

    def __init__(self, backbone: nn.Module, schedule: VPSchedule, prediction: str = "x0", sigma_data: float = 0.5):
        super().__init__()
        if prediction not in ("x0", "eps"):
            raise ValueError(f"prediction must be 'x0' or 'eps', got {prediction!r}")
        if sigma_data <= 0:
            raise ValueError("sigma_data must be positive")
        self.backbone = backbone
        self.schedule = schedule
        self.prediction = prediction
        self.sigma_data = float(sigma_data)

    def coefficients(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example scalars for steps ``t`` ``(B,)``: ``scale = 1/sqrt(abar)``,
        ``sigma``, ``c_in``, ``c_skip``, ``c_out`` (float64 ``(B,)``)."""
        sigma = self.schedule.sigma(t)
        abar = self.schedule.alpha_bar(t)
        sd2 = self.sigma_data**2
        return {
            "scale": 1.0 / torch.sqrt(abar),
            "sigma": sigma,
            "c_in": 1.0 / torch.sqrt(sigma**2 + sd2),
            "c_skip": sd2 / (sigma**2 + sd2),
            "c_out": sigma * self.sigma_data / torch.sqrt(sigma**2 + sd2),
        }

    def forward(self, u_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=u_t.device)
        if t.dim() == 0:
            t = t.expand(u_t.shape[0])
        c = self.coefficients(t)
        view = (-1,) + (1,) * (u_t.dim() - 1)

        def k(name: str) -> torch.Tensor:  # float32 so complex64 stays complex64
            return c[name].to(device=u_t.device, dtype=torch.float32).view(view)

        x = u_t * k("scale")
        f = from_channels(self.backbone(to_channels(x * k("c_in")), t.to(torch.float32)), like=x)
        if self.prediction == "eps":
            return x - k("sigma") * f
        return k("c_skip") * x + k("c_out") * f
