"""The ``msm`` method of ``mrimsm recon``: the MSM prior with posterior sampling.

:class:`MSMRecon` loads the checkpoint (or, per scan size, the shipped prior of
:mod:`mrimsm.diffusion.shipped`), builds the warm start's initial image with a
classical method and calls :func:`mrimsm.diffusion.posterior.posterior_sample`.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

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
from mrimsm.physics.masks import SubmaskSampler, hash_seed
from mrimsm.physics.operators import Identity, MultiCoilMRI
from mrimsm.recon.methods import METHODS, MethodBase, MethodOutput, ReconMethod, SliceBatch
from mrimsm.solver_settings import RECON_INITS
from mrimsm.utils import resolve_device

__all__ = ["MSMRecon"]


def _batch_seed(seeds: Sequence[int]) -> int:
    """The generator seed of a batch of slices: :func:`mrimsm.physics.masks.hash_seed` of
    their seeds joined by commas."""
    return hash_seed(",".join(str(int(s)) for s in seeds))


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


class MSMRecon(MethodBase):
    """``mrimsm recon --method msm``: the MSM prior with posterior sampling.

    Options read: ``checkpoint`` (default: the shipped model), ``settings`` (YAML), every
    :class:`PosteriorSettings` field (``steps``, ``w``, ``t0``, ``init``, ``dc``, ...),
    ``device`` (:func:`~mrimsm.utils.resolve_device`; default: CUDA when present), and the
    options of the classical method named by ``init`` (``sense_lambda``, ``cs_iters``, ...),
    which makes the warm start's initial image. Bad options, settings files and a bad
    ``checkpoint`` fail here, before any work.
    The randomness of a batch of slices is seeded from the slices' seeds, so a
    run is reproducible (for a given ``batch_slices``).

    Attributes:
        batch_slices: the general settings' ``batch_slices``.
        settings: recorded in each output (checkpoints by hash): the solver settings whole
            with the warm start's ``init_settings``, and the model given, or every shipped
            one installed (which one a scan gets depends on its size) with the settings a
            shipped prior brings when they are not the general ones.
    """

    name = "msm"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = options
        self.checkpoint = options.get("checkpoint")
        self._overrides = {f.name: options.get(f.name) for f in fields(PosteriorSettings)}
        self._chosen: dict = {}  # settings file (None: the general defaults) -> (settings, init method)
        self._models: dict = {}  # checkpoint path -> (loaded, mask family, shipped prior or None)
        # built now, so that bad options and missing files fail before any work: every
        # settings a scan may get (those of each installed shipped prior)
        general, init = self._settings_for(None)
        if not self.checkpoint and not options.get("settings"):
            shipped.check_settings_installed()
        own = [] if self.checkpoint else [p for p in shipped.SHIPPED_PRIORS
                                          if p.path.exists() and self._source(p) != self._source(None)]
        for p in own:
            self._settings_for(p)
        self.device = resolve_device(options.get("device"))
        if self.checkpoint:  # load now: a bad --checkpoint fails before any work
            self._model(self.checkpoint, None)
        self.batch_slices = int(general.batch_slices)  # the pipeline batches slices by this
        self.settings = {**_settings_record(general, init), **({"checkpoint": str(self.checkpoint)} if self.checkpoint else {
            f"shipped_checkpoint {p.file}": str(p.path) for p in shipped.SHIPPED_PRIORS if p.path.exists()})}
        for p in own:  # the settings a shipped prior brings (other than the general ones)
            self.settings[f"shipped_settings {p.file}"] = _settings_record(*self._settings_for(p))

    def _source(self, prior: Optional[shipped.ShippedPrior]) -> Any:
        """Where the settings for scans of ``prior`` (``None``: a ``--checkpoint`` model) come
        from: ``--settings``, else the prior's own file, else ``None`` (the general defaults)."""
        return self.options.get("settings") or (prior.settings_path if prior is not None else None)

    def _settings_for(self, prior: Optional[shipped.ShippedPrior]) -> tuple[PosteriorSettings, Optional[ReconMethod]]:
        """The solver settings and the warm start's method for scans of ``prior``: those of
        :meth:`_source`, single options on top."""
        path = self._source(prior)
        if path not in self._chosen:
            st = load_posterior_settings(path, **self._overrides)
            if st.init not in RECON_INITS:  # baseline: restore's
                raise MrimsmError(f"init {st.init!r} is for restore; for MRI use {', '.join(RECON_INITS)}")
            # the warm start's initial image is that recon method's output
            self._chosen[path] = (st, None if st.init == "none" else METHODS[st.init].build(self.options))
        return self._chosen[path]

    def _settings_label(self, prior: Optional[shipped.ShippedPrior]) -> str:
        src = self._source(prior)
        if self.options.get("settings"):
            return str(src)
        return "defaults" if src is None else f"mrimsm/assets/{Path(src).name}"

    def _model(self, path: Any, prior: Optional[shipped.ShippedPrior]) -> tuple[Any, Any, Any]:
        """``(loaded model, its training mask family, prior)`` of checkpoint ``path``, loaded once."""
        if path not in self._models:
            loaded = load_msm(path, device=self.device)
            meta = loaded.meta
            if meta.get("operator") != "MultiCoilMRI":
                raise MrimsmError(f"{loaded.path} was trained on {meta.get('operator')} data, not multi-coil MRI")
            num_steps = int(meta.get("schedule", {}).get("num_steps", 1000))
            steps = self._settings_for(prior)[0].steps
            if steps > num_steps:
                raise MrimsmError(f"--steps must be <= {num_steps} (the model's schedule), got {steps}")
            self._models[path] = (loaded, training_mask_family(meta), prior)
        return self._models[path]

    def _model_for_scan(self, shape: tuple[int, int]) -> tuple[Any, Any, Any]:
        """:meth:`_model` of ``--checkpoint``, else of the shipped prior for scans of ``shape``
        (:mod:`mrimsm.diffusion.shipped`)."""
        if self.checkpoint:
            return self._model(self.checkpoint, None)
        choice = shipped.choose_shipped_prior(shape)
        return self._model(choice.path, choice)

    def reconstruct(self, batch: SliceBatch) -> MethodOutput:
        shape = tuple(batch.kspace.shape[-2:])
        loaded, family, prior = self._model_for_scan(shape)
        model_shape = tuple(int(s) for s in loaded.meta["image_shape"])
        shipped.check_scan_size(loaded.config, model_shape, shape, loaded.path)
        st, init = self._settings_for(prior)
        mask = batch.mask.to(self.device)
        y = batch.kspace.to(self.device) * mask
        op_full = MultiCoilMRI(batch.maps.to(self.device), None)
        H = Identity(mask)  # the test scan's own sampling, on the full k-space
        gen = torch.Generator().manual_seed(_batch_seed(batch.seeds))
        x_init = None if init is None else init.reconstruct(batch).images.to(self.device)
        mean, std, _ = posterior_sample(
            loaded.denoiser, op_full, H, y, SubmaskSampler(family, shape), st,
            generator=gen, on_step=batch.on_step, x_init=x_init, noise_std=batch.noise_std,
        )
        model = "; ".join(part for part in (
            shipped.describe(prior, loaded.path, loaded.step, model_shape),
            shipped.pixel_note(loaded.config, batch.pixel_mm),
            _noise_note(batch.noise_std, _training_noise(loaded), st),
            f"solver {self._settings_label(prior)}: {st.steps} steps, w {st.w}, {st.samples} samples, "
            f"start {st.init if st.init == 'none' else f'{st.init} at t0 {st.t0:g}'}"
            + (f", bootstrap {st.bootstrap:g}" if st.bootstrap else "")) if part)
        return MethodOutput(
            images=mean.detach().cpu().to(torch.complex64),
            uncertainty=std.detach().cpu() if st.samples > 1 else None,
            info={"nfe_per_slice": st.nfe, **asdict(st), "checkpoint": str(loaded.path), "model": model},
        )

    def memory_per_slice(self, shape: tuple[int, int], coils: int) -> int:
        """Estimated peak bytes of one slice (its ``samples`` together) in a reverse step:
        the network pass (:func:`mrimsm.models.memory.forward_bytes`) plus the solver's
        k-space-sized tensors (about 24 complex64 ``(C, H, W)`` per sample)."""
        from mrimsm.models.memory import forward_bytes

        loaded, _, prior = self._model_for_scan(tuple(shape))
        k = int(self._settings_for(prior)[0].samples)
        return forward_bytes(loaded.denoiser.backbone, shape, k) + k * 24 * int(coils) * int(shape[0]) * int(shape[1]) * 8


def _settings_record(settings: PosteriorSettings, init: Optional[ReconMethod]) -> dict:
    """The solver settings whole and the warm start's method's ``settings``."""
    return {**asdict(settings), "init_settings": None if init is None else init.settings}
