"""The ``msm`` method of ``mrimsm recon``: the MSM prior with posterior sampling.

The factory loads the checkpoint (or, per scan size, the shipped prior of
:mod:`mrimsm.diffusion.shipped`), builds the warm start's initial image with a
classical method and calls :func:`mrimsm.diffusion.posterior.posterior_sample`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mrimsm.diffusion import shipped
from mrimsm.inference import load_msm
from mrimsm.physics.masks import training_mask_family
from mrimsm.diffusion.posterior import (
    PosteriorSettings,
    load_posterior_settings,
    posterior_sample,
)
from mrimsm.errors import MrimsmError
from mrimsm.physics.masks import SubmaskSampler
from mrimsm.physics.operators import Identity, MultiCoilMRI
from mrimsm.recon.methods import METHODS, MethodOutput
from mrimsm.utils import resolve_device

__all__ = ["make_msm_method"]


def _batch_seed(seeds: Sequence[int]) -> int:
    text = ",".join(str(int(s)) for s in seeds).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def _training_noise(loaded: Any) -> Any:
    """The noise std of a prior's training measurements: recorded in its meta, else its
    config's simulated-data ``rho`` (priors trained before the meta recorded it), else ``None``."""
    value = loaded.meta.get("data_noise")
    if value is None:
        simulated = ((loaded.config or {}).get("data") or {}).get("simulated") or {}
        value = simulated.get("rho") if isinstance(simulated, dict) else None
    return value


def _noise_note(measured: Any, trained: Any, settings: PosteriorSettings) -> str:
    """The model line's noise part: the scan's measured noise (normalized units) beside the
    prior's training noise, and whether the data-consistency weight follows it."""
    if measured is None:
        return ""
    text = f"scan noise {float(measured):.4f}"
    if isinstance(trained, (int, float)) and not isinstance(trained, bool):
        text += f" (prior trained on {float(trained):.4f})"
    if settings.dc == "operator" and settings.dc_schedule == "noise":
        text += ", data-consistency weight follows it"
    return text


def make_msm_method(options: Mapping[str, Any]):
    """Factory for ``mrimsm recon --method msm``.

    Options read: ``checkpoint`` (default: the shipped model), ``settings`` (YAML), every
    :class:`PosteriorSettings` field (``steps``, ``w``, ``t0``, ``init``, ``dc``, ...),
    ``device`` (:func:`~mrimsm.utils.resolve_device`; default: CUDA when present), and the
    options of the classical method named by ``init`` (``sense_lambda``, ``cs_iters``, ...),
    which makes the warm start's initial image.
    The randomness of a batch of slices is seeded from the slices' seeds, so a
    run is reproducible (for a given ``batch_slices``).
    """
    overrides = {f.name: options.get(f.name) for f in fields(PosteriorSettings)}
    chosen: dict = {}  # settings file (None: the general defaults) -> (settings, init method)

    def settings_source(prior):
        """Where the settings for scans of ``prior`` (``None``: a ``--checkpoint`` model) come
        from: ``--settings``, else the prior's own file, else ``None`` (the general defaults)."""
        return options.get("settings") or (prior.settings_path if prior is not None else None)

    def settings_for(prior):
        """The solver settings (and the warm start's method) for scans of ``prior``: those of
        :func:`settings_source`, single options on top."""
        path = settings_source(prior)
        if path not in chosen:
            st = load_posterior_settings(path, **overrides)
            if st.init == "baseline":
                raise MrimsmError("init 'baseline' is for restore; for MRI use sense, cs or zero-filled")
            # the warm start's initial image is that recon method's output
            chosen[path] = (st, None if st.init == "none" else METHODS[st.init].build(options))
        return chosen[path]

    def settings_label(prior) -> str:
        src = settings_source(prior)
        if options.get("settings"):
            return str(src)
        return "defaults" if src is None else f"mrimsm/assets/{Path(src).name}"

    checkpoint = options.get("checkpoint")
    # built now, so that bad options and missing files fail before any work: every settings
    # a scan may get (those of each installed shipped prior)
    settings, init_method = settings_for(None)
    if not checkpoint and not options.get("settings"):
        shipped.check_settings_installed()
    own_settings = [] if checkpoint else [
        p for p in shipped.SHIPPED_PRIORS if p.path.exists() and settings_source(p) != settings_source(None)]
    for p in own_settings:
        settings_for(p)
    device = resolve_device(options.get("device"))
    models: dict = {}  # path -> (loaded, family, shipped prior or None)

    def model_for(path, prior):
        if path not in models:
            loaded = load_msm(path, device=device)
            meta = loaded.meta
            if meta.get("operator") != "MultiCoilMRI":
                raise MrimsmError(f"{loaded.path} was trained on {meta.get('operator')} data, not multi-coil MRI")
            num_steps = int(meta.get("schedule", {}).get("num_steps", 1000))
            steps = settings_for(prior)[0].steps
            if steps > num_steps:
                raise MrimsmError(f"--steps must be <= {num_steps} (the model's schedule), got {steps}")
            models[path] = (loaded, training_mask_family(meta), prior)
        return models[path]

    if checkpoint:  # load now: a bad --checkpoint fails before any work
        model_for(checkpoint, None)

    def method(batch):
        shape = tuple(batch.kspace.shape[-2:])
        if checkpoint:
            loaded, family, prior = model_for(checkpoint, None)
        else:  # the shipped prior for this scan size (mrimsm/diffusion/shipped.py)
            choice = shipped.choose_shipped_prior(shape)
            loaded, family, prior = model_for(choice.path, choice)
        model_shape = tuple(int(s) for s in loaded.meta["image_shape"])
        shipped.check_scan_size(loaded.config, model_shape, shape, loaded.path)
        st, init = settings_for(prior)
        maps = batch.maps.to(device)
        mask = batch.mask.to(device)
        y = batch.kspace.to(device) * mask
        op_full = MultiCoilMRI(maps, None)
        H = Identity(mask)  # the test scan's own sampling, on the full k-space
        gen = torch.Generator().manual_seed(_batch_seed(batch.seeds))
        x_init = None if init is None else init(batch).images.to(device)
        mean, std, _ = posterior_sample(
            loaded.denoiser, op_full, H, y, SubmaskSampler(family, shape), st,
            generator=gen, on_step=batch.on_step, x_init=x_init, noise_std=batch.noise_std,
        )
        return MethodOutput(
            images=mean.detach().cpu().to(torch.complex64),
            uncertainty=std.detach().cpu() if st.samples > 1 else None,
            info={
                "nfe_per_slice": st.nfe,
                **{f.name: getattr(st, f.name) for f in fields(PosteriorSettings)},
                "checkpoint": str(loaded.path),
                "model": "; ".join(part for part in (
                    shipped.describe(prior, loaded.path, loaded.step, model_shape),
                    shipped.pixel_note(loaded.config, batch.pixel_mm),
                    _noise_note(batch.noise_std, _training_noise(loaded), st),
                    f"solver {settings_label(prior)}: {st.steps} steps, w {st.w}, {st.samples} samples, "
                    f"start {st.init if st.init == 'none' else f'{st.init} at t0 {st.t0:g}'}") if part),
            },
        )

    def memory_per_slice(shape: tuple, coils: int) -> int:
        """Estimated peak bytes of one slice (its ``samples`` together) in a reverse step:
        the network pass (:func:`mrimsm.models.memory.forward_bytes`) plus the solver's
        k-space-sized tensors (about 24 complex64 ``(C, H, W)`` per sample)."""
        from mrimsm.models.memory import forward_bytes

        choice = None if checkpoint else shipped.choose_shipped_prior(shape)
        loaded = model_for(checkpoint, None)[0] if checkpoint else model_for(choice.path, choice)[0]
        net = getattr(loaded.denoiser, "backbone", loaded.denoiser)
        k = int(settings_for(choice)[0].samples)
        return forward_bytes(net, shape, k) + k * 24 * int(coils) * int(shape[0]) * int(shape[1]) * 8

    method.batch_slices = int(settings.batch_slices)  # the pipeline batches slices by this (the general settings')
    method.memory_per_slice = memory_per_slice  # the pipeline batches down (or refuses) by this
    # recorded in each output (checkpoints by hash): the solver settings whole, and the model
    # given, or every shipped one installed (which one a scan gets depends on its size)
    method.settings = {**asdict(settings), "init_settings": getattr(init_method, "settings", None),
                       **({"checkpoint": str(checkpoint)} if checkpoint else {
                           f"shipped_checkpoint {p.file}": str(p.path)
                           for p in shipped.SHIPPED_PRIORS if p.path.exists()})}
    for p in own_settings:  # the settings a shipped prior brings (other than the general ones)
        st, init = settings_for(p)
        method.settings[f"shipped_settings {p.file}"] = {
            **asdict(st), "init_settings": getattr(init, "settings", None)}
    return method

