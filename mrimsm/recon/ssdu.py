"""The ``ssdu`` method of ``mrimsm recon``: the SSDU unrolled network on every acquired line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from mrimsm.diffusion import shipped
from mrimsm.errors import MrimsmError
from mrimsm.inference import load_ssdu
from mrimsm.recon.methods import MethodOutput, ReconMethod, SliceBatch
from mrimsm.utils import resolve_device

__all__ = ["make_ssdu_method"]


def _checkpoint_option(options: Mapping[str, Any]) -> Optional[Path]:
    path = options.get("ssdu_checkpoint") or (options.get("checkpoints") or {}).get("ssdu")
    return Path(path) if path else None


def make_ssdu_method(options: Mapping[str, Any]) -> ReconMethod:
    """The recon pipeline's factory: ``options["ssdu_checkpoint"]`` (or
    ``options["checkpoints"]["ssdu"]``), else the shipped SSDU for the scan's size
    (:data:`mrimsm.diffusion.shipped.SHIPPED_SSDU`: 64 x 64, or sides 192-416 for the 256 x 256
    one; a one-line error for other sizes), and ``options["device"]``
    (:func:`~mrimsm.utils.resolve_device`; default: CUDA when present). The method
    reconstructs each batch with every acquired line (``Theta`` = the acquisition mask);
    the network is fully convolutional, so a ``--ssdu-checkpoint`` model runs on any size.
    Reports ``nfe_per_slice`` (regulariser calls), ``cg_iters_per_slice`` and ``model``.
    """
    device = resolve_device(options.get("device"))
    explicit = _checkpoint_option(options)
    loaded_models: dict = {}

    def model_for(path: Path):
        if path not in loaded_models:
            loaded_models[path] = load_ssdu(path, device=device)
        return loaded_models[path]

    if explicit is not None:
        model_for(explicit)  # a bad --ssdu-checkpoint fails before any work
    elif not any(p.path.is_file() for p in shipped.SHIPPED_SSDU):
        raise MrimsmError(
            "no SSDU checkpoint: pass --ssdu-checkpoint, or train one with "
            "`mrimsm train --method ssdu configs/ssdu_tiny.yaml`"
        )

    def method(batch: SliceBatch) -> MethodOutput:
        shape = tuple(batch.kspace.shape[-2:])
        prior = None if explicit is not None else shipped.choose_shipped_prior(
            shape, shipped.SHIPPED_SSDU, "SSDU", "--ssdu-checkpoint")
        loaded = model_for(explicit if prior is None else prior.path)
        net = loaded.model
        info = {
            "nfe_per_slice": net.num_unrolls,
            "cg_iters_per_slice": net.num_unrolls * net.dc.cg_iters,
            "checkpoint": loaded.path,
            "checkpoint_step": loaded.step,
            "model": (shipped.describe(prior, loaded.path, loaded.step, (prior.trained, prior.trained))
                      if prior is not None else f"{loaded.path} (step {loaded.step})"),
        }
        x = loaded.reconstruct(batch.kspace.to(device), batch.maps.to(device), batch.mask.to(device))
        return MethodOutput(x.cpu(), info=info)

    # recorded in each output (with its hash): the model given, or every shipped one installed
    method.settings = ({"ssdu_checkpoint": str(explicit)} if explicit is not None else
                       {f"shipped_checkpoint {p.file}": str(p.path) for p in shipped.SHIPPED_SSDU if p.path.is_file()})
    return method
