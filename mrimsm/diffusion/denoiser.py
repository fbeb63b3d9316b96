"""The MSM denoiser: image-domain view of a noisy masked measurement -> clean image.

``x0 = denoiser(u_t, t)`` where ``u_t = A_S^H y_t`` and
``y_t = sqrt(abar_t) (y + sigma_t n)`` on the entries of ``S`` (docs/method.md
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

Where the skip connection lives (``skip``). The loss and the sampler only use
the *local clean measurement* ``s_hat = A_S x0`` (:meth:`MSMDenoiser.measure`).

- ``skip="image"`` (as written above, and as the paper's image-domain epsilon
  network): ``s_hat = A_S (c_skip x + c_out F)``. For multi-coil MRI the skip
  term ``A_S A_S^H v`` is *not* ``v`` (coil combination of an aliased image
  discards what parallel imaging measures), so even at ``sigma -> 0`` the
  backbone must learn to undo the aliasing (a SENSE reconstruction) to
  reproduce its own input. A small, briefly trained network does this poorly:
  the first shipped model (2026-11-24) kept a -19 to -21 dB relative error on the local
  measurement at every noise level (held-out check, ``sigma`` 0.02-0.1), worse
  than its input at ``sigma = 0.02``.
- ``skip="projection"`` (default for new models): the skip term is the
  least-squares image ``x_ls = argmin_x ||A_S x - v||^2`` (``cg_iters``
  conjugate-gradient steps on ``A_S^H A_S x = A_S^H v`` from 0, no network), so
  ``x0 = c_skip x_ls + c_out F(c_in x, t)`` (eps: ``x0 = x_ls - sigma F``), and
  ``s_hat = A_S x0``. At small ``sigma``, ``A_S x_ls`` is ``v`` projected onto
  the range of ``A_S``: clean data pass through (8 iterations: -40 dB relative
  error on clean held-out local measurements, against -21 dB for
  ``A_S A_S^H v``), and the part of the noise no image can produce is removed.
  The backbone still sees only the aliased view ``x``, as docs/method.md says; the
  skip is a fixed linear function of the local measurement, so ``s_hat``
  remains a denoiser of the local measurement alone. For ``T = I`` with pixel
  masks ``x_ls = x`` and the choice is moot.

(A third variant, the skip on the measurement itself, ``s_hat = c_skip v +
c_out A_S F``, was tried and dropped: it can never remove the noise outside
the range of ``A_S``, and in 700 steps it learnt nothing measurable.)

Checkpoints written before this option existed are read as ``skip="image"``.

Scans of another size than the training images (:mod:`mrimsm.diffusion.shipped`): sides
the UNet cannot halve often enough are zero-padded for the backbone and cropped back
(:meth:`MSMDenoiser._backbone_padded`). (Showing the backbone only a training-size window
around the object of a larger scan lowered the held-out denoiser error at t >= 50 by 4-8 %
but not the reconstruction error on validation slices at 320 x 320, -0.05 dB: not used;
CHANGELOG.md, 2026-11-27.)

Complex images ``(B, H, W)`` complex64 go through the backbone as
``(B, 2, H, W)`` float32 (:mod:`mrimsm.models.channels`); real images
``(B, K, H, W)`` float32 go through unchanged. The output has the input's kind.

Example::

    >>> net = UNet(2, 2, model_channels=32, image_size=64)
    >>> den = MSMDenoiser(net, VPSchedule())
    >>> x0 = den(u_t, torch.full((B,), 500))   # u_t: (B, 64, 64) complex64 -> (B, 64, 64) complex64
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import nn

from mrimsm.diffusion.schedule import VPSchedule
from mrimsm.errors import MrimsmError
from mrimsm.models.channels import from_channels, to_channels
from mrimsm.models.unet import UNet
from mrimsm.physics.solvers import conjugate_gradient

__all__ = ["MSMDenoiser", "SKIPS", "LEGACY_SKIP", "local_estimate", "build_denoiser"]

SKIPS = ("image", "projection")
#: the skip term of checkpoints written before ``diffusion.skip`` existed
LEGACY_SKIP = "image"


class MSMDenoiser(nn.Module):
    """Preconditioned clean-image predictor around a backbone ``F(x, t)``.

    Args:
        backbone: module ``(B, Cin, H, W) float32, (B,) float -> (B, Cin, H, W)``
            (e.g. :class:`mrimsm.models.unet.UNet` with ``in_channels == out_channels``).
        schedule: the :class:`VPSchedule` that defines ``abar_t`` and ``sigma_t``.
        prediction: ``"x0"`` (preconditioned clean image, default) or ``"eps"``.
        skip: ``"image"`` (the aliased view ``A_S^H v``) or ``"projection"`` (the
            least-squares image): the skip term (module doc); only :meth:`measure` differs.
        cg_iters: conjugate-gradient iterations of the ``projection`` skip.
        sigma_data: expected per-real-component scale of the zero-filled image
            ``A_S^H y`` (images normalised so that ``max |x| = 1`` give about 0.2-0.5).

    ``forward(u_t, t)``: ``u_t`` ``(B, H, W)`` complex64 or ``(B, K, H, W)`` float32,
    ``t`` ``(B,)`` int64 original step indices (0..T-1) -> ``x0`` of ``u_t``'s shape and kind.
    """

    def __init__(
        self,
        backbone: nn.Module,
        schedule: VPSchedule,
        prediction: str = "x0",
        sigma_data: float = 0.5,
        skip: str = "image",
        cg_iters: int = 8,
    ):
        super().__init__()
        if prediction not in ("x0", "eps"):
            raise ValueError(f"prediction must be 'x0' or 'eps', got {prediction!r}")
        if skip not in SKIPS:
            raise ValueError(f"skip must be one of {SKIPS}, got {skip!r}")
        if int(cg_iters) < 1:
            raise ValueError("cg_iters must be >= 1")
        self.skip = skip
        self.cg_iters = int(cg_iters)
        if sigma_data <= 0:
            raise ValueError("sigma_data must be positive")
        self.backbone = backbone
        self.schedule = schedule
        self.prediction = prediction
        self.sigma_data = float(sigma_data)
        #: autocast dtype of the backbone in eval mode (sampling, reconstruction); ``None``
        #: keeps the caller's precision. Training (train mode) never uses it.
        self.inference_dtype: Optional[torch.dtype] = None

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

    def _parts(self, u_t: torch.Tensor, t: torch.Tensor):
        """``(x, f, k)``: the VP-descaled input, the backbone's output (input's kind)
        and ``k(name)``, the coefficient ``name`` broadcastable against ``u_t``."""
        t = torch.as_tensor(t, device=u_t.device)
        if t.dim() == 0:
            t = t.expand(u_t.shape[0])
        c = self.coefficients(t)
        view = (-1,) + (1,) * (u_t.dim() - 1)

        def k(name: str) -> torch.Tensor:  # float32 so complex64 stays complex64
            return c[name].to(device=u_t.device, dtype=torch.float32).view(view)

        x = u_t * k("scale")
        h, t32 = to_channels(x * k("c_in")), t.to(torch.float32)
        dtype = self.inference_dtype
        if dtype is not None and not self.training:
            # the network alone in reduced precision; the physics around it stays complex64
            with torch.autocast(h.device.type, dtype=dtype):
                out = self._backbone_padded(h, t32)
            out = out.float()
        else:
            out = self._backbone_padded(h, t32)
        f = from_channels(out, like=x)
        return x, f, k

    def _backbone_padded(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``backbone(h, t)`` for any ``(B, K, H, W)`` float32 ``h``: sides the backbone
        cannot halve often enough (``backbone.divisor``) are zero-padded, about centred,
        to the next multiple and the output is cropped back.

        Zero is the background every prior saw around its objects (training slices are
        zero-padded to the training size), so the padding only widens the empty field
        of view, as a larger scan matrix would (e.g. fastMRI's 320 x 396 brain scans on a
        prior trained at 256 x 256). Networks with normalization over the whole image
        see slightly different statistics, as at any size other than the training size;
        the padding ablation in CHANGELOG.md (2026-11-27) measures the effect.
        """
        divisor = int(getattr(self.backbone, "divisor", 1))
        height, width = h.shape[-2:]
        pad_h, pad_w = -height % divisor, -width % divisor
        if not (pad_h or pad_w):
            return self.backbone(h, t)
        top, left = pad_h // 2, pad_w // 2
        out = self.backbone(nn.functional.pad(h, (left, pad_w - left, top, pad_h - top)), t)
        return out[..., top : top + height, left : left + width]

    def _combine(self, skip_term: torch.Tensor, f: torch.Tensor, k) -> torch.Tensor:
        """``x0`` from the skip term and the backbone's output (``prediction``)."""
        if self.prediction == "eps":
            return skip_term - k("sigma") * f
        return k("c_skip") * skip_term + k("c_out") * f

    def forward(self, u_t: torch.Tensor, t: torch.Tensor, op=None) -> torch.Tensor:
        """Image-domain clean estimate (the ``skip="image"`` form; see :meth:`measure`).

        With ``op``, ``u_t`` is read as the stacked local measurements ``y_t`` and the
        result is :meth:`measure` ``(op, y_t, t)``: the call a DDP wrapper forwards
        (calling ``wrapper.module.measure`` would bypass the gradient averaging).
        """
        if op is not None:
            return self.measure(op, u_t, t)
        x, f, k = self._parts(u_t, t)
        return self._combine(x, f, k)

    def measure(self, op, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Local clean measurement ``s_hat`` of a stacked batch of local measurements.

        Args:
            op: the masked operator ``A_S`` (batch ``B``), broadcasting a leading stack dim.
            y_t: ``(k, B, *meas)`` VP-scaled local measurements (zero off ``S``).
            t: ``(k * B,)`` int64 steps, stack-major.

        Returns:
            ``(k, B, *meas)``: ``A_S x0_hat``, ``x0_hat`` with the skip of ``self.skip``.
        """
        if self.skip == "image":
            return _through_image(self.forward, op, y_t, t)
        stack = tuple(y_t.shape[:2])

        def x0_projection(u_flat: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
            x, f, k = self._parts(u_flat, steps)
            # a fixed linear map of the data, no parameters inside; differentiable in the
            # data (the posterior's tweedie consistency takes the denoiser's Jacobian)
            x_ls = conjugate_gradient(op.normal, x.reshape(*stack, *x.shape[1:]), max_iter=self.cg_iters,
                                      batch_dims=2)
            return self._combine(x_ls.reshape(x.shape), f, k)

        return _through_image(x0_projection, op, y_t, t)


#: environment variable choosing the network precision of sampling and reconstruction
PRECISION_ENV = "MRIMSM_SAMPLING_PRECISION"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX; Linux flags)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def sampling_dtype(device: "torch.device | str", operator: str = "MultiCoilMRI") -> Optional[torch.dtype]:
    """The :attr:`MSMDenoiser.inference_dtype` a loaded model gets (``None`` = fp32).

    ``$MRIMSM_SAMPLING_PRECISION`` = ``fp32`` or ``bf16`` decides; unset (``auto``):
    bf16 on a CPU with native bf16 for the multi-coil MRI priors, where it was measured
    (benchmarks/README.md: 1.3-1.5x the network evaluations per second, reconstruction
    PSNR within 0.1 dB of fp32), fp32 everywhere else. On GPUs bf16 was at most 1.08x
    faster where measured (training/README.md: NFE/s fp32 | bf16 at 1 and 16 images per
    call, H100 51 | 38 and 405 | 438, H200 51 | 31 and 532 | 437), so they stay fp32.
    """
    choice = os.environ.get(PRECISION_ENV, "auto").strip().lower()
    if choice == "fp32":
        return None
    if choice == "bf16":
        return torch.bfloat16
    if choice != "auto":
        raise MrimsmError(f"${PRECISION_ENV} must be fp32, bf16 or auto, got {choice!r}")
    if torch.device(device).type == "cpu" and operator == "MultiCoilMRI" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def _through_image(x0_fn, op, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``A_S x0_fn(A_S^H y_t, t)`` with the ``(k, B)`` stack flattened for the image call."""
    u = op.adjoint(y_t)  # (k, B, *image)
    kk, b = u.shape[:2]
    x0 = x0_fn(u.reshape(kk * b, *u.shape[2:]), t)
    return op(x0.reshape(kk, b, *x0.shape[1:]))


def local_estimate(denoiser, op, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``s_hat = A_S x0_hat`` for stacked local measurements ``y_t`` ``(k, B, *meas)``,
    steps ``t`` ``(k * B,)``: :meth:`MSMDenoiser.measure` when the denoiser has it,
    else ``A_S denoiser(A_S^H y_t, t)`` for a plain image-domain callable."""
    inner = getattr(denoiser, "module", denoiser)  # a DDP wrapper's module
    if getattr(inner, "measure", None) is not None:
        # through the wrapper's forward when wrapped (DDP averages the gradients of
        # what its forward computed); without this a wrapped MSMDenoiser silently
        # trained the image skip whatever diffusion.skip said
        return denoiser(y_t, t, op=op) if inner is not denoiser else inner.measure(op, y_t, t)
    return _through_image(denoiser, op, y_t, t)


def build_denoiser(config: dict, channels: int, image_shape) -> nn.Module:
    """``MSMDenoiser(UNet)`` from a config dict (as stored in checkpoints)."""
    m, d = config["model"], config["diffusion"]
    h, w = int(image_shape[0]), int(image_shape[1])
    divisor = 2 ** (len(m["channel_mult"]) - 1)
    if h % divisor or w % divisor:
        raise MrimsmError(
            f"image size {h} x {w} is not divisible by {divisor} (2 ** (len(model.channel_mult) - 1))"
        )
    net = UNet(
        in_channels=channels,
        out_channels=channels,
        model_channels=m["model_channels"],
        channel_mult=tuple(m["channel_mult"]),
        num_res_blocks=m["num_res_blocks"],
        attention_resolutions=tuple(m["attention_resolutions"]),
        num_head_channels=m["num_head_channels"],
        dropout=m["dropout"],
        image_size=max(h, w),
        use_scale_shift_norm=m["use_scale_shift_norm"],
        resblock_updown=m["resblock_updown"],
    )
    schedule = VPSchedule(d["num_steps"], d["beta_start"], d["beta_end"])
    return MSMDenoiser(
        net, schedule, prediction=d["prediction"], sigma_data=d["sigma_data"], skip=d["skip"], cg_iters=d["cg_iters"]
    )
