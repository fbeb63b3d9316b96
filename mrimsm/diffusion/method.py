"""MSM as a :class:`~mrimsm.train.TrainMethod`, and sampling from its checkpoints.

Config sections (besides the common ``data`` / ``train`` / ``sample``):

* ``model`` (:class:`UNetConfig`): the UNet's widths and attention; the input
  and output channels (2 per complex image) and the image size come from the data.
* ``diffusion`` (:class:`DiffusionConfig`): the schedule, the loss settings of
  method.md section 4 (``rho``, ``lambda_sure``, ``tau``, ``train_steps``) and
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

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from mrimsm.config import Config
from mrimsm.diffusion.denoiser import LEGACY_SKIP, SKIPS
from mrimsm.errors import MrimsmError
from mrimsm.physics.masks import BernoulliPixel, MaskFamily, SubmaskSampler, cartesian_family
from mrimsm.physics.operators import Identity, MaskedMeasurement, MultiCoilMRI
from mrimsm.train import TrainMethod, register_method

__all__ = [
    "UNetConfig",
    "DiffusionConfig",
    "MSMMethod",
    "EmpiricalMasks",
    "training_mask_family",
    "batch_operator",
    "LoadedMSM",
    "load_msm",
    "generate",
    "write_samples",
]


@dataclass
class UNetConfig:
    """UNet widths (see :class:`mrimsm.models.unet.UNet`); paper: 128, (1, 1, 2, 2, 4, 4), 2, (32, 16, 8), 64."""

    model_channels: int
    channel_mult: list[int]
    num_res_blocks: int
    attention_resolutions: list[int]
    num_head_channels: int = 64
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True

    def validate(self) -> None:
        if self.model_channels < 1:
            raise ValueError("model_channels: must be >= 1")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError("channel_mult: must be a non-empty list of positive integers")
        if self.num_res_blocks < 1:
            raise ValueError("num_res_blocks: must be >= 1")
        if self.num_head_channels < 1:
            raise ValueError("num_head_channels: must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout: must be in [0, 1)")


@dataclass
class DiffusionConfig:
    """Schedule, loss and denoiser settings (method.md sections 3-4)."""

    rho: Optional[float] = None
    lambda_sure: float = 0.05
    tau: float = 0.005
    train_steps: int = 200
    weighting: str = "uniform"
    prediction: str = "x0"
    sigma_data: float = 0.5
    skip: str = "projection"  # the denoiser's skip term: image | projection (diffusion/denoiser.py)
    cg_iters: int = 8  # CG iterations of the projection skip
    reference_grad: bool = False
    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def validate(self) -> None:
        if self.rho is not None and self.rho < 0:
            raise ValueError("rho: must be >= 0 (or null: from the data)")
        if self.lambda_sure < 0:
            raise ValueError("lambda_sure: must be >= 0")
        if self.tau <= 0:
            raise ValueError("tau: must be > 0")
        if not 1 <= self.train_steps <= self.num_steps:
            raise ValueError(f"train_steps: must be in [1, num_steps = {self.num_steps}]")
        if self.weighting not in ("uniform", "snr", "edm"):
            raise ValueError("weighting: must be uniform, snr or edm")
        if self.prediction not in ("x0", "eps"):
            raise ValueError("prediction: must be x0 or eps")
        if self.sigma_data <= 0:
            raise ValueError("sigma_data: must be > 0")
        if self.skip not in SKIPS:
            raise ValueError(f"skip: must be one of {', '.join(SKIPS)}")
        if self.cg_iters < 1:
            raise ValueError("cg_iters: must be >= 1")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError("beta_start: need 0 < beta_start <= beta_end < 1")


# -- masks -------------------------------------------------------------------------


class EmpiricalMasks(MaskFamily):
    """The training acquisitions' own masks as a family: each draw is one of them.

    Args:
        masks: ``(N, W)`` (1-D Cartesian) or ``(N, H, W)`` bool.
    """

    def __init__(self, masks: np.ndarray):
        self.masks = np.asarray(masks).astype(bool)
        if self.masks.ndim not in (2, 3) or self.masks.shape[0] == 0:
            raise ValueError(f"need (N, W) or (N, H, W) masks, got shape {self.masks.shape}")
        self.one_dimensional = self.masks.ndim == 2

    def __call__(self, shape, seed=None) -> np.ndarray:
        return self.masks[np.random.default_rng(seed).integers(len(self.masks))].copy()

    def probability(self, shape) -> np.ndarray:
        return self.masks.mean(0)


def training_mask_family(meta: dict) -> MaskFamily:
    """The mask family a checkpoint was trained with (``meta["mask"]``): a 1-D
    Cartesian family (``kind`` random / equispaced / paper), ``bernoulli`` pixel
    masks (``p``), or ``empirical`` (the recorded ``train_masks``)."""
    spec = dict(meta.get("mask") or {})
    kind = spec.get("kind", "empirical")
    if kind == "empirical":
        masks = meta.get("train_masks")
        if masks is None:
            raise MrimsmError("the checkpoint records neither a mask family nor its training masks")
        return EmpiricalMasks(torch.as_tensor(masks).cpu().numpy())
    if kind == "bernoulli":  # natural images: pixel masks keeping a fraction p
        return BernoulliPixel(float(spec.get("p", 0.4)))
    kw = {k: spec[k] for k in ("center_fraction", "center_lines") if spec.get(k) is not None}
    try:
        return cartesian_family(kind, float(spec["accel"]), **kw)
    except (KeyError, ValueError) as exc:
        raise MrimsmError(f"the checkpoint's mask settings {spec} are not usable ({exc})") from None


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


@register_method("msm")
class MSMMethod(TrainMethod):
    """Measurement score-based diffusion (method.md): MSMDenoiser(UNet) + MSMLoss."""

    config_sections = {"model": UNetConfig, "diffusion": DiffusionConfig}

    def __init__(self, cfg: Config, data_info: Optional[dict] = None):
        super().__init__(cfg, data_info)
        from mrimsm.diffusion.losses import MSMLoss

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
    def _schedule(cfg: Config):
        from mrimsm.diffusion.schedule import VPSchedule

        d = cfg.diffusion
        return VPSchedule(d.num_steps, d.beta_start, d.beta_end)

    @staticmethod
    def _resolve_rho(cfg: Config, info: dict) -> float:
        data_rho = info.get("rho")
        if cfg.diffusion.rho is not None:
            if data_rho is not None and abs(float(data_rho) - cfg.diffusion.rho) > 1e-9:
                import warnings

                warnings.warn(
                    f"diffusion.rho = {cfg.diffusion.rho:g} but the data was prepared with rho = "
                    f"{float(data_rho):g}; training with {cfg.diffusion.rho:g} (set rho: null to follow the data)",
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
        from mrimsm.diffusion.sampler import msm_sample

        op_full = batch_operator(batch).with_mask(None)
        sampler = SubmaskSampler(training_mask_family(self.checkpoint_meta(self.cfg)), self.image_shape)
        n = int(batch["y"].shape[0])
        return msm_sample(
            model, op_full, sampler, n, steps=self.cfg.sample.preview_steps, w=self.cfg.sample.w,
            eta=self.cfg.sample.eta, generator=generator, image_shape=self._sample_image_shape(),
        )

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
                "rho": self.rho,
                "mask": spec,
                "train_masks": None if masks is None else torch.as_tensor(np.asarray(masks)).bool(),
                "reference_maps": example["maps"].to(torch.complex64).cpu() if "maps" in example else None,
                "schedule": {
                    "num_steps": cfg.diffusion.num_steps,
                    "beta_start": cfg.diffusion.beta_start,
                    "beta_end": cfg.diffusion.beta_end,
                },
                "data": {k: info.get(k) for k in ("root", "split", "num_examples")},
            }
            self._meta = meta
        return self._meta


def build_denoiser(config: dict, channels: int, image_shape) -> nn.Module:
    """``MSMDenoiser(UNet)`` from a config dict (as stored in checkpoints)."""
    from mrimsm.diffusion.denoiser import MSMDenoiser
    from mrimsm.diffusion.schedule import VPSchedule
    from mrimsm.models.unet import UNet

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


# -- sampling from a checkpoint -------------------------------------------------------------


@dataclass
class LoadedMSM:
    """An MSM checkpoint ready to sample: the EMA denoiser in eval mode, its config and meta."""

    denoiser: nn.Module
    config: dict
    meta: dict
    step: int
    path: str


def _is_msm(name: str) -> bool:
    from mrimsm.train import get_method

    try:
        return issubclass(get_method(name), MSMMethod)
    except MrimsmError:
        return False


def _with_legacy_skip(config: dict) -> dict:
    """Checkpoints written before ``diffusion.skip`` existed used the image-domain skip."""
    d = dict(config.get("diffusion") or {})
    if "skip" in d:
        return config
    d["skip"] = LEGACY_SKIP
    return {**config, "diffusion": d}


def load_msm(path, device: str | torch.device = "cpu", use_ema: bool = True) -> LoadedMSM:
    """Load an MSM checkpoint (file or run directory) for sampling/reconstruction."""
    from mrimsm.checkpoint import load_checkpoint, load_state_checked, resolve_checkpoint_path
    from mrimsm.config import config_from_dict

    p = resolve_checkpoint_path(path)
    ckpt = load_checkpoint(p, map_location="cpu")
    if not _is_msm(ckpt["method"]):
        hint = " (use it with recon -m ssdu --ssdu-checkpoint)" if ckpt["method"] == "ssdu" else ""
        raise MrimsmError(f"{p} is a {ckpt['method']!r} checkpoint, not an msm one{hint}")
    cfg = config_from_dict(_with_legacy_skip(ckpt["config"]), source=f"{p} (config)")
    meta = ckpt["meta"]
    try:
        channels, shape = int(meta["channels"]), meta["image_shape"]
    except (KeyError, TypeError):
        raise MrimsmError(f"{p} lacks the operator settings (meta) of an msm checkpoint") from None
    model = build_denoiser(cfg.to_dict(), channels, shape)
    load_state_checked(model, ckpt["ema" if use_ema else "model"], str(p))
    model.to(device).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    if hasattr(model, "inference_dtype"):  # bf16 network on CPUs that have it (denoiser.sampling_dtype)
        from mrimsm.diffusion.denoiser import sampling_dtype

        model.inference_dtype = sampling_dtype(device, str(meta.get("operator", "")))
    return LoadedMSM(model, cfg.to_dict(), meta, int(ckpt["step"]), str(p))


def generate(
    loaded: LoadedMSM,
    num: int,
    steps: int = 200,
    w: int = 1,
    eta: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """Unconditional samples with Algorithm 1.

    Args:
        loaded: from :func:`load_msm`.
        num: number of samples; drawn ``batch_size`` at a time.
        steps, w, eta: sampler settings (reverse steps, masks per step, DDIM eta).
        seed: same seed, same samples (on the same device).
        progress: called with the number of samples finished after each batch.

    Returns:
        ``(num, H, W)`` complex64 images (MRI) or ``(num, K, H, W)`` float32 (images), on CPU.
    """
    from mrimsm.diffusion.sampler import msm_sample

    if num < 1:
        raise MrimsmError(f"-n must be >= 1, got {num}")
    if steps < 1:
        raise MrimsmError(f"--steps must be >= 1, got {steps}")
    if w < 1:
        raise MrimsmError(f"--w must be >= 1, got {w}")
    if not 0 <= eta <= 1:
        raise MrimsmError(f"--eta must be in [0, 1], got {eta}")
    num_steps = int(loaded.meta.get("schedule", {}).get("num_steps", 1000))
    if steps > num_steps:
        raise MrimsmError(f"--steps must be <= {num_steps} (the schedule's length), got {steps}")
    meta = loaded.meta
    shape = tuple(int(s) for s in meta["image_shape"])
    family = training_mask_family(meta)
    sampler = SubmaskSampler(family, shape)
    image_shape = None
    if meta.get("operator") == "MultiCoilMRI":
        maps = meta.get("reference_maps")
        if maps is None:
            raise MrimsmError(f"{loaded.path} holds no reference coil maps to sample with")
        op_full = MultiCoilMRI(maps[None].to(device), None)
    else:
        op_full = Identity(None)
        image_shape = (int(meta["channels"]), *shape)
    gen = torch.Generator()  # one CPU stream over all batches: same seed, same samples
    gen.manual_seed(int(seed))
    out = []
    done = 0
    while done < num:
        b = min(batch_size, num - done)
        with torch.no_grad():
            x = msm_sample(
                loaded.denoiser, op_full, sampler, b, steps=steps, w=w, eta=eta, generator=gen,
                image_shape=image_shape,
            )
        out.append(x.detach().cpu())
        done += b
        if progress is not None:
            progress(done)
    return torch.cat(out, 0)


def write_samples(path, images: torch.Tensor, attrs: Optional[dict] = None) -> None:
    """Samples to HDF5 atomically: dataset ``samples`` (complex64 ``(N, H, W)`` or
    real ``(N, K, H, W)``) and ``magnitude`` float32, with ``attrs``."""
    import h5py

    from mrimsm.utils import atomic_path

    arr = images.detach().cpu().numpy()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("samples", data=arr)
            f.create_dataset("magnitude", data=np.abs(arr).astype(np.float32))
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
