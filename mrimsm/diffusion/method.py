"""MSM as a :class:`~mrimsm.trainmethod.TrainMethod` (loading and sampling a trained
checkpoint: :mod:`mrimsm.inference`).

Config sections (besides the common ``data`` / ``train`` / ``sample``):

* ``model`` (:class:`UNetConfig`): the UNet's widths and attention; the input
  and output channels (2 per complex image) and the image size come from the data.
* ``diffusion`` (:class:`DiffusionConfig`): the schedule, the loss settings of
  docs/method.md section 4 (``rho``, ``lambda_sure``, ``tau``, ``train_steps``) and
  the denoiser's preconditioning. ``rho: null`` takes the noise level the data
  was prepared with.

Each batch from :class:`~mrimsm.data.datasets.MeasurementDataset` becomes
``MultiCoilMRI(maps, mask)`` (or ``Identity(mask)`` for image data without
maps), and :class:`~mrimsm.diffusion.losses.MSMLoss` does the rest.

Checkpoint ``meta`` (what a checkpoint needs to be sampled or used for
reconstruction): ``operator``, ``image_shape``, ``num_coils``, ``channels``,
``rho``, ``mask`` (the training mask family: ``{"kind", "accel",
"center_lines" | "center_fraction"}`` or ``{"kind": "empirical"}``),
``train_masks`` (``(N, W)`` bool, the training acquisitions' masks),
``reference_maps`` (``(C, H, W)`` complex64 maps of one training example, used
by unconditional sampling) and ``schedule``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import numpy as np
import torch
from annotated_types import Ge, Gt, Interval, MinLen
from torch import nn

from mrimsm.diffusion.denoiser import LEGACY_SKIP, SKIPS, build_denoiser
from mrimsm.diffusion.losses import MSMLoss
from mrimsm.diffusion.sampler import msm_sample
from mrimsm.diffusion.schedule import VPSchedule
from mrimsm.errors import MrimsmError
from mrimsm.physics.masks import SubmaskSampler, training_mask_family
from mrimsm.physics.operators import Identity, MaskedMeasurement, MultiCoilMRI
from mrimsm.sections import Count
from mrimsm.settings import check
from mrimsm.trainmethod import TrainMethod

if TYPE_CHECKING:  # the config is read, never built, here
    from mrimsm.config import Config

__all__ = [
    "UNetConfig",
    "DiffusionConfig",
    "MSMMethod",
    "batch_operator",
]


@dataclass
class UNetConfig:
    """UNet widths (see :class:`mrimsm.models.unet.UNet`); paper: 128, (1, 1, 2, 2, 4, 4), 2, (32, 16, 8), 64."""

    model_channels: Count
    channel_mult: Annotated[list[Count], MinLen(1)]
    num_res_blocks: Count
    attention_resolutions: list[int]
    num_head_channels: Count = 64
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True


@dataclass
class DiffusionConfig:
    """Schedule, loss and denoiser settings (docs/method.md sections 3-4). ``rho``
    ``None``: the noise level the data was prepared with; ``skip``: the denoiser's skip
    term (:data:`mrimsm.diffusion.denoiser.SKIPS`); ``cg_iters``: CG iterations of the
    projection skip."""

    rho: Optional[Annotated[float, Ge(0)]] = None
    lambda_sure: Annotated[float, Ge(0)] = 0.05
    tau: Annotated[float, Gt(0)] = 0.005
    train_steps: Count = 200
    weighting: Literal["uniform", "snr", "edm"] = "uniform"
    prediction: Literal["x0", "eps"] = "x0"
    sigma_data: Annotated[float, Gt(0)] = 0.5
    skip: Literal[SKIPS] = "projection"
    cg_iters: Count = 8
    reference_grad: bool = False
    num_steps: Count = 1000
    beta_start: Annotated[float, Gt(0)] = 1e-4
    beta_end: Annotated[float, Interval(gt=0, lt=1)] = 0.02

    def validate(self) -> None:
        check(self.train_steps <= self.num_steps, "train_steps", f"must be in [1, num_steps = {self.num_steps}]")
        check(self.beta_start <= self.beta_end, "beta_start", "must be <= beta_end")


# -- masks -------------------------------------------------------------------------


def _mask_spec_from_manifest(manifest: dict) -> Optional[dict]:
    """``{"kind", "accel", ...}`` from a prepared dataset's manifest, if it says."""
    mask = manifest.get("mask")
    if isinstance(mask, dict) and "kind" in mask and "accel" in mask:
        out = {"kind": str(mask["kind"]), "accel": float(mask["accel"])}
        for k in ("center_lines", "center_fraction"):
            if mask.get(k) is not None:
                out[k] = mask[k]
        return out
    return None


def batch_operator(batch: dict) -> MaskedMeasurement:
    """The acquisition operator of a batch: ``MultiCoilMRI(maps, mask)`` when the
    batch has coil maps, else ``Identity(mask)`` (image data, T = I)."""
    if "maps" in batch:
        return MultiCoilMRI(batch["maps"], batch["mask"])
    return Identity(batch["mask"])


# -- the method ------------------------------------------------------------------------


class MSMMethod(TrainMethod):
    """Measurement score-based diffusion (docs/method.md): MSMDenoiser(UNet) + MSMLoss."""

    config_sections = {"model": UNetConfig, "diffusion": DiffusionConfig}

    def __init__(self, cfg: Config, data_info: Optional[dict] = None):
        super().__init__(cfg, data_info)
        info = self.data_info
        example = info.get("example")
        if example is None:
            raise MrimsmError("the training data gave no example to size the model from")
        y = example["y"]
        self.is_complex = bool(torch.is_complex(y))
        self.image_shape = tuple(int(s) for s in y.shape[-2:])
        self.num_coils = int(y.shape[0]) if "maps" in example else 0
        self.channels = 2 if self.is_complex else int(y.shape[0])
        self.rho = self._resolve_rho(cfg, info)
        self.schedule = self._schedule(cfg)
        d = cfg.diffusion
        self.loss_fn = MSMLoss(
            self.schedule,
            rho=self.rho,
            lambda_sure=d.lambda_sure,
            tau=d.tau,
            train_steps=d.train_steps,
            weighting=d.weighting,
            sigma_data=d.sigma_data,
            reference_grad=d.reference_grad,
        )

    @staticmethod
    def _schedule(cfg: Config) -> VPSchedule:
        d = cfg.diffusion
        return VPSchedule(d.num_steps, d.beta_start, d.beta_end)

    @staticmethod
    def _resolve_rho(cfg: Config, info: dict) -> float:
        data_rho = info.get("rho")
        if cfg.diffusion.rho is not None:
            if data_rho is not None and abs(float(data_rho) - cfg.diffusion.rho) > 0.05 * float(data_rho) + 1e-9:
                warnings.warn(
                    f"diffusion.rho = {cfg.diffusion.rho:g} but the data's noise is {float(data_rho):.3g}; "
                    f"training with {cfg.diffusion.rho:g} (set rho: null to follow the data)",
                    stacklevel=2,
                )
            return float(cfg.diffusion.rho)
        if data_rho is None:
            raise MrimsmError(
                f"{cfg.source}: the data does not record its noise level; set diffusion.rho"
            )
        return float(data_rho)

    # -- TrainMethod --------------------------------------------------------------
    def build_model(self, cfg: Config) -> nn.Module:
        return build_denoiser(cfg.to_dict(), self.channels, self.image_shape)

    def loss(self, model, batch, generator):
        op = batch_operator(batch)
        return self.loss_fn(model, batch["y"], op, generator)

    def preview(self, model, batch, generator):
        if batch is None:
            return None
        op_full = batch_operator(batch).with_mask(None)
        sampler = SubmaskSampler(training_mask_family(self.checkpoint_meta(self.cfg)), self.image_shape)
        n = int(batch["y"].shape[0])
        return msm_sample(
            model, op_full, sampler, n, steps=self.cfg.sample.preview_steps, w=self.cfg.sample.w,
            eta=self.cfg.sample.eta, generator=generator, image_shape=self._sample_image_shape(),
        )

    def check_resume(self, saved_config: dict, path: Path, saved_meta: Optional[dict] = None,
                     allow_data_change: bool = False) -> list[str]:
        """Refuse to resume when the config changes what the network's output means
        (``diffusion.skip``, ``diffusion.prediction``), then the shared data check
        (:meth:`TrainMethod.check_resume`); other keys may change on resume."""
        old_d, new_d = saved_config.get("diffusion") or {}, self.cfg.to_dict().get("diffusion") or {}
        for key, legacy in (("skip", LEGACY_SKIP), ("prediction", "x0")) if new_d else ():
            before, after = old_d.get(key, legacy), new_d.get(key, legacy)
            if before != after:
                raise MrimsmError(
                    f"{path} was trained with diffusion.{key}: {before}, the config says {after}; "
                    f"set diffusion.{key}: {before} to resume it, or train a new run"
                )
        return super().check_resume(saved_config, path, saved_meta=saved_meta, allow_data_change=allow_data_change)

    def _sample_image_shape(self) -> Optional[tuple]:
        return None if self.is_complex else (self.channels, *self.image_shape)

    def checkpoint_meta(self, cfg: Config) -> dict:
        if not hasattr(self, "_meta"):
            info = self.data_info
            example = info["example"]
            spec = _mask_spec_from_manifest(info.get("manifest") or {}) or {"kind": "empirical"}
            masks = info.get("train_masks")
            meta: dict[str, Any] = {
                "operator": "MultiCoilMRI" if "maps" in example else "Identity",
                "image_shape": list(self.image_shape),
                "num_coils": self.num_coils,
                "channels": self.channels,
                "complex": self.is_complex,
                "rho": self.rho,  # the loss's noise level
                "data_noise": info.get("rho"),  # the training measurements' noise (manifest)
                "mask": spec,
                "train_masks": None if masks is None else torch.as_tensor(np.asarray(masks)).bool(),
                "reference_maps": example["maps"].to(torch.complex64).cpu() if "maps" in example else None,
                "schedule": {
                    "num_steps": cfg.diffusion.num_steps,
                    "beta_start": cfg.diffusion.beta_start,
                    "beta_end": cfg.diffusion.beta_end,
                },
                "data": self.data_meta(),
            }
            self._meta = meta
        return self._meta
