"""Inference apart from training: build a trained network from its checkpoint, and
sample from it.

:func:`load_msm` and :func:`load_ssdu` share one loader (resolve the path, read the
checkpoint, check its method, validate its stored config, build the network, load
the EMA or raw weights, freeze it on the device). :func:`generate` draws
unconditional samples with Algorithm 1; :func:`write_samples` stores them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import h5py
import numpy as np
import torch
from torch import nn

from mrimsm.baselines.ssdu import LoadedSSDU, build_unrolled
from mrimsm.checkpoint import load_checkpoint, load_state_checked, resolve_checkpoint_path
from mrimsm.config import Config, config_from_dict
from mrimsm.diffusion.denoiser import LEGACY_SKIP, build_denoiser, sampling_dtype
from mrimsm.diffusion.method import MSMMethod
from mrimsm.diffusion.sampler import msm_sample
from mrimsm.errors import MrimsmError
from mrimsm.limits import check_disk, check_memory, check_seed
from mrimsm.methods import training_method
from mrimsm.physics.masks import SubmaskSampler, training_mask_family
from mrimsm.physics.operators import Identity, MultiCoilMRI
from mrimsm.utils import atomic_path

__all__ = ["LoadedMSM", "LoadedSSDU", "build_denoiser", "load_msm", "load_ssdu", "generate", "write_samples"]


@dataclass
class LoadedMSM:
    """An MSM checkpoint ready to sample: the EMA denoiser in eval mode, its config and meta."""

    denoiser: nn.Module
    config: dict
    meta: dict
    step: int
    path: str


def _is_msm(name: str) -> bool:
    try:
        return issubclass(training_method(name), MSMMethod)
    except MrimsmError:
        return False


def _with_legacy_skip(config: dict) -> dict:
    """Checkpoints written before ``diffusion.skip`` existed used the image-domain skip."""
    d = dict(config.get("diffusion") or {})
    if "skip" in d:
        return config
    d["skip"] = LEGACY_SKIP
    return {**config, "diffusion": d}


def _load(
    path: Any,
    wanted: str,
    accepts: Callable[[str], bool],
    build: Callable[[Config, dict, str], nn.Module],
    device: str | torch.device,
    use_ema: bool,
    config_fix: Callable[[dict], dict] = lambda c: c,
) -> tuple[nn.Module, Config, dict]:
    """The one loader: ``(frozen network on device, config, checkpoint)``.

    ``accepts(method)`` says whether the checkpoint's method is a ``wanted`` one;
    ``build(cfg, meta, path)`` makes the untrained network; ``config_fix`` updates an
    old stored config before validation. Bad files -> :class:`MrimsmError`."""
    p = resolve_checkpoint_path(path)
    ckpt = load_checkpoint(p, map_location="cpu")
    if not accepts(ckpt["method"]):
        hint = " (use it with recon -m ssdu --ssdu-checkpoint)" if ckpt["method"] == "ssdu" else ""
        raise MrimsmError(f"{p} is a {ckpt['method']!r} checkpoint, not an {wanted} one{hint}")
    cfg = config_from_dict(config_fix(ckpt["config"]), source=f"{p} (config)")
    model = build(cfg, ckpt.get("meta") or {}, str(p))
    load_state_checked(model, ckpt["ema" if use_ema else "model"], str(p))
    model.to(device).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    ckpt["path"] = str(p)
    return model, cfg, ckpt


def _build_msm(cfg: Config, meta: dict, path: str) -> nn.Module:
    try:
        channels, shape = int(meta["channels"]), meta["image_shape"]
    except (KeyError, TypeError):
        raise MrimsmError(f"{path} lacks the operator settings (meta) of an msm checkpoint") from None
    return build_denoiser(cfg.to_dict(), channels, shape)


def load_msm(path, device: str | torch.device = "cpu", use_ema: bool = True) -> LoadedMSM:
    """Load an MSM checkpoint (file or run directory) for sampling/reconstruction."""
    model, cfg, ckpt = _load(path, "msm", _is_msm, _build_msm, device, use_ema, _with_legacy_skip)
    meta = ckpt["meta"]
    if hasattr(model, "inference_dtype"):  # bf16 network on CPUs that have it (denoiser.sampling_dtype)
        model.inference_dtype = sampling_dtype(device, str(meta.get("operator", "")))
    return LoadedMSM(model, cfg.to_dict(), meta, int(ckpt["step"]), ckpt["path"])


def load_ssdu(path: Any, device: str | torch.device = "cpu", use_ema: bool = True) -> LoadedSSDU:
    """Load an SSDU checkpoint (file or run directory) for reconstruction.

    ``use_ema`` takes the EMA weights (identical to the trained ones with
    ``train.ema: 0``, the SSDU configs' setting). Bad files -> :class:`MrimsmError`.
    """
    model, cfg, ckpt = _load(
        path, "ssdu", lambda m: m == "ssdu", lambda c, meta, p: build_unrolled(c.model), device, use_ema
    )
    return LoadedSSDU(model, cfg.to_dict(), dict(ckpt.get("meta") or {}), int(ckpt["step"]), ckpt["path"])


def sample_bytes(loaded: LoadedMSM, num: int) -> tuple[int, int]:
    """``(in memory, on disk)``: bytes of ``num`` samples as :func:`generate` returns them
    and as :func:`write_samples` stores them (the samples and their magnitude)."""
    meta = loaded.meta
    pixels = int(np.prod([int(s) for s in meta["image_shape"]]))
    if meta.get("operator") == "MultiCoilMRI":
        return num * pixels * 8, num * pixels * (8 + 4)  # complex64 + float32 magnitude
    pixels *= int(meta.get("channels", 1))
    return num * pixels * 4, num * pixels * (4 + 4)


def check_sample_disk(loaded: LoadedMSM, num: int, path: str | os.PathLike) -> None:
    """MrimsmError (one line) when ``num`` samples would not fit on the disk of ``path``."""
    check_disk(sample_bytes(loaded, num)[1], path, f"-n {num} samples", "draw fewer with -n")


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
    if num < 1:
        raise MrimsmError(f"-n must be >= 1, got {num}")
    seed = check_seed(seed)
    if steps < 1:
        raise MrimsmError(f"--steps must be >= 1, got {steps}")
    if w < 1:
        raise MrimsmError(f"--w must be >= 1, got {w}")
    if not 0 <= eta <= 1:
        raise MrimsmError(f"--eta must be in [0, 1], got {eta}")
    num_steps = int(loaded.meta.get("schedule", {}).get("num_steps", 1000))
    if steps > num_steps:
        raise MrimsmError(f"--steps must be <= {num_steps} (the schedule's length), got {steps}")
    check_memory(3 * sample_bytes(loaded, num)[0], f"-n {num} samples", "draw fewer with -n")
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
    arr = images.detach().cpu().numpy()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("samples", data=arr)
            f.create_dataset("magnitude", data=np.abs(arr).astype(np.float32))
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
